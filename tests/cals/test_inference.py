"""The generation helpers on synthetic arrays: looping schedule, feathered paste-back, and
generate_faces with a random-weight CALS model."""

from __future__ import annotations

import numpy as np
import pytest

from cals.inference import feather_mask, frame_schedule, generate_faces, paste_face


def test_a_long_enough_source_is_used_from_its_start():
    assert frame_schedule(10, 4).tolist() == [0, 1, 2, 3]
    assert frame_schedule(4, 4).tolist() == [0, 1, 2, 3]


def test_a_short_source_loops_forwards_and_backwards_without_jumps():
    schedule = frame_schedule(4, 12)
    assert schedule.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert np.abs(np.diff(frame_schedule(7, 100))).max() == 1


def test_a_still_image_is_repeated():
    assert frame_schedule(1, 5).tolist() == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        frame_schedule(0, 5)


def test_feather_mask_ramps_over_its_width_and_is_symmetric():
    mask = feather_mask(40, 0.25)  # a 10 px ramp
    assert mask.shape == (40, 40) and mask.dtype == np.float32
    assert mask[20, 20] == 1.0 and mask[10:30, 10:30].min() == 1.0
    assert mask[20, 0] == pytest.approx(0.05) and mask[20, 9] == pytest.approx(0.95)
    assert np.allclose(mask, mask[::-1]) and np.allclose(mask, mask.T)
    assert mask[0, 0] == pytest.approx(0.05)  # corners: the smaller of the two ramps
    assert (feather_mask(8, 0.0) == 1).all()


def test_paste_changes_only_the_box_and_blends_its_edge():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    face = np.full((128, 128, 3), 255, np.uint8)
    box = (30.0, 20.0, 80.0, 70.0)  # 50 px square
    out = paste_face(frame, face, box, feather=0.2)  # a 10 px ramp
    inside = np.zeros(frame.shape[:2], bool)
    inside[20:70, 30:80] = True
    assert np.array_equal(out[~inside], frame[~inside])
    assert (out[30:60, 40:70] == 255).all()  # the core is the face
    edge = out[45, 30].astype(float)  # outermost column: weight 0.05
    assert np.allclose(edge, frame[45, 30] + 0.05 * (255 - frame[45, 30].astype(float)), atol=1)
    assert frame.base is None or not np.shares_memory(out, frame)


def test_a_hard_paste_is_the_resized_face_and_boxes_are_clipped_at_the_frame_edge():
    import cv2

    frame = np.zeros((60, 60, 3), np.uint8)
    face = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    out = paste_face(frame, face, (-20.0, 30.0, 44.0, 94.0), feather=0.0)  # 64 px, leaves left and bottom
    expected = cv2.resize(face, (64, 64), interpolation=cv2.INTER_AREA)[0:30, 20:64]
    assert np.array_equal(out[30:60, 0:44], expected)
    assert (out[:30] == 0).all() and (out[:, 44:] == 0).all()
    assert np.array_equal(paste_face(frame, face, (100.0, 100.0, 150.0, 150.0)), frame)  # outside: nothing
    with pytest.raises(ValueError, match="square"):
        paste_face(frame, face, (0.0, 0.0, 10.0, 20.0))


def test_generate_faces_with_a_random_model(tmp_path):
    from cals.models.cals_model import load_cals_model, save_random_cals_model
    from cals.models.tiny import tiny_cals_config

    model = load_cals_model(save_random_cals_model(tmp_path / "run", tiny_cals_config(8, window=25)))
    crops = np.random.default_rng(2).integers(0, 256, (7, 128, 128, 3), dtype=np.uint8)
    mel = np.random.default_rng(3).normal(-4, 1, (28, 80)).astype(np.float16)
    faces = generate_faces(model, crops, mel)
    assert faces.shape == crops.shape and faces.dtype == np.uint8
    assert np.array_equal(faces, generate_faces(model, crops, mel))  # deterministic
    with pytest.raises(ValueError):
        generate_faces(model, crops[:, :64], mel)
