"""THE LEARNING CHECK of CALS, and the whole ``cals-train`` recipe, on a real fixture clip.

One talking-head clip (talk_aoc2_retalking, 125 frames) goes through the real pipeline:
``run_prep`` (MediaPipe crops) → lip units from a randomly initialised SyncNet v2
(``pipeline.units.add_lip_units``: random features of the mouth frames; they only seed the A2L
pre-training, since CALS trains A2L end to end on the reconstruction) → the clip is cut in time:
frames ``[0, 0.8 T)`` become the train split, the last 20 % the val split → a tiny A2L run →
CALS (small widths) on the train frames, with today's training defaults (reference from outside
the window, A2L over the whole utterance).

The held-out frames are then generated as the paper does at inference (the held-out segment is a
test video, its first frame the reference, every frame's upper part the pose prior), driven by:

- the clip's **true** audio;
- the clip's audio **shifted** circularly by :data:`~cals.constants.AUDIO_SHIFT_FRAMES` frames
  (:func:`cals.eval.shifted_mel`, as ``cals-eval``): same frames, same reference.

**Audio dependence** (:func:`audio_dependence_failures`): on the rows the pose prior hides,
L1 with the true audio must be clearly below L1 with the shifted audio (at most
``AUDIO_L1_RATIO`` of it), and lower-half PSNR must beat the audio-blind *paste* baseline (the
target's upper part + the reference's lower part). The same checks run on the trained model made
deliberately audio-blind (its lip units zeroed: :class:`cals.eval.ZeroUnits`) and must reject it.

Threads: one torch thread. On the 2 shared cores of CI, 2 threads made a step 5-30x slower
(OpenMP threads spin-waiting on each other).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURE_VIDEO, needs_fixtures

pytestmark = [needs_fixtures, pytest.mark.slow]

CLIP = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"
TRAIN_SHARE = 0.8
STEPS = 300
WINDOW = 10
#: "Clearly below": held-out lower-half L1 with the true audio at most this share of the L1 with
#: the shifted audio.
AUDIO_L1_RATIO = 0.95


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The clip prepared with the real pipeline (no lip units yet)."""
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep

    root = tmp_path_factory.mktemp("corpus")
    (root / "speaker").mkdir()
    (root / "speaker" / CLIP.name).symlink_to(CLIP)
    out = tmp_path_factory.mktemp("shards") / "one"
    summary = run_prep(prepare_folder(root, val=0, test=0), out, PrepParams(detector="mediapipe"), workers=1, show_progress=False)
    assert summary.rows[0]["status"] == "ok", summary.rows
    return out


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """The bounded CPU run: ``(sample, cut, model, last train metrics)``."""
    from cals.data import iter_samples
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig, load_cals_model
    from cals.models.discriminator import DiscriminatorConfig
    from cals.models.l2f import LipToFaceConfig
    from cals.models.syncnet_v2 import SyncNetV2
    from cals.train.a2l import A2LTask
    from cals.train.cals import CalsLossConfig, CalsTask
    from cals.train.config import TrainConfig
    from cals.train.loop import run
    from pipeline.units import add_lip_units
    from tests.fixture_builders import split_in_time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp_path = tmp_path_factory.mktemp("learning")
    dataset = tmp_path / "one"
    shutil.copytree(prepared, dataset)
    torch.manual_seed(0)
    torch.save(SyncNetV2().state_dict(), tmp_path / "syncnet_random.model")
    add_lip_units(dataset, tmp_path / "syncnet_random.model", workers=1, show_progress=False, fail_fast=True)
    sample = next(iter_samples(dataset))
    cut = int(TRAIN_SHARE * sample.num_frames)
    split_in_time([sample], tmp_path / "split", TRAIN_SHARE)
    shards = str(tmp_path / "split")

    a2l = A2LConfig(unit_dim=sample.lip.shape[1], layers=1, d_model=32, ffn=64, heads=2, dropout=0.0)
    run(A2LTask(a2l, lip_kind=sample.meta["lip_units"]["kind"]),
        TrainConfig(shards=shards, out=str(tmp_path / "a2l"), steps=10, batch_size=2, lr=1e-3, window=25, ckpt_every=10), show_progress=False)
    config = CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=a2l.unit_dim, widths=(8, 16, 16, 32, 32, 32), lip_channels=16), window=WINDOW)
    task = CalsTask(config, CalsLossConfig(), DiscriminatorConfig((8, 16, 16, 32)), a2l_init=str(tmp_path / "a2l"), preview_every=STEPS)
    metrics = run(task, TrainConfig(shards=shards, out=str(tmp_path / "cals"), steps=STEPS, batch_size=1, lr=2e-3, window=WINDOW,
                                    ckpt_every=STEPS, log_every=50, val_batches=1), show_progress=False)
    assert (tmp_path / "cals" / "previews" / f"preview-{STEPS:08d}.png").is_file()
    torch.set_num_threads(threads)
    return sample, cut, load_cals_model(tmp_path / "cals"), metrics


