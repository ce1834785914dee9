"""Exact-match accuracy of a checkpoint per split (and per cluster), recorded in `evaluations`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.tasks import SPLITS
from diffusion.data import EncodedSplit, splits_from_family, splits_from_snapshot
from diffusion.sample import exact_match, predict, sampler_info
from storage.home import runs_dir
from storage.runs import record_evaluation


def resolve_checkpoint(ref: str | Path, home: str | Path | None = None) -> Path:
    """A checkpoint directory from a step directory, a run directory or a run id (its latest)."""
    from diffusion.train import latest_checkpoint

    path = Path(ref)
    if (path / "grokloop.json").is_file():
        return path
    for run_dir in (path, runs_dir(home) / str(ref)):
        if (run_dir / "latest").is_file():
            found = latest_checkpoint(run_dir)
            if found is not None:
                return found
    raise FileNotFoundError(f"{ref!r} is neither a checkpoint directory nor a run with a checkpoint "
                            f"(looked under {runs_dir(home)})")


def checkpoint_meta(checkpoint_dir: str | Path) -> dict:
    """What a checkpoint is: run_id, step, objective, family, family_params, dataset, sampler_steps."""
    path = Path(checkpoint_dir) / "grokloop.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a grokloop checkpoint (no grokloop.json)")
    return json.loads(path.read_text())


def checkpoint_splits(meta: dict):
    """(tokenizer, splits) the checkpoint was trained on: its snapshot if still there, else its family."""
    if meta.get("dataset") and Path(meta["dataset"]).is_dir():
        tokenizer, splits, _ = splits_from_snapshot(meta["dataset"])
        return tokenizer, splits
    return splits_from_family(meta["family"], meta["family_params"])


def accuracy_by_split(
    objective: str, model, splits: dict[str, EncodedSplit], mask_id: int, *, n_steps: int,
    threshold: float = 0.95,
) -> dict[str, tuple[int, float]]:
    """{split or "cluster:<name>": (n, accuracy)} over every row."""
    out, by_cluster = {}, {}
    for name, split in splits.items():
        if len(split) == 0:
            continue
        pred = predict(objective, model, split.ids, split.answer_mask, mask_id=mask_id, n_steps=n_steps,
                       threshold=threshold)
        correct = exact_match(pred, split.ids, split.answer_mask)
        out[name] = (len(split), float(correct.float().mean()))
        for cluster, ok in zip(split.clusters, correct.tolist(), strict=True):
            if cluster is not None:
                by_cluster.setdefault(cluster, []).append(ok)
    for cluster, oks in sorted(by_cluster.items()):
        out[f"cluster:{cluster}"] = (len(oks), sum(oks) / len(oks))
    return out


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint_dir: str | Path, *, splits: Sequence[str] = SPLITS, n_steps: int | None = None,
    home: str | Path | None = None,
) -> dict[str, float]:
    """{split: accuracy} for the checkpoint, written to `evaluations` (one row per split)."""
    from diffusion.train import load_model

    checkpoint_dir = resolve_checkpoint(checkpoint_dir, home)
    meta = checkpoint_meta(checkpoint_dir)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {', '.join(SPLITS)}")
    n_steps = n_steps or meta.get("sampler_steps", 8)
    threshold = meta.get("sampler_threshold", 0.95)
    tokenizer, data = checkpoint_splits(meta)
    model = load_model(checkpoint_dir)
    results = accuracy_by_split(meta["objective"], model, {s: data[s] for s in splits},
                                tokenizer.mask_id, n_steps=n_steps, threshold=threshold)
    sampler = json.dumps(sampler_info(meta["objective"], n_steps, threshold=threshold))
    names = list(results)
    rows = [{"run_id": meta["run_id"], "step": meta["step"], "family": meta["family"], "split": s,
             "n": results[s][0], "accuracy": results[s][1], "sampler": sampler} for s in names]
    record_evaluation(home, meta["run_id"], rows)  # a busy store: they wait in the run directory
    return {s: acc for s, (_, acc) in results.items()}
