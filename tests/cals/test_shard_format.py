import numpy as np
import pytest

from cals.shard_format import (
    FORMAT_VERSION,
    REQUIRED_META,
    ClipSample,
    check_sample,
    decode_frames,
    decode_sample,
    encode_frames,
    encode_sample,
    is_valid_key,
)


def make_sample(T: int = 12, key: str = "spk__clip-0123abcd") -> ClipSample:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    frames = np.stack([np.stack([(x + 5 * t) % 256, y, np.full_like(x, 20 * t % 256)], -1) for t in range(T)]).astype(np.uint8)
    meta = {k: None for k in REQUIRED_META}
    meta.update(split="train", frames_detected=T - 2, num_frames=T)
    scores = np.ones(T, np.float32)
    scores[:2] = 0
    return ClipSample(
        key=key,
        frames=frames,
        mel=rng.standard_normal((4 * T, 80)).astype(np.float16),
        audio=(rng.standard_normal(640 * T) * 3000).astype(np.int16),
        boxes=np.tile(np.array([10, 20, 110, 120], np.float32), (T, 1)),
        scores=scores,
        meta=meta,
    )


def test_round_trip_is_exact_except_jpeg():
    sample = make_sample()
    raw = encode_sample(sample)
    back = decode_sample(raw)
    assert back.key == sample.key and back.meta["format_version"] == FORMAT_VERSION
    np.testing.assert_array_equal(back.audio, sample.audio)
    np.testing.assert_array_equal(back.mel, sample.mel)
    np.testing.assert_array_equal(back.boxes, sample.boxes)
    assert back.frames.shape == sample.frames.shape and back.frames.dtype == np.uint8
    assert np.abs(back.frames.astype(int) - sample.frames).mean() < 3  # JPEG q95
    assert check_sample(back) == []


def test_lossless_png_is_exact():
    sample = make_sample()
    back = decode_sample(encode_sample(sample, codec="png"))
    np.testing.assert_array_equal(back.frames, sample.frames)


def test_encoding_is_deterministic():
    assert encode_sample(make_sample()) == encode_sample(make_sample())


def test_window_decodes_only_its_frames():
    sample = make_sample(T=10)
    blobs = encode_frames(sample.frames, "png")
    window = decode_frames(b"".join(blobs), [len(b) for b in blobs], range(3, 6))
    np.testing.assert_array_equal(window, sample.frames[3:6])


def test_check_sample_reports_each_broken_invariant():
    sample = decode_sample(encode_sample(make_sample()))
    sample.mel = sample.mel[:-1]
    sample.audio = sample.audio[:-5]
    sample.boxes = sample.boxes[:, :3]
    problems = " | ".join(check_sample(sample))
    assert "mel (47, 80)" in problems and "audio (7675,)" in problems and "boxes (12, 3)" in problems


def test_newer_format_version_is_refused():
    raw = encode_sample(make_sample())
    raw["json"] = raw["json"].replace(f'"format_version": {FORMAT_VERSION}'.encode(), b'"format_version": 99')
    with pytest.raises(ValueError, match="format version 99"):
        decode_sample(raw)


@pytest.mark.parametrize("key,valid", [("a-b_C9", True), ("a.b", False), ("a/b", False), ("", False), ("é", False)])
def test_keys_have_no_dots(key, valid):
    assert is_valid_key(key) is valid
    if not valid:
        with pytest.raises(ValueError, match="invalid sample key"):
            encode_sample(make_sample(key=key))


def test_member_checksums_catch_silent_corruption():
    from cals.shard_format import check_members

    raw = encode_sample(make_sample())
    assert check_members(raw) == []
    blob = bytearray(raw["frames.mjpeg"])
    blob[len(blob) // 2] ^= 0xFF  # a flipped byte a JPEG decoder would pass with a warning
    raw["frames.mjpeg"] = bytes(blob)
    del raw["boxes.npy"]
    problems = check_members(raw)
    assert any("frames.mjpeg fails its SHA-1" in p for p in problems)
    assert any("boxes.npy is missing" in p for p in problems)
