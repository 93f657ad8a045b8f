"""The one CLI edge (cli.common.run_app): every user-caused failure of a ``cals-*`` command is
one line ``error: ...`` and exit 2, a bug one line and exit 1, ``--debug`` / CALS_DEBUG=1 show
the traceback; hyper-parameters are checked before any model or run folder exists."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from cals.models.cals_model import save_random_cals_model
from cals.models.tiny import tiny_cals_config
from cli.common import DEBUG_ENV, INTERNAL_ERROR_EXIT, USER_ERROR_EXIT, run_app
from tests.cals.test_a2l import TINY
from tests.cals.test_stream import write_dataset

REPO = Path(__file__).resolve().parents[2]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def raising_app(error: Exception) -> typer.Typer:
    """A one-command app whose command raises ``error`` (the broken library call)."""
    app = typer.Typer()

    @app.command()
    def go(count: int = typer.Option(1, "--count")) -> None:
        raise error

    return app


@pytest.mark.parametrize("error", [ValueError("--x 3 is too big"), FileNotFoundError(2, "No such file or directory", "/no/where"),
                                   IsADirectoryError(21, "Is a directory", "/etc")])
def test_user_errors_are_one_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_app(raising_app(error), []) == USER_ERROR_EXIT
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0]
    assert "[Errno" not in lines[0] and (str(getattr(error, "filename", "")) or "--x 3") in lines[0]


def test_an_internal_error_is_one_line_with_the_debug_hint_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_app(raising_app(KeyError("state")), []) == INTERNAL_ERROR_EXIT
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: internal error: KeyError") and f"{DEBUG_ENV}=1" in line


def test_debug_flag_or_env_shows_the_traceback(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(ValueError, match="too big"):
        run_app(raising_app(ValueError("too big")), ["--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(KeyError):
        run_app(raising_app(KeyError("state")), [])


def test_a_bad_flag_value_is_one_line_naming_the_command(capsys):
    assert run_app(raising_app(ValueError()), ["--count", "abc"], prog_name="cals-x") == USER_ERROR_EXIT
    (line,) = error_lines(capsys.readouterr().err)
    assert "'--count'" in line and "cals-x" in line and "--help" in line


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """A lip-unit dataset, a corrupt checkpoint in a real run folder, a file that is no video."""
    root = tmp_path_factory.mktemp("bad")
    write_dataset(root / "d", [[12]], lip_dim=6)
    run = save_random_cals_model(root / "run", tiny_cals_config(6))
    for ckpt in run.glob("*.safetensors"):
        ckpt.write_bytes(b"\x00garbage" * 100)  # the corrupt checkpoint
    (root / "text.mp4").write_text("not a video")
    (root / "config.json").write_text("{not json")
    return root


def sweep(root: Path) -> list[tuple[str, list[str]]]:
    """(module, argv) of every cals-* command with obviously bad input."""
    d, run, nowhere = root / "d", root / "run", root / "nowhere"
    return [
        ("cli.prep", ["folder", "--root", str(nowhere), "--out", str(root / "o")]),
        ("cli.prep", ["folder", "--root", str(root / "text.mp4"), "--out", str(root / "o")]),
        ("cli.prep", ["folder", "--root", str(root), "--out", str(root / "o"), "--shard-mb", "big"]),
        ("cli.prep", ["verify", str(nowhere)]),
        ("cli.prep", ["stats", str(root / "text.mp4")]),
        ("cli.prep", ["inspect", str(nowhere)]),
        ("cli.prep", ["units", str(d), "--model", str(nowhere)]),
        ("cli.prep", ["sync", str(d), "--model", str(root)]),
        ("cli.train", ["a2l", "--shards", str(nowhere), "--out", str(root / "r")]),
        ("cli.train", ["a2l", "--shards", str(d), "--out", str(root / "r"), "--steps", "many"]),
        ("cli.train", ["a2l", "--shards", str(d), "--out", str(root / "r"), "--config", str(root / "config.json")]),
        ("cli.train", ["a2l", "--shards", str(d), "--out", str(root / "r"), "--config", str(root)]),
        ("cli.train", ["--shards", str(nowhere), "--out", str(root / "r")]),
        ("cli.eval", ["--shards", str(d), "--ckpt", str(run)]),
        ("cli.eval", ["--shards", str(root / "text.mp4"), "--ckpt", str(run)]),
        ("cli.generate", ["--face", str(root / "text.mp4"), "--audio", str(root / "text.mp4"), "--ckpt", str(run), "--out", str(root / "g.mp4")]),
        ("cli.generate", ["--face", str(nowhere), "--audio", str(root / "text.mp4"), "--ckpt", str(run), "--out", str(root / "g.mp4")]),
        ("cli.sync", ["score", str(nowhere), "--model", str(root / "text.mp4")]),
        ("cli.sync", ["score", str(root / "text.mp4"), "--model", str(root)]),
    ]


def test_every_command_answers_bad_input_with_one_line_and_exit_2(bad_inputs, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    for module, argv in sweep(bad_inputs):
        monkeypatch.setattr(sys, "argv", [module, *argv])
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(module).main()
        lines = error_lines(capsys.readouterr().err)
        assert exit_.value.code == USER_ERROR_EXIT and len(lines) == 1 and lines[0].startswith("error: "), (module, argv, lines)
    assert not (bad_inputs / "r").exists() and not (bad_inputs / "o").exists()


def test_heads_not_dividing_d_model_is_one_line_before_any_run_folder(tmp_path):
    """End to end, the real command: ``--heads 7 --d-model 30`` was a 75-line PyTorch traceback
    and an empty run folder."""
    write_dataset(tmp_path / "d", [[12]], lip_dim=6)
    tiny = [a for a in TINY if a not in ("--heads", "2", "--d-model", "32")]
    command = [sys.executable, "-m", "cli.train", "a2l", "--shards", str(tmp_path / "d"), "--out", str(tmp_path / "run"),
               "--steps", "1", "--quiet", *tiny, "--heads", "7", "--d-model", "30"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, DEBUG_ENV: ""})
    lines = error_lines(result.stderr)
    assert result.returncode == USER_ERROR_EXIT, result.stderr[-2000:]
    assert lines == ["error: --heads 7 must divide --d-model 30 (each head gets d_model / heads dims)"]
    assert not (tmp_path / "run").exists()
