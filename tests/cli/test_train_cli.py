"""cals-train's --config: a JSON object of TrainConfig fields under the command-line flags."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cals.train.checkpoint import read_json
from cals.train.config import TrainConfig
from cli.train import app
from tests.cals.test_a2l import TINY
from tests.cals.test_stream import write_dataset


def run_a2l(dataset, out, *extra):
    return CliRunner().invoke(app, ["a2l", "--shards", str(dataset), "--out", str(out), "--batch-size", "2", "--window", "10",
                                    "--quiet", *TINY, *extra])


def test_config_file_sets_training_fields_and_flags_given_win(tmp_path):
    write_dataset(tmp_path / "d", [[12, 12]], lip_dim=6)
    (tmp_path / "train.json").write_text(json.dumps({"steps": 2, "ckpt_every": 2, "log_every": 1, "lr": 5e-4, "amp": False}))
    result = run_a2l(tmp_path / "d", tmp_path / "r", "--config", str(tmp_path / "train.json"), "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    train = read_json(tmp_path / "r" / "config.json")["train"]
    assert (train["steps"], train["ckpt_every"], train["log_every"], train["amp"]) == (2, 2, 1, False)  # from the file
    assert train["lr"] == 1e-3 and train["batch_size"] == 2 and train["window"] == 10  # flags given on the command line
    assert train["keep"] == TrainConfig.keep  # neither: the default


def test_config_file_with_an_unknown_key_is_a_one_line_error(tmp_path):
    write_dataset(tmp_path / "d", [[12]], lip_dim=6)
    (tmp_path / "train.json").write_text(json.dumps({"steps": 2, "learning_rate": 1e-3}))
    result = run_a2l(tmp_path / "d", tmp_path / "r", "--config", str(tmp_path / "train.json"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown training settings: ['learning_rate']" in " ".join(result.output.split())
    (tmp_path / "list.json").write_text("[1, 2]")
    result = run_a2l(tmp_path / "d", tmp_path / "r", "--config", str(tmp_path / "list.json"))
    assert result.exit_code == 2 and "JSON object" in " ".join(result.output.split())
