"""The first hour of a new user (issue 15): the README's own path runs as written, splits exist
on a one-speaker folder, runs grow, every command says what it wrote where, one help style."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cals.data import shard_paths
from cals.models.tiny import TINY_WINDOW, tiny_cals_config
from cals.train.cals import PREVIEW_DIR, PREVIEW_ROWS, title_rows
from cals.train.checkpoint import read_json
from cals.train.config import TrainConfig
from cli.train import _warn_without_val
from cli.train import app as train_app
from pipeline.recipes.folder import prepare_folder
from pipeline.train_recipe import RecipeConfig, _train
from tests.cals.test_stream import write_dataset

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
README = REPO / "README.md"
#: Steps of each training command in the README test (the README's own count takes minutes).
TEST_STEPS = 2


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def flat(text: str) -> str:
    """Output with its line wrapping undone."""
    return " ".join(text.split())


# 1. splits on a small folder ----------------------------------------------------------------


def test_a_one_speaker_folder_gets_val_and_test_by_clip_with_one_warning(tmp_path, caplog):
    for i in range(8):
        touch(tmp_path / "corpus" / f"clip{i}.mp4")
    with caplog.at_level(logging.WARNING):
        clips = prepare_folder(tmp_path / "corpus")
    assert [len(clips[s]) for s in ("train", "val", "test")] == [6, 1, 1]
    assert all(c.split == split for split, found in clips.items() for c in found)
    assert len({c.key for found in clips.values() for c in found}) == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "split by clip instead" in warnings[0] and "'test' and 'val'" in warnings[0]
    assert [c.key for c in prepare_folder(tmp_path / "corpus")["test"]] == [c.key for c in clips["test"]]  # stable
    nothing_asked = prepare_folder(tmp_path / "corpus", val=0, test=0)
    assert len(nothing_asked["train"]) == 8 and not nothing_asked["val"] and not nothing_asked["test"]


def test_enough_speakers_keep_speaker_splits_without_a_warning(tmp_path, caplog):
    for i in range(60):
        touch(tmp_path / "corpus" / f"spk{i}" / "a.mp4")
    with caplog.at_level(logging.WARNING):
        clips = prepare_folder(tmp_path / "corpus", val=0.2, test=0.2)
    assert clips["val"] and clips["test"] and not caplog.records
    for split, found in clips.items():
        assert not {c.speaker for c in found} & {c.speaker for s, other in clips.items() if s != split for c in other}


def test_a_missing_split_names_the_splits_that_exist(tmp_path):
    write_dataset(tmp_path / "d", [[12]], lip_dim=6)
    with pytest.raises(FileNotFoundError, match=r"no 'test' shards in .*; it holds 'train'$"):
        shard_paths(tmp_path / "d", "test")


def test_validation_asked_on_a_dataset_without_val_warns(tmp_path, capsys):
    write_dataset(tmp_path / "d", [[12]], lip_dim=6)
    _warn_without_val(TrainConfig(shards=str(tmp_path / "d"), val_every=5))
    _warn_without_val(TrainConfig(shards=str(tmp_path / "d"), val_every=0))
    warned = flat(capsys.readouterr().err)
    assert warned.count("warning:") == 1 and "--val-every 5 validates nothing" in warned and "holds 'train'" in warned


# 2. runs that grow -----------------------------------------------------------------------------


def run_a2l(dataset: Path, out: Path, *extra: str):
    return CliRunner().invoke(train_app, ["a2l", "--shards", str(dataset), "--out", str(out), "--batch-size", "2",
                                          "--window", "10", "--quiet", "--tiny", *extra])


def test_a_run_grows_and_a_refusal_names_the_flag_to_pass(tmp_path):
    write_dataset(tmp_path / "d", [[12, 12]], lip_dim=6)
    first = run_a2l(tmp_path / "d", tmp_path / "r", "--steps", "2", "--ckpt-every", "2", "--val-every", "1")
    assert first.exit_code == 0, first.output
    assert flat(first.output).count("validates nothing") == 1
    assert f"checkpoints in {tmp_path / 'r'} (newest: step 2" in flat(first.output)
    refused = run_a2l(tmp_path / "d", tmp_path / "r", "--steps", "4", "--resume")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "pass --ckpt-every 2 to continue it exactly" in flat(refused.output)
    grown = run_a2l(tmp_path / "d", tmp_path / "r", "--steps", "4", "--resume", "--ckpt-every", "2")
    assert grown.exit_code == 0, grown.output
    assert read_json(tmp_path / "r" / "latest.json")["step"] == 4


def test_the_recipe_grows_a_stage_with_the_segments_it_started_with(tmp_path):
    config = RecipeConfig(steps_per_stage=300)
    assert _train("d", tmp_path / "new", config, None).ckpt_every == 300  # a new stage: min(--ckpt-every, steps)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"task": "a2l", "train": {"ckpt_every": 3}}))
    assert _train("d", tmp_path / "old", config, None).ckpt_every == 3  # started with 3 steps per stage


# 6. --tiny everywhere, 7. labelled previews ----------------------------------------------------


def test_every_train_command_takes_tiny():
    for command in ("syncnet", "a2l", "cals"):
        result = CliRunner().invoke(train_app, [command, "--help"])
        assert "--tiny" in result.output and "first try on a CPU" in flat(result.output), command
    assert "--tiny" in CliRunner().invoke(train_app, ["--help"]).output


def test_tiny_cals_trains_with_tiny_sizes_and_titled_previews(tmp_path):
    write_dataset(tmp_path / "d", [[14, 14]], lip_dim=6)
    result = CliRunner().invoke(train_app, ["cals", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "c"), "--tiny",
                                            "--steps", "1", "--batch-size", "1", "--preview-every", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"checkpoints in {tmp_path / 'c'}" in flat(result.output)
    model = read_json(tmp_path / "c" / "config.json")["task_config"]["model"]
    small = tiny_cals_config(model["a2l"]["unit_dim"]).to_dict()
    assert model["window"] == TINY_WINDOW and model["l2f"]["widths"] == small["l2f"]["widths"]
    assert model["a2l"]["d_model"] == small["a2l"]["d_model"]
    preview = np.asarray(Image.open(next((tmp_path / "c" / PREVIEW_DIR).glob("*.png"))).convert("RGB"))
    assert np.array_equal(title_rows(preview, PREVIEW_ROWS), preview)  # already titled: drawing again changes nothing


def test_titles_are_drawn_on_every_row():
    plain = np.full((3 * 128, 4 * 128, 3), 128, np.uint8)
    titled = title_rows(plain, PREVIEW_ROWS)
    assert titled.shape == plain.shape and not np.array_equal(titled, plain)
    bands = [titled[row * 128 : row * 128 + 14, :128] for row in range(3)]
    assert all((band > 200).any() and (band == 0).any() for band in bands)
    assert not np.array_equal(bands[0], bands[1]) and not np.array_equal(bands[1], bands[2])  # three different titles


# 8. one help style, one --device default --------------------------------------------------------


def _apps():
    from cli.eval import app as eval_app
    from cli.generate import app as generate_app
    from cli.prep import app as prep_app
    from cli.sync import app as sync_app

    return {"cals-prep": prep_app, "cals-train": train_app, "cals-eval": eval_app, "cals-generate": generate_app,
            "cals-sync": sync_app}


def test_one_plain_help_style_for_every_command():
    for name, app in _apps().items():
        command = typer.main.get_command(app)
        pages = [[]] + [[sub] for sub in getattr(command, "commands", {})]
        for args in pages:
            text = CliRunner().invoke(app, [*args, "--help"], prog_name=name).output
            assert text.startswith("Usage: ") and "{" not in text.splitlines()[0], (name, args, text[:200])
            for bad in ("╭", "<bool>", "``"):
                assert bad not in text, (name, args, bad)


def test_device_defaults_to_cuda_when_available_everywhere():
    apps = _apps()
    for name in ("cals-eval", "cals-generate", "cals-sync", "cals-train"):
        command = typer.main.get_command(apps[name])
        commands = list(getattr(command, "commands", {}).values()) or [command]
        for sub in commands:
            device = [p for p in sub.params if p.name == "device"]
            assert device and device[0].default is None, (name, sub.name)
            assert "CUDA when available" in flat(CliRunner().invoke(apps[name], [*([sub.name] if sub is not command else []), "--help"]).output)


# 9. cals-generate progress ----------------------------------------------------------------------


def _cli(name: str) -> list[str]:
    return [sys.executable, "-c", f"from cli.{name} import main; main()"]


@pytest.mark.slow
def test_generate_shows_progress_on_a_terminal_only(tmp_path):
    write_dataset(tmp_path / "d", [[14, 14]], lip_dim=6)
    trained = CliRunner().invoke(train_app, ["cals", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "c"), "--tiny",
                                             "--steps", "1", "--batch-size", "1", "--quiet"])
    assert trained.exit_code == 0, trained.output
    face = tmp_path / "face.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x160:rate=25", "-f", "lavfi", "-i",
                    "sine=frequency=300:sample_rate=16000", "-t", "1", "-shortest", "-pix_fmt", "yuv420p", str(face)], check=True)
    command = [*_cli("generate"), "--face", str(face), "--audio", str(face), "--ckpt", str(tmp_path / "c"),
               "--detector", "none", "--device", "cpu"]
    terminal = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120"}
    shown = subprocess.run([*command, "--out", str(tmp_path / "a.mp4")], env=terminal, capture_output=True, text=True, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    assert "frames/s" in shown.stderr and "paste + encode" in shown.stderr
    assert f"wrote {tmp_path / 'a.mp4'}" in flat(shown.stdout)
    quiet = subprocess.run([*command, "--out", str(tmp_path / "b.mp4"), "--quiet"], env=terminal, capture_output=True, text=True, cwd=REPO)
    piped = subprocess.run([*command, "--out", str(tmp_path / "c.mp4")], env={k: v for k, v in os.environ.items() if k != "FORCE_COLOR"},
                           capture_output=True, text=True, cwd=REPO)
    assert quiet.returncode == 0 and piped.returncode == 0, quiet.stderr + piped.stderr
    assert "frames/s" not in quiet.stderr and "frames/s" not in piped.stderr


# 3. the README's path, as written ---------------------------------------------------------------


def readme_commands(section: str) -> list[str]:
    """The ``cals-*`` lines of the first code block after README heading ``section`` (comments and
    ``bash .ci/setup`` / pytest lines dropped)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(section)
    block = text[text.index("```", start) :].split("```")[1]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()[1:]]
    return [line for line in lines if line.startswith("cals-")]


