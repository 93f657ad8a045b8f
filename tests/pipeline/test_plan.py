"""Shard planning keeps every worker busy at any dataset size: at least SHARDS_PER_WORKER shards
per worker (with 2 or more) where MIN_SHARD_MB shards allow, never above --shard-mb; the plan is recorded in
prep.json and a resume keeps it (another worker count neither replans nor mixes plans)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cals.constants import FPS
from cals.layout import PREP_FILE
from pipeline.manifest import ClipSource
from pipeline.prepare_clip import PrepParams
from pipeline.prepare_shard import ShardPlan
from pipeline.recipes.folder import prepare_folder
from pipeline.run import BYTES_PER_FRAME_ESTIMATE, MIN_SHARD_MB, SHARDS_PER_WORKER, SPAN_BYTES_PER_S, clip_cost, dispatch_order, plan_shards, run_prep
from tests.conftest import TALK_CLIPS, ffmpeg, needs_fixtures

SIX_CLIP_SECONDS = 8.0  # a 6-clip folder of fixture-length clips (~1.7 MB each planned)


def clips(count: int, split: str = "train") -> list[ClipSource]:
    return [ClipSource(f"clip{i:03d}", f"/nowhere/clip{i:03d}.mp4", "plan", split, f"spk{i}") for i in range(count)]


def one_shard_planner(clips_by_split, shard_mb, mean_duration_s, workers=None) -> list[ShardPlan]:
    """The broken variant: every clip of a split in one shard (the plan of a small dataset before)."""
    return [ShardPlan(f"{split}-000000", split, tuple(c)) for split, c in clips_by_split.items() if c]


def assert_spread(plans: list[ShardPlan], total: int, workers: int) -> None:
    """Every worker gets work: min(clips, SHARDS_PER_WORKER × workers) shards or more, every clip once."""
    assert sorted(c.key for p in plans for c in p.clips) == sorted(f"clip{i:03d}" for i in range(total))
    assert len(plans) >= min(total, SHARDS_PER_WORKER * workers), f"{len(plans)} shards for {total} clips on {workers} workers"


def test_small_dataset_gets_shards_for_every_worker():
    for total, workers in ((6, 2), (21, 2), (40, 4), (7, 16)):
        by_split = {"train": clips(total)}
        assert_spread(plan_shards(by_split, 500.0, SIX_CLIP_SECONDS, workers), total, workers)
        with pytest.raises(AssertionError):
            assert_spread(one_shard_planner(by_split, 500.0, SIX_CLIP_SECONDS, workers), total, workers)


def test_plan_bounds_and_purity():
    # --shard-mb stays the upper bound (one clip per shard), whatever the worker count
    assert len(plan_shards({"train": clips(6)}, 0.001, SIX_CLIP_SECONDS, 8)) == 6
    # one worker has nothing to balance: --shard-mb shards, as before
    assert len(plan_shards({"train": clips(6)}, 500.0, SIX_CLIP_SECONDS, 1)) == 1
    # shards are never cut below MIN_SHARD_MB: 0.5 s clips (0.106 MB) go 3 to a shard on 64 workers
    per_shard = [len(p.clips) for p in plan_shards({"train": clips(100)}, 500.0, 0.5, 64)]
    assert per_shard[0] == math.ceil(MIN_SHARD_MB / (0.5 * FPS * BYTES_PER_FRAME_ESTIMATE / 1e6)) == 3
    # a big dataset on few workers keeps --shard-mb shards (no needless splitting)
    assert len(plan_shards({"train": clips(10_000)}, 500.0, SIX_CLIP_SECONDS, 2)) == math.ceil(10_000 / int(500 / 1.7))
    # split by split, deterministic, and the pre-record plan (workers None) is today's
    by_split = {"train": clips(30), "val": clips(5, "val"), "test": []}
    plans = plan_shards(by_split, 500.0, SIX_CLIP_SECONDS, 2)
    assert plans == plan_shards(by_split, 500.0, SIX_CLIP_SECONDS, 2)
    assert {p.split for p in plans} == {"train", "val"} and all(c.split == p.split for p in plans for c in p.clips)
    assert len(plan_shards(by_split, 500.0, SIX_CLIP_SECONDS, None)) == 2


@needs_fixtures
@pytest.mark.slow  # one Ray start and 6 clips: ~40-80 s on the shared 2 cores
def test_six_clip_folder_two_workers(tmp_path: Path):
    """A 6-clip folder prepared with 2 workers is several shards; the plan is in prep.json and a
    re-run with 1 worker is a no-op on that plan (not a second, mixed plan)."""
    root = tmp_path / "corpus"
    for i in range(6):
        (root / f"spk{i}").mkdir(parents=True)
        ffmpeg("-ss", str(i), "-t", "1.2", "-i", str(TALK_CLIPS[i % len(TALK_CLIPS)]), "-vf", "scale=96:96",
               "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(root / f"spk{i}" / "clip.mp4"))
    out = tmp_path / "out" / "corpus"
    params = PrepParams(detector="none", min_frames=10)
    first = run_prep(prepare_folder(root, val=0, test=0), out, params, workers=2, show_progress=False)
    prep = json.loads((out / PREP_FILE).read_text())
    assert first.ok == 6 and prep["plan"]["workers"] == 2
    # the pool's start-up (worker processes, imports, detector and FaceMesh loaded) is timed on its own
    assert 0 < first.worker_start_s < first.process_s and prep["summary"]["worker_start_s"] == round(first.worker_start_s, 3)
    assert len(prep["shards"]) >= 4, prep["shards"]
    assert len(list(out.glob("train-*.tar"))) == len(prep["shards"])
    again = run_prep(prepare_folder(root, val=0, test=0), out, params, workers=1, show_progress=False)
    assert again.shards_done == 0 and again.shards_skipped == len(prep["shards"])
    assert json.loads((out / PREP_FILE).read_text())["shards"] == prep["shards"]


def makespan(costs: list[float], workers: int) -> float:
    """The pool's schedule: each next unit to the first worker free (list scheduling)."""
    free = [0.0] * workers
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def sized_clips(tmp_path: Path, sizes: list[int]) -> list[ClipSource]:
    out = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"clip{i:03d}.mp4"
        path.write_bytes(b"\0" * size)
        out.append(ClipSource(f"clip{i:03d}", str(path), "plan", "train", f"spk{i}"))
    return out


