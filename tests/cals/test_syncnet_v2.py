"""SyncNet v2: state-dict names and shapes of the released syncnet_v2.model, loading, lip input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cals.models.syncnet_v2 import (
    SYNCNET_V2_GIT_BLOB,
    SyncNetV2,
    lip_input_from_crops,
    load_syncnet_v2,
)

# The released file's layers, read off syncnet_python's SyncNetModel.py class S by hand:
# (Sequential index, kind, in, out, kernel). ReLU and MaxPool layers hold indices but no weights.
_REFERENCE_LAYERS = {
    "netcnnaud": [
        (0, "conv", 1, 64, (3, 3)), (1, "bn", 64),
        (4, "conv", 64, 192, (3, 3)), (5, "bn", 192),
        (8, "conv", 192, 384, (3, 3)), (9, "bn", 384),
        (11, "conv", 384, 256, (3, 3)), (12, "bn", 256),
        (14, "conv", 256, 256, (3, 3)), (15, "bn", 256),
        (18, "conv", 256, 512, (5, 4)), (19, "bn", 512),
    ],
    "netfcaud": [(0, "fc", 512, 512), (1, "bn", 512), (3, "fc", 512, 1024)],
    "netfclip": [(0, "fc", 512, 512), (1, "bn", 512), (3, "fc", 512, 1024)],
    "netcnnlip": [
        (0, "conv", 3, 96, (5, 7, 7)), (1, "bn", 96),
        (4, "conv", 96, 256, (1, 5, 5)), (5, "bn", 256),
        (8, "conv", 256, 256, (1, 3, 3)), (9, "bn", 256),
        (11, "conv", 256, 256, (1, 3, 3)), (12, "bn", 256),
        (14, "conv", 256, 256, (1, 3, 3)), (15, "bn", 256),
        (18, "conv", 256, 512, (1, 6, 6)), (19, "bn", 512),
    ],
}


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """name → shape of every tensor in the released state dict (num_batches_tracked included)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for block, layers in _REFERENCE_LAYERS.items():
        for index, kind, *sizes in layers:
            prefix = f"{block}.{index}."
            if kind == "conv":
                cin, cout, kernel = sizes
                shapes[prefix + "weight"] = (cout, cin, *kernel)
                shapes[prefix + "bias"] = (cout,)
            elif kind == "fc":
                cin, cout = sizes
                shapes[prefix + "weight"] = (cout, cin)
                shapes[prefix + "bias"] = (cout,)
            else:
                (channels,) = sizes
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[prefix + name] = (channels,)
                shapes[prefix + "num_batches_tracked"] = ()
    return shapes


def fake_released_state(seed: int = 0, batch_counters: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with the released names and shapes and random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in reference_shapes().items():
        if name.endswith("num_batches_tracked"):
            if batch_counters:
                state[name] = torch.tensor(0, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.05
    return state


def test_state_dict_names_and_shapes_match_the_released_file():
    model_shapes = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    assert model_shapes == reference_shapes()
    # syncnet_python registers audio trunk, audio head, lip head, lip trunk in that order
    blocks = list(dict.fromkeys(k.split(".")[0] for k in SyncNetV2().state_dict()))
    assert blocks == ["netcnnaud", "netfcaud", "netfclip", "netcnnlip"]


def test_parameter_count():
    expected = sum(int(np.prod(s)) for k, s in reference_shapes().items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert sum(p.numel() for p in SyncNetV2().parameters()) == expected == 13_631_616


def test_forward_shapes():
    model = SyncNetV2().eval()
    with torch.inference_mode():
        assert model.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert model.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)
        # the trunks end at 1x1 (512 features before the heads)
        assert model.netcnnaud(torch.randn(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert model.netcnnlip(torch.rand(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)


def test_load_a_state_dict_file_unchanged(tmp_path):
    state = fake_released_state()
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    model = load_syncnet_v2(path)
    assert not model.training
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_load_a_file_without_batch_counters(tmp_path):
    """Files written by PyTorch < 0.4.1 have no num_batches_tracked buffers."""
    path = tmp_path / "old.model"
    state = fake_released_state(batch_counters=False)
    torch.save(state, path)
    loaded = load_syncnet_v2(path).state_dict()
    assert torch.equal(loaded["netcnnlip.0.weight"], state["netcnnlip.0.weight"])


def test_missing_file_names_it_and_the_source(tmp_path):
    path = tmp_path / "nowhere" / "syncnet_v2.model"
    with pytest.raises(FileNotFoundError) as info:
        load_syncnet_v2(path)
    message = str(info.value)
    assert str(path) in message
    assert "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model" in message
    assert "download_model.sh" in message and SYNCNET_V2_GIT_BLOB in message


def test_mismatched_state_dict_lists_the_keys(tmp_path):
    state = fake_released_state()
    del state["netfclip.3.weight"]
    state["module.extra"] = torch.zeros(3)
    state["netcnnaud.0.weight"] = torch.zeros(64, 1, 5, 5)
    path = tmp_path / "bad.model"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_syncnet_v2(path)
    message = str(info.value)
    assert "missing keys: netfclip.3.weight" in message
    assert "unexpected keys: module.extra" in message
    assert "netcnnaud.0.weight (64, 1, 5, 5) (expected (64, 1, 3, 3))" in message


def test_a_pickled_module_is_refused_clearly(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(SyncNetV2(), path)
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_syncnet_v2(path)


def test_lip_input_windows_cover_frames_v_to_v_plus_4():
    T = 9
    frames = np.zeros((T, 128, 128, 3), np.uint8)
    for t in range(T):
        frames[t] = (10 * t, 10 * t + 1, 10 * t + 2)  # R, G, B
    windows = lip_input_from_crops(frames)
    assert windows.shape == (T - 4, 3, 5, 224, 224) and windows.dtype == torch.float32
    for v in range(T - 4):
        for k in range(5):
            t = v + k
            # channel 0 is blue, 2 is red (BGR), values unnormalised 0-255
            assert torch.all(windows[v, 0, k] == 10 * t + 2)
            assert torch.all(windows[v, 1, k] == 10 * t + 1)
            assert torch.all(windows[v, 2, k] == 10 * t)


def test_lip_input_resizes_bilinearly_to_bgr_224():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    windows = lip_input_from_crops(frames, starts=[1])
    expected = cv2.resize(frames[3], (224, 224), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    assert torch.equal(windows[0, :, 2], torch.from_numpy(expected.transpose(2, 0, 1).astype(np.float32)))


def test_lip_input_refuses_windows_past_the_end():
    frames = np.zeros((6, 128, 128, 3), np.uint8)
    with pytest.raises(ValueError, match="beyond"):
        lip_input_from_crops(frames, starts=[2])
    with pytest.raises(ValueError, match="uint8 RGB"):
        lip_input_from_crops(frames.astype(np.float32))
