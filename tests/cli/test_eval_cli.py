"""cals-eval through its command line on a tiny real shard dataset (one fixture clip prepared by
run_prep, 2 s, split "test") with a random-weight CALS model, a random-weight SyncNet v2 and a
small random sync critic: the numbers are meaningless, the report's structure, the ground-truth
rows (SSIM 1, LMD 0, aperture r 1) and the audio rows (stand-in models that do and do not follow
their audio) are what is checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.eval import app
from tests.conftest import FIXTURE_VIDEO, needs_fixtures
from cals.models.tiny import tiny_cals_config

runner = CliRunner()
CLIP = FIXTURE_VIDEO / "talk_aoc2_retalking.mp4"  # 590x590, 25 fps, a woman speaking to camera
CLIP_SECONDS = 2.0


def one_line_error(result) -> str:
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from cals.models.cals_model import save_random_cals_model
    from cals.models.sync_critic import SyncCritic, SyncCriticConfig
    from cals.models.syncnet_v2 import SyncNetV2
    from cals.train.checkpoint import save_checkpoint, write_json

    root = tmp_path_factory.mktemp("models")
    run = save_random_cals_model(root / "cals-run", tiny_cals_config(8, window=25))
    torch.manual_seed(0)
    syncnet = root / "random_syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), syncnet)
    critic_run = root / "critic-run"
    critic_run.mkdir()
    config = SyncCriticConfig(embed_dim=16, mouth_size=(32, 64), video_channels=(8, 8, 8, 8, 16), audio_channels=(8, 8, 8, 8, 16))
    write_json(critic_run / "config.json", {"task": "sync_critic", "task_config": {"model": config.to_dict()}})
    save_checkpoint(critic_run, 1, SyncCritic(config).state_dict(), {}, keep=1)
    return {"cals": run, "syncnet": syncnet, "critic": critic_run}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from pipeline.prepare_clip import PrepParams
    from pipeline.manifest import ClipSource
    from pipeline.run import run_prep

    out = tmp_path_factory.mktemp("shards") / "tiny"
    source = ClipSource(key="aoc2", path=str(CLIP), dataset="tiny", split="test", speaker="aoc", end_s=CLIP_SECONDS)
    summary = run_prep({"test": [source]}, out, PrepParams(detector="none"), workers=1, show_progress=False)
    assert summary.ok == 1
    return out


@pytest.mark.slow
@needs_fixtures
def test_report_has_the_papers_table_and_per_clip_json(tmp_path, dataset, models):
    out = tmp_path / "report"
    result = runner.invoke(app, ["--shards", str(dataset), "--split", "test", "--ckpt", str(models["cals"]),
                                 "--syncnet", str(models["syncnet"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "report.md").read_text()
    lines = markdown.splitlines()
    header = lines.index("| method | PSNR | SSIM | LMD | LSE-D | LSE-C | LMD-40 | PSNR-lower | aperture r |")
    assert lines[header + 1] == "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    truth, method, shifted, other, gain = ([c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2 : header + 7])
    assert truth[:4] == ["ground truth", "–", "1.000", "0.000"] and truth[6:] == ["0.000", "–", "1.000"]
    assert method[0] == "CALS (cals-run)"
    assert shifted[0] == "CALS (cals-run), audio shifted 20 frames" and gain[0] == "audio gain (true − shifted)"
    # one clip in the split: no other clip's audio to drive it with
    assert other[0] == "CALS (cals-run), another clip's audio (0 of 1 clips)" and set(other[1:]) == {"–"}
    # a random generator paints no face: FaceMesh finds none, so LMD and aperture r have no frame (shown "–")
    assert method[3] == "–" and method[6] == "–" and method[8] == "–"
    assert all(float(v) == float(v) for v in truth[4:6] + method[1:3] + method[4:6] + method[7:8] + shifted[4:6] + gain[1:3]), (truth, method)
    assert "FaceMesh found no face in 50 generated and 0 real frames" in markdown
    assert "SyncNet v2" in markdown and str(models["syncnet"]) in markdown
    assert "| method | PSNR" in result.output  # the table is printed too

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["split"] == "test" and report["sync_scorer"]["kind"] == "syncnet_v2"
    assert report["table"]["ground truth"]["PSNR"] is None
    assert report["table"]["ground truth"]["SSIM"] == pytest.approx(1.0, abs=1e-12)
    assert report["table"]["ground truth"]["LMD"] == 0.0 and report["table"]["ground truth"]["LMD-40"] == 0.0
    assert report["table"]["ground truth"]["aperture r"] == pytest.approx(1.0)
    assert report["summary"]["clips"] == 1 and report["summary"]["clips_failed"] == 0
    assert report["summary"]["shifted_clips"] == 1 and report["summary"]["other_clips"] == 0
    assert report["audio_gain"] == report["table"]["audio gain (true − shifted)"]
    (clip,) = report["clips"]
    assert clip["key"] == "aoc2" and clip["frames"] == int(CLIP_SECONDS * 25)
    assert clip["error"] is None and clip["skipped"] == {"other": "no other clip in the split"}
    assert clip["gt_lmd_frames"] == clip["frames"]  # FaceMesh finds the real face on every crop
    true = clip["generated"]["true"]
    assert true["lmd"] is None and true["lmd_frames"] == 0 and true["no_face_generated"] == clip["frames"]
    assert 0 < true["psnr"] < 100 and -1 <= true["ssim"] < 1 and 0 < true["psnr_lower"] < 100
    for key in ("lse_d", "lse_c"):
        assert isinstance(true[key], float) and isinstance(clip["generated"]["shifted"][key], float)
    for key in ("gt_lse_d", "gt_lse_c"):
        assert isinstance(clip[key], float)
    assert report["table"]["CALS (cals-run)"]["LSE-D"] == pytest.approx(true["lse_d"])
    assert report["table"]["CALS (cals-run)"]["PSNR"] == pytest.approx(true["psnr"])
    assert report["audio_gain"]["PSNR"] == pytest.approx(true["psnr"] - clip["generated"]["shifted"]["psnr"])


class ShiftedCopy:
    """A stand-in model whose "generation" is the target frames moved ``shift`` pixels right
    (the metrics then have known values: 0 px shift = a perfect reconstruction)."""

    def __init__(self, shift: int) -> None:
        self.shift = shift

    def generate(self, mel, reference, targets):
        return torch.roll(targets, self.shift, dims=-1)


@pytest.mark.slow
@needs_fixtures
def test_metrics_of_a_perfect_and_a_shifted_reconstruction(dataset):
    from cals.data import iter_samples
    from cals.eval import evaluate_clip
    from cals.metrics import MouthLandmarker

    (sample,) = list(iter_samples(dataset, split="test"))
    with MouthLandmarker() as landmarker:
        perfect = evaluate_clip(ShiftedCopy(0), sample, landmarker, None).generated["true"]
        shifted = evaluate_clip(ShiftedCopy(3), sample, landmarker, None).generated["true"]
    assert (perfect.psnr, perfect.ssim, perfect.lmd, perfect.psnr_lower) == (100.0, pytest.approx(1.0), 0.0, 100.0)
    assert perfect.lmd_frames == sample.num_frames and perfect.lse_d is None
    assert perfect.aperture_r == pytest.approx(1.0) and perfect.aperture_frames == sample.num_frames
    assert shifted.psnr < 40 and shifted.ssim < 1
    assert shifted.lmd == pytest.approx(3.0, abs=1.0)  # the lips moved 3 px


class AudioOracle:
    """A stand-in model that reconstructs the targets when driven by the clip's own mel and shows
    the reference's mouth (rows from the mask line down) with any other audio: audio-driven by
    construction. With ``blind`` it always reconstructs: it ignores the audio."""

    def __init__(self, mel, blind: bool = False) -> None:
        self.mel, self.blind = torch.from_numpy(np.asarray(mel, np.float32)), blind

    def generate(self, mel, reference, targets):
        if self.blind or torch.equal(mel[0], self.mel):
            return targets.clone()
        out = targets.clone()
        out[..., targets.shape[-2] // 2 :, :] = reference[..., targets.shape[-2] // 2 :, :]
        return out


@pytest.mark.slow
@needs_fixtures
def test_the_audio_rows_reward_only_a_model_that_follows_its_audio(dataset):
    from cals.data import iter_samples
    from cals.eval import EvalReport, evaluate_clip
    from cals.metrics import MouthLandmarker

    (sample,) = list(iter_samples(dataset, split="test"))
    other = sample.mel[::-1].copy()  # another clip's sound: here the same one reversed
    with MouthLandmarker() as landmarker:
        driven = evaluate_clip(AudioOracle(sample.mel), sample, landmarker, None, other_mel=other)
        blind = evaluate_clip(AudioOracle(sample.mel, blind=True), sample, landmarker, None, other_mel=other)
    assert set(driven.generated) == {"true", "shifted", "other"} and not driven.skipped
    gains = {}
    for name, clip in (("driven", driven), ("blind", blind)):
        report = EvalReport(shards="d", split="test", ckpt="run", scorer=None, clips=[clip])
        gains[name] = report.audio_gain()
    assert gains["blind"]["PSNR-lower"] == 0.0 and gains["blind"]["aperture r"] == 0.0 and gains["blind"]["LMD"] == 0.0
    assert gains["driven"]["PSNR-lower"] > 10 and gains["driven"]["LMD"] < 0, gains
    assert driven.generated["other"].psnr_lower < driven.generated["true"].psnr_lower
    assert driven.generated["true"].aperture_r == pytest.approx(1.0)


def test_shifted_and_looped_mel_move_whole_frames():
    from cals.eval import looped_mel, shifted_mel

    mel = np.repeat(np.arange(50, dtype=np.float32), 4)[:, None] * np.ones((1, 80), np.float32)  # row value = its frame
    moved = shifted_mel(mel, 20)
    assert moved.shape == mel.shape and moved[4 * 20, 0] == 0 and moved[0, 0] == 30 and moved[4 * 49 + 3, 0] == 29
    assert looped_mel(mel, 120)[4 * 110, 0] == 10 and looped_mel(mel, 3).shape == (12, 80)
    with pytest.raises(ValueError, match="shorter than 2 x 20"):
        shifted_mel(mel[: 4 * 39], 20)


@pytest.mark.slow
@needs_fixtures
def test_the_project_critic_scores_lse_and_the_report_says_so(tmp_path, dataset, models):
    from cals.eval import evaluate

    report = evaluate(dataset, models["cals"], split="test", critic=models["critic"], out=tmp_path / "critic.json")
    data = json.loads((tmp_path / "critic.json").read_text())
    assert data["sync_scorer"]["kind"] == "critic" and "not SyncNet" in data["sync_scorer"]["note"]
    assert "not SyncNet" in (tmp_path / "critic.md").read_text()
    (clip,) = report.clips
    assert 0 <= clip.generated["true"].lse_d <= 2 and 0 <= clip.generated["shifted"].lse_d <= 2 and 0 <= clip.gt_lse_d <= 2  # unit embeddings
    assert report.rows()["ground truth"]["SSIM"] == pytest.approx(1.0)


@pytest.mark.slow
@needs_fixtures
def test_without_a_scorer_the_lse_columns_are_dashes(dataset, models):
    result = runner.invoke(app, ["--shards", str(dataset), "--ckpt", str(models["cals"]), "--quiet"])
    assert result.exit_code == 0, result.output
    row = [line for line in result.output.splitlines() if line.startswith("| ground truth")][0]
    assert [c.strip() for c in row.strip("|").split("|")][4:6] == ["–", "–"]
    assert "not measured" in result.output


def test_syncnet_and_critic_together_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    result = runner.invoke(app, ["--shards", str(tmp_path), "--ckpt", str(tmp_path / "run"), "--syncnet", "a", "--critic", "b"])
    assert result.exit_code == 2 and "not both" in one_line_error(result)


def test_missing_inputs_are_one_line_errors(tmp_path, models):
    result = runner.invoke(app, ["--shards", str(tmp_path / "nope"), "--ckpt", str(models["cals"])])
    assert result.exit_code == 2 and "is not a folder" in one_line_error(result)
    result = runner.invoke(app, ["--shards", str(tmp_path), "--ckpt", str(models["cals"])])
    assert result.exit_code == 2 and "no 'test' shards" in one_line_error(result)
    result = runner.invoke(app, ["--shards", str(tmp_path), "--ckpt", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)
    result = runner.invoke(app, ["--shards", str(tmp_path), "--ckpt", str(models["cals"]), "--syncnet", str(tmp_path / "syncnet_v2.model")])
    assert result.exit_code == 2 and "robots.ox.ac.uk" in one_line_error(result)


@pytest.mark.slow
@needs_fixtures
def test_progress_bar_in_frames_on_a_terminal_only(dataset, models):
    """A bar with frames/s when stderr is a terminal (FORCE_COLOR makes rich treat it as one);
    none with --quiet or when piped. The total comes from the manifest (split_frames)."""
    import os
    import subprocess
    import sys

    from pipeline.progress import split_frames

    assert split_frames(dataset, "test") == 50 and split_frames(dataset, "train") == 0
    command = [sys.executable, "-c", "from cli.eval import main; main()", "--shards", str(dataset), "--split", "test",
               "--ckpt", str(models["cals"]), "--device", "cpu"]
    terminal = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120"}
    piped = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
    shown = subprocess.run(command, env=terminal, capture_output=True, text=True, timeout=300)
    quiet = subprocess.run([*command, "--quiet"], env=terminal, capture_output=True, text=True, timeout=300)
    plain = subprocess.run(command, env=piped, capture_output=True, text=True, timeout=300)
    assert shown.returncode == quiet.returncode == plain.returncode == 0, shown.stderr + quiet.stderr + plain.stderr
    assert "frames/s" in shown.stderr and "50/50" in shown.stderr, shown.stderr
    assert "frames/s" not in quiet.stderr and "frames/s" not in plain.stderr
    assert "aoc2" in plain.stderr  # the per-clip line still reaches a log


def test_lse_clips_needs_syncnet_and_a_known_corpus_protocol(tmp_path, models):
    result = runner.invoke(app, ["--shards", str(tmp_path), "--ckpt", str(models["cals"]), "--lse-clips", "1"])
    assert result.exit_code == 2 and "--lse-clips needs --syncnet" in one_line_error(result)


def test_the_corpus_protocol_comes_from_prep_json(tmp_path):
    from pipeline.eval_video import corpus_protocol

    for recipe, protocol in (("lrs2", "precropped"), ("lrw", "precropped"), ("hdtf", "syncnet_python"), ("folder", "syncnet_python")):
        (tmp_path / "prep.json").write_text(json.dumps({"command": ["cals-prep", recipe, "--root", "x"]}))
        assert corpus_protocol(tmp_path) == (protocol, recipe)
    (tmp_path / "prep.json").write_text(json.dumps({"command": ["/tmp/some_script.py"]}))
    with pytest.raises(ValueError, match="pass --protocol"):
        corpus_protocol(tmp_path)


@pytest.mark.slow
@needs_fixtures
def test_full_frame_lse_scores_the_pasted_back_video_and_the_real_span(tmp_path, dataset, models):
    """--lse-clips 1 --protocol precropped: the generated clip pasted into its 590x590 source frames
    and the real 2 s span are each scored as a whole video; the report names protocol, weights
    (digest) and detector. The dataset's prep.json is not a cals-prep command: without --protocol
    the corpus protocol is unknown and that is one line."""
    from cals.models.lip_units import file_sha256

    base = ["--shards", str(dataset), "--ckpt", str(models["cals"]), "--syncnet", str(models["syncnet"]), "--lse-clips", "1", "--quiet"]
    unknown = runner.invoke(app, base)
    assert unknown.exit_code == 2 and "pass --protocol" in unknown.output.splitlines()[-1]
    out = tmp_path / "report"
    result = runner.invoke(app, [*base, "--protocol", "precropped", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    full = report["full_frame"]
    assert full["protocol"] == "precropped" and full["recipe"] is None and full["detector"] is None
    assert full["model"] == str(models["syncnet"]) and full["model_sha256"] == file_sha256(models["syncnet"])
    (clip,) = full["clips"]
    assert clip["key"] == "aoc2" and clip["error"] is None, clip
    assert len(clip["real"]) == 1 and len(clip["generated"]) == 1
    for side in ("real", "generated"):
        assert clip[side][0]["lse_d"] > 0 and -15 <= clip[side][0]["offset"] <= 15
    assert full["table"]["ground truth"]["LSE-D"] == pytest.approx(clip["real"][0]["lse_d"])
    assert full["table"]["CALS (cals-run)"]["LSE-C"] == pytest.approx(clip["generated"][0]["lse_c"])
    # the pasted-back video is not the real one: a random generator changes the mouth region
    assert clip["generated"][0]["lse_d"] != clip["real"][0]["lse_d"]
    markdown = (tmp_path / "report.md").read_text()
    assert "## Full-frame LSE (1 clips, 1 scored)" in markdown and "protocol precropped (given with --protocol)" in markdown
    assert file_sha256(models["syncnet"])[:16] in markdown