def held_out_scores(model, sample, cut: int) -> dict[str, dict[str, float]]:
    """Whole-frame and lower-half numbers of the held-out frames after the reference, for the
    true and the shifted audio (same frames, same reference) and the copy and paste baselines."""
    from cals.eval import shifted_mel
    from cals.inference import generate_faces
    from cals.metrics import lower_l1_frames, lower_psnr_frames, mask_top_row, psnr_frames

    truth = sample.frames[cut:]
    reference = truth[0]
    outputs = {
        "true": generate_faces(model, truth, sample.mel[4 * cut :])[1:],
        "shifted": generate_faces(model, truth, shifted_mel(sample.mel)[4 * cut :])[1:],
    }
    truth = truth[1:]
    outputs["copy"] = np.broadcast_to(reference, truth.shape).copy()
    outputs["paste"] = outputs["copy"].copy()
    outputs["paste"][:, : mask_top_row(truth.shape[1])] = truth[:, : mask_top_row(truth.shape[1])]  # upper part given, mouth copied
    return {name: {"psnr": float(psnr_frames(out, truth).mean()), "l1": float(np.abs(out.astype(float) - truth).mean() / 255),
                   "lower_psnr": float(lower_psnr_frames(out, truth).mean()), "lower_l1": float(lower_l1_frames(out, truth).mean())}
            for name, out in outputs.items()}


def audio_dependence_failures(scores: dict[str, dict[str, float]]) -> list[str]:
    """What the held-out numbers fail of the audio-dependence checks (module docstring)."""
    failures = []
    if not scores["true"]["lower_l1"] <= AUDIO_L1_RATIO * scores["shifted"]["lower_l1"]:
        failures.append(f"lower-half L1 true {scores['true']['lower_l1']:.4f} is not <= {AUDIO_L1_RATIO} x shifted {scores['shifted']['lower_l1']:.4f}")
    if not scores["true"]["lower_psnr"] > scores["paste"]["lower_psnr"]:
        failures.append(f"lower-half PSNR {scores['true']['lower_psnr']:.2f} dB does not beat paste {scores['paste']['lower_psnr']:.2f} dB")
    return failures


def test_cals_beats_copying_the_reference_on_held_out_frames(trained):
    sample, cut, model, metrics = trained
    scores = held_out_scores(model, sample, cut)
    report = f"held-out frames {sample.num_frames - cut - 1}: {scores}; last train metrics {metrics}"
    print(report)
    assert scores["true"]["psnr"] > scores["copy"]["psnr"] + 1.0, report
    assert scores["true"]["l1"] < scores["copy"]["l1"], report
    # The train frames were fitted: the smoothed training L1 (recon_ema; one batch of 1 is too
    # noisy to test) below copying the reference (measured 0.052 vs 0.071 with references from
    # outside the window; the old in-window references made fitting easier: recon < 0.05).
    assert metrics["recon_ema"] < scores["copy"]["l1"], report


@pytest.mark.xfail(strict=True, reason="measured 2026-12-01 on 2 shared CPU cores (reference outside the window, A2L over the "
                   "utterance): after 300 steps the generator ignores its lip units: held-out lower-half L1 true 0.0642 = shifted "
                   "0.0642, lower-half PSNR 20.58 dB < paste 20.97 dB; this bounded CPU run does not learn audio dependence. strict: "
                   "the day it does, the XPASS fails and this marker must go")
def test_the_mouth_follows_the_audio_on_held_out_frames(trained):
    sample, cut, model, _ = trained
    scores = held_out_scores(model, sample, cut)
    failures = audio_dependence_failures(scores)
    assert not failures, f"{failures}; {scores}"


def test_the_same_checks_reject_an_audio_blind_model(trained):
    from cals.eval import ZeroUnits

    sample, cut, model, _ = trained
    scores = held_out_scores(ZeroUnits(model), sample, cut)
    assert scores["true"] == scores["shifted"], scores  # it does not hear the audio
    failures = audio_dependence_failures(scores)
    assert any("lower-half L1" in failure for failure in failures), (failures, scores)


def test_the_whole_recipe_runs_and_resumes(prepared, tmp_path):
    """``cals-train --shards D --out R`` with no command: critic → lip units from it → A2L →
    CALS; the same command again skips every stage."""
    from typer.testing import CliRunner

    from cals.models.cals_model import load_cals_model
    from cals.train.checkpoint import read_json
    from cli.train import app

    dataset = tmp_path / "one"
    shutil.copytree(prepared, dataset)
    command = ["--shards", str(dataset), "--out", str(tmp_path / "runs"), "--steps-per-stage", "2", "--batch-size", "2",
               "--tiny", "--quiet", "--workers", "1"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    assert "sync trained" in first.output and "units added" in first.output and "cals trained" in first.output, first.output
    for stage in ("sync", "a2l", "cals"):
        assert read_json(tmp_path / "runs" / stage / "latest.json")["step"] == 2
    cals = read_json(tmp_path / "runs" / "cals" / "config.json")["task_config"]
    assert cals["critic"] == str(tmp_path / "runs" / "sync") and cals["a2l_init"] == str(tmp_path / "runs" / "a2l")
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "sync skipped" in again.output and "units present" in again.output and "a2l skipped" in again.output \
        and "cals skipped" in again.output, again.output
    model = load_cals_model(tmp_path / "runs" / "cals")
    assert model.generate(torch.zeros(1, 40, 80), torch.rand(3, 128, 128), torch.rand(10, 3, 128, 128)).shape == (10, 3, 128, 128)
