"""Accuracy: the task family's verifier on the decoded answer. One definition, used by training
metrics (`estimate`, and `evaluation`: one evaluation as the training loops record it), checkpoint
evaluation and the experiments' tables.

Per split it reports (names as in the store's `evaluations.split` / `metrics.name` without "/acc"):
    <split>                  verified accuracy over the split's rows
    <split>/exact            exact match to the one canonical answer (a second, stricter measure)
    <split>_<kind>           per kind of row where a split mixes kinds (two_hop: train_atomic, train_inferred)
    <split>/cluster:<name>   per curation cluster, from this split's rows only (a held-out claim
                             reads test_id/cluster:..., never a mix with memorised train rows)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.tasks import SPLITS, TaskFamily, Tokenizer
from diffusion.checkpoint import checkpoint_meta, load_model, resolve_checkpoint
from diffusion.config import TrainConfig
from diffusion.data import (
    EncodedSplit,
    family_from_params,
    splits_from_family,
    splits_from_snapshot,
)
from diffusion.grokfast import slow_part
from diffusion.objective import never_predict_mask, objective_loss
from diffusion.sample import answer_columns, exact_match, predict, sampler_info
from storage.home import is_url
from storage.runs import record_evaluation


def checkpoint_splits(meta: dict):
    """(tokenizer, splits) the checkpoint was trained on: its snapshot if still there, else its family."""
    if meta.get("dataset") and (is_url(meta["dataset"]) or Path(meta["dataset"]).is_dir()):
        tokenizer, splits, _ = splits_from_snapshot(meta["dataset"])
        return tokenizer, splits
    return splits_from_family(meta["family"], meta["family_params"])


def answers_correct(family: TaskFamily, tokenizer: Tokenizer, split: EncodedSplit,
                    pred: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the family's verifier accepts row i's decoded answer (`pred`: filled rows (N, T)).
    A correct answer that is not the canonical one counts (programs: another program with the same
    behaviour on the examples)."""
    if split.tasks is None:
        raise ValueError("rows without tasks cannot be verified; build them with splits_from_family / "
                         "splits_from_snapshot")
    answers = pred[:, answer_columns(split.answer_mask)].tolist() if len(split) else []
    return torch.tensor([family.verify(task, tokenizer.decode_answer(ids))
                         for task, ids in zip(split.tasks, answers, strict=True)], dtype=torch.bool)


def split_accuracy(family: TaskFamily, tokenizer: Tokenizer, name: str, split: EncodedSplit,
                   pred: torch.Tensor) -> dict[str, tuple[int, float]]:
    """{group: (n, accuracy)} of one split's filled rows: the split, its exact match, its kinds (where
    it mixes several) and its clusters; every group from this split's rows only."""
    correct = answers_correct(family, tokenizer, split, pred)
    exact = exact_match(pred, split.ids, split.answer_mask)
    out = {name: (len(split), float(correct.float().mean())),
           f"{name}/exact": (len(split), float(exact.float().mean()))}
    groups: dict[str, list[bool]] = {}
    kinds = [family.kind_of(t) for t in split.tasks]
    if len(set(kinds)) > 1:
        for kind, ok in zip(kinds, correct.tolist(), strict=True):
            groups.setdefault(f"{name}_{kind}", []).append(ok)
    for cluster, ok in zip(split.clusters, correct.tolist(), strict=True):
        if cluster is not None:
            groups.setdefault(f"{name}/cluster:{cluster}", []).append(ok)
    for group, oks in sorted(groups.items()):
        out[group] = (len(oks), sum(oks) / len(oks))
    return out


def loss_and_prediction(
    objective: str, model, ids: torch.Tensor, answer_mask: torch.Tensor, mask_id: int, *,
    full_sequence: bool = False, estimator: str = "count", generator: torch.Generator | None = None,
    n_steps: int = 1, threshold: float = 0.95, batch_size: int = 8192,
) -> tuple[float, torch.Tensor]:
    """(mean loss, filled rows) of a set of evaluation rows, at the cost of one forward pass per batch
    where the answer is one token: masked diffusion's count-estimator loss on a one-token answer masks
    exactly that token, which is also the sampler's only input (its greedy answer is the argmax), and
    the AR loss's teacher-forced logits already predict a last-column answer. Longer answers (or the
    1/t estimator, or a full-sequence loss) go through the objective and the sampler as usual."""
    cols = answer_columns(answer_mask)
    last = ids.shape[1] - 1
    one_pass = len(cols) == 1 and not full_sequence and (
        (objective == "mdm" and estimator == "count") or (objective == "ar" and int(cols[0]) == last))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if not one_pass:
                total = 0.0
                for start in range(0, len(ids), batch_size):
                    chunk, mask = ids[start:start + batch_size], answer_mask[start:start + batch_size]
                    total += float(objective_loss(objective, model, chunk, mask, mask_id, full_sequence=full_sequence,
                                                  estimator=estimator, generator=generator)) * len(chunk)
                pred = predict(objective, model, ids, answer_mask, mask_id=mask_id, n_steps=n_steps,
                               threshold=threshold, batch_size=batch_size)
                return total / max(len(ids), 1), pred
            col, pred, total = int(cols[0]), ids.clone(), 0.0
            for start in range(0, len(ids), batch_size):
                chunk = ids[start:start + batch_size]
                if objective == "mdm":
                    noisy = chunk.clone()
                    noisy[:, col] = mask_id
                    logits = never_predict_mask(model(noisy)[:, col], mask_id)  # (B, V)
                else:  # position col - 1 predicts col
                    logits = never_predict_mask(model(chunk[:, :-1], causal=True)[:, col - 1], mask_id)
                total += float(F.cross_entropy(logits, chunk[:, col], reduction="sum"))
                pred[start:start + batch_size, col] = logits.argmax(-1)
            return total / max(len(ids), 1), pred
    finally:
        model.train(was_training)