def assert_balanced(order: list[ShardPlan], workers: int) -> None:
    """Within the longest-processing-time-first bound (Graham: 4/3 - 1/(3m) of the optimum,
    whose lower bound is max(largest unit, total / m))."""
    costs = [sum(clip_cost(c) for c in p.clips) for p in order]
    bound = max(max(costs), sum(costs) / workers)
    assert makespan(costs, workers) <= (4 / 3 - 1 / (3 * workers)) * bound + 1e-9, costs


def test_dispatch_is_longest_first_and_keeps_the_plan(tmp_path: Path):
    """2 workers vs 1 gave 1.23x on the 8-clip folder (BENCHMARKS.md): shards went out in key
    order, so a long clip planned last ran alone at the end. dispatch_order hands out the
    costliest shards first; the plan (names, clips) is untouched. Key order is rejected."""
    sizes = [100] * 6 + [1000]  # six short clips, then one long one in key order
    plans = plan_shards({"train": sized_clips(tmp_path, sizes)}, 500.0, 2.0, 2)
    assert [len(p.clips) for p in plans] == [1] * 7  # one clip per shard: the order is the whole story
    order = dispatch_order(plans)
    assert sorted(order, key=lambda p: p.name) == plans and order[0].name == "train-000006"
    assert_balanced(order, 2)
    with pytest.raises(AssertionError):
        assert_balanced(plans, 2)  # the broken variant: key order, 1,300 vs the optimum 1,000
    assert dispatch_order(plans, 1) == plans  # one worker: nothing to balance, the plan's order
    assert dispatch_order(plans, 2) == order
    # annotated spans count their seconds, not their (shared, long) file; unreadable files 0
    span = ClipSource("span", str(tmp_path / "clip000.mp4"), "plan", "train", "s", start_s=10.0, end_s=14.0)
    assert clip_cost(span) == 4 * SPAN_BYTES_PER_S and clip_cost(clips(1)[0]) == 0.0


def test_run_prep_dispatches_longest_first(tmp_path: Path, monkeypatch):
    """run_prep hands the pool its shards in dispatch_order (the pool is faked: no Ray), and
    prep.json's shard list stays in plan order."""
    import pipeline.run as run
    from pipeline.ray_pool import PoolResult

    handed: list[str] = []

    def fake_pool(units, *args, **kwargs):
        handed.extend(u.plan.name for u in units)
        return PoolResult()

    monkeypatch.setattr(run, "run_pool", fake_pool)
    (tmp_path / "in").mkdir()
    clips_by_split = {"train": sized_clips(tmp_path / "in", [100, 300, 200, 900])}
    run_prep(clips_by_split, tmp_path / "out", PrepParams(detector="none"), workers=2, show_progress=False)
    assert handed == ["train-000003", "train-000001", "train-000002", "train-000000"]
    assert json.loads((tmp_path / "out" / PREP_FILE).read_text())["shards"] == sorted(handed)
    handed.clear()
    run_prep(clips_by_split, tmp_path / "one", PrepParams(detector="none"), workers=1, show_progress=False)
    assert handed == sorted(handed), "one worker keeps the plan's order"
