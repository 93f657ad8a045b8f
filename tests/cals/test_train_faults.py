"""The trainer under faults (issue 11): a crafted pickle as the resume state, damaged
checkpoints, leftovers of an interrupted write, NaN batches, non-finite weights, bad settings.
Every fault is made in the test itself, and each test checks the one-line message, the exit
code, and that nothing was lost (the previous checkpoint intact, no NaN weights on disk)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from cals.models.a2l import A2LConfig
from cals.models.tiny import TINY_CRITIC
from cals.stream import StreamConfig, make_loader
from cals.train.a2l import A2LTask
from cals.train.checkpoint import (
    STATE_DIGEST_KEY, CheckpointError, checkpoint_files, latest, load_weights, read_json, resume_point, save_checkpoint,
)
from cals.train.config import TrainConfig
from cals.train.guard import SKIPPED_METRIC, NonFiniteError, nonfinite_tensors
from cals.train.sync_critic import SyncCriticTask, SyncLossConfig
from cli.train import app
from tests.cals.test_stream import write_dataset

#: Bytes overwritten in the middle of a checkpoint file (the issue's "64 KiB").
DAMAGE_BYTES = 64 * 1024
#: A2L wide enough that each checkpoint file is larger than twice the damage (≈ 250 KB weights).
A2L_FLAGS = ["--layers", "1", "--d-model", "64", "--ffn", "128", "--heads", "2", "--dropout", "0"]
LIP_DIM = 6


def train_a2l(dataset, out, steps, *extra):
    return CliRunner().invoke(app, ["a2l", "--shards", str(dataset), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
                                    "--lr", "3e-3", "--window", "10", "--ckpt-every", "4", "--keep", "2", "--log-every", "1",
                                    "--quiet", "--device", "cpu", *A2L_FLAGS, *extra])


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def train_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["split"] == "train"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def assert_finite(weights):
    assert not nonfinite_tensors(weights), nonfinite_tensors(weights)


def overwrite_middle(path):
    """64 KiB of random bytes over the middle of ``path`` (its size unchanged)."""
    data = bytearray(path.read_bytes())
    assert len(data) > 2 * DAMAGE_BYTES, "the file must be larger than the damage"
    start = (len(data) - DAMAGE_BYTES) // 2
    data[start : start + DAMAGE_BYTES] = os.urandom(DAMAGE_BYTES)
    path.write_bytes(bytes(data))


def smash_header(path):
    """The first 64 bytes (the safetensors header length and the start of its JSON) set to 0xFF."""
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dataset, an 8-step run (checkpoints at 4 and 8) and an uninterrupted 12-step run."""
    root = tmp_path_factory.mktemp("faults")
    write_dataset(root / "d", [[30, 24], [28, 20]], lip_dim=LIP_DIM)
    for name, steps in (("eight", 8), ("twelve", 12)):
        result = train_a2l(root / "d", root / name, steps)
        assert result.exit_code == 0, result.output
    return root


def copy_run(runs, tmp_path, name="eight"):
    shutil.copytree(runs / name, tmp_path / "run")
    return tmp_path / "run"


class OpensAFile:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("digest_updated", [True, False], ids=["digest-forged", "digest-stale"])
def test_a_crafted_pickle_as_state_is_refused_and_never_run(runs, tmp_path, digest_updated):
    run = copy_run(runs, tmp_path)
    marker = tmp_path / "pwned"
    weights_file, state_file = checkpoint_files(run, 8)
    torch.save({"step": 8, "rng": {}, "optimizer": OpensAFile(marker)}, state_file)
    if digest_updated:  # the attacker also rewrites the digest: only weights_only=True stands in the way
        from cals.models.lip_units import file_sha256

        with safe_open(str(weights_file), framework="pt") as handle:
            metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        save_file(tensors, str(weights_file), metadata={**metadata, STATE_DIGEST_KEY: file_sha256(state_file)})
    before = load_weights(run / "ckpt-00000004.safetensors")
    result = train_a2l(runs / "d", run, 12, "--resume")
    assert not marker.exists(), "the pickle's code ran"
    if digest_updated:
        assert result.exit_code == 2, result.output
        assert len(lines(result.output)) == 1 and "refused" in result.output and state_file.name in result.output, result.output
        assert "io.open" in result.output  # what it asked for, named
        assert_same_weights(before, load_weights(run / "ckpt-00000004.safetensors"))
    else:  # a stale digest reads as damage: never unpickled, resumed from step 4 instead
        assert result.exit_code == 0, result.output
        assert state_file.name in result.output and "ckpt-00000004" in result.output
        assert_same_weights(load_weights(run), load_weights(runs / "twelve"))


