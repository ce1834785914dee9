"""`grokloop experiment clusters`: a cluster-balanced snapshot that groks; one cluster removed from
train, then k of its examples added back; the removed cluster's test accuracy over the run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from flows import steps
from flows.cli_output import markdown_table
from flows.config import LoopConfig
from flows.experiments.common import (
    LOCAL,
    Size,
    console,
    has_store,
    mean_std_n,
    metric_series,
    query,
    train_runs,
    training_minutes,
)
from flows.runners import Runner
from storage.home import store_location

# The CPU size's recipe; why this one is CPU_SIZE_REASON (written into docs/results/clusters.md).
CLUSTER_TRAIN = {"init": "torch", "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1.0, "grokfast": "none",
                 "mdm_estimator": "count", "batch_size": 256, "eval_schedule": "log", "keep_checkpoints": 1,
                 "progress": False}
CLUSTER_SIZES = {
    "quick": Size(seeds=1, max_steps=40, eval_every=20,
                  params={"p": 11, "operations": ["x+y", "x-y", "x*y"], "train_fraction": 0.6},
                  train={"batch_size": 64, "hidden_size": 32, "eval_max_rows": 256, "patience": 20}),
    "full": Size(seeds=3, max_steps=10000, eval_every=100,
                 params={"p": 47, "operations": ["x+y", "x-y", "x*y"], "train_fraction": 0.5},
                 train={"eval_max_rows": 3000, "patience": 500}),
}
# The cluster removed, unless --held-out names another: x-y, whose positive control (half of its rows back)
# groks; x*y's stalls at 28% (docs/results/clusters_xtimesy/), so small k there cannot tell a removed
# cluster from too few of its rows.
HELD_OUT = "x-y"


def figures(held_out: str | None = None, variants: list[str] | None = None) -> dict:
    """The plots: every run's curves, the held-out cluster's own test accuracy among them; and that
    accuracy against how many of its training rows each variant has (`_rows`), where a variant removes it."""
    held_out = held_out or HELD_OUT
    curves = {"": {"curves": {"train/acc": "-", "test_id/acc": "--", f"test_id/cluster:{held_out}/acc": ":"}}}
    if variants == ["balanced"]:
        return curves
    return curves | {"_rows": lambda table, path: plot_rows_back(table, held_out, path)}


def plot_rows_back(table: list[dict], held_out: str, path: Path) -> Path:
    """The held-out cluster's test accuracy (best over the run, and at its end) against its training rows
    in the snapshot, a point per run, the mean of the best as a line: where between 0 and all of its
    rows it starts to be learnt."""
    import matplotlib.pyplot as plt

    rows, best, last = (np.array([r[k] for r in table], dtype=float)
                        for k in (f"{held_out}_train_rows", f"best_{held_out}_acc", f"{held_out}_acc"))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(rows, best, marker="o", facecolors="none", edgecolors="C0", label="best over the run")
    ax.scatter(rows, last, marker="x", color="C1", label="at the end of the run")
    xs = np.unique(rows)
    ax.plot(xs, [best[rows == x].mean() for x in xs], color="C0", alpha=0.6, label="mean of the best")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8, label="95% (grokked)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel=f"{held_out} training rows in the snapshot (0 = removed)", ylabel=f"{held_out} test accuracy",
           xlim=(-0.3, 1.5 * max(rows.max(), 1)), ylim=(-0.02, 1.02),
           title=f"{held_out} removed, then rows of it back ({len(table)} runs)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

CPU_SIZE_REASON = (
    "Why this size: three operations mod 47, half of each table for training, chosen by probes on this CPU "
    "(balanced, seed 0). The main job's recipe (Adam with L2 0.005), which groks `x*y mod 97` alone, stays at "
    "chance with two or three operations at p = 97 (the first full-size run: 5,125 steps at chance). AdamW with "
    "weight decay 1.0 (Power et al. 2022) at lr 1e-3 learns, slowly: 46% test at step 3,000 at p = 97 (half for "
    "training, batch 512), 55% at p = 47 (70% for training, batch 256); the latter at lr 3e-3 reached 93% by "
    "step 1,500. So: AdamW lr 3e-3, weight decay 1.0, PyTorch's init, no filter, masked diffusion with the "
    "`count` estimator, width 128, 2 layers, batch 256. Half, not 70%: at 70% (`docs/results/clusters_tf07/`, "
    "n = 3) the balanced run's test accuracy rose with its train accuracy (T_grok within 1.1x of T_mem), so "
    "there was no late generalisation for a removed cluster to miss; at half, a probe held train >= 94% from "
    "step 500 with test at 27-39% until step 2,300, then reached 95% test at 4,300. The cap, 10,000 steps: "
    "1.5x or more the balanced run's T_grok on this data (4,700 to 6,600 steps, seeds 0-2).")
CLUSTER_KS = (1, 4, 16, 64)
# Shares of the removed cluster's training rows added back: 1% (Carvalho et al.); 10%, 15% and 25%, to
# place how many rows it takes between k = 64 and half; and half, the positive control (does the removed
# cluster grok with enough of it back?).
CLUSTER_SHARES = (0.01, 0.1, 0.15, 0.25, 0.5)


def cluster_plan(size: Size, home: str | None, runner: Runner = LOCAL, collect: bool = True,
                 held_out: str = HELD_OUT, variants: list[str] | None = None,
                 settings: dict[str, Any] | None = None) -> tuple[list, dict]:
    """([(variant, seed, snapshot, TrainConfig)], the balanced snapshot) of every run of the grid, seed by
    seed (an interrupted grid has every variant at its first seeds rather than some at all three).
    `collect`: the agents collect, the store ingests and the snapshots are built first (the same tasks each
    time); without it, the snapshots the store has are read (`--report-only`). `variants`: only
    these (names as `variant_names` gives them). `settings`: training settings changed from the recipe for
    every run; they go into the run names (`clusters-k1-grad_clip1.0-s0-...`), so the grid's runs stay."""
    cfg = LoopConfig(home=home, **runner.loop_settings(), families=["modular"], family_params={"modular": size.params},
                     n_agents=2, episodes=_episodes_to_cover(size.params), policy="solver",
                     cluster_method="column", cluster_column="operation",
                     train_overrides={**CLUSTER_TRAIN, "max_steps": size.max_steps, "eval_every": size.eval_every,
                                      **size.train})
    if collect:
        steps.collect_once(cfg, "modular")
        balanced = steps.curate(cfg, "modular", name="clusters-balanced")
    else:  # report only: the snapshots the store describes (trained here, or come with imported runs)
        balanced = steps.stored_snapshot(cfg, "modular", "clusters-balanced")
        if balanced is None:  # its counts give the shares' k: a page's Parquet has it when it has balanced runs
            raise ValueError(f"no clusters-balanced snapshot of modular {size.params} in the store: run the "
                             "experiment, or import the runs of a page with balanced runs (grokloop import-runs "
                             "docs/results/.../clusters_runs.parquet)")
    grid = [("balanced", None), ("held out", 0)] + [(f"k={k}", k) for k in CLUSTER_KS] \
        + [(f"{share:.0%} (k={_share(balanced, share, held_out)})", _share(balanced, share, held_out))
           for share in CLUSTER_SHARES]
    if variants:
        grid = [(label, keep_k) for label, keep_k in grid if label.split(" (")[0] in variants]
    names = {label: f"clusters-heldout-{_slug(held_out)}-k{keep_k}" for label, keep_k in grid if keep_k is not None}
    snaps = {label: balanced if keep_k is None
             else steps.curate(cfg, "modular", holdout=[held_out], keep_k=keep_k, name=names[label]) if collect
             else steps.stored_snapshot(cfg, "modular", names[label])
             for label, keep_k in grid}
    snaps = {label: snap for label, snap in snaps.items() if snap is not None}  # report only: as far as it got
    settings = settings or {}
    tag = "".join(f"-{_slug(f'{key}{value}')}" for key, value in settings.items())
    # The patience rule watches overall test accuracy, which a removed cluster learnt in part lets a run
    # cross (15% back: stopped with it at 90%): only the balanced runs stop early, the others run to the cap.
    return [(label, seed, snap, steps.train_config(cfg, "modular", snap["path"], seed=seed,
                                                   run_name=f"clusters-{_slug(label)}{tag}-s{seed}-{snap['dataset_id'][:8]}",
                                                   **({} if snap is balanced else {"patience": 0}), **settings))
            for seed in range(size.seeds) for label, snap in snaps.items()], balanced