def tiny_flags() -> list[str]:
    """The flags the README's "First try on a CPU" line adds to each cals-train line."""
    found = re.search(r"add `(--tiny[^`]*)` to each `cals-train` line", flat(README.read_text(encoding="utf-8")))
    assert found, "README lost its first-try-on-a-CPU line"
    return shlex.split(found.group(1))


def test_readme_blocks_parse_into_the_expected_path():
    first = readme_commands("# cals\n")
    training = readme_commands("## Training\n")
    assert [c.split()[:2] for c in first] == [["cals-prep", "folder"], ["cals-prep", "verify"], ["cals-prep", "inspect"]]
    assert [c.split()[:2] for c in training] == [["cals-train", "syncnet"], ["cals-prep", "units"], ["cals-train", "a2l"],
                                                 ["cals-train", "cals"], ["cals-generate", "--face"], ["cals-eval", "--shards"]]
    assert "--split test" in training[-1] and "--tiny" in tiny_flags()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "fixtures" / "video").is_dir(), reason="needs ../shared/fixtures")
def test_the_readme_path_runs_as_written(tmp_path):
    """prep → verify → inspect → the training block in README order with the README's tiny
    flags (``--steps`` cut to TEST_STEPS to keep the suite short) → generate → eval --split
    test; then the recipe's stage lines (units from another critic re-extracted) and a grown
    recipe run."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    def run(line: str, extra: list[str] = ()) -> subprocess.CompletedProcess:
        args = [a.replace("../shared/", f"{SHARED}/") for a in shlex.split(line)] + list(extra)
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    prep = [run(line) for line in readme_commands("# cals\n")]
    assert "split by clip instead" in flat(prep[0].stderr + prep[0].stdout)
    assert {Path(p).name.split("-")[0] for p in shard_paths(tmp_path / "shards" / "video")} == {"train", "val", "test"}
    flags = tiny_flags()
    flags[flags.index("--steps") + 1] = str(TEST_STEPS)
    outputs = {}
    for line in readme_commands("## Training\n"):
        outputs[line.split()[0] + " " + line.split()[1]] = run(line, flags if line.startswith("cals-train") else [])
    for run_folder in ("sync", "a2l", "cals"):
        assert read_json(tmp_path / "runs" / run_folder / "latest.json")["step"] == TEST_STEPS
    assert "checkpoints in runs/cals" in flat(outputs["cals-train cals"].stderr)
    assert "wrote runs/out.mp4" in flat(outputs["cals-generate --face"].stdout)
    assert (tmp_path / "runs" / "report.md").is_file() and "wrote runs/report.md and runs/report.json" in flat(outputs["cals-eval --shards"].stderr)

    recipe = ["cals-train", "--shards", "shards/video", "--out", "runs/video", "--tiny", "--steps-per-stage", "2",
              "--batch-size", "2", "--workers", "1", "--quiet"]
    first = flat(run(shlex.join(recipe)).stderr)
    assert "stage 2/4: lip units in shards/video come from another model" in first and "re-extracting" in first, first
    steps_at = recipe.index("--steps-per-stage") + 1
    grown = flat(run(shlex.join([*recipe[:steps_at], "3", *recipe[steps_at + 1 :], "--keep-units"])).stderr)
    assert "stage 1/4: sync critic → runs/video/sync: continues at step 2 of 3" in grown, grown
    assert "(--keep-units), kept" in grown and "checkpoints in runs/video/cals (newest: step 3" in grown, grown
    assert read_json(tmp_path / "runs" / "video" / "cals" / "config.json")["train"]["ckpt_every"] == 2  # the segments it started with