def test_the_state_file_loads_with_weights_only_and_restores_every_rng(tmp_path):
    import random

    import numpy as np

    from cals.train.checkpoint import set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # cached gaussians are part of the states
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {"optimizer": torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]).state_dict()}, keep=1)
    expected = (random.random(), random.gauss(0, 1), np.random.random(), np.random.standard_normal(), torch.rand(1).item())
    state = torch.load(checkpoint_files(tmp_path, 1)[1], weights_only=True)
    set_rng_state(state["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("damage", ["weights-64k", "state-64k", "weights-header"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(runs, tmp_path, damage):
    run = copy_run(runs, tmp_path)
    weights_file, state_file = checkpoint_files(run, 8)
    {"weights-64k": lambda: overwrite_middle(weights_file), "state-64k": lambda: overwrite_middle(state_file),
     "weights-header": lambda: smash_header(weights_file)}[damage]()
    result = train_a2l(runs / "d", run, 12, "--resume")
    assert result.exit_code == 0, result.output
    warnings = [line for line in lines(result.output) if line.startswith("warning:")]
    assert len(warnings) == 1, result.output
    assert (weights_file.name if damage.startswith("weights") else state_file.name) in warnings[0]
    assert "resuming from the previous kept checkpoint, ckpt-00000004.safetensors" in warnings[0]
    assert_same_weights(load_weights(run), load_weights(runs / "twelve"))  # resumed from step 4 exactly, nothing lost
    assert_finite(load_weights(run))
    assert train_steps(run) == list(range(1, 13)), "metrics.jsonl cut back to step 4, then steps 5-12 once"


def test_no_usable_checkpoint_is_a_one_line_error(runs, tmp_path):
    run = copy_run(runs, tmp_path)
    for step in (4, 8):
        overwrite_middle(checkpoint_files(run, step)[0])
    damaged = {p.name: p.read_bytes() for p in run.glob("ckpt-*")}
    result = train_a2l(runs / "d", run, 12, "--resume")
    assert result.exit_code == 2, result.output
    errors = [line for line in lines(result.output) if not line.startswith("warning:")]
    assert len(errors) == 1 and "no usable checkpoint" in errors[0] and "ckpt-00000004.safetensors" in errors[0], result.output
    assert {p.name: p.read_bytes() for p in run.glob("ckpt-*")} == damaged, "nothing rewritten or deleted"


@pytest.mark.parametrize("damage", [overwrite_middle, smash_header], ids=["64k", "header"])
def test_load_weights_refuses_a_damaged_file_in_one_line(runs, tmp_path, damage):
    run = copy_run(runs, tmp_path)
    damage(checkpoint_files(run, 8)[0])
    for path in (run, checkpoint_files(run, 8)[0]):
        with pytest.raises(CheckpointError) as caught:
            load_weights(path)
        assert "\n" not in str(caught.value) and "ckpt-00000008.safetensors" in str(caught.value)
    assert_finite(load_weights(checkpoint_files(run, 4)[0]))


def test_interrupted_write_leftovers_are_removed_and_no_step_is_logged_twice(runs, tmp_path):
    """What kill -9 mid-checkpoint leaves: a temp file, metrics past the checkpoint, a torn line."""
    run = copy_run(runs, tmp_path)
    shutil.rmtree(run / "tb")
    orphan = run / ".ckpt-00000012.safetensors.tmp-0a1b2c3d"
    orphan.write_bytes(b"\0" * 1000)
    with open(run / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"step": 9, "split": "train", "loss": 1.0}) + "\n" + '{"step": 10, "spl')
    latest_before = read_json(run / "latest.json")
    (run / "latest.json").write_text(json.dumps({**latest_before, "step": 4, "weights": "ckpt-00000004.safetensors",
                                                 "state": "ckpt-00000004.state.pt"}))  # killed before latest.json moved on
    result = train_a2l(runs / "d", run, 12, "--resume")
    assert result.exit_code == 0, result.output
    assert not orphan.exists() and not list(run.glob(".*.tmp-*"))
    assert any(line.startswith("warning: removed") and orphan.name in line for line in lines(result.output)), result.output
    assert train_steps(run) == list(range(1, 13))
    assert_same_weights(load_weights(run), load_weights(runs / "twelve"))


