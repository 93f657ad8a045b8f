"""A small prepared dataset, made once per session by the real prep run, for the steps that
rewrite shards after prep (units, sync): tests copy it and work on the copy."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import FIXTURE_VIDEO

#: Fixture clips of the small dataset, cut to their first PREPARED_SECONDS (30 frames each).
LIP_CLIPS = ("talk_aoc2_retalking.mp4", "talk_man_mapbg_retalking.mp4", "talk_man_suit_retalking_vfr.mp4")
PREPARED_SECONDS = 1.2
#: Planned at 1.2 s x 25 fps x 8,500 B = 0.255 MB a clip: two clips in the first shard, one in
#: the second.
SHARD_MB = 0.6


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """``(dataset folder, model file)``: 3 clips in 2 shards (``detector="none"``), and a randomly
    initialised SyncNetV2 saved as the released syncnet_v2.model is (``torch.save(state_dict)``);
    the real weights are not available here, so the units and scores mean nothing, but every
    shape, window and file guarantee is the real one."""
    from cals.models.syncnet_v2 import SyncNetV2
    from pipeline.prepare_clip import PrepParams
    from pipeline.recipes.folder import prepare_folder
    from pipeline.run import run_prep

    base = tmp_path_factory.mktemp("lip_dataset")
    (base / "corpus" / "spk").mkdir(parents=True)
    for name in LIP_CLIPS:
        (base / "corpus" / "spk" / name).symlink_to(FIXTURE_VIDEO / name)
    clips = prepare_folder(base / "corpus", val=0, test=0)
    clips = {split: [dataclasses.replace(c, end_s=PREPARED_SECONDS) for c in found] for split, found in clips.items()}
    dataset = base / "out" / "corpus"
    summary = run_prep(clips, dataset, PrepParams(detector="none", min_frames=10), shard_mb=SHARD_MB, workers=1, show_progress=False)
    assert summary.ok == len(LIP_CLIPS)
    torch.manual_seed(0)
    model = base / "syncnet_random.model"
    torch.save(SyncNetV2().state_dict(), model)
    return dataset, model


@pytest.fixture
def dataset_copy(prepared_dataset, tmp_path) -> tuple[Path, Path]:
    """A fresh copy of :func:`prepared_dataset` for one test, and the model file."""
    dataset, model = prepared_dataset
    copy = tmp_path / "corpus"
    shutil.copytree(dataset, copy)
    return copy, model
