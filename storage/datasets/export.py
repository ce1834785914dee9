"""A snapshot's export directory: Parquet per split, meta.json, the Hugging Face `DatasetDict`
and its dataset card (README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import shared
from storage.datasets.spec import ROW_SCHEMA, SPLITS


def write_export(rows: pa.Table, meta: dict, out: Path, formats: tuple[str, ...] = ("parquet", "hf")) -> Path:
    """The snapshot directory: meta.json, <split>.parquet, hf/ (DatasetDict) and README.md."""
    out.mkdir(parents=True, exist_ok=True)
    parts = {s: rows.filter(pc.equal(rows["split"], s)).cast(ROW_SCHEMA) for s in SPLITS}
    if "parquet" in formats:
        for split, part in parts.items():
            pq.write_table(part, out / f"{split}.parquet")
        (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (out / "README.md").write_text(dataset_card(meta))
    if "hf" in formats:
        from datasets import Dataset, DatasetDict
        from datasets.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        hf_dir = out / "hf" if "parquet" in formats else out
        quiet = are_progress_bars_disabled()
        disable_progress_bars()   # three bars per export for a few thousand rows is noise
        try:
            # One shard per split: datasets writes an empty split as zero shards and cannot load it back.
            DatasetDict({s: Dataset(part) for s, part in parts.items()}).save_to_disk(
                str(hf_dir), num_shards={s: 1 for s in parts})
        finally:
            if not quiet:
                enable_progress_bars()
    return out


def publish_snapshot(export_dir: str | Path, shared_home: str) -> str:
    """The snapshot's export on the shared home (<shared_home>/datasets/<dataset_id>, storage/shared.py),
    for trainers on other machines: every file as a whole object, meta.json last (a reader takes the
    export as complete only with it). Published once: the same id is the same rows."""
    export_dir = Path(export_dir)
    url = shared.join(shared_home, "datasets", export_dir.name)
    if not shared.exists(shared.join(url, "meta.json")):
        shared.publish_dir(export_dir, url, last="meta.json")
    return url


def dataset_card(meta: dict) -> str:
    """A Hugging Face dataset card: YAML header (the parquet files as splits), counts, the spec."""
    clusters = meta["clusters"]
    names = sorted({c for s in ("pool", *SPLITS) for c in clusters.get(s, {})})
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[f"  - split: {s}\n    path: {s}.parquet" for s in SPLITS],
        "---",
        "",
        f"# {meta.get('name') or meta['dataset_id']}",
        "",
        f"grokloop dataset snapshot `{meta['dataset_id']}` of task family `{meta['family']}` "
        f"({json.dumps(meta['family_params'], sort_keys=True)}).",
        "Train rows are verified agent answers, cluster-balanced; `test_id` / `test_ood` are the "
        "family's test tasks with canonical answers. `pool` is the train pool before dedup and balancing.",
        "",
        "## Counts per cluster and split",
        "",
        "| cluster | pool | " + " | ".join(SPLITS) + " |",
        "|---|---:|" + "---:|" * len(SPLITS),
        *[f"| {c} | " + " | ".join(str(clusters.get(s, {}).get(c, 0)) for s in ("pool", *SPLITS)) + " |"
          for c in names],
        "| **total** | " + " | ".join(str(sum(clusters.get(s, {}).values())) for s in ("pool", *SPLITS)) + " |",
        "",
        "## Curation",
        "",
        "| stage | rows |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in meta["counts"].items()],
        "",
        "## Spec",
        "",
        "```json",
        json.dumps(meta["spec"], indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