def accuracy_by_split(
    objective: str, model, splits: dict[str, EncodedSplit], family: TaskFamily, tokenizer: Tokenizer, *,
    n_steps: int, threshold: float = 0.95, loss_seed: int | None = None, full_sequence: bool = False,
    estimator: str = "count", predictions: dict[str, torch.Tensor] | None = None,
) -> dict[str, tuple[int, float]]:
    """`split_accuracy` of every non-empty split, answers filled by the model (greedy). With `loss_seed`,
    also each split's loss ("<split>/loss", its noise seeded by loss_seed), at no extra forward pass
    where the answer is one token (`loss_and_prediction`). `predictions`: filled with each split's rows."""
    out = {}
    device = next(model.parameters()).device
    for name, split in splits.items():
        if len(split) == 0:
            continue
        ids, answer_mask = split.ids.to(device), split.answer_mask.to(device)
        if loss_seed is None:
            pred = predict(objective, model, ids, answer_mask, mask_id=tokenizer.mask_id, n_steps=n_steps,
                           threshold=threshold)
        else:
            loss, pred = loss_and_prediction(
                objective, model, ids, answer_mask, tokenizer.mask_id, full_sequence=full_sequence,
                estimator=estimator, generator=torch.Generator().manual_seed(loss_seed), n_steps=n_steps,
                threshold=threshold)
            out[f"{name}/loss"] = (len(split), loss)
        out.update(split_accuracy(family, tokenizer, name, split, pred.cpu()))
        if predictions is not None:
            predictions[name] = pred.cpu()
    return out


def estimate(cfg: TrainConfig, model, splits: dict[str, EncodedSplit], family: TaskFamily, tokenizer: Tokenizer,
             step: int) -> dict[str, float]:
    """Training metrics of a run's evaluation rows (`splits` holds only those): each split's loss, with
    the same noise at the same step, and verified accuracy ("<group>/acc", exact match as is) with the
    rows it is over ("<split>/n": the store alone then gives each accuracy's standard error); the
    weights' norm."""
    groups = accuracy_by_split(cfg.objective, model, splits, family, tokenizer, n_steps=cfg.sampler_steps,
                               threshold=cfg.sampler_threshold, loss_seed=cfg.seed * 1_000_003 + step,
                               full_sequence=cfg.full_sequence, estimator=cfg.mdm_estimator)
    out = {g if g.endswith(("/loss", "/exact")) else f"{g}/acc": value for g, (_, value) in groups.items()}
    out.update({f"{name}/n": float(len(split)) for name, split in splits.items() if len(split)})
    out["weight_norm"] = global_norm([p.detach() for p in model.parameters()])
    return out


def global_norm(tensors: list[torch.Tensor]) -> float:
    """The L2 norm of all these tensors together (of the weights, of a gradient)."""
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))) if tensors else 0.0


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint_dir: str | Path, *, splits: Sequence[str] = SPLITS, n_steps: int | None = None,
    home: str | Path | None = None, answers: str | Path | None = None,
) -> dict[str, float]:
    """{group: accuracy} for the checkpoint over every row of each split (see the module docstring for
    the groups), written to `evaluations` (one row per group). `answers`: also every row's answer, the
    model's and whether the verifier took it, to this Parquet file (which rows it gets wrong, in SQL:
    `grokloop sql --table answers=FILE`)."""
    checkpoint_dir = resolve_checkpoint(checkpoint_dir, home)
    meta = checkpoint_meta(checkpoint_dir)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; known: {', '.join(SPLITS)}")
    n_steps = n_steps or meta.get("sampler_steps", 8)
    threshold = meta.get("sampler_threshold", 0.95)
    tokenizer, data = checkpoint_splits(meta)
    family = family_from_params(meta["family"], meta["family_params"])
    model = load_model(checkpoint_dir)
    predictions: dict[str, torch.Tensor] = {}
    results = accuracy_by_split(meta["objective"], model, {s: data[s] for s in splits}, family, tokenizer,
                                n_steps=n_steps, threshold=threshold, predictions=predictions)
    if answers:
        write_answers(answers, meta, family, tokenizer, {s: data[s] for s in predictions}, predictions)
    sampler = json.dumps(sampler_info(meta["objective"], n_steps, threshold=threshold))
    names = list(results)
    rows = [{"run_id": meta["run_id"], "step": meta["step"], "family": meta["family"], "split": s,
             "n": results[s][0], "accuracy": results[s][1], "sampler": sampler} for s in names]
    record_evaluation(home, meta["run_id"], rows)  # a busy store: they wait in the run directory
    return {s: acc for s, (_, acc) in results.items()}


