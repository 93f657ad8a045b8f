"""Run a :class:`~pipeline.rewrite.ShardJob` over a dataset folder on a Ray actor pool.

On prep's pool (:mod:`pipeline.ray_pool`): one unit of work is one shard; each actor loads the
job's model once (:class:`RewriteWorker`) and rewrites shard after shard; a worker process that
dies is replaced and its shard retried (:data:`pipeline.ray_pool.TASK_MAX_RETRIES` times), after
which every sample of the shard is recorded with the failure. Each actor reserves 1 CPU and
:data:`pipeline.ray_pool.TASK_MEMORY_BYTES`, plus 1 GPU when the driver sees CUDA
(``torch.cuda.is_available()``): the model then runs on the actor's GPU. A local run binds Ray to
127.0.0.1 only (:mod:`pipeline.ray_session`); ``address`` joins an existing cluster, whose nodes
must see the dataset folder.

Shards whose every sample is already done are skipped without starting Ray, so a re-run after a
complete run rewrites nothing. The manifest columns are then rebuilt from every shard's metadata
and the job's reports (:func:`pipeline.rewrite.update_manifest`).
"""

from __future__ import annotations

import logging
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cals.urls import is_url
from cals.layout import MANIFEST_FILE, job_temp_globs
from pipeline.ray_pool import Bar, Report, run_pool
from pipeline.rewrite import ShardJob, manifest_values, rewrite_shard, scan_shard, shard_is_done, update_manifest
from pipeline.storage import LocalStorage

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a run of a shard job did."""

    dataset: Path
    job: str
    shards_done: int = 0
    shards_skipped: int = 0
    samples: int = 0  # samples in the shards before the run
    processed: int = 0  # samples the job worked on in this run (done, dropped or failed)
    failed: int = 0  # samples whose transform raised, plus samples of shards that failed whole
    dropped: int = 0  # samples the job removed from the shards in this run
    shard_failures: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def table(self) -> "Any":
        from rich.table import Table

        table = Table(title=f"cals-prep {self.job}: {self.dataset}")
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("samples in the shards", str(self.samples))
        table.add_row("samples processed now", str(self.processed))
        table.add_row("samples dropped", str(self.dropped))
        table.add_row("samples failed", str(self.failed))
        table.add_row("shards rewritten / already done", f"{self.shards_done} / {self.shards_skipped}")
        if self.shard_failures:
            table.add_row("shards failed", str(len(self.shard_failures)))
        table.add_row("wall time", f"{self.wall_s:.1f} s")
        return table


def dataset_shards(dataset_dir: Path) -> list[str]:
    """Shard file names of a local dataset folder (``<split>-NNNNNN.tar``), sorted."""
    return sorted(p.name for p in Path(dataset_dir).glob("*.tar") if p.is_file() and not p.name.startswith("."))


def check_dataset(dataset_dir: str | Path) -> Path:
    """The dataset folder as a Path, or a one-line error: not local, or not a cals-prep output."""
    if is_url(dataset_dir):
        raise ValueError(f"{dataset_dir}: this step rewrites shards in place and needs a local or shared-disk folder, not a URL")
    dataset = Path(dataset_dir)
    if not (dataset / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{dataset / MANIFEST_FILE} is missing (not a cals-prep output, or the run never finished)")
    return dataset


@dataclass(frozen=True)
class RewriteWorker:
    """The :class:`~pipeline.ray_pool.WorkerFactory` of a shard job: each actor loads the job's
    model onto ``device`` once, then rewrites shard after shard of ``dataset_dir``; a shard's
    result is its report plus ``processed``, the keys the transform was called on."""

    dataset_dir: str
    job: ShardJob
    device: str
    fail_fast: bool

    def start(self, report: Report) -> Callable[[str], dict[str, Any]]:
        transform = self.job.start(self.device)

        def progress(samples: int, failed: int) -> None:
            report(samples, failed, 0)

        def work(shard: str) -> dict[str, Any]:
            processed: list[str] = []

            def counted(raw, meta):
                processed.append(raw["__key__"])
                return transform(raw, meta)

            result = rewrite_shard(self.dataset_dir, shard, self.job, counted, progress, self.fail_fast)
            return {**result, "processed": processed}

        return work


def run_shard_job(
    dataset_dir: str | Path,
    job: ShardJob,
    *,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    show_progress: bool = True,
    fail_fast: bool = False,
) -> JobSummary:
    """Rewrite every shard of ``dataset_dir`` the job has not finished, then update the manifest."""
    started = time.time()
    dataset = check_dataset(dataset_dir)
    LocalStorage(dataset).clean(job_temp_globs(job.name))
    summary = JobSummary(dataset=dataset, job=job.name)
    scans = {}
    for shard in dataset_shards(dataset):
        try:
            scans[shard] = scan_shard(dataset / shard)
        except (OSError, tarfile.TarError, ValueError) as error:  # one bad shard never stops the job
            summary.shard_failures[shard] = f"shard {shard} does not read ({type(error).__name__}: {error}); run cals-prep verify"
            log.error("%s", summary.shard_failures[shard])
    todo = [shard for shard, scan in scans.items() if not shard_is_done(scan, job)]
    summary.samples = sum(len(scan) for scan in scans.values())
    summary.shards_skipped = len(scans) - len(todo)
    if show_progress and summary.shards_skipped and todo:
        from rich.console import Console

        Console(stderr=True).print(f"resuming {dataset}: {summary.shards_skipped} of {len(scans)} shards already done, {len(todo)} to do")
    reports: dict[str, dict[str, Any]] = {}
    if todo:
        already = summary.samples - sum(len(scans[s]) for s in todo)
        import torch

        gpus = torch.cuda.is_available()
        worker = RewriteWorker(str(dataset), job, "cuda" if gpus else "cpu", fail_fast)
        bar = Bar(f"{job.name}: samples", total=summary.samples, completed=already)
        pool = run_pool(todo, worker, bar, workers=workers, address=address, gpus=gpus, fail_fast=fail_fast, show_progress=show_progress)
        reports = pool.results
        summary.shards_done = len(reports)
        summary.shard_failures.update({shard: f"shard {shard}: {reason}: {line}" for shard, (reason, line) in pool.failures.items()})
    for shard in todo:
        if (dataset / shard).is_file():
            scans[shard] = scan_shard(dataset / shard)
        else:  # every sample dropped
            del scans[shard]
    values, drops = manifest_values(dataset, job, scans, summary.shard_failures)
    update_manifest(dataset, job.manifest_columns, values, drops)
    for shard, result in reports.items():
        statuses = Counter(result["records"][key]["status"] for key in result["processed"])
        summary.processed += sum(statuses.values())
        summary.failed += statuses["error"]
        summary.dropped += statuses["dropped"]
    summary.failed += sum(len(scan) for shard, scan in scans.items() if shard in summary.shard_failures)
    summary.wall_s = time.time() - started
    if show_progress:
        from rich.console import Console

        Console(stderr=True).print(summary.table())
    return summary