def clusters(size: Size, home: str | None, runner: Runner = LOCAL, report_only: bool = False,
             train_fraction: float | None = None, held_out: str | None = None, variants: list[str] | None = None,
             settings: str = "") -> tuple[list[dict], dict[str, str], str]:
    """A cluster-balanced snapshot; one operation's cluster (`held_out`, default `x-y`) removed from train;
    then k = 1, 4, 16, 64 of its examples (and 1%, 10%, 15%, 25% and half of them) added back. Every variant x seed trains
    (continued from its checkpoint when it has one); the held-out cluster's TEST accuracy is logged at every
    evaluation. `report_only`: train nothing, report what the store has. `train_fraction`: of each
    operation's table, instead of the size's (another task world: its own tasks, snapshots and runs).
    Another `held_out` shares the balanced runs (same snapshot, same run names) and trains the rest.
    `variants`: a subset of the grid. `settings`: "key=value ..." training settings changed for every run
    (runs of their own: the names carry them)."""
    if train_fraction is not None:
        if not 0 < train_fraction < 1:
            raise ValueError(f"--train-fraction must be in (0, 1), got {train_fraction:g}")
        size = dataclasses.replace(size, params={**size.params, "train_fraction": train_fraction})
    held_out = held_out or HELD_OUT
    if held_out not in size.params["operations"]:
        raise ValueError(f"--held-out must be one of the operations {', '.join(size.params['operations'])}, "
                         f"got {held_out!r}")
    if report_only and not has_store(home):
        raise ValueError(f"nothing to report: no store at {store_location(home)} (run the experiment first)")
    unknown = [v for v in variants or [] if v not in variant_names()]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; variants: {', '.join(variant_names())}")
    changed = grid_settings(settings.split())
    plan, balanced = cluster_plan(size, home, runner, collect=not report_only, held_out=held_out,
                                  variants=variants, settings=changed)
    train_cfgs = [tcfg for *_, tcfg in plan]
    if not report_only:
        train_runs(train_cfgs, runner)
    table, runs = [], {}
    for label, seed, snap, tcfg in plan:
        progress = query("SELECT status, step, test_id_acc, t_mem, t_grok, t_grok_held FROM run_progress "
                         "WHERE run_id = ?",
                         [tcfg.run_name], home) if has_store(home) else []
        if not progress or progress[0][1] is None:  # not trained, or no evaluation yet
            continue
        (status, step, test_id_acc, t_mem, t_grok, t_grok_held), = progress
        # Held-out claims from test rows only: the cluster's accuracy on test_id, never mixed with its
        # (memorised) train rows, at every evaluation of the run.
        (groks_at, kept, best, final, others_at, others_kept, others_lowest), = query(
            "SELECT groks_at, kept, best, final_acc, others_groks_at, others_kept, others_lowest_after "
            "FROM cluster_grokking WHERE run_id = ? AND cluster = ?", [tcfg.run_name, held_out], home) or [(None,) * 7]
        series = metric_series(tcfg.run_name, ["step_time", "test_id/acc"], home)
        table.append({"variant": label, "seed": seed, "run_id": tcfg.run_name, "status": status,
                      "step": step, "train_rows": snap["counts"]["train"],
                      f"{held_out}_train_rows": snap["clusters"]["train"].get(held_out, 0),
                      "test_id_acc": test_id_acc,
                      f"{held_out}_acc": final, f"best_{held_out}_acc": best, f"{held_out}_groks_at": groks_at,
                      f"{held_out}_kept": kept,
                      "others_grok_at": others_at, "others_kept": others_kept, "others_lowest": others_lowest,
                      "t_mem": t_mem, "t_grok": t_grok, "t_grok_held": t_grok_held,
                      "train_min": training_minutes(series.get("step_time", []), series.get("test_id/acc", []))})
        runs[tcfg.run_name] = label  # every seed, a panel a variant
        console.print(f"[clusters] {label} seed {seed}: {status} at {table[-1]['step']}, held-out cluster test "
                      f"acc {table[-1][f'{held_out}_acc']}, overall {table[-1]['test_id_acc']}")
    summary = []
    for label in dict.fromkeys(r["variant"] for r in table):
        group = [r for r in table if r["variant"] == label]
        groks = [r[f"{held_out}_groks_at"] for r in group if r[f"{held_out}_groks_at"] is not None]
        summary.append({"variant": label, "finished": f"{sum(r['status'] == 'finished' for r in group)}/{len(group)}",
                        f"{held_out}_train_rows": group[0][f"{held_out}_train_rows"],
                        **{k: mean_std_n([r[k] for r in group]) for k in
                           ("test_id_acc", "others_grok_at", "others_kept", "others_lowest", f"{held_out}_acc",
                            f"best_{held_out}_acc", "t_mem", "t_grok")},
                        "held": f"{sum(r['t_grok_held'] is not None for r in group)}/{len(group)}",
                        f"{held_out}_grokked": f"{len(groks)}/{len(group)}",
                        f"{held_out}_groks_at": mean_std_n(groks),
                        f"{held_out}_kept": mean_std_n([r[f"{held_out}_kept"] for r in group]),
                        "train_min": sum(r["train_min"] for r in group)})
    lines = markdown_table(summary, ["variant", "finished", f"{held_out}_train_rows", "test_id_acc", "t_mem", "t_grok",
                                     "held",
                                     "others_grok_at", "others_kept", "others_lowest", f"{held_out}_acc",
                                     f"best_{held_out}_acc", f"{held_out}_grokked", f"{held_out}_groks_at", f"{held_out}_kept",
                                     "train_min"])
    per_run = markdown_table(table, ["variant", "seed", "status", "step", "train_rows", f"{held_out}_train_rows",
                                     "test_id_acc", "t_mem", "t_grok", "t_grok_held", "others_grok_at", "others_kept",
                                     "others_lowest", f"{held_out}_acc",
                                     f"best_{held_out}_acc", f"{held_out}_groks_at", f"{held_out}_kept", "train_min"])
    first = train_cfgs[0]
    shares = [s for s in CLUSTER_SHARES if any(r["variant"].startswith(f"{s:.0%} ") for r in table)]  # that ran
    notes = (f"modular p={size.params['p']} with operations {size.params['operations']}, train fraction "
             f"{size.params['train_fraction']}, clustered by operation; {size.seeds} seed(s) per variant (init and "
             f"data order; one task world). {_removal(table, shares, balanced, held_out)} Masked diffusion with the `{first.mdm_estimator}` estimator, width "
             f"{first.hidden_size}, {first.num_layers} layers, init `{first.init}`, {first.optimizer} lr {first.lr:g}, "
             f"weight decay {first.weight_decay:g}, batch {first.batch_size}, step cap {size.max_steps}; the balanced runs stop "
             f"once overall test accuracy has stayed at {first.grok_threshold:g} for {first.patience} steps, the others run to the cap (their overall test accuracy can "
             f"pass 0.95 while the removed cluster is still rising). `{held_out}_acc`: the task's verifier on the cluster's test_id rows only (a "
             f"seeded sample of up to {first.eval_max_rows} test rows), at the last evaluation; "
             f"`{held_out}_groks_at`: the first evaluation where it is >= {first.grok_threshold:g}; `{held_out}_kept`: of the evaluations "
             f"from then on, the share where it still is (a cluster learnt from few rows can fall back); `others_grok_at`: the first where every "
             f"other cluster's test accuracy is >= {first.grok_threshold:g}; `others_kept`: of the evaluations from then on, the share where every "
             f"one still is; `others_lowest`: the lowest any of them fell to after it (grokked clusters can fall back late); `t_mem`: train accuracy >= {first.mem_threshold:g}; "
             f"`t_grok`: overall test accuracy >= {first.grok_threshold:g} (a held-out variant cannot reach it "
             f"without the removed cluster); `t_grok_held`: the evaluation from which it stayed >= {first.grok_threshold:g} "
             f"to the run's last (— = below it at the last: a crossing that fell back; `held`, per variant: runs "
             f"with one); `train_min`: minutes of optimisation steps on the machine it trained on "
             f"(evaluations not counted; the summary: all of a variant's runs together). Carvalho et al. 2025 report that "
             "with an under-sampled subclass removed the model never grokked it, and 1% of it restored late "
             "generalization.")
    if changed:
        notes += (" Changed from the recipe for every run: "
                  + ", ".join(f"`{k}={v}`" for k, v in changed.items()) + " (in the run names).")
    if size.params == CLUSTER_SIZES["full"].params:
        notes += "\n\n" + CPU_SIZE_REASON
    body = "\n".join(["Mean ± std over seeds (n = runs):", "", *lines, "", "Per run:", "", *per_run])
    return table, runs, notes + "\n\n" + body


