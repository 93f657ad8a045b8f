"""Lip-to-Face, the discriminator, the CALS losses and λ3 schedule, the inference contract
(cals.models.cals_model) and the CALS task through the real loop and CLI (small widths)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cals.losses import discriminator_loss, generator_gan_loss, reconstruction_loss, sync_av_loss, sync_vv_loss
from cals.models.a2l import A2LConfig
from cals.models.cals_model import CalsConfig, CalsModel, load_cals_model, save_random_cals_model
from cals.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from cals.models.l2f import LipToFace, LipToFaceConfig, pose_prior
from cals.models.tiny import TINY_CRITIC
from cals.train.cals import CalsLossConfig, SyncSchedule
from cals.train.checkpoint import load_weights, read_json
from cli.train import app
from tests.cals.test_stream import write_dataset

UNIT = 6
TINY_L2F = LipToFaceConfig(unit_dim=UNIT, widths=(8, 16, 16, 32, 32, 32), lip_channels=16)
TINY_A2L = A2LConfig(unit_dim=UNIT, layers=1, d_model=32, ffn=64, heads=2, dropout=0.0)
TINY_CALS_FLAGS = ["--widths", "8,16,16,32,32,32", "--lip-channels", "16", "--disc-widths", "8,16,16,32"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores, 2 threads spin-wait on each other (5-30x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(window: int = 5) -> CalsConfig:
    return CalsConfig(a2l=TINY_A2L, l2f=TINY_L2F, window=window)


def tiny_critic_run(folder):
    """A random sync critic saved as cals-train saves one (config.json + checkpoint)."""
    from cals.models.sync_critic import SyncCritic
    from cals.train.checkpoint import save_checkpoint

    config = TINY_CRITIC
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"task": "sync_critic", "task_config": {"model": config.to_dict()}}))
    torch.manual_seed(3)
    save_checkpoint(folder, 1, SyncCritic(config).state_dict(), {}, keep=1)
    return folder


# --- models ---


def test_generator_shapes_range_and_frames_are_independent():
    torch.manual_seed(0)
    generator = LipToFace(TINY_L2F).eval()
    units = torch.randn(2, 3, UNIT)
    target = torch.rand(2, 3, 3, 128, 128)
    reference = torch.rand(2, 3, 128, 128)
    out = generator(units, reference, pose_prior(target))
    assert out.shape == (2, 3, 3, 128, 128)
    assert out.min() >= 0 and out.max() <= 1
    # time is folded into the batch with per-frame normalisation: frame 1 alone gives the same
    alone = generator(units[:, 1:2], reference, pose_prior(target[:, 1:2]))
    torch.testing.assert_close(alone[:, 0], out[:, 1], atol=1e-5, rtol=1e-5)
    # a per-frame reference is accepted too, and the lip units steer the output
    per_frame = generator(units, reference[:, None].expand(-1, 3, -1, -1, -1), pose_prior(target))
    torch.testing.assert_close(per_frame, out)
    assert (generator(units + 1.0, reference, pose_prior(target)) - out).abs().max() > 1e-4


def test_generator_rejects_wrong_shapes():
    generator = LipToFace(TINY_L2F)
    with pytest.raises(ValueError, match="units"):
        generator(torch.randn(1, 2, UNIT + 1), torch.rand(1, 3, 128, 128), torch.rand(1, 2, 3, 128, 128))
    with pytest.raises(ValueError, match="pose_prior"):
        generator(torch.randn(1, 2, UNIT), torch.rand(1, 3, 128, 128), torch.rand(1, 2, 3, 64, 64))
    with pytest.raises(ValueError, match="not divisible"):
        LipToFaceConfig(widths=(8, 8, 8, 8, 8, 8, 8, 8, 8))


def test_pose_prior_masks_exactly_the_lower_half():
    frames = torch.rand(2, 4, 3, 128, 128) + 0.1
    prior = pose_prior(frames)
    assert (prior[..., 64:, :] == 0).all()
    torch.testing.assert_close(prior[..., :64, :], frames[..., :64, :], atol=0, rtol=0)
    assert (frames[..., 64:, :] > 0).all(), "the input is not modified"


def test_discriminator_scores_patches():
    disc = PatchDiscriminator(DiscriminatorConfig((8, 16, 16, 32)))
    assert disc(torch.rand(3, 3, 128, 128)).shape == (3, 1, 14, 14)
    with pytest.raises(ValueError):
        disc(torch.rand(3, 128, 128))


# --- losses ---


def test_gan_losses_are_the_bce_forms():
    logits = torch.tensor([[0.0, 2.0]])
    assert generator_gan_loss(logits).item() == pytest.approx(float(-torch.log(torch.sigmoid(logits)).mean()))
    loss, metrics = discriminator_loss(torch.zeros(1, 1), torch.zeros(1, 1))
    assert loss.item() == pytest.approx(2 * np.log(2))
    assert metrics["d_real"].item() == pytest.approx(0.5)
    real = torch.tensor([[True, False]])
    generated, target = torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 4, 4)
    target[:, 1] = 100.0  # a padded frame: must not count
    assert reconstruction_loss(generated, target, real).item() == pytest.approx(1.0)


def test_sync_losses_prefer_the_matching_segments():
    torch.manual_seed(0)
    real = torch.nn.functional.normalize(torch.randn(2, 4, 16), dim=-1)
    shuffled = real[:, [1, 2, 3, 0]]
    assert sync_vv_loss(real, real).item() < sync_vv_loss(shuffled, real).item()
    assert sync_vv_loss(real, real, temperature=0.01).item() < 1e-3
    assert sync_av_loss(real, real).item() == pytest.approx(0.0, abs=1e-5)  # cosine 1: -log 1
    assert sync_av_loss(real, -real).item() == pytest.approx(-np.log(1e-7), rel=1e-4)  # clamped


# --- the λ3 schedule ---


def test_sync_schedule_with_a_fixed_step():
    schedule = SyncSchedule(sync_after=3)
    assert [schedule.active(step) for step in range(5)] == [False, False, False, True, True]
    assert not SyncSchedule(sync_after=0, enabled=False).active(10)


def test_sync_schedule_switches_on_when_recon_plateaus():
    schedule = SyncSchedule.from_config(CalsLossConfig(ema_decay=0.5, plateau_steps=10, plateau_tol=0.05), enabled=True)
    step = 0
    for step in range(100):  # a loss that halves every 10 steps: never converged
        assert not schedule.active(step)
        schedule.observe(step, 0.5 ** (step / 10))
    for step in range(100, 200):  # flat from step 100
        schedule.observe(step, 0.5**10)
        if schedule.switched_at is not None:
            break
    # comparisons after steps 110 (EMA still falling from the last halving) and 120 (flat): on at 120
    assert schedule.switched_at == 120, schedule
    assert schedule.active(120) and not schedule.active(119)
    restored = SyncSchedule.from_config(CalsLossConfig(ema_decay=0.5, plateau_steps=10, plateau_tol=0.05), enabled=True)
    restored.load_state(schedule.state())
    assert restored == schedule
    schedule.observe(200, 5.0)  # latched: a later rise does not switch it off
    assert schedule.active(300)


def test_sync_schedule_waits_for_two_periods_and_never_without_critic():
    schedule = SyncSchedule(plateau_steps=10, plateau_tol=0.5)
    for step in range(19):
        schedule.observe(step, 1.0)
    assert schedule.switched_at is None  # the first comparison needs a value 10 steps back
    schedule.observe(19, 1.0)
    assert schedule.switched_at == 20
    off = SyncSchedule(plateau_steps=10, enabled=False)
    for step in range(50):
        off.observe(step, 1.0)
    assert not off.active(49)


# --- the contract ---


def test_random_model_round_trip_and_generate(tmp_path):
    config = tiny_config(window=5)
    run = save_random_cals_model(tmp_path / "run", config)
    saved = read_json(run / "config.json")
    assert saved["task"] == "cals" and saved["task_config"]["model"] == config.to_dict()
    assert read_json(run / "latest.json")["step"] == 0
    model = load_cals_model(run)
    assert isinstance(model, CalsModel) and model.config == config and not model.training
    assert model.a2l.config == TINY_A2L and model.generator.config == TINY_L2F
    weights = load_weights(run)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], atol=0, rtol=0)
    by_file = load_cals_model(next(run.glob("*.safetensors")))
    assert by_file.config == config

    T = 12
    mel, reference, targets = torch.randn(1, 4 * T, 80), torch.rand(3, 128, 128), torch.rand(T, 3, 128, 128)
    out = model.generate(mel, reference, targets)
    assert out.shape == (T, 3, 128, 128) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    # windows of 5, 5, 2 frames; A2L once over the whole audio
    with torch.no_grad():
        units = model.a2l(mel, torch.ones(1, T, dtype=torch.bool))
        second = model.generator(units[:, 5:10], reference[None], pose_prior(targets[5:10])[None])[0]
    torch.testing.assert_close(out[5:10], second, atol=1e-5, rtol=1e-5)
    # only the upper half of the targets matters
    changed = targets.clone()
    changed[:, :, 64:] = torch.rand_like(changed[:, :, 64:])
    torch.testing.assert_close(model.generate(mel, reference, changed), out)
    with pytest.raises(ValueError, match="mel"):
        model.generate(torch.randn(1, 4 * T + 4, 80), reference, targets)


def test_loading_refuses_what_is_not_a_cals_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_cals_model(tmp_path / "missing")
    run = save_random_cals_model(tmp_path / "run", tiny_config())
    config = read_json(run / "config.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "task": "a2l"}))
    with pytest.raises(ValueError, match="not a 'cals' run"):
        load_cals_model(tmp_path / "other")
    bigger = {**config, "task_config": {"model": {**config["task_config"]["model"], "window": 7,
                                                   "l2f": {**config["task_config"]["model"]["l2f"], "lip_channels": 32}}}}
    (run / "config.json").write_text(json.dumps(bigger))
    with pytest.raises(ValueError, match="wrong shape"):
        load_cals_model(run)
    with pytest.raises(ValueError, match="unit"):
        CalsConfig(a2l=TINY_A2L, l2f=LipToFaceConfig(unit_dim=UNIT + 1, widths=TINY_L2F.widths))


# --- the task through the loop and the CLI ---


def run_a2l(dataset, out):
    return CliRunner().invoke(app, ["a2l", "--shards", str(dataset), "--out", str(out), "--steps", "2", "--batch-size", "2",
                                    "--window", "10", "--quiet", "--layers", "1", "--d-model", "32", "--ffn", "64", "--heads", "2",
                                    "--dropout", "0"])


def run_cals(dataset, out, steps, *extra):
    return CliRunner().invoke(app, ["cals", "--shards", str(dataset), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                                    "--window", "6", "--ckpt-every", "2", "--log-every", "1", "--quiet", "--lr", "1e-3",
                                    *TINY_CALS_FLAGS, *extra])


def test_cals_trains_resumes_exactly_and_loads_for_inference(tmp_path):
    write_dataset(tmp_path / "d", [[14, 12]], lip_dim=UNIT)
    (tmp_path / "d" / "val-000000.tar").write_bytes((tmp_path / "d" / "train-000000.tar").read_bytes())
    assert run_a2l(tmp_path / "d", tmp_path / "a2l").exit_code == 0
    critic = tiny_critic_run(tmp_path / "critic")
    flags = ["--a2l", str(tmp_path / "a2l"), "--critic", str(critic), "--sync-after", "1", "--sync-segments", "2",
             "--preview-every", "1"]  # every step: a resumed run builds its preview loader later than a straight one
    straight = run_cals(tmp_path / "d", tmp_path / "a", 4, *flags)
    assert straight.exit_code == 0, straight.output
    half = run_cals(tmp_path / "d", tmp_path / "b", 2, *flags)
    assert half.exit_code == 0, half.output
    rest = run_cals(tmp_path / "d", tmp_path / "b", 4, *flags, "--resume")
    assert rest.exit_code == 0, rest.output
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)

    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["lambda_sync"] for r in train] == [0.0, 0.03, 0.03, 0.03]  # --sync-after 1
    assert "sync_av" in train[1] and "sync_vv" in train[1] and "sync_av" not in train[0]
    val = [r for r in records if r["split"] == "val"][-1]
    for name in ("l1", "psnr", "baseline_l1", "baseline_psnr", "paste_l1", "paste_psnr", "sync_av", "sync_vv"):
        assert np.isfinite(val[name]), name
    previews = sorted((tmp_path / "a" / "previews").glob("*.png"))
    assert [p.name for p in previews] == [f"preview-0000000{step}.png" for step in (1, 2, 3, 4)]
    from PIL import Image

    assert Image.open(previews[0]).size == (6 * 128, 3 * 128)  # 6 frames of the window; 3 rows
    assert any(p.name.startswith("events") for p in (tmp_path / "a" / "tb").iterdir())

    # the A2L weights came from the A2L run (step 0 of a): a frozen copy stays equal to it
    frozen = run_cals(tmp_path / "d", tmp_path / "f", 2, *flags, "--freeze-a2l")
    assert frozen.exit_code == 0, frozen.output
    a2l, cals = load_weights(tmp_path / "a2l"), load_weights(tmp_path / "f")
    for name, tensor in a2l.items():
        torch.testing.assert_close(cals[f"a2l.{name}"], tensor, atol=0, rtol=0)

    model = load_cals_model(tmp_path / "a")
    assert model.config.window == 6 and model.config.a2l.d_model == 32
    out = model.generate(torch.randn(1, 40, 80), torch.rand(3, 128, 128), torch.rand(10, 3, 128, 128))
    assert out.shape == (10, 3, 128, 128)


def test_without_a_critic_the_sync_loss_is_off_and_said_so(tmp_path):
    write_dataset(tmp_path / "d", [[12]], lip_dim=UNIT)
    result = run_cals(tmp_path / "d", tmp_path / "r", 2, "--sync-after", "0", "--preview-every", "0")
    assert result.exit_code == 0, result.output
    config = read_json(tmp_path / "r" / "config.json")["task_config"]
    assert config["loss"]["lambda_sync"] == 0.0 and config["critic"] is None
    assert any("no --critic" in note for note in config["warnings"])
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lambda_sync"] == 0.0 and "sync_av" not in r for r in records if r["split"] == "train")


def test_cli_errors_are_one_line(tmp_path):
    write_dataset(tmp_path / "d", [[12]], lip_dim=UNIT)
    result = run_cals(tmp_path / "d", tmp_path / "r", 1, "--critic", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "--critic" in result.output
    result = run_cals(tmp_path / "d", tmp_path / "r", 1, "--a2l", str(tmp_path / "d"))
    assert result.exit_code == 2 and "config.json" in result.output
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--shards and --out" in result.output


@pytest.mark.slow
def test_two_gloo_ranks_train_cals_with_the_critic(tmp_path):
    """DDP (2 CPU processes, gloo, loopback): generator, discriminator and the frozen critic's
    sync loss; the ranks end with identical weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_dataset(tmp_path / "d", [[14, 12], [13, 15]], lip_dim=UNIT)
    critic = tiny_critic_run(tmp_path / "critic")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
               "-m", "cli.train", "cals", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--steps", "3",
               "--batch-size", "1", "--window", "6", "--ckpt-every", "3", "--quiet", "--device", "cpu", "--critic", str(critic),
               "--sync-after", "1", "--sync-segments", "2", "--preview-every", "3", *TINY_CALS_FLAGS]
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ddp = next(r for r in records if r["split"] == "ddp")
    assert ddp["weight_checksum_rank0"] == ddp["weight_checksum_rank1"]
    assert any("sync_av" in r for r in records if r["split"] == "train")
    assert (tmp_path / "run" / "previews" / "preview-00000003.png").is_file()
