"""syncnet_python's S3FD (cals.models.s3fd): the layout loads with weights_only, detection runs and
returns boxes in frame pixels, the post-processing matches syncnet_python's order of steps, and
files of another layout are refused with one line. The released sfd_face.pth is not available
here: weights are random (seeded), with the face logit's bias raised so that boxes come out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cals.models.s3fd import (
    KEEP_TOP_K, NMS_CANDIDATES, NMS_FINAL, NMS_PER_SCALE, PRIOR_MIN_SIZES, PRIOR_STEPS, S3FD, S3FD_WEIGHTS_URL,
    S3FDNet, decode, load_s3fd, nms, prior_boxes,
)
from tests.conftest import FIXTURE_VIDEO


def random_state(face_bias: float = 4.0) -> dict[str, torch.Tensor]:
    """A seeded random S3FD state dict whose face logits are pushed up by ``face_bias``."""
    torch.manual_seed(0)
    net = S3FDNet()
    with torch.no_grad():
        for head in net.conf:
            head.bias[-1] += face_bias
    return net.state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("s3fd") / "sfd_face.pth"
    torch.save(random_state(), path)
    return path


@pytest.fixture(scope="module")
def frame():
    """A real face frame (the first of a fixture clip) as (H, W, 3) uint8 RGB, or a noise frame."""
    clip = FIXTURE_VIDEO / "talk_hdtf_aoc_sadtalker.mp4"
    if clip.is_file():
        from pipeline.io import iter_frames, probe

        return next(iter(iter_frames(probe(clip))))
    return np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area[:, None] + area[None, :] - inter)
    np.fill_diagonal(iou, 0.0)
    return iou


def check_detections(rows: np.ndarray, frame: np.ndarray, conf_th: float) -> None:
    """What detect() promises: (K, 5) rows xyxy + score, best first, scores above conf_th,
    boxes of positive size around the frame, no two overlapping by more than the final NMS IoU."""
    assert rows.ndim == 2 and rows.shape[1] == 5 and rows.shape[0] > 0
    assert (rows[:, 2] > rows[:, 0]).all() and (rows[:, 3] > rows[:, 1]).all()
    assert (rows[:, 4] > conf_th).all() and (rows[:, 4] <= 1).all()
    assert (np.diff(rows[:, 4]) <= 0).all()
    height, width = frame.shape[:2]
    centres = (rows[:, :2] + rows[:, 2:4]) / 2
    assert (centres >= -0.5 * width).all() and (centres[:, 0] <= 1.5 * width).all() and (centres[:, 1] <= 1.5 * height).all()
    assert pairwise_iou(rows[:, :4]).max() <= NMS_FINAL + 1e-9


def test_random_weights_load_weights_only_and_detect_boxes_in_frame_pixels(weights, frame):
    detector = load_s3fd(weights)
    rows = detector.detect(frame, conf_th=0.9, scales=[0.25])
    check_detections(rows, frame, 0.9)
    # the broken variant (no final NMS) is caught by the check
    loc_rows = np.concatenate([rows, rows + [1, 1, 1, 1, 0]])
    with pytest.raises(AssertionError):
        check_detections(loc_rows[np.argsort(-loc_rows[:, 4], kind="stable")], frame, 0.9)


def syncnet_python_steps(net: S3FDNet, frame: np.ndarray, conf_th: float, scale: float) -> np.ndarray:
    """syncnet_python's order of steps, without the shortcut: keep > 0.05, NMS 0.3 over the best
    5000, at most 750, then read rows while they exceed conf_th, then the final NMS 0.1."""
    import cv2

    scaled = cv2.resize(frame, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    bgr = scaled.transpose(2, 0, 1)[[2, 1, 0]].astype(np.float32) - np.array([104.0, 117.0, 123.0], np.float32)[:, None, None]
    with torch.no_grad():
        loc, prob, sizes = net(torch.from_numpy(np.ascontiguousarray(bgr[[2, 1, 0]]))[None])
    loc, prob = loc[0].double().numpy(), prob[0].double().numpy()
    boxes = decode(loc, prior_boxes(scaled.shape[:2], sizes))
    mask = prob > 0.05
    boxes, scores = boxes[mask], prob[mask]
    top = np.argsort(-scores, kind="stable")[:NMS_CANDIDATES]
    kept = top[nms(boxes[top], scores[top], NMS_PER_SCALE)][:KEEP_TOP_K]
    rows = []
    for index in kept:
        if scores[index] <= conf_th:
            break
        rows.append([*(boxes[index] * ([frame.shape[1], frame.shape[0]] * 2)), scores[index]])
    rows = np.array(rows).reshape(-1, 5)
    return rows[nms(rows[:, :4], rows[:, 4], NMS_FINAL)]


def test_detect_equals_syncnet_pythons_order_of_steps(frame):
    torch.manual_seed(1)
    net = S3FDNet()
    with torch.no_grad():
        for head in net.conf:
            head.bias[-1] += 1.5  # scores spread around 0.8: both thresholds matter
    ours = S3FD(net).detect(frame, conf_th=0.8, scales=[0.25])
    reference = syncnet_python_steps(net, frame, 0.8, 0.25)
    assert ours.shape[0] > 0
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)


def test_prior_boxes_are_row_major_cells_in_image_units():
    height, width = 64, 96
    sizes = [(-(-height // s), -(-width // s)) for s in PRIOR_STEPS]
    priors = prior_boxes((height, width), sizes)
    assert priors.shape == (sum(r * c for r, c in sizes), 4)
    rows, cols = sizes[0]
    i, j = 1, 2
    np.testing.assert_allclose(priors[i * cols + j], [(j + 0.5) * 4 / width, (i + 0.5) * 4 / height, 16 / width, 16 / height])
    offset = rows * cols
    np.testing.assert_allclose(priors[offset, 2:], [PRIOR_MIN_SIZES[1] / width, PRIOR_MIN_SIZES[1] / height])
    # zero offsets decode to the prior itself
    np.testing.assert_allclose(decode(np.zeros((1, 4)), priors[:1]), [[(2 - 8) / width, (2 - 8) / height, (2 + 8) / width, (2 + 8) / height]], atol=1e-12)
    # the broken variant (column-major cells) differs
    broken = np.concatenate([prior_boxes((height, width), [(c, r)])[:, [1, 0, 2, 3]] for r, c in sizes[:1]])
    assert not np.allclose(broken[: rows * cols], priors[: rows * cols])


def test_network_prior_count_matches_its_feature_maps():
    torch.manual_seed(0)
    with torch.no_grad():
        loc, prob, sizes = S3FDNet()(torch.zeros(1, 3, 64, 96))
    assert loc.shape == (1, prior_boxes((64, 96), sizes).shape[0], 4) and prob.shape == loc.shape[:2]
    assert sizes[0] == (16, 24) and len(sizes) == 6


def one_line(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_s3fd(tmp_path / "sfd_face.pth")
    message = one_line(caught.value)
    assert str(tmp_path / "sfd_face.pth") in message and S3FD_WEIGHTS_URL in message


@pytest.mark.parametrize("damage", ["face_alignment_names", "wrong_shape", "missing_key", "pickled_module"])
def test_a_layout_mismatch_is_refused(tmp_path, damage):
    state = random_state()
    path = tmp_path / "weights.pth"
    if damage == "face_alignment_names":  # face-alignment's s3fd-619a316812.pth names its layers conv1_1 ...
        state = {k.replace("vgg.0.", "conv1_1.").replace("vgg.2.", "conv1_2."): v for k, v in state.items()}
    elif damage == "wrong_shape":
        state["loc.0.weight"] = torch.zeros(8, 256, 3, 3)
    elif damage == "missing_key":
        del state["L2Norm4_3.weight"]
    if damage == "pickled_module":
        torch.save(S3FDNet(), path)
    else:
        torch.save(state, path)
    with pytest.raises(ValueError) as caught:
        load_s3fd(path)
    message = one_line(caught.value)
    assert str(path) in message and S3FD_WEIGHTS_URL in message
    expected = {"face_alignment_names": "conv1_1.weight", "wrong_shape": "loc.0.weight", "missing_key": "L2Norm4_3.weight",
                "pickled_module": "weights_only"}[damage]
    assert expected in message
