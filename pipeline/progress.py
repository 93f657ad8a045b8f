"""Progress bars in frames, with frames/s, for the commands that work through video
(``cals-generate``, ``cals-eval``); prep and the shard jobs have theirs in :mod:`pipeline.ray_pool`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cals.layout import MANIFEST_FILE


def frame_progress(show: bool):
    """A rich progress display for frames on stderr, with frames/s; renders nothing unless
    ``show`` and stderr is a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class FramesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            # rich's speed needs two updates; one big one (a clip in cals-eval) gets the mean rate
            speed = task.speed or (task.completed / task.elapsed if task.completed and task.elapsed else None)
            return Text(f"{speed:.1f} frames/s" if speed else "")

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), FramesPerSecond(), TimeElapsedColumn(),
                    console=console, disable=not (show and console.is_terminal))


def split_frames(dataset: "str | Path", split: str, limit: Optional[int] = None) -> Optional[int]:
    """Frames of the ok clips of ``split`` in a dataset folder's manifest (the first ``limit``
    in key order, the order the shards hold them): a progress bar's total. None when the
    manifest cannot be read (the bar then runs without a total)."""
    import pandas as pd

    try:
        rows = pd.read_parquet(Path(dataset) / MANIFEST_FILE, columns=["key", "split", "status", "num_frames"])
    except (OSError, ValueError):
        return None
    rows = rows[(rows["split"] == split) & (rows["status"] == "ok")].sort_values("key")
    return int(rows["num_frames"].head(limit).sum()) if limit is not None else int(rows["num_frames"].sum())
