"""``cals-prep units`` / ``cals-prep sync`` through the real command line: one-line errors before
any work starts (the runs themselves are tested in tests/pipeline/test_units.py and
test_sync_filter.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.prep import app

runner = CliRunner()


def one_line(result) -> str:
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return " ".join(result.output.split())


def test_units_on_a_folder_that_is_not_a_dataset(tmp_path):
    result = runner.invoke(app, ["units", str(tmp_path), "--model", str(tmp_path / "m.model")])
    assert result.exit_code == 2 and "manifest.parquet is missing" in one_line(result)


def test_units_with_a_missing_or_unknown_model(tmp_path):
    (tmp_path / "manifest.parquet").write_bytes(b"")
    result = runner.invoke(app, ["units", str(tmp_path), "--model", str(tmp_path / "nothing.model")])
    assert result.exit_code == 2 and "does not exist" in one_line(result)
    (tmp_path / "notes.txt").write_text("not a model")
    result = runner.invoke(app, ["units", str(tmp_path), "--model", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2 and "expected a SyncNet v2 state dict" in one_line(result)


def test_sync_refuses_limits_it_cannot_measure(tmp_path):
    (tmp_path / "manifest.parquet").write_bytes(b"")
    result = runner.invoke(app, ["sync", str(tmp_path), "--model", str(tmp_path / "m.model"), "--max-offset", "20"])
    assert result.exit_code == 2 and "exceeds the offsets searched" in one_line(result)
    result = runner.invoke(app, ["sync", str(tmp_path), "--model", str(tmp_path / "m.model"), "--fix-offset"])
    assert result.exit_code == 2 and "SyncNet weights not found" in one_line(result)
