"""Run a :class:`~pipeline.rewrite.ShardJob` over a dataset folder on a Ray actor pool.

The shape of prep's run (:mod:`pipeline.run`): one unit of work is one shard; a pool of
``RewriteWorker`` actors, each loading the job's model once (``__init__``) and rewriting shard
after shard; a worker process that dies is replaced and its shard retried
(:data:`pipeline.run.TASK_MAX_RETRIES` times), after which every sample of the shard is recorded
with the failure. Each actor reserves 1 CPU and :data:`pipeline.run.TASK_MEMORY_BYTES`, plus
1 GPU when the driver sees CUDA (``torch.cuda.is_available()``): the model then runs on the
actor's GPU. A local run binds Ray to 127.0.0.1 only (:mod:`pipeline.ray_session`);
``address`` joins an existing cluster, whose nodes must see the dataset folder.

Shards whose every sample is already done are skipped without starting Ray, so a re-run after a
complete run rewrites nothing. The manifest columns are then rebuilt from every shard's metadata
and the job's reports (:func:`pipeline.rewrite.update_manifest`).
"""

from __future__ import annotations

import logging
import tarfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cals.data import MANIFEST_FILE, is_url
from pipeline.rewrite import ShardJob, manifest_values, rewrite_shard, scan_shard, shard_is_done, update_manifest
from pipeline.ray_session import ray_session
from pipeline.run import TASK_MAX_RETRIES, TASK_MEMORY_BYTES
from pipeline.prepare_shard import PARTS_DIR

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


def _clean_temp_files(dataset: Path, job: ShardJob) -> None:
    """Temp files an interrupted run left: shards beside their final names, reports, parts."""
    for folder in (dataset, dataset / f"_{job.name}", dataset / PARTS_DIR):
        for stale in folder.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)


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
    _clean_temp_files(dataset, job)
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
        reports, failures = _run_pool(dataset, job, todo, workers, address, show_progress, fail_fast, summary.samples, already)
        summary.shards_done = len(reports)
        summary.shard_failures.update(failures)
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


def _failure_detail(error: Exception) -> str:
    """``"<reason>: <last line of the error>"`` for a shard Ray gave up on."""
    import ray

    crashed = isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{'worker_crash' if crashed else 'internal_error'}: {lines[-1] if lines else type(error).__name__}"


def _worker_class():
    """The Ray actor class (built lazily so importing this module does not import Ray)."""
    import ray

    @ray.remote
    class RewriteWorker:
        def __init__(self, dataset_dir: str, job: ShardJob, device: str, progress_actor, fail_fast: bool) -> None:
            self.dataset_dir = dataset_dir
            self.job = job
            self.transform = job.start(device)
            self.progress_actor = progress_actor
            self.fail_fast = fail_fast

        def __call__(self, shard: str) -> dict[str, Any]:
            processed: list[str] = []

            def transform(raw, meta):
                processed.append(raw["__key__"])
                return self.transform(raw, meta)

            def report(samples: int, failed: int) -> None:
                self.progress_actor.add.remote(samples, failed)

            result = rewrite_shard(self.dataset_dir, shard, self.job, transform, report, self.fail_fast)
            return {**result, "processed": processed}

    return RewriteWorker


def _progress_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.samples = self.failed = 0

        def add(self, samples: int, failed: int) -> None:
            self.samples += samples
            self.failed += failed

        def snapshot(self) -> tuple[int, int]:
            return self.samples, self.failed

    return Progress.remote()


def _run_pool(dataset: Path, job: ShardJob, todo: list[str], workers: Optional[int], address: Optional[str],
              show_progress: bool, fail_fast: bool, total: int, already: int) -> tuple[dict[str, dict], dict[str, str]]:
    """Start (or join) Ray, feed ``todo`` shards to the actor pool; returns (shard → report,
    shard → failure detail)."""
    import torch

    use_gpu = torch.cuda.is_available()
    with ray_session(workers, address):
        return _feed(dataset, job, todo, workers, use_gpu, show_progress, fail_fast, total, already)


def _feed(dataset: Path, job: ShardJob, todo: list[str], workers: Optional[int], use_gpu: bool,
          show_progress: bool, fail_fast: bool, total: int, already: int) -> tuple[dict[str, dict], dict[str, str]]:
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    resource = "GPU" if use_gpu else "CPU"
    size = max(1, min(len(todo), workers or int(ray.cluster_resources().get(resource, 1))))
    worker_class = _worker_class().options(num_cpus=1, num_gpus=1 if use_gpu else 0, memory=TASK_MEMORY_BYTES)
    progress_actor = _progress_actor()
    device = "cuda" if use_gpu else "cpu"
    make_actor = lambda: worker_class.remote(str(dataset), job, device, progress_actor, fail_fast)  # noqa: E731
    actors = [make_actor() for _ in range(size)]
    queue = deque(todo)
    attempts: Counter = Counter()
    in_flight: dict[Any, tuple[int, str]] = {}
    reports: dict[str, dict] = {}
    failures: dict[str, str] = {}

    def submit(slot: int) -> None:
        if queue:
            shard = queue.popleft()
            in_flight[actors[slot].__call__.remote(shard)] = (slot, shard)

    for slot in range(size):
        submit(slot)
    columns = [
        TextColumn(f"[bold]{job.name}: samples"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress, transient=False) as bar:
        bar_id = bar.add_task(job.name, total=total, completed=already, failed=0)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0.5)
            for ref in done:
                slot, shard = in_flight.pop(ref)
                try:
                    reports[shard] = ray.get(ref)
                except ray.exceptions.RayError as error:
                    if fail_fast:
                        raise
                    if isinstance(error, ray.exceptions.RayActorError):
                        actors[slot] = make_actor()  # the process died: a fresh worker takes the slot
                        attempts[shard] += 1
                        if attempts[shard] <= TASK_MAX_RETRIES:
                            queue.appendleft(shard)
                            submit(slot)
                            continue
                    failures[shard] = f"shard {shard}: {_failure_detail(error)}"
                    log.error("shard %s failed: %s", shard, failures[shard])
                submit(slot)
            samples, failed = ray.get(progress_actor.snapshot.remote())
            bar.update(bar_id, completed=already + samples, failed=failed)
    return reports, failures
