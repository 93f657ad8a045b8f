"""The face stage on synthetic frames: a fake detector with a fixed box, and the whole-frame one."""

import numpy as np

from pipeline.stages.crop import CropParams, crop_frame, crop_square
from pipeline.stages.detect import Detection, WholeFrameDetector
from pipeline.stages.face import DETECT_BATCH, detected_stream, face_track

BOX = (40.0, 30.0, 100.0, 110.0)


class FixedDetector:
    """One face at BOX on every frame; records the batch sizes it was called with."""

    name = "fixed"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, frames):
        self.batches.append(len(frames))
        return [[Detection(BOX, 0.9)] for _ in frames]

    def close(self) -> None:
        pass


def frames(count: int, height: int = 160, width: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_detections_on_every_kth_frame_in_batches():
    detector = FixedDetector()
    stream = list(detected_stream(frames(DETECT_BATCH + 4), detector, every=3))
    assert [dets is not None for _, dets in stream] == [i % 3 == 0 for i in range(DETECT_BATCH + 4)]
    assert detector.batches == [6, 1]  # frames 0..15 then 16..19, only the wanted ones


def test_a_tracking_detector_gives_the_square_of_its_box_and_that_crop():
    source = frames(30)
    faces = list(face_track(source, FixedDetector(), every=2))
    assert [f.index for f in faces] == list(range(30))
    square = crop_square(BOX, 200, 160, CropParams())
    for face, frame in zip(faces, source):
        assert face.square == square
        assert face.crop.shape == (128, 128, 3) and face.crop.dtype == np.uint8
        np.testing.assert_array_equal(face.crop, crop_frame(frame, square, 128))
    assert [f.examined for f in faces] == [i % 2 == 0 for i in range(30)]
    assert all(f.detected == f.examined for f in faces)  # skipped frames are filled in (score 0)


def test_the_whole_frame_detector_yields_the_centre_square_unchanged():
    source = frames(5, height=120, width=160)
    faces = list(face_track(source, WholeFrameDetector(), every=3))
    assert all(f.square == (20.0, 0.0, 140.0, 120.0) and f.score == 1.0 and f.faces == 1 for f in faces)
    np.testing.assert_array_equal(faces[0].crop, crop_frame(source[0], (20.0, 0.0, 140.0, 120.0), 128))
