"""The lip-unit loader contract: which file is which model, one unit per frame from the window
centred on it (edge frames repeated), and clear errors for anything else.

The released syncnet_v2.model is not available here: a randomly initialised SyncNetV2 saved the
way the released file is (``torch.save(state_dict)``) stands in for it. Its numbers mean nothing,
but the contract (shapes, windows, padding, identity) is the same.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch

from cals.models.lip_units import CRITIC_MODULE, load_lip_model, model_digest, model_kind, window_indices
from cals.models.syncnet_v2 import SyncNetV2


@pytest.fixture(scope="module")
def syncnet_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "syncnet_random.model"
    torch.save(SyncNetV2().state_dict(), path)
    return path


def reference_units(net: SyncNetV2, frames: np.ndarray) -> np.ndarray:
    """Unit of every frame, computed here without cals.models.lip_units: each 128x128 RGB crop
    resized to 224x224 (bilinear) and turned BGR, the clip padded with 2 copies of its first and
    last frames, and the 5 frames centred on t fed to the lip stream."""
    bgr = np.stack([cv2.resize(frame, (224, 224), interpolation=cv2.INTER_LINEAR)[..., ::-1] for frame in frames])
    padded = np.concatenate([bgr[:1], bgr[:1], bgr, bgr[-1:], bgr[-1:]])
    windows = np.stack([padded[t : t + 5] for t in range(len(frames))])  # (T, 5, 224, 224, 3)
    with torch.no_grad():
        out = net.forward_lip(torch.from_numpy(np.ascontiguousarray(windows.transpose(0, 4, 1, 2, 3))).float())
    return out.numpy()


def test_window_indices_repeat_the_edge_frames():
    windows = window_indices(7, range(7))
    assert windows[0].tolist() == [0, 0, 0, 1, 2]
    assert windows[1].tolist() == [0, 0, 1, 2, 3]
    assert windows[3].tolist() == [1, 2, 3, 4, 5]
    assert windows[6].tolist() == [4, 5, 6, 6, 6]
    assert window_indices(1, [0]).tolist() == [[0, 0, 0, 0, 0]]
    with pytest.raises(ValueError):
        window_indices(3, [3])


def test_syncnet_file_loads_with_kind_dim_and_file_digest(syncnet_file):
    model = load_lip_model(syncnet_file)
    assert (model.kind, model.dim) == ("syncnet_v2", 1024)
    assert model.digest == hashlib.sha256(syncnet_file.read_bytes()).hexdigest() == model_digest(syncnet_file)
    assert model.units_meta() == {"kind": "syncnet_v2", "digest": model.digest, "dim": 1024, "window": 5, "padding": "repeat edge frames"}


def test_one_unit_per_frame_from_the_centred_window(syncnet_file):
    frames = np.random.default_rng(0).integers(0, 256, (7, 128, 128, 3), dtype=np.uint8)
    model = load_lip_model(syncnet_file)
    units = model.embed(frames, batch_size=3)  # batches that cut windows apart
    assert units.shape == (7, 1024) and units.dtype == np.float32
    expected = reference_units(model.net, frames)
    np.testing.assert_allclose(units, expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(model.embed(frames, batch_size=64), units, rtol=1e-4, atol=1e-5)
    assert model.embed(frames[:1]).shape == (1, 1024)  # a one-frame clip: its frame five times


def test_embed_refuses_wrong_frames(syncnet_file):
    model = load_lip_model(syncnet_file)
    with pytest.raises(ValueError, match="uint8"):
        model.embed(np.zeros((3, 128, 128, 3), np.float32))


def test_missing_model_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*expected a SyncNet v2 state dict"):
        load_lip_model(tmp_path / "nothing.model")


def test_unknown_file_is_refused_with_what_was_expected(tmp_path):
    text = tmp_path / "notes.model"
    text.write_text("not a model")
    with pytest.raises(ValueError, match="expected a SyncNet v2 state dict.*sync-critic run folder"):
        load_lip_model(text)
    wrong = tmp_path / "wrong.model"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="does not match SyncNet v2.*expected a SyncNet v2 state dict"):
        load_lip_model(wrong)
    with pytest.raises(ValueError, match="not a sync-critic run folder"):
        load_lip_model(tmp_path)
    stray = tmp_path / "model.safetensors"
    stray.write_bytes(b"\0")
    with pytest.raises(ValueError, match="outside a sync-critic run folder"):
        load_lip_model(stray)


def test_critic_checkpoints_are_recognised_by_their_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": "sync_critic"}))
    (run / "ckpt-00000001.safetensors").write_bytes(b"\0")
    assert model_kind(run) == model_kind(run / "ckpt-00000001.safetensors") == "sync_critic"
    (run / "config.json").write_text(json.dumps({"model": "sync_critic"}))
    assert model_kind(run) == "sync_critic"
    (run / "config.json").write_text(json.dumps({"task": "a2l"}))
    with pytest.raises(ValueError, match="not a sync-critic run folder"):
        model_kind(run)


@pytest.mark.skipif(importlib.util.find_spec(CRITIC_MODULE) is not None, reason=f"{CRITIC_MODULE} exists: the critic loads for real")
def test_critic_without_its_module_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "sync_critic"}))
    with pytest.raises(ImportError, match="cals.models.sync_critic.*use a syncnet_v2.model file"):
        load_lip_model(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec(CRITIC_MODULE) is None, reason=f"{CRITIC_MODULE} is not in this checkout")
def test_critic_run_folder_gives_units_from_its_newest_checkpoint(tmp_path):
    """A small, randomly initialised critic saved as cals-train saves one: the run folder loads
    its newest checkpoint, and unit t is embed_video of the window centred on t."""
    from cals.models.sync_critic import SyncCritic, SyncCriticConfig
    from cals.train.checkpoint import save_checkpoint

    config = SyncCriticConfig(embed_dim=16, mouth_size=(32, 64), video_channels=(8, 8, 8, 8, 16), audio_channels=(8, 8, 8, 8, 16))
    (tmp_path / "config.json").write_text(json.dumps({"task": "sync_critic", "task_config": {"model": config.to_dict()}}))
    torch.manual_seed(1)
    save_checkpoint(tmp_path, 1, SyncCritic(config).state_dict(), {}, keep=2)
    critic = SyncCritic(config).eval()
    newest = save_checkpoint(tmp_path, 2, critic.state_dict(), {}, keep=2)
    model = load_lip_model(tmp_path)
    assert (model.kind, model.dim, model.path) == ("sync_critic", 16, str(newest))
    assert model.digest == hashlib.sha256(newest.read_bytes()).hexdigest() == model_digest(tmp_path)
    frames = np.random.default_rng(1).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    units = model.embed(frames, batch_size=4)
    padded = np.concatenate([frames[:1], frames[:1], frames, frames[-1:], frames[-1:]])
    windows = np.stack([padded[t : t + 5] for t in range(6)]).transpose(0, 1, 4, 2, 3)  # (T, 5, 3, H, W)
    with torch.no_grad():
        expected = critic.embed_video(torch.from_numpy(windows).float() / 255.0).numpy()
    assert units.shape == (6, 16)
    np.testing.assert_allclose(units, expected, rtol=1e-4, atol=1e-5)
