"""The mouth mask: the pose prior hides the mask line and below; cals-generate pastes back only
that region, feathered, with no seam at the line."""

from itertools import islice

import numpy as np
import pytest
import torch

from cals.constants import CROP_SIZE, MASK_TOP_ROW, PASTE_FEATHER
from cals.inference import paste_face, paste_mask
from cals.models.l2f import pose_prior
from tests.conftest import FIXTURE_VIDEO, needs_fixtures


def hides_the_mouth(prior_fn) -> bool:
    """Every pixel at or below the mask row is zero in the prior, every pixel above it kept."""
    frames = torch.rand(2, 3, 3, CROP_SIZE, CROP_SIZE) * 0.9 + 0.1  # no zero pixel to begin with
    prior = prior_fn(frames)
    return bool((prior[..., MASK_TOP_ROW:, :] == 0).all()) and torch.equal(prior[..., :MASK_TOP_ROW, :], frames[..., :MASK_TOP_ROW, :])


def test_pose_prior_hides_every_pixel_from_the_mask_row():
    assert hides_the_mouth(pose_prior)

    def leaky(frames):  # the mask line a few rows too low: the upper lip shows
        prior = frames.clone()
        prior[..., MASK_TOP_ROW + 4 :, :] = 0
        return prior

    assert not hides_the_mouth(leaky)


def test_mouth_paste_keeps_every_pixel_above_the_band_and_pastes_the_masked_rows():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    face = rng.integers(0, 256, (CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    x0, y0, side = 100, 40, 256  # 2 frame pixels per crop pixel: the resize is exact per row pair
    out = paste_face(frame, face, (x0, y0, x0 + side, y0 + side), PASTE_FEATHER, "mouth")
    line, band = y0 + MASK_TOP_ROW * side // CROP_SIZE, round(PASTE_FEATHER * side)
    assert np.array_equal(out[: line - band], frame[: line - band])  # eyes, skin, background: the source's
    assert not np.array_equal(out[line - band : line], frame[line - band : line])  # the band blends
    inner = slice(x0 + band, x0 + side - band)  # away from the box's side ramps
    pasted = paste_face(frame, face, (x0, y0, x0 + side, y0 + side), PASTE_FEATHER, "face")
    assert np.array_equal(out[line : y0 + side - band, inner], pasted[line : y0 + side - band, inner])  # the mouth: the model's
    assert np.array_equal(out[:, : x0], frame[:, : x0]) and np.array_equal(out[y0 + side :], frame[y0 + side :])
    weight = paste_mask(side, PASTE_FEATHER, "mouth")
    assert (weight[: line - y0 - band] == 0).all() and np.all(np.diff(weight[line - y0 - band - 1 : line - y0 + 1, side // 2]) > 0)


def seam(frame: np.ndarray, line: int, columns: slice, reach: int) -> float:
    """Row-gradient statistic across a mask line: the largest mean |row r - row r-1| (over
    ``columns`` and channels) for r within ``reach`` rows of ``line``, grey levels."""
    rows = frame[line - reach - 1 : line + reach + 1, columns].astype(np.float64)
    return float(np.abs(np.diff(rows, axis=0)).mean(axis=(1, 2)).max())


@needs_fixtures
def test_mouth_paste_leaves_no_seam_at_the_mask_line():
    from pipeline.io import iter_frames, probe

    frames = list(islice(iter_frames(probe(FIXTURE_VIDEO / "talk_aoc2_retalking.mp4")), 0, 12))
    source, other = frames[0], frames[11]  # the "generated" mouth: another frame's, 6 levels brighter
    x0, y0, side = 95, 60, 400  # the face of this 590x590 clip
    face = np.clip(other[y0 : y0 + side, x0 : x0 + side].astype(np.int16) + 6, 0, 255).astype(np.uint8)
    import cv2

    face = cv2.resize(face, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    box = (x0, y0, x0 + side, y0 + side)
    line, band = y0 + MASK_TOP_ROW * side // CROP_SIZE, round(PASTE_FEATHER * side)
    columns, reach = slice(x0 + band, x0 + side - band), band + 2
    limit = seam(source, line, columns, reach)
    assert seam(paste_face(source, face, box, PASTE_FEATHER, "mouth"), line, columns, reach) <= limit
    hard = paste_face(source, face, box, 0.0, "mouth")  # the broken variant: a hard edge at the line
    assert seam(hard, line, columns, reach) > limit


def test_generate_params_refuse_an_unknown_paste_region():
    from pipeline.lipsync_video import GenerateParams

    assert GenerateParams().paste == "mouth"
    with pytest.raises(ValueError, match="paste must be one of mouth, face"):
        GenerateParams(paste="eyes")


def test_version_1_shards_with_the_old_crops_are_refused_in_one_line():
    from cals.mel import MEL_PARAMS
    from cals.shard_format import FORMAT_VERSION
    from cals.stream import ShardMismatch, StreamConfig, check_compatible

    meta = {"key": "k", "format_version": FORMAT_VERSION, "mel_params": MEL_PARAMS.to_dict()}
    check_compatible(meta, StreamConfig("unused"))  # this version: read
    with pytest.raises(ShardMismatch, match=f"^sample k: shard format version 1, this code reads {FORMAT_VERSION}$"):
        check_compatible({**meta, "format_version": 1}, StreamConfig("unused"))
