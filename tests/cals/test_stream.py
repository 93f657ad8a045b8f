"""The streaming loader on small synthetic shards (written with the real shard writer)."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import webdataset as wds

from cals.constants import AUDIO_SAMPLES_PER_FRAME
from cals.mel import log_mel
from cals.shard_format import REQUIRED_META, ClipSample, decode_sample, encode_sample
from cals.stream import AugmentConfig, ShardMismatch, StreamConfig, collate, cut_window, make_dataset, make_loader


def synthetic_sample(key: str, T: int, seed: int, lip_dim: int | None = None) -> ClipSample:
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(640 * T) * 2000 * (1 + np.sin(np.arange(640 * T) / 900))).astype(np.int16)
    frames = np.stack([np.full((128, 128, 3), (7 * t + seed) % 256, np.uint8) for t in range(T)])
    meta = {k: None for k in REQUIRED_META}
    meta.update(split="train", frames_detected=T)
    from cals.mel import MEL_PARAMS

    meta["mel_params"] = MEL_PARAMS.to_dict()
    lip = None
    if lip_dim:
        lip = np.tile(np.arange(T, dtype=np.float16)[:, None], (1, lip_dim))  # unit t holds t
        meta["lip_units"] = {"kind": "test", "dim": lip_dim, "digest": "0"}
    return ClipSample(key=key, frames=frames, mel=log_mel(audio).astype(np.float16), audio=audio,
                      boxes=np.tile(np.array([0, 0, 10, 10], np.float32), (T, 1)), scores=np.ones(T, np.float32),
                      meta=meta, lip=lip)


def write_dataset(folder, lengths_per_shard, lip_dim=None, mutate=None):
    folder.mkdir(parents=True, exist_ok=True)
    samples = {}
    for shard, lengths in enumerate(lengths_per_shard):
        with wds.TarWriter(str(folder / f"train-{shard:06d}.tar"), encoder=False) as tar:
            for i, T in enumerate(lengths):
                sample = synthetic_sample(f"s{shard}-{i}", T, seed=shard * 100 + i, lip_dim=lip_dim)
                raw = encode_sample(sample, codec="png")
                if mutate:
                    mutate(raw)
                tar.write(raw)
                samples[sample.key] = sample
    return samples


def test_windows_are_aligned_slices_of_the_sample(tmp_path):
    samples = write_dataset(tmp_path / "d", [[40, 33]], lip_dim=6)
    config = StreamConfig(tmp_path / "d", window=9, batch_size=2, lip_units=True, shuffle_buffer=0)
    batch = next(iter(make_dataset(config)))
    assert batch["frames"].shape == (2, 9, 128, 128, 3) and batch["mel"].shape == (2, 36, 80)
    assert batch["audio"].shape == (2, 9 * AUDIO_SAMPLES_PER_FRAME) and batch["lip"].shape == (2, 9, 6)
    assert batch["mask"].all()
    for i, key in enumerate(batch["keys"]):
        s, start = samples[key], batch["starts"][i]
        np.testing.assert_array_equal(batch["frames"][i].numpy(), s.frames[start : start + 9])  # PNG: exact
        np.testing.assert_array_equal(batch["mel"][i].numpy(), s.mel[4 * start : 4 * start + 36].astype(np.float32))
        np.testing.assert_array_equal(batch["audio"][i].numpy(), s.audio[640 * start : 640 * (start + 9)])
        np.testing.assert_array_equal(batch["lip"][i, :, 0].numpy(), np.arange(start, start + 9))


def test_whole_utterances_are_padded_with_masks(tmp_path):
    write_dataset(tmp_path / "d", [[12, 30, 21]])
    config = StreamConfig(tmp_path / "d", window=None, max_frames=25, batch_size=3, shuffle_buffer=0, resampled=False, frames=False)
    batch = next(iter(make_dataset(config)))
    assert sorted(batch["lengths"].tolist()) == [12, 21, 25]  # 30 capped at max_frames
    assert batch["mel"].shape == (3, 100, 80) and batch["mask"].shape == (3, 25)
    for i, length in enumerate(batch["lengths"].tolist()):
        assert batch["mask"][i].sum() == length
        assert (batch["mel"][i, 4 * length :] == 0).all() and (batch["audio"][i, 640 * length :] == 0).all()
    assert "frames" not in batch


def test_silent_noise_reproduces_the_pipeline_mel_exactly(tmp_path):
    # Mixing zero noise then recomputing the mel must give the stored rows: the augmentation
    # frames its mel exactly as the pipeline does.
    samples = write_dataset(tmp_path / "d", [[30]])
    silence = tmp_path / "silence.wav"
    import soundfile

    soundfile.write(silence, np.zeros(16000, np.float32), 16000)
    config = StreamConfig(tmp_path / "d", window=10, batch_size=1, shuffle_buffer=0,
                          augment=AugmentConfig(noise_files=(str(silence),), noise_prob=1.0, snr_db=(10, 10)))
    for batch in list(make_loader(config, batches_per_epoch=8)):
        key, start = batch["keys"][0], batch["starts"][0]
        expected = samples[key].mel[4 * start : 4 * start + 40].astype(np.float32)
        np.testing.assert_allclose(batch["mel"][0].numpy(), expected, atol=2e-3)  # float16 storage


def test_noise_lowers_snr_and_spec_augment_masks(tmp_path):
    write_dataset(tmp_path / "d", [[30]])
    noise = tmp_path / "noise.wav"
    import soundfile

    soundfile.write(noise, np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1, 48000)
    config = StreamConfig(tmp_path / "d", window=20, batch_size=1, shuffle_buffer=0,
                          augment=AugmentConfig(noise_files=(str(noise),), noise_prob=1.0, snr_db=(0, 0), time_masks=2, freq_masks=2))
    window = next(iter(make_dataset(config)))
    clean = config.__class__(tmp_path / "d", window=20, batch_size=1, shuffle_buffer=0)
    reference = next(iter(make_dataset(clean)))
    assert reference["keys"] == window["keys"]
    noisy, orig = window["audio"][0].numpy().astype(float), reference["audio"][0].numpy().astype(float)
    if window["starts"] == reference["starts"]:
        snr = 10 * np.log10(np.mean(orig**2) / np.mean((noisy - orig) ** 2))
        assert abs(snr) < 1.5  # drawn at 0 dB
    floor = np.float32(np.log10(1e-5))
    mel = window["mel"][0].numpy()
    assert (mel == floor).all(axis=1).any() or (mel == floor).all(axis=0).any()


def test_mismatched_shards_are_refused_naming_both(tmp_path):
    def old_mel(raw):
        meta = json.loads(raw["json"])
        meta["mel_params"]["hop_length"] = 200
        raw["json"] = json.dumps(meta).encode()

    write_dataset(tmp_path / "d", [[20]], mutate=old_mel)
    with pytest.raises(ShardMismatch, match=r"hop_length.*\(200, 160\)"):
        next(iter(make_dataset(StreamConfig(tmp_path / "d", window=5, batch_size=1))))
    write_dataset(tmp_path / "e", [[20]], lip_dim=4)
    with pytest.raises(ShardMismatch, match="dim 4, the run expects 1024"):
        next(iter(make_dataset(StreamConfig(tmp_path / "e", window=5, batch_size=1, lip_units=True, lip_dim=1024))))
    write_dataset(tmp_path / "f", [[20]])
    with pytest.raises(ShardMismatch, match="cals-prep units"):
        next(iter(make_dataset(StreamConfig(tmp_path / "f", window=5, batch_size=1, lip_units=True))))


def test_too_few_shards_for_the_workers_is_a_clear_error(tmp_path):
    write_dataset(tmp_path / "d", [[10], [10]])
    with pytest.raises(ValueError, match="2 shards for 2 rank.* x 2 loader worker"):
        make_dataset(StreamConfig(tmp_path / "d", resampled=False, num_workers=2), world_size=2)
    make_dataset(StreamConfig(tmp_path / "d", resampled=True, num_workers=2), world_size=2)  # resampling is fine


def test_loader_workers_see_different_shards_and_epochs_reseed(tmp_path):
    write_dataset(tmp_path / "d", [[10] * 3 for _ in range(4)])
    config = StreamConfig(tmp_path / "d", window=5, batch_size=1, num_workers=2, shuffle_buffer=4, frames=False)
    first = [b["keys"][0] + f"@{b['starts'][0]}" for b in make_loader(config, batches_per_epoch=24)]
    again = [b["keys"][0] + f"@{b['starts'][0]}" for b in make_loader(config, batches_per_epoch=24)]
    other = [b["keys"][0] + f"@{b['starts'][0]}" for b in make_loader(StreamConfig(**{**config.__dict__, "epoch": 1}), batches_per_epoch=24)]
    assert len(first) == 24 and first == again, "a fixed seed and epoch reproduce the stream"
    assert first != other, "another epoch draws another stream"
    assert len({k.split("@")[0].split("-")[0] for k in first}) >= 3, "several shards are drawn"


def test_collate_pads_lip_units():
    windows = [{"key": "a", "start": 0, "length": 3, "mel": np.ones((12, 80), np.float32), "audio": np.ones(1920, np.int16), "lip": np.ones((3, 2), np.float32)},
               {"key": "b", "start": 1, "length": 1, "mel": np.ones((4, 80), np.float32), "audio": np.ones(640, np.int16), "lip": np.ones((1, 2), np.float32)}]
    batch = collate(windows)
    assert batch["lip"].shape == (2, 3, 2) and batch["lip"][1, 1:].abs().sum() == 0
    assert batch["mask"].tolist() == [[True, True, True], [True, False, False]]
