"""``cals-prep verify``: every shard decodes, every sample holds every invariant, and the
manifest and the shards agree (problems: exit 1). It also warns, without failing, on clips whose
mouth shows above the pose prior's mask line (:func:`mouth_warning`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cals.constants import MASK_LIP_MARGIN_ROWS, MASK_TOP_ROW
from cals.data import shard_paths
from cals.layout import MANIFEST_FILE, PREP_FILE
from cals.mel import MEL_PARAMS, log_mel
from cals.shard_format import check_members, check_sample, decode_sample

#: Largest |stored mel - recomputed mel| accepted (float16 storage rounds to ~1e-3 here).
MEL_TOLERANCE = 1e-2


@dataclass
class VerifyReport:
    dataset: Path
    shards: int = 0
    samples: int = 0
    frames: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def mouth_warning(meta: dict) -> str | None:
    """A warning when a sample's ``json.lip_top`` (:func:`pipeline.prepare_clip.measure_lip_top`)
    puts the top of the upper lip above ``MASK_TOP_ROW + MASK_LIP_MARGIN_ROWS`` on more than 1 %
    of its crops (its 1st percentile row is above that), or could not find it; None when the
    mouth is below the mask."""
    lip = meta.get("lip_top") or {}
    p1, limit = lip.get("p1"), MASK_TOP_ROW + MASK_LIP_MARGIN_ROWS
    if p1 is None:
        return f"lip top not measured (FaceMesh found no face on {lip.get('sampled', 0)} sampled crops)"
    if p1 < limit:
        return f"mouth above the mask: upper-lip top at row {p1:.1f} (1st percentile) < {MASK_TOP_ROW} + {MASK_LIP_MARGIN_ROWS}; the pose prior shows the lip"
    return None


def verify_dataset(dataset_dir: str | Path, check_mel: bool = True) -> VerifyReport:
    """Read every shard of ``dataset_dir`` with the cals reader and check it against the manifest."""
    import pandas as pd
    import webdataset as wds

    dataset = Path(dataset_dir)
    report = VerifyReport(dataset)
    if not (dataset / MANIFEST_FILE).is_file():
        report.problems.append(f"{dataset / MANIFEST_FILE} is missing (not a cals-prep output, or the run never finished)")
        return report
    if not (dataset / PREP_FILE).is_file():
        report.problems.append(f"{dataset / PREP_FILE} is missing")
    manifest = pd.read_parquet(dataset / MANIFEST_FILE)
    if manifest["key"].duplicated().any():
        report.problems.append(f"manifest repeats keys: {manifest.loc[manifest['key'].duplicated(), 'key'].tolist()[:5]}")
    expected = {row.key: row for row in manifest.itertuples() if row.status == "ok"}
    seen: Counter = Counter()
    try:
        shards = shard_paths(dataset)
    except FileNotFoundError:
        shards = []
    for shard in shards:
        report.shards += 1
        name = Path(shard).name
        split = name.rsplit("-", 1)[0]
        try:
            for raw in wds.WebDataset([shard], shardshuffle=False, empty_check=False):
                key = raw["__key__"]
                seen[key] += 1
                try:
                    corrupt = check_members(raw)
                    if corrupt:
                        report.problems.extend(f"{name}:{key}: {p}" for p in corrupt)
                        continue
                    sample = decode_sample(raw)
                except Exception as error:  # noqa: BLE001 - a report lists every problem
                    report.problems.append(f"{name}:{key}: does not decode: {error}")
                    continue
                report.samples += 1
                report.frames += sample.num_frames
                report.problems.extend(f"{name}:{key}: {p}" for p in check_sample(sample))
                warning = mouth_warning(sample.meta)
                if warning:
                    report.warnings.append(f"{name}:{key}: {warning}")
                if sample.meta.get("split") != split:
                    report.problems.append(f"{name}:{key}: split {sample.meta.get('split')!r} in a {split!r} shard")
                if sample.meta.get("mel_params") != MEL_PARAMS.to_dict():
                    report.problems.append(f"{name}:{key}: mel parameters differ from this code's")
                elif check_mel and sample.audio.size:
                    error_max = float(np.abs(log_mel(sample.audio) - sample.mel.astype(np.float32)).max())
                    if error_max > MEL_TOLERANCE:
                        report.problems.append(f"{name}:{key}: stored mel differs from the audio's mel by {error_max:.3g}")
                row = expected.get(key)
                if row is None:
                    report.problems.append(f"{name}:{key}: in a shard but not an ok row of the manifest")
                elif row.shard != name or row.num_frames != sample.num_frames:
                    report.problems.append(f"{name}:{key}: manifest says shard {row.shard}, {row.num_frames} frames")
        except Exception as error:  # noqa: BLE001
            report.problems.append(f"{name}: shard does not read: {error}")
    report.problems.extend(f"{key}: appears {n} times in the shards" for key, n in seen.items() if n > 1)
    report.problems.extend(f"{key}: ok in the manifest but in no shard" for key in sorted(set(expected) - set(seen)))
    return report
