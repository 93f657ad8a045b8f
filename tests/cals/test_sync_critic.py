"""The sync critic: encoders, the multi-way and BCE losses, the training task through the real
loop and CLI, and load_critic (fast; the learning check is test_sync_critic_learning.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cals.losses import multiway_chance_loss, multiway_matching_loss, offset_similarities, sync_bce_loss
from cals.models.sync_critic import SyncCritic, SyncCriticConfig, embed_clip, load_critic, score_clip, score_samples
from cals.models.tiny import TINY_CRITIC
from cals.train.checkpoint import load_weights, read_json
from cli.train import app
from tests.cals.test_stream import write_dataset

TINY = TINY_CRITIC
REPO = Path(__file__).resolve().parents[2]
TINY_FLAGS = ["--embed-dim", "16", "--mouth-size", "32,64", "--video-channels", "8,8,8,8,16", "--audio-channels", "8,8,8,8,16"]


@pytest.fixture(scope="module")
def critic():
    torch.manual_seed(0)
    return SyncCritic(TINY).eval()


def test_window_embeddings_are_unit_vectors_of_embed_dim(critic):
    frames = torch.rand(3, 5, 3, 128, 128)
    mel = torch.randn(3, 20, 80) - 3.5
    video, audio = critic.embed_video(frames), critic.embed_audio(mel)
    assert critic.embed_dim == 16
    assert video.shape == (3, 16) and audio.shape == (3, 16)
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="windows"):
        critic.embed_video(torch.rand(2, 4, 3, 128, 128))
    with pytest.raises(ValueError, match="mel windows"):
        critic.embed_audio(torch.randn(2, 16, 80))


def test_default_config_is_the_full_size_critic():
    config = SyncCriticConfig()
    assert (config.embed_dim, config.t_s, config.mel_rows, config.mouth_size) == (512, 5, 20, (64, 128))
    model = SyncCritic(config).eval()
    with torch.no_grad():
        assert model.embed_video(torch.rand(1, 5, 3, 128, 128)).shape == (1, 512)


def test_a_sequence_pass_equals_embedding_each_window(critic):
    """Fully convolutional in time: window v of a T-frame pass = frames v..v+4, mel rows 4v..4v+19."""
    torch.manual_seed(1)
    frames = torch.rand(2, 12, 3, 128, 128)
    mel = torch.randn(2, 48, 80) - 3.5
    with torch.no_grad():
        video, audio = critic(frames, mel)
        assert video.shape == audio.shape == (2, 8, 16)
        for v in range(8):
            torch.testing.assert_close(video[:, v], critic.embed_video(frames[:, v : v + 5]), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(audio[:, v], critic.embed_audio(mel[:, 4 * v : 4 * v + 20]), atol=1e-5, rtol=1e-4)


def test_video_sees_only_the_mouth_half_and_any_crop_size(critic):
    frames = torch.rand(2, 5, 3, 128, 128)
    top = frames.clone()
    top[..., :64, :] = torch.rand_like(top[..., :64, :])
    bottom = frames.clone()
    bottom[..., 64:, :] = 0.0  # a black mouth region
    with torch.no_grad():
        reference = critic.embed_video(frames)
        assert torch.equal(critic.embed_video(top), reference)
        assert (critic.embed_video(bottom) - reference).abs().max() > 1e-5  # (untrained: small but real)
        assert critic.embed_video(torch.rand(2, 5, 3, 96, 96)).shape == (2, 16)  # resized to mouth_size


def test_config_round_trips_and_refuses_unknown_keys():
    assert SyncCriticConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.to_dict()["mouth_size"] == [32, 64]  # JSON-ready: compares equal after a save
    with pytest.raises(ValueError, match="unknown"):
        SyncCriticConfig.from_dict({**TINY.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="5 widths"):
        SyncCriticConfig(video_channels=(8, 8))


# --- losses on constructed embeddings ---


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def reference_loss(anchors: torch.Tensor, candidates: torch.Tensor, K: int, temperature: float) -> tuple[float, float]:
    """Loops: every anchor n in K..N-K-1 of every row against candidates n-K..n+K."""
    losses, hits = [], []
    for b in range(anchors.shape[0]):
        for n in range(K, anchors.shape[1] - K):
            logits = torch.stack([anchors[b, n] @ candidates[b, n + o] for o in range(-K, K + 1)]) / temperature
            losses.append(-torch.log_softmax(logits, 0)[K])
            hits.append(float(logits.argmax() == K))
    return float(torch.stack(losses).mean()), float(np.mean(hits))


def test_offset_similarities_layout():
    video = unit(torch.randn(1, 9, 4))
    audio = unit(torch.randn(1, 9, 4))
    sims = offset_similarities(audio, video, 2)
    assert sims.shape == (1, 5, 5)
    torch.testing.assert_close(sims[0, 1, 0], audio[0, 3] @ video[0, 1])  # anchor 3, offset -2
    torch.testing.assert_close(sims[0, 1, 2], audio[0, 3] @ video[0, 3])  # the true pair
    torch.testing.assert_close(sims[0, 1, 4], audio[0, 3] @ video[0, 5])


def test_multiway_loss_is_below_chance_when_the_true_candidate_is_closest():
    torch.manual_seed(0)
    K, temperature = 7, 0.07
    video = unit(torch.randn(4, 2 * K + 6, 32))
    audio = unit(video + 0.05 * torch.randn_like(video))
    sims = offset_similarities(audio, video, K)
    assert (sims.argmax(dim=-1) == K).all()  # the premise: the true candidate is the most similar
    loss, metrics = multiway_matching_loss(video, audio, K, temperature)
    assert loss.item() < 0.1 * multiway_chance_loss(K)
    assert metrics["accuracy"].item() == 1.0 and metrics["anchors"].item() == 4 * 6
    random_loss, _ = multiway_matching_loss(unit(torch.randn(64, 2 * K + 1, 32)), unit(torch.randn(64, 2 * K + 1, 32)), K, 1.0)
    assert abs(random_loss.item() - math.log(2 * K + 1)) < 0.1  # unrelated embeddings: chance
    assert multiway_chance_loss(7) == pytest.approx(math.log(15))


def test_both_directions_match_a_loop_reference():
    torch.manual_seed(1)
    K, temperature = 3, 0.2
    video = unit(torch.randn(2, 11, 8))
    audio = unit(0.6 * video.roll(1, dims=1) + torch.randn_like(video))  # asymmetric on purpose
    loss, metrics = multiway_matching_loss(video, audio, K, temperature)
    av, acc_av = reference_loss(audio, video, K, temperature)
    va, acc_va = reference_loss(video, audio, K, temperature)
    assert metrics["loss_av"].item() == pytest.approx(av, rel=1e-5)
    assert metrics["loss_va"].item() == pytest.approx(va, rel=1e-5)
    assert av != pytest.approx(va, rel=1e-3)  # the reverse direction is a different loss
    assert loss.item() == pytest.approx((av + va) / 2, rel=1e-5)
    assert metrics["acc_av"].item() == pytest.approx(acc_av) and metrics["acc_va"].item() == pytest.approx(acc_va)


def test_padded_windows_are_never_anchors_or_candidates():
    torch.manual_seed(2)
    K = 2
    video = unit(torch.randn(2, 10, 8))
    audio = unit(torch.randn(2, 10, 8))
    valid = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    loss, metrics = multiway_matching_loss(video, audio, K, 0.1, valid)
    assert metrics["anchors"].item() == 6 + 3
    changed_video, changed_audio = video.clone(), audio.clone()
    changed_video[1, 7:] = unit(torch.randn(3, 8))
    changed_audio[1, 7:] = unit(torch.randn(3, 8))
    again, _ = multiway_matching_loss(changed_video, changed_audio, K, 0.1, valid)
    assert again.item() == pytest.approx(loss.item())
    with pytest.raises(ValueError, match="need at least 5"):
        multiway_matching_loss(video[:, :4], audio[:, :4], K, 0.1)


def test_bce_loss_is_wav2lip_style():
    torch.manual_seed(3)
    K = 4
    video = unit(torch.randn(3, 2 * K + 3, 64))
    perfect, metrics = sync_bce_loss(video, video.clone(), K, generator=torch.Generator().manual_seed(0))
    # in-sync pairs have cos 1 → p = 1 - eps; off-sync pairs of random 64-d vectors are near 0
    assert metrics["bce_pos"].item() < 1e-5
    assert metrics["cos_pos"].item() == pytest.approx(1.0)
    assert metrics["accuracy"].item() == 1.0
    assert metrics["bce_neg"].item() < 0.3
    assert perfect.item() == pytest.approx((metrics["bce_pos"].item() + metrics["bce_neg"].item()) / 2)
    swapped = unit(torch.randn_like(video))  # no relation: positives score like negatives
    worse, _ = sync_bce_loss(video, swapped, K, generator=torch.Generator().manual_seed(0))
    assert worse.item() > perfect.item() + 1.0
    # the negatives are drawn from ±1..±K, never the true pair, and repeat with the same seed
    a, _ = sync_bce_loss(video, swapped, K, generator=torch.Generator().manual_seed(5))
    b, _ = sync_bce_loss(video, swapped, K, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()


def test_bce_matches_a_hand_computation():
    video = unit(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]))
    audio = unit(torch.tensor([[[1.0, 1.0], [1.0, 0.2], [0.0, 1.0]]]))
    # K = 1: one anchor (window 1); negative column 0 or 2 → video 0 or video 2
    generator = torch.Generator().manual_seed(0)
    draw = int(torch.randint(0, 2, (1,), generator=torch.Generator().manual_seed(0)))
    negative = video[0, 0] if draw == 0 else video[0, 2]
    p_pos = float(audio[0, 1] @ video[0, 1])
    p_neg = float(audio[0, 1] @ negative)
    expected = (-math.log(p_pos) - math.log(1 - p_neg)) / 2
    loss, _ = sync_bce_loss(video, audio, 1, generator=generator)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# --- the task through the real loop and the CLI ---


def run_syncnet(dataset, out, steps, *extra):
    return CliRunner().invoke(app, ["syncnet", "--shards", str(dataset), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                                    "--lr", "1e-3", "--offsets", "2", "--ckpt-every", "2", "--log-every", "1", "--quiet", *TINY_FLAGS, *extra])


def test_cli_trains_and_load_critic_round_trips(tmp_path):
    write_dataset(tmp_path / "d", [[30, 24]])
    (tmp_path / "d" / "val-000000.tar").write_bytes((tmp_path / "d" / "train-000000.tar").read_bytes())
    result = run_syncnet(tmp_path / "d", tmp_path / "run", 3)
    assert result.exit_code == 0, result.output
    config = read_json(tmp_path / "run" / "config.json")
    from cli.train import DEFAULT_SYNC_WINDOW

    assert config["task"] == "sync_critic" and config["train"]["window"] == max(DEFAULT_SYNC_WINDOW, 5 + 2 * 2)
    assert config["task_config"]["model"] == TINY.to_dict()
    assert config["task_config"]["loss"] == {"offsets": 2, "loss": "multiway", "temperature": 0.07}
    records = read_json_lines(tmp_path / "run" / "metrics.jsonl")
    validation = next(r for r in records if r["split"] == "val")
    assert validation["chance_accuracy"] == pytest.approx(0.2) and validation["chance_loss"] == pytest.approx(math.log(5))
    assert {"loss", "accuracy", "acc_av", "acc_va", "anchors"} <= set(validation)
    assert all(np.isfinite(v) for r in records for v in r.values() if isinstance(v, float))

    critic = load_critic(tmp_path / "run")
    assert not critic.training and critic.embed_dim == 16 and critic.config == TINY
    newest = sorted((tmp_path / "run").glob("ckpt-*.safetensors"))[-1]
    same = load_critic(newest)
    weights = load_weights(tmp_path / "run")
    for name, tensor in critic.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=0, rtol=0)
    frames = torch.rand(2, 5, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(critic.embed_video(frames), same.embed_video(frames))
    samples = write_dataset(tmp_path / "e", [[20]])
    clip = next(iter(samples.values()))
    video, audio = embed_clip(clip.frames, clip.mel, critic)
    assert video.shape == audio.shape == (16, 16)
    score = score_clip(clip.frames, clip.mel, critic, vshift=3)
    assert score.dists.shape == (16, 7) and -3 <= score.offset <= 3
    # what `cals-sync score --model RUN` would call: (key, frames, audio) → ClipScore
    scored, short = score_samples([("a", clip.frames, clip.audio), ("b", clip.frames[:3], clip.audio[:1920])], critic, vshift=3)
    assert scored.error is None and scored.score.offset == score.offset
    np.testing.assert_allclose(scored.score.dists, score.dists, rtol=1e-5, atol=1e-6)  # mel from the audio = the shards' mel
    assert short.score is None and "too short" in short.error and short.num_frames == 3


def read_json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_load_critic_refuses_other_runs(tmp_path):
    from cals.train.checkpoint import save_checkpoint, write_json

    write_json(tmp_path / "config.json", {"task": "a2l", "task_config": {}})
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {}, keep=1)
    with pytest.raises(ValueError, match="not a 'sync_critic' run"):
        load_critic(tmp_path)
    write_json(tmp_path / "config.json", {"task": "sync_critic", "task_config": {"model": TINY.to_dict()}})
    with pytest.raises(ValueError, match="does not match the sync critic config"):
        load_critic(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_critic(tmp_path / "nothing")


def test_bce_resume_continues_exactly_and_short_windows_are_refused(tmp_path):
    write_dataset(tmp_path / "d", [[30, 24]])
    straight = run_syncnet(tmp_path / "d", tmp_path / "a", 4, "--loss", "bce", "--window", "14")
    assert straight.exit_code == 0, straight.output
    half = run_syncnet(tmp_path / "d", tmp_path / "b", 2, "--loss", "bce", "--window", "14")
    assert half.exit_code == 0, half.output
    rest = run_syncnet(tmp_path / "d", tmp_path / "b", 4, "--loss", "bce", "--window", "14", "--resume")
    assert rest.exit_code == 0, rest.output
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    records = read_json_lines(tmp_path / "a" / "metrics.jsonl")
    assert {"bce_pos", "bce_neg", "multiway_loss", "accuracy"} <= set(records[-1])
    short = run_syncnet(tmp_path / "d", tmp_path / "c", 2, "--window", "8")
    assert short.exit_code == 2 and "too short" in short.output
    bad = run_syncnet(tmp_path / "d", tmp_path / "c", 2, "--loss", "hinge")
    assert bad.exit_code == 2 and "--loss" in bad.output


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    """DDP keeps parameters in step; the task also averages BatchNorm statistics over the ranks,
    so the loop's end-of-run weight check (buffers included) passes."""
    write_dataset(tmp_path / "d", [[30, 24, 26], [28, 20, 22], [25, 27, 29], [21, 23, 31]])
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
               "-m", "cli.train", "syncnet", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--steps", "4",
               "--batch-size", "2", "--offsets", "2", "--ckpt-every", "2", "--quiet", "--device", "cpu", *TINY_FLAGS]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ddp = next(r for r in records if r["split"] == "ddp")
    assert ddp["weight_checksum_rank0"] == ddp["weight_checksum_rank1"]