def write_answers(path: str | Path, meta: dict, family: TaskFamily, tokenizer: Tokenizer,
                  splits: dict[str, EncodedSplit], predictions: dict[str, torch.Tensor]) -> Path:
    """A row per evaluated task: split, task id, cluster, operation, prompt, the canonical answer, the
    model's answer and whether the verifier accepts it (symbols joined by spaces)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for name, split in splits.items():
        answered = predictions[name][:, answer_columns(split.answer_mask)].tolist()
        correct = answers_correct(family, tokenizer, split, predictions[name]).tolist()
        rows += [{"run_id": meta["run_id"], "step": meta["step"], "split": name, "task_id": task.task_id,
                  "cluster": cluster, "operation": task.operation, "prompt": " ".join(task.prompt),
                  "answer": " ".join(task.answer), "predicted": " ".join(tokenizer.decode_answer(ids)),
                  "correct": ok}
                 for task, cluster, ids, ok in zip(split.tasks, split.clusters, answered, correct, strict=True)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# --- evaluation during training ------------------------------------------------------------------

def evaluation(cfg: TrainConfig, model: torch.nn.Module, eval_splits: dict[str, EncodedSplit], family: TaskFamily,
               tokenizer: Tokenizer, step: int, lr: float, accum: dict, diagnostics: dict,
               t_mem: int | None, t_grok: int | None, board) -> tuple[dict[str, float], int | None, int | None]:
    """One evaluation as every loop records it (`train`, and each run of `train_batched`): the
    estimate, lr, the mean batch loss and step time since the last one, the update's diagnostics;
    T_mem and T_grok set when first reached; mirrored to TensorBoard."""
    metrics = estimate(cfg, model, eval_splits, family, tokenizer, step)
    metrics["lr"] = lr
    if accum["n"]:
        metrics["train/batch_loss"] = accum["loss"] / accum["n"]
        metrics["step_time"] = accum["time"] / accum["n"]
    metrics.update(diagnostics)
    if t_mem is None and metrics.get(memorized_metric(family, metrics), 0.0) >= cfg.mem_threshold:
        t_mem = step
    if t_grok is None and metrics.get("test_id/acc", 0.0) >= cfg.grok_threshold:
        t_grok = step
    if board is not None:  # rank 0's (distributed.py)
        for name, value in sorted(metrics.items()):
            board.add_scalar(name, value, step)
        board.flush()
    return metrics, t_mem, t_grok


def held_since(cfg: TrainConfig, metrics: dict[str, float], step: int, since: int | None) -> int | None:
    """The first of the evaluations, up to this one, that have all had test ID at the grok threshold;
    None while this one is below. The patience rule counts from it: a curve that crosses 95% and falls
    back starts over, so a run stops on grokking it has kept, not on a first crossing."""
    if metrics.get("test_id/acc", 0.0) < cfg.grok_threshold:
        return None
    return step if since is None else since


def memorized_metric(family: TaskFamily, metrics: dict[str, float]) -> str:
    """What T_mem is measured on: the rows that must be memorised (two_hop: inferred train facts)."""
    kind = f"train_{family.memorized_kind}/acc"
    return kind if kind in metrics else "train/acc"


def update_diagnostics(cfg: TrainConfig, model: torch.nn.Module, filter_state, clip_norm: torch.Tensor | None) -> dict:
    """grad_norm (the raw gradient) and grokfast/filter_ratio (|added| / |raw|) of the last update, read
    at eval time off the gradients it left and the filter's state, so the step itself does no extra work."""
    params = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    if not params:
        return {}
    # p.grad is the filtered gradient, scaled by clipping when it clipped
    scale = min(1.0, cfg.grad_clip / (float(clip_norm) + 1e-6)) if cfg.grad_clip and clip_norm is not None else 1.0
    added = slow_part(filter_state, cfg.grokfast, cfg.grokfast_lamb, cfg.grokfast_filter,
                      window_size=cfg.grokfast_window) if cfg.grokfast != "none" else {}
    with torch.no_grad():
        raw = [p.grad / scale - added[n] if n in added else p.grad / scale for n, p in params]
        raw_norm = global_norm(raw)
        out = {"grad_norm": raw_norm}
        if added:
            out["grokfast/filter_ratio"] = global_norm(list(added.values())) / max(raw_norm, 1e-12)
    return out