def test_checkpoint_files_get_the_permission_bits_of_ordinary_files(tmp_path):
    old = os.umask(0o022)
    try:
        weights_file = save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {}, keep=1)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (weights_file, checkpoint_files(tmp_path, 1)[1], tmp_path / "latest.json")}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}


# --- the non-finite guard ---


def a_batch(dataset, **overrides):
    return next(iter(make_loader(StreamConfig(shards=str(dataset), batch_size=2, shuffle_buffer=0, **overrides))))


def a2l_task(dataset, tmp_path):
    task = A2LTask(A2LConfig(unit_dim=LIP_DIM, layers=1, d_model=32, ffn=64, heads=2, dropout=0.0), lip_kind="test")
    task.setup(torch.device("cpu"), TrainConfig(shards=str(dataset), out=str(tmp_path / "unused"), lr=1e-2), distributed=False)
    return task, a_batch(dataset, window=10, **task.stream_overrides())


def critic_task(dataset, tmp_path):
    task = SyncCriticTask(TINY_CRITIC, SyncLossConfig(offsets=2))
    task.setup(torch.device("cpu"), TrainConfig(shards=str(dataset), out=str(tmp_path / "unused"), lr=1e-2), distributed=False)
    return task, a_batch(dataset, window=12, **task.stream_overrides())


@pytest.mark.parametrize("make_task", [a2l_task, critic_task], ids=["a2l", "sync_critic"])
def test_a_nan_batch_skips_the_step_and_leaves_the_weights_as_they_were(runs, tmp_path, make_task):
    task, batch = make_task(runs / "d", tmp_path)
    before = {name: tensor.clone() for name, tensor in task.weights().items()}  # BatchNorm statistics included
    poisoned = {**batch, "mel": batch["mel"].clone()}
    poisoned["mel"][0, :8] = float("nan")
    metrics = task.train_step(poisoned, 0, 1e-2)
    assert metrics[SKIPPED_METRIC] == 1.0
    assert_same_weights(before, task.weights())
    assert not task.optimizer.state, "the optimizer did not step (no Adam moments yet)"
    metrics = task.train_step(batch, 1, 1e-2)
    assert metrics[SKIPPED_METRIC] == 0.0 and task.optimizer.state
    assert any(not torch.equal(before[name], tensor) for name, tensor in task.weights().items())
    assert_finite(task.weights())


def poison_from_epoch(monkeypatch, epoch):
    """Every batch of data segments >= ``epoch`` gets a NaN in its mel (in the loop's loader)."""
    import cals.train.loop as loop

    real = loop.make_loader

    def make_poisoned(config, *args, **kwargs):
        for batch in real(config, *args, **kwargs):
            if config.epoch >= epoch:
                batch["mel"][:, :4] = float("nan")
            yield batch

    monkeypatch.setattr(loop, "make_loader", make_poisoned)


