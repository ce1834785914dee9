"""What every experiment shares: its size, how its runs train (in turn or on a cluster's workers),
and reading its results back from the store."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from rich.console import Console

from diffusion.checkpoint import imported_step
from diffusion.config import run_id_of
from diffusion.train import end_step
from flows.flows import train_on, train_seeds_task, train_task
from flows.runners import Runner
from storage.home import has_store, store_location
from storage.runs import last_stored_step
from storage.store import open_store

console = Console()
# An experiment's figures unless it names its own: file-name suffix -> diffusion.plot.plot_runs options
# (curves: metric -> line style; ylim).
FIGURES = {"": {"curves": {"train/acc": "-", "test_id/acc": "--", "test_ood/acc": ":"}}}
LOCAL = Runner()  # runs in turn, in this process: as before there were runners


@dataclasses.dataclass
class Size:
    seeds: int
    max_steps: int
    eval_every: int
    params: dict[str, Any]                  # the task world
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig overrides of this size


def train_sweep(groups: list[list], runner: Runner = LOCAL) -> list[list]:
    """Every setting's seeds (`train_seeds`: one batched model when they can be): in turn here,
    or one task per setting, side by side on a cluster's workers (`runner`, flows/runners.py).
    Results per group, in order."""
    return train_on(runner, train_seeds_task, [(cfgs,) for cfgs in groups], name="sweep")


def train_runs(cfgs: list, runner: Runner = LOCAL) -> list[dict[str, Any]]:
    """Train (or resume) every run of a sweep: in turn here, or side by side on a cluster's workers
    (`runner`, flows/runners.py). Results in `cfgs`' order, as `steps.train` returns them, less the
    runs that were trained elsewhere and imported (`imported_step`): those stay as the store has them."""
    return train_on(runner, train_task, [(cfg,) for cfg in trainable_here(cfgs)], name="sweep")


def trainable_here(cfgs: list) -> list:
    """The runs this machine can train or continue; a line for each one it leaves as stored: imported
    (trained elsewhere), or continued past this sweep's cap (`train --resume RUN max_steps=...`: training
    it under the sweep's config would record the smaller cap as the run's own)."""
    keep = []
    for cfg in cfgs:
        if (step := imported_step(cfg)) is not None:
            console.print(f"[sweep] {run_id_of(cfg)}: imported (in the store to step {step:,}, its checkpoints "
                          "are elsewhere): reported as stored, not trained")
        elif (step := last_stored_step(cfg.home, run_id_of(cfg))) and step > (cap := own_cap(cfg)):
            console.print(f"[sweep] {run_id_of(cfg)}: continued past this cap of {cap:,} (in the store "
                          f"to step {step:,}): reported as stored, not trained")
        else:
            keep.append(cfg)
    return keep


def own_cap(cfg) -> int:
    """Where a stored run ends under this sweep's config (`end_step`: the cap, or mem_multiple x the
    T_mem the store has for it when later)."""
    found = query("SELECT t_mem FROM runs WHERE run_id = ?", [run_id_of(cfg)], cfg.home) if cfg.mem_multiple else []
    return end_step(cfg, found[0][0] if found else None)


def metric_series(run_id: str, names: list[str], home: str | None) -> dict[str, list[tuple[int, float]]]:
    rows = query("SELECT name, step, value FROM metrics WHERE run_id = ? AND name IN (SELECT unnest(?::VARCHAR[]))"
                 " ORDER BY name, step", [run_id, names], home)
    out: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in rows:
        out.setdefault(name, []).append((step, value))
    return out


def training_minutes(step_times: list[tuple[int, float]], evals: list[tuple[int, float]]) -> float:
    """Minutes spent in optimisation steps (each eval's mean step time x the steps since the previous
    eval; evaluations themselves and pauses between sessions not counted)."""
    previous = dict(zip([s for s, _ in evals[1:]], [s for s, _ in evals[:-1]], strict=True))
    return sum(t * (step - previous.get(step, 0)) for step, t in step_times) / 60


def query(sql: str, params: list, home: str | None) -> list[tuple]:
    with open_store(store_location(home), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def run_status(run_id: str, home: str | None) -> str | None:
    if not has_store(home):
        return None
    rows = query("SELECT status FROM runs WHERE run_id = ?", [run_id], home)
    return rows[0][0] if rows else None


def checkpoint_of(run_id: str, home: str | None) -> str:
    return query("SELECT path FROM latest_checkpoints WHERE run_id = ?", [run_id], home)[0][0]


def train_rows(dataset_id: str, home: str | None) -> int:
    return query("SELECT count(*) FROM dataset_rows WHERE dataset_id = ? AND split = 'train'",
                 [dataset_id], home)[0][0]


def mean_std(values: list) -> str | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    steps = all(isinstance(v, int) for v in values) or abs(mean) >= 10  # counts, not accuracies
    return f"{mean:.0f} ± {std:.0f}" if steps else f"{mean:.3f} ± {std:.3f}"


def mean_std_n(values: list) -> str | None:
    """'mean ± std (n)' of the values that exist."""
    present = [v for v in values if v is not None]
    return f"{mean_std(present)} (n={len(present)})" if present else None