def _removal(table: list[dict], shares: list[float], balanced: dict, held_out: str) -> str:
    """What the page's variants take away: the held-out cluster, and which rows of it come back."""
    if all(r["variant"] == "balanced" for r in table):
        return "Only the balanced variant ran: no cluster is removed."
    back = f"{' and '.join(f'{s:.0%} = {_share(balanced, s, held_out)}' for s in shares)} of its " if shares else "of its "
    return (f"The `{held_out}` cluster is removed from train, then k of its examples are added back ({back}"
            f"{balanced['clusters']['train'][held_out]} training rows).")


def variant_names() -> list[str]:
    """What `--variants` takes: balanced, held out, k=1 ... k=64, 1% ... 50%."""
    return ["balanced", "held out", *(f"k={k}" for k in CLUSTER_KS), *(f"{share:.0%}" for share in CLUSTER_SHARES)]


# Set by the grid itself, per run: not a training setting a grid can change.
GRID_OWNS = ("family", "family_params", "dataset", "seed", "run_name", "home", "max_steps", "patience")


def grid_settings(items: list[str]) -> dict[str, Any]:
    """`--settings "key=value ..."` items as typed training settings, refusing those the grid sets per run."""
    from diffusion.config import TrainConfig, parse_settings

    settings = parse_settings(TrainConfig, items, what="training")
    owned = [k for k in settings if k in GRID_OWNS]
    if owned:
        raise ValueError(f"--settings {owned[0]}: the grid sets it per run (--max-steps sets the cap)")
    return settings


def _share(balanced: dict, fraction: float, held_out: str) -> int:
    """That fraction of the held-out cluster's training rows in the balanced snapshot (at least one)."""
    return max(1, round(fraction * balanced["clusters"]["train"][held_out]))


def _slug(label: str) -> str:
    return "".join(c for c in label.replace("%", "pct") if c.isalnum() or c in "-_.") or "run"


def _episodes_to_cover(params: dict[str, Any]) -> int:
    """Episodes per agent (2 agents) so that sampling with replacement covers most training tasks."""
    n_train = int(params["p"] ** 2 * len(params["operations"]) * params["train_fraction"])
    return max(50, int(1.5 * n_train))