def test_nan_steps_in_a_row_stop_the_run_and_the_checkpoint_on_disk_stays_finite(runs, tmp_path, monkeypatch):
    run = copy_run(runs, tmp_path)
    (tmp_path / "train.json").write_text(json.dumps({"max_nonfinite_steps": 3}))
    poison_from_epoch(monkeypatch, 2)  # steps 9-12
    result = train_a2l(runs / "d", run, 16, "--resume", "--config", str(tmp_path / "train.json"))
    assert result.exit_code == 2, result.output
    assert len(lines(result.output)) == 1 and "3 steps in a row had a NaN/Inf" in result.output and "steps 9-11" in result.output, result.output
    assert latest(run)["step"] == 8 and sorted(p.name for p in run.glob("ckpt-*.safetensors"))[-1] == "ckpt-00000008.safetensors"
    assert_same_weights(load_weights(run), load_weights(runs / "eight"))
    assert_finite(load_weights(run))
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 11 and last["skipped_steps"] == 3 and last["loss"] is None  # strict JSON: NaN → null


def test_a_skipped_step_is_counted_and_training_goes_on(runs, tmp_path, monkeypatch):
    import cals.train.loop as loop

    real = loop.make_loader

    def one_nan_batch(config, *args, **kwargs):
        for index, batch in enumerate(real(config, *args, **kwargs)):
            if config.epoch == 2 and index == 1:  # step 10
                batch["mel"][:] = float("inf")
            yield batch

    monkeypatch.setattr(loop, "make_loader", one_nan_batch)
    run = copy_run(runs, tmp_path)
    result = train_a2l(runs / "d", run, 12, "--resume")
    assert result.exit_code == 0, result.output
    records = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"}
    assert [records[s]["skipped_steps"] for s in (9, 10, 11, 12)] == [0, 1, 1, 1]
    assert torch.load(checkpoint_files(run, 12)[1], weights_only=True)["skipped_steps"] == 1
    assert_finite(load_weights(run))


def test_non_finite_weights_are_never_written_or_marked_latest(tmp_path):
    good = save_checkpoint(tmp_path, 4, {"w": torch.ones(3)}, {}, keep=2)
    with pytest.raises(NonFiniteError) as caught:
        save_checkpoint(tmp_path, 8, {"w": torch.tensor([1.0, float("nan"), 2.0])}, {}, keep=2)
    assert "\n" not in str(caught.value) and "w" in str(caught.value) and "ckpt-00000004" in str(caught.value)
    with pytest.raises(NonFiniteError, match="state.optimizer.exp_avg"):  # the state is checked too
        save_checkpoint(tmp_path, 8, {"w": torch.ones(3)}, {"optimizer": {"exp_avg": torch.tensor([float("inf")])}}, keep=2)
    assert read_json(tmp_path / "latest.json")["step"] == 4 and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-00000004.safetensors", "ckpt-00000004.state.pt", "latest.json"]
    torch.testing.assert_close(load_weights(good)["w"], torch.ones(3))
    assert resume_point(tmp_path, warn=pytest.fail)[1]["step"] == 4


# --- the run folder ---


def test_bad_settings_leave_no_run_folder(runs, tmp_path):
    """The sync critic refuses a window shorter than t_s + 2K in its setup: one line, no folder."""
    result = CliRunner().invoke(app, ["syncnet", "--shards", str(runs / "d"), "--out", str(tmp_path / "run"), "--steps", "2",
                                      "--window", "8", "--quiet"])
    assert result.exit_code == 2 and "too short" in result.output and len(lines(result.output)) == 1, result.output
    assert not (tmp_path / "run").exists()


def test_a_failure_before_the_first_step_removes_the_folder_it_created(runs, tmp_path, monkeypatch):
    import cals.train.loop as loop

    def no_data(*args, **kwargs):
        raise FileNotFoundError("no shards")

    monkeypatch.setattr(loop, "make_loader", no_data)
    result = train_a2l(runs / "d", tmp_path / "run", 4)
    assert result.exit_code == 2 and "no shards" in result.output
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    result = train_a2l(runs / "d", tmp_path / "mine", 4)
    assert result.exit_code == 2 and (tmp_path / "mine").is_dir(), "a folder the user made is never removed"
