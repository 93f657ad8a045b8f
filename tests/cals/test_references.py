"""CALS training inputs that leave no shortcut to the mouth (issue 10, training side): the
reference frame comes from outside the window, A2L reads the same utterance in training as at
inference, d_vv segments do not overlap, and the λ3 switch is one decision for all DDP ranks.
Synthetic shards written with the real shard writer (tests/cals/test_stream.py)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from cals.constants import REFERENCE_MARGIN_FRAMES
from cals.stream import AugmentConfig, StreamConfig, make_dataset, reference_index, utterance_span
from tests.cals.test_stream import write_dataset

WINDOW = 10
#: Clip lengths: long ones, one just long enough for the fallback to stay > 2 frames away (W + 5).
LENGTHS = [[40, 33, WINDOW + 5], [27, 52]]
BATCHES = 20
NEAR = 2  # a target within ±2 frames of its reference has nearly its mouth


def violations(batch) -> int:
    """Windows whose reference index is within ±NEAR frames of one of its targets (from the
    indices the batch carries, not from its gap field)."""
    count = 0
    for start, length, index in zip(batch["starts"], batch["lengths"].tolist(), batch["reference_index"].tolist()):
        nearest = min(abs(index - t) for t in range(start, start + length))
        count += nearest <= NEAR
    return count


def test_no_target_is_its_own_reference_or_next_to_it_and_the_old_rule_fails(tmp_path):
    samples = write_dataset(tmp_path / "d", LENGTHS)
    seen = {}
    for rule in ("outside", "in-window"):
        config = StreamConfig(tmp_path / "d", window=WINDOW, batch_size=4, shuffle_buffer=0, reference=rule)
        bad = windows = 0
        for step, batch in zip(range(BATCHES), make_dataset(config)):
            bad += violations(batch)
            windows += len(batch["keys"])
            for i, key in enumerate(batch["keys"]):  # the reference is the clip's frame it names (PNG: exact)
                np.testing.assert_array_equal(batch["reference"][i].numpy(), samples[key].frames[int(batch["reference_index"][i])])
                total, start, gap = samples[key].num_frames, batch["starts"][i], int(batch["reference_gap"][i])
                if start > REFERENCE_MARGIN_FRAMES or total - start - WINDOW > REFERENCE_MARGIN_FRAMES:
                    assert rule != "outside" or gap > REFERENCE_MARGIN_FRAMES  # an outside frame exists: it is used
        seen[rule] = (bad, windows)
    assert seen["outside"][0] == 0, seen
    assert seen["in-window"][0] == seen["in-window"][1] == 4 * BATCHES, seen  # the ablation path is violated


def test_reference_fallbacks_for_short_clips():
    rng = random.Random(0)
    assert reference_index(WINDOW, 0, WINDOW, "outside", rng) == (0, 0)  # the window is the clip: its first frame
    index, gap = reference_index(WINDOW + 4, 2, WINDOW, "outside", rng)  # 2 frames either side: the farthest
    assert gap == 2 and index in (0, WINDOW + 3)
    assert reference_index(WINDOW + 7, 1, WINDOW, "outside", rng) == (WINDOW + 6, REFERENCE_MARGIN_FRAMES + 1)  # the one outside frame
    for _ in range(200):
        index, gap = reference_index(60, 20, WINDOW, "outside", rng)
        assert gap > REFERENCE_MARGIN_FRAMES and not 20 - REFERENCE_MARGIN_FRAMES <= index < 20 + WINDOW + REFERENCE_MARGIN_FRAMES


def test_utterance_span_is_the_inference_chunk_of_the_window():
    assert utterance_span(40, 12, WINDOW, 64) == (0, 40)  # the whole clip
    assert utterance_span(100, 34, WINDOW, 32) == (32, 32)  # inside chunk [32, 64)
    assert utterance_span(74, 64, WINDOW, 32) == (64, 10)  # the short last chunk [64, 74)
    assert utterance_span(100, 28, WINDOW, 32) == (6, 32)  # straddles: the 32 frames ending at its end


def _task(shards, a2l_context, unit_dim=6):
    from cals.models.a2l import A2LConfig
    from cals.models.cals_model import CalsConfig
    from cals.models.l2f import LipToFaceConfig
    from cals.models.tiny import TINY_DISCRIMINATOR
    from cals.train.cals import CalsTask
    from cals.train.config import TrainConfig

    a2l = A2LConfig(unit_dim=unit_dim, layers=1, d_model=32, ffn=64, heads=2, dropout=0.0, max_frames=64)
    config = CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=unit_dim, widths=(8, 16, 16, 32, 32, 32), lip_channels=16), window=WINDOW)
    torch.manual_seed(0)
    task = CalsTask(config, discriminator=TINY_DISCRIMINATOR, a2l_context=a2l_context, augment=AugmentConfig())
    task.setup(torch.device("cpu"), TrainConfig(shards=str(shards), out=str(shards / "run"), window=WINDOW), distributed=False)
    return task


@pytest.mark.parametrize("a2l_context", ["utterance", "window"])
def test_training_feeds_the_generator_the_inference_units(tmp_path, a2l_context):
    samples = write_dataset(tmp_path / "d", LENGTHS)
    task = _task(tmp_path / "d", a2l_context)
    fed = []
    task.module.generator.register_forward_hook(lambda module, args, out: fed.append(args[0].detach()))
    stream = StreamConfig(tmp_path / "d", window=WINDOW, batch_size=3, shuffle_buffer=0, **task.stream_overrides())
    batch = next(iter(make_dataset(stream)))
    task.train_step(batch, 0, lr=0.0)
    units = fed[0]
    task.module.eval()
    agree = []
    for i, key in enumerate(batch["keys"]):
        sample, start = samples[key], batch["starts"][i]
        mel = torch.from_numpy(sample.mel.astype(np.float32))[None]
        with torch.no_grad():
            inference = task.module.lip_units(mel)[0, start : start + WINDOW]  # what CalsModel.generate feeds
        agree.append(torch.allclose(units[i, :WINDOW], inference, atol=1e-5))
    if a2l_context == "utterance":
        assert all(agree), agree
    else:  # the old way: A2L on the window alone, positions 0..W-1, is not what inference computes
        assert not any(agree), agree


def test_d_vv_segments_do_not_overlap():
    from cals.train.cals import CalsTask

    task = CalsTask.__new__(CalsTask)
    task.rng, task.t_s = random.Random(0), 5
    for _ in range(100):
        lengths = torch.tensor([25, 17, 21])
        starts = task._segment_starts(lengths, 4)
        assert starts.shape == (3, 3)  # 17 frames fit 3 segments of 5
        for row, n in zip(starts.tolist(), lengths.tolist()):
            assert all(b - a >= task.t_s for a, b in zip(row, row[1:])) and row[0] >= 0 and row[-1] + task.t_s <= n
    assert task._segment_starts(torch.tensor([4, 25]), 4) is None


def _switch_steps(reduce_factory, steps=400):
    """Run two ranks' SyncSchedules in threads on different L_recon curves; ``reduce_factory(rank)``
    gives each its reduction (None: its own average). Returns their ``switched_at``."""
    from cals.train.cals import CalsLossConfig, SyncSchedule

    losses = CalsLossConfig(ema_decay=0.0, plateau_steps=10, plateau_tol=0.01)
    curves = [lambda step: 1.0, lambda step: 0.9 ** (step // 10)]  # rank 0 flat, rank 1 still falling
    schedules = [SyncSchedule.from_config(losses, enabled=True, reduce=reduce_factory(rank)) for rank in range(2)]

    def work(rank):
        for step in range(steps):
            schedules[rank].observe(step, curves[rank](step))

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return [s.switched_at for s in schedules]


def test_the_lambda3_switch_is_decided_once_for_all_ranks():
    barrier, slots = threading.Barrier(2), [0.0, 0.0]

    def all_reduce_mean(rank):  # a fake 2-rank all-reduce: deposit, wait, read the mean
        def reduce(value):
            slots[rank] = value
            barrier.wait()
            mean = sum(slots) / 2
            barrier.wait()
            return mean

        return reduce

    alone = _switch_steps(lambda rank: None)
    assert alone[0] is not None and alone[1] != alone[0]  # per-rank decisions diverge
    together = _switch_steps(all_reduce_mean)
    assert together[0] is not None and together[0] == together[1], together
