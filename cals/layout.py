"""Names in a dataset folder (``OUT/<name>``, a local path or an fsspec URL), relative and
``/``-separated; the writer (:mod:`pipeline`) and the readers share them::

    <split>-NNNNNN.tar            one shard (tar_name); <split> is train, val or test
    manifest.parquet              one row per source clip (MANIFEST_FILE)
    prep.json                     command, parameters, versions, source digest (PREP_FILE)
    _parts/<shard>.parquet        the manifest rows of one complete shard (part_name)
    _parts/.<shard>.current       the clip a prep worker is on (marker_name)
    _<job>/<shard>.json           a shard job's per-sample report (report_name)
    .NAME.tmp-XXXXXXXX            a temp file beside NAME (cals.atomic.TEMP_GLOB)
"""

from __future__ import annotations

import posixpath

from cals.atomic import TEMP_GLOB

MANIFEST_FILE = "manifest.parquet"
PREP_FILE = "prep.json"
#: Folder holding one manifest part per complete shard (and the prep workers' markers).
PARTS_DIR = "_parts"
#: Disk space a local prep run holds from its start for the manifest and prep.json (released
#: just before they are written), so a disk the shards filled still takes them.
RESERVE_FILE = ".manifest-reserve"
#: What an interrupted prep run leaves and the next one removes: temp files, markers, the reserve.
PREP_TEMP_GLOBS = (TEMP_GLOB, f"{PARTS_DIR}/.*", RESERVE_FILE)


def tar_name(shard: str) -> str:
    """The shard file of shard ``shard`` (``train-000000`` → ``train-000000.tar``)."""
    return f"{shard}.tar"


def part_name(shard: str) -> str:
    """The shard's manifest rows part."""
    return f"{PARTS_DIR}/{shard}.parquet"


def marker_name(shard: str) -> str:
    """Names the clip a shard's worker is on, so the driver can blame a clip that kills it."""
    return f"{PARTS_DIR}/.{shard}.current"


def report_dir(job: str) -> str:
    """The folder of a shard job's reports (``units`` → ``_units``)."""
    return f"_{job}"


def report_name(job: str, shard: str) -> str:
    """A shard job's report on the shard file ``shard`` (``train-000000.tar``)."""
    return f"{report_dir(job)}/{posixpath.splitext(posixpath.basename(shard))[0]}.json"


def job_temp_globs(job: str) -> tuple[str, ...]:
    """What an interrupted shard job leaves: temp shards, reports and manifest parts."""
    return (TEMP_GLOB, f"{report_dir(job)}/{TEMP_GLOB}", f"{PARTS_DIR}/{TEMP_GLOB}")
