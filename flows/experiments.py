"""Named experiments: `grokloop experiment NAME [--quick]`.

Each runs its configurations and seeds through the same plain functions as the loop
(`flows.steps`, `diffusion.train`), so every run, metric and evaluation lands in the store;
then it writes `docs/results/NAME.png` and `docs/results/NAME.md` with the table of results.
The numbers in the tables are read back from the store, not from memory.

    grokfast      a*b mod 97: Adam baseline vs weight decay vs Grokfast-EMA / -MA, diffusion vs AR
    composition   two_hop and programs: ID and OOD accuracy, masked diffusion vs AR at equal params/steps
    clusters      a cluster-balanced snapshot, one cluster held out, then k = 1, 4, 16 of it added back
    self_improve  rounds of model-agent data vs a run that gets no self-generated data
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from agents.tasks import get_family
from diffusion.model import shared_width
from diffusion.plot import plot_runs
from diffusion.train import TrainConfig
from flows import steps
from flows.config import LoopConfig
from flows.flows import self_improve_flow, train_seeds_task, train_task
from flows.runners import Runner, fan_out
from storage.home import grokloop_home, runs_dir, store_location
from storage.store import open_store

console = Console()
LOCAL = Runner()  # runs in turn, in this process: as before there were runners


@dataclasses.dataclass
class Size:
    seeds: int
    max_steps: int
    eval_every: int
    params: dict[str, Any]                  # the task world
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig overrides of this size


# ---- grokfast -----------------------------------------------------------------------------------

# The published Grokfast setup (Lee et al. 2024) and the ablation that isolates the filter.
GROKFAST_SETUPS: dict[str, dict[str, Any]] = {
    "baseline": {"optimizer": "adam", "weight_decay": 0.0, "grokfast": "none"},
    "wd": {"optimizer": "adam", "weight_decay": 0.005, "grokfast": "none"},
    "ema": {"optimizer": "adam", "weight_decay": 0.005, "grokfast": "ema",
            "grokfast_alpha": 0.98, "grokfast_lamb": 2.0},
    "ma": {"optimizer": "adam", "weight_decay": 0.01, "grokfast": "ma",
           "grokfast_window": 100, "grokfast_lamb": 5.0},
}
# init "torch": PyTorch's default init (embeddings N(0, 1)), as in the Grokfast reference code. With
# GPT-2's small init ("small") this backbone generalizes with no delay and there is nothing to speed up.
GROKFAST_BASE = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "lr": 1e-3, "betas": (0.9, 0.98),
                 "batch_size": 512, "warmup_steps": 10, "init": "torch"}
GROKFAST_SIZES = {
    "quick": Size(seeds=1, max_steps=200, eval_every=50,
                  params={"p": 23, "operations": ["x*y"], "train_fraction": 0.5},
                  train={"batch_size": 128, "hidden_size": 64}),
    "full": Size(seeds=3, max_steps=20000, eval_every=50,
                 params={"p": 97, "operations": ["x*y"], "train_fraction": 0.5}),
}
# The reference code's own setup (ironjr/grokfast 93b2248, main.py), for `arch="grokfast_ref"` and for our
# architecture beside it: a*b mod 97 without y = 0 (9,312 equations, half for training), its loop (the
# last partial batch of each epoch is a step, warmup from lr 0) and its measurement (validation accuracy
# on the whole held-out half after every epoch of 10 steps). Checkpoints only now and then: an MA window
# is 100 gradients, ~170 MB.
GROKFAST_REF_SIZES = {
    "quick": Size(seeds=1, max_steps=60, eval_every=10,
                  params={"p": 23, "operations": ["x*y"], "train_fraction": 0.5, "nonzero_y": True},
                  train={"reference_loop": True, "eval_max_rows": 0, "batch_size": 64, "hidden_size": 64}),
    "full": Size(seeds=3, max_steps=3000, eval_every=10,
                 params={"p": 97, "operations": ["x*y"], "train_fraction": 0.5, "nonzero_y": True},
                 train={"reference_loop": True, "eval_max_rows": 0, "checkpoint_every": 1000}),
}


# How each model reads the backbone: masked diffusion with the 1/t-weighted ELBO estimator, the same
# ELBO with t integrated out (lower variance), that ELBO over the whole sequence (the model also learns
# a from b and c, and b from a and c), and the causal AR baseline. With a one-token answer,
# prompt-conditional "mdm-count" is plain cross-entropy on the answer: it differs from AR only in
# attention direction. "mdm-full" is where diffusion's objective itself differs.
GROKFAST_OBJECTIVES: dict[str, dict[str, Any]] = {
    "mdm": {"objective": "mdm", "mdm_estimator": "t"},
    "mdm-count": {"objective": "mdm", "mdm_estimator": "count"},
    "mdm-full": {"objective": "mdm", "mdm_estimator": "count", "full_sequence": True},
    "ar": {"objective": "ar"},
}
# What `grokloop experiment grokfast` runs unless told: "mdm-full" is opt-in. At the published init it
# does not reach 95% in 15,000 steps with any setup (docs/results/grokfast_full/), so it would add
# three capped runs per seed.
GROKFAST_DEFAULT_OBJECTIVES = ("mdm", "mdm-count", "ar")


def train_sweep(groups: list[list], runner: Runner = LOCAL) -> list[list]:
    """Every setting's seeds (`train_seeds`: one batched model when they can be): in turn here,
    or one task per setting, side by side on a cluster's workers (`runner`, flows/runners.py).
    Results per group, in order."""
    return fan_out(runner, train_seeds_task, [(cfgs,) for cfgs in groups], name="sweep")


def train_runs(cfgs: list, runner: Runner = LOCAL) -> list[dict[str, Any]]:
    """Train (or resume) every run of a sweep: in turn here, or side by side on a cluster's workers
    (`runner`, flows/runners.py). Results in `cfgs`' order, as `steps.train` returns them."""
    return fan_out(runner, train_task, [(cfg,) for cfg in cfgs], name="sweep")


def grokfast_runs(size: Size, *, home: str | None, objectives=GROKFAST_DEFAULT_OBJECTIVES,
                  setups=tuple(GROKFAST_SETUPS), init: str = GROKFAST_BASE["init"],
                  arch: str = "denoiser", finished_only: bool = False, progress: bool = False,
                  runner: Runner = LOCAL) -> list[dict[str, Any]]:
    """Train every (objective, setup, seed); one row per run with T_mem / T_grok as the store has them.
    Each seed is a different train/test split and initialisation; a run stops soon after it groks.
    `arch="grokfast_ref"`: the reference code's decoder (pair it with GROKFAST_REF_SIZES).
    `finished_only`: train nothing; report the runs of this grid that the store has as finished."""
    for given, known in ((setups, GROKFAST_SETUPS), (objectives, GROKFAST_OBJECTIVES)):
        if unknown := [x for x in given if x not in known]:
            raise ValueError(f"unknown {unknown}; known: {', '.join(known)}")
    # the run name says what differs from the default setup (the same name resumes the same run)
    variant = ("" if arch == "denoiser" else f"-{arch}") + ("-ref" if size.train.get("reference_loop") else "")
    settings = [(objective, setup) for objective in objectives for setup in setups]
    groups = [[TrainConfig(
        family="modular", family_params={**size.params, "seed": seed},
        max_steps=size.max_steps, eval_every=size.eval_every, seed=seed, home=home,
        patience=1, sampler_steps=1, keep_checkpoints=1, progress=progress,
        run_name=f"grokfast-{objective}-{setup}-{init}{variant}-s{seed}-p{size.params['p']}-"
                 f"{size.max_steps}",
        **{**GROKFAST_BASE, **size.train, "init": init, "arch": arch}, **GROKFAST_OBJECTIVES[objective],
        **GROKFAST_SETUPS[setup],
    ) for seed in range(size.seeds)] for objective, setup in settings]
    if finished_only:
        groups = [[c for c in cfgs if _run_status(c.run_name, home) == "finished"] for cfgs in groups]
    rows = []
    for (objective, setup), cfgs, results in zip(settings, groups, train_sweep(groups, runner), strict=True):
        for cfg, result in zip(cfgs, results, strict=True):
            rows.append({"arch": arch, "objective": objective, "setup": setup, "seed": cfg.seed,
                         "run_id": result.run_id, "checkpoint_dir": result.checkpoint_dir,
                         "t_mem": result.t_mem, "t_grok": result.t_grok, "cap": size.max_steps,
                         "final_test_acc": result.metrics.get("test_id/acc")})
            console.print(f"[grokfast] {arch} {objective}/{setup} seed {cfg.seed}: T_grok={result.t_grok} "
                          f"T_mem={result.t_mem}")
    return rows


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean/spread of steps to 95% test acc per (objective, setup), and the speed-up over the baseline.
    A run that never reached 95% counts at its step cap, which makes the baseline's speed-up a lower
    bound (marked '>=')."""
    table = []
    for objective in dict.fromkeys(r["objective"] for r in rows):
        groups = {s: [r for r in rows if r["objective"] == objective and r["setup"] == s]
                  for s in dict.fromkeys(r["setup"] for r in rows)}
        base = groups.get("baseline") or []
        base_steps = [r["t_grok"] or r["cap"] for r in base]
        base_capped = any(r["t_grok"] is None for r in base)
        for setup, group in groups.items():
            reached = [r["t_grok"] for r in group if r["t_grok"] is not None]
            steps_ = [r["t_grok"] or r["cap"] for r in group]
            mean = statistics.mean(steps_)
            row = {"objective": objective, "setup": setup, "reached": f"{len(reached)}/{len(group)}",
                   "steps_mean": mean, "steps_std": statistics.pstdev(steps_) if len(steps_) > 1 else 0.0,
                   "capped": len(reached) < len(group)}
            if base_steps and setup != "baseline":
                ratio = statistics.mean(base_steps) / mean
                row["speedup"] = ("≥ " if base_capped else "") + f"{ratio:.1f}x"
                if len(reached) < len(group):
                    row["speedup"] = "n/a (not reached)"
            table.append(row)
    return table


def grokfast(size: Size, home: str | None, setups=tuple(GROKFAST_SETUPS),
             objectives=GROKFAST_DEFAULT_OBJECTIVES, init: str = GROKFAST_BASE["init"], arch: str = "denoiser",
             runner: Runner = LOCAL) -> tuple[list[dict], list[str], str]:
    rows = grokfast_runs(size, home=home, setups=setups, objectives=objectives, init=init, arch=arch,
                         runner=runner)
    table = speedups(rows)
    lines = _markdown_table(table, ["objective", "setup", "reached", "steps_mean", "steps_std", "speedup"])
    notes = (f"`a*b mod {size.params['p']}`, train fraction {size.params['train_fraction']}, init `{init}`, "
             f"architecture `{arch}`, {size.seeds} seed(s), step cap {size.max_steps}, eval every "
             f"{size.eval_every} steps. Steps = first eval with test accuracy >= 95% (the cap when never "
             "reached). Objectives: `mdm` = masked diffusion, 1/t estimator; `mdm-count` = the count "
             "estimator; `ar` = autoregressive. This is not the published setup (its decoder, its split "
             "without y = 0, its loop): `python bench/grokking.py --ref` runs that, beside ours; its "
             "figures (Lee et al. 2024) are baseline 39,890 iterations, EMA 910, MA 790.")
    runs = [r["run_id"] for r in rows if r["seed"] == 0]
    return table, runs, notes + "\n\n" + "\n".join(lines)


# ---- composition --------------------------------------------------------------------------------

# The arms, at equal parameters, data and steps. "mdm": masked diffusion on the answer given the
# prompt (the `count` estimator: with a one-token answer, cross-entropy on it with bidirectional
# attention); "mdm-full": the same ELBO over the whole sequence (it also learns the head from the
# relations and the tail, ...), where diffusion's objective itself differs from AR's; "ar-shared": the
# AR transformer with one block applied num_layers times, widened to the same parameter count
# (diffusion.model.shared_width): the cross-layer sharing Wang et al. 2024 point at for OOD composition.
COMPOSITION_ARMS: dict[str, dict[str, Any]] = {
    "ar": {"objective": "ar"},
    "mdm": {"objective": "mdm", "mdm_estimator": "count"},
    "mdm-full": {"objective": "mdm", "mdm_estimator": "count", "full_sequence": True},
    "ar-shared": {"objective": "ar", "share_layers": True},
}
# Optimisation of every arm (Wang et al. 2024: AdamW, weight decay 0.1, no Grokfast; lr 1e-3 for a
# small model on a CPU). Runs stop `patience` steps after grokking once past 10 x T_mem, or at the cap
# (the CPU size's AR run memorises its inferred facts in ~10^4 steps: hence 10^5); evals on the log
# schedule place T_mem and T_grok on a log-step axis.
COMPOSITION_TRAIN = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "grokfast": "none",
                     "warmup_steps": 10, "eval_schedule": "log", "mem_multiple": 10.0, "keep_checkpoints": 1}

# Settings: name -> (family, world). The default ("full") is the CPU size; see docs/results/composition.md
# for why two_hop's world is this one (phi, not size, sets how fast it groks: Wang et al. 2024, Fig. 3).
COMPOSITION_SIZES = {
    "quick": Size(seeds=1, max_steps=60, eval_every=20,
                  train={"batch_size": 64, "hidden_size": 32, "num_layers": 2, "eval_max_rows": 128,
                         "patience": 20}, params={
        "two_hop": ("two_hop", {"n_entities": 40, "n_relations": 8, "relations_per_entity": 8, "phi": 2.0,
                                "ood_fraction": 0.4, "test_size": 500}),
        "programs": ("programs", {"train_per_program": 4, "test_per_program": 2})}),
    "full": Size(seeds=3, max_steps=100000, eval_every=1000,
                 train={"batch_size": 256, "hidden_size": 64, "num_layers": 4, "eval_max_rows": 1000,
                        "patience": 5000}, params={
        "two_hop": ("two_hop", {"n_entities": 40, "n_relations": 28, "relations_per_entity": 28, "phi": 18.0,
                                "ood_fraction": 0.15, "test_size": 3000}),
        "programs": ("programs", {})}),
    # Wang et al. 2024's own world (2,000 entities, 200 relations, 20 per entity, 5% OOD atomic facts)
    # at two of its phi, and its model (8 layers, width 768): a GPU's size.
    "published": Size(seeds=3, max_steps=200000, eval_every=5000,
                      train={"batch_size": 512, "hidden_size": 768, "num_layers": 8, "num_heads": 12,
                             "lr": 1e-4, "eval_max_rows": 3000, "patience": 20000}, params={
        f"two_hop-phi{phi:g}": ("two_hop", {"n_entities": 2000, "n_relations": 200, "relations_per_entity": 20,
                                            "phi": phi, "ood_fraction": 0.05, "test_size": 3000})
        for phi in (7.2, 18.0)}),
}


# Why the CPU world is the one it is (written into docs/results/composition.md).
CPU_SIZE_REASON = (
    "Why this two_hop size: Wang et al. 2024 (§3.2, Fig. 3) find that how fast a transformer groks two-hop "
    "composition is set by φ, the ratio of inferred to atomic facts, not by the size of the graph: at equal φ, "
    "graphs of different sizes generalise at about the same step, and a larger φ groks sooner. So the CPU "
    "world keeps the published φ = 18 (the largest they report, the fastest) and shrinks the graph (40 "
    "entities instead of 2,000) and the model (4 layers of width 64 instead of 8 of 768, batch 256, lr "
    "1e-3). Every entity has all 28 "
    "relations so that φ = 18 x |all atomic facts| (20,160 inferred train facts) still leaves 2,485 ID test "
    "facts; 15% of the atomic facts are OOD (Wang et al.: 5%) so that test_ood has 741 items (at 5% it would "
    "have 82). Short probes on this shared 2-core CPU (1 thread, load 5-18 from other work) chose it: "
    "|E| = 100 with width 128 ran 3 steps/s, too slow for 10^4-10^5-step runs; |E| = 64 at φ = 12 with width "
    "64 ran 6-7 steps/s and had 33% of its train facts by step 2,000; this world ran 2.6 steps/s at load ~15, "
    "17% of train facts by step 1,000. None of the probes ran long enough to memorise: whether the AR arm "
    "groks within the cap at this size is what the runs below measure, not something a probe showed.")


def composition_configs(size: Size, home: str | None, arms=tuple(COMPOSITION_ARMS)) -> list[tuple[str, str, Any]]:
    """(setting, arm, TrainConfig) of every run: setting by setting (two_hop first), then seed by seed,
    so a partial grid has whole seeds of the first setting.
    Seed s is its own world and its own init. A run's name carries a hash of everything but its step
    cap: the same command continues it, a larger --max-steps extends it, another size is another run."""
    if unknown := [a for a in arms if a not in COMPOSITION_ARMS]:
        raise ValueError(f"unknown arm(s) {unknown}; known: {', '.join(COMPOSITION_ARMS)}")
    settings = {**COMPOSITION_TRAIN, **size.train}
    out = []
    for name, (family, world) in size.params.items():
        for seed in range(size.seeds):
            for arm in arms:
                overrides = {**settings, **COMPOSITION_ARMS[arm]}
                if overrides.get("share_layers"):
                    overrides["hidden_size"] = _shared_width(family, world, overrides)
                params = {**world, "seed": seed}
                tag = _digest({"family": family, "params": params, "train": overrides,
                               "eval_every": size.eval_every})
                out.append((name, arm, TrainConfig(
                    family=family, family_params=params, seed=seed, home=home, progress=False,
                    max_steps=size.max_steps, eval_every=size.eval_every,
                    run_name=f"composition-{name}-{arm}-s{seed}-{tag}", **overrides)))
    return out


def _shared_width(family: str, world: dict, overrides: dict) -> int:
    tok = get_family(family, **world).tokenizer()
    base = TrainConfig()
    return shared_width(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len,
                        **{k: overrides.get(k, getattr(base, k)) for k in ("hidden_size", "num_layers", "num_heads",
                                                                           "mlp_ratio")})


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def composition(size: Size, home: str | None, runner: Runner = LOCAL, arms=tuple(COMPOSITION_ARMS),
                report_only: bool = False) -> tuple[list[dict], list[str], str]:
    """Every (seed, setting, arm) run in turn (one process, one at a time: batching seeds is slower on
    a small CPU), each continued from its checkpoint when it has one; then the table from the store.
    `report_only`: train nothing, report what the store has (finished or not, marked)."""
    plan = composition_configs(size, home, arms)
    if not report_only:
        train_runs([cfg for _, _, cfg in plan], runner)
    table = [row for name, arm, cfg in plan if (row := _composition_row(name, arm, cfg, home))]
    for row in table:
        console.print(f"[composition] {row['setting']}/{row['arm']} seed {row['seed']}: {row['status']} at "
                      f"{row['step']}, T_mem {row['t_mem']} T_grok {row['t_grok']} ID {row['test_id_acc']} "
                      f"OOD {row['test_ood_acc']}")
    summary = _markdown_table(composition_summary(table),
                              ["setting", "arm", "finished", "t_mem", "t_grok", "grokked", "train_inferred_acc",
                               "test_id_acc", "test_ood_acc", "best_ood_acc", "ood_at_t_grok", "n_eval",
                               "train_min"])
    per_run = _markdown_table(table, ["setting", "arm", "seed", "status", "step", "t_mem", "t_grok",
                                      "train_inferred_acc", "test_id_acc", "test_ood_acc", "best_ood_acc",
                                      "best_ood_step", "ood_at_t_grok", "n_eval", "train_min"])
    first = plan[0][2]
    notes = (f"{size.seeds} seed(s) per arm (seed s: world seed s and init seed s), arms {', '.join(arms)} "
             f"at equal parameters, data and steps: {first.num_layers} layers, width {first.hidden_size} "
             f"(`ar-shared`: one block applied {first.num_layers} times, widened to the same parameter "
             f"count), batch {first.batch_size}, AdamW lr {first.lr:g}, weight decay {first.weight_decay:g}, "
             f"no Grokfast; masked diffusion with the `count` estimator. Worlds: "
             + "; ".join(f"`{n}` = {fam} {world}" for n, (fam, world) in size.params.items())
             + f". Step cap {size.max_steps}; a run stops {first.patience} steps after T_grok once past "
             f"{first.mem_multiple:g} x T_mem. Accuracy is the task's verifier on the decoded answer, on a "
             "seeded sample of each split fixed for the run (`n_eval`: train / test_id / test_ood rows). "
             "T_mem: first eval with train accuracy >= 0.99 (two_hop: on the inferred train facts); "
             "T_grok: first eval with test_id accuracy >= 0.95 (— = never, within the steps run). "
             "ID = held-out compositions of seen pieces; OOD = compositions of atomic facts / primitive "
             "pairs never seen composed in training. best OOD is over every evaluation of the run. `train_min`: "
             "minutes of optimisation steps on this CPU (the summary: all of an arm's runs together).")
    if size.params.get("two_hop") == COMPOSITION_SIZES["full"].params["two_hop"]:
        notes += "\n\n" + CPU_SIZE_REASON
    body = "\n".join(["Mean ± std over seeds (n = runs; T_mem / T_grok over the runs that reached them):", "",
                      *summary, "", "Per run:", "", *per_run])
    return table, [row["run_id"] for row in table if row["seed"] == 0], notes + "\n\n" + body


def _composition_row(setting: str, arm: str, cfg, home: str | None) -> dict[str, Any] | None:
    """One run's line from the store (None when it has not evaluated yet)."""
    import json

    found = _query("SELECT status, final_step, t_mem, t_grok FROM runs WHERE run_id = ?", [cfg.run_name], home) \
        if _has_store(home) else []
    if not found:
        return None
    status, step, t_mem, t_grok = found[0]
    series = _series(cfg.run_name, ["train_inferred/acc", "train/acc", "test_id/acc", "test_ood/acc", "step_time"],
                     home)
    if not series.get("test_id/acc"):
        return None
    last = {name: points[-1][1] for name, points in series.items()}
    ood = series.get("test_ood/acc", [])
    best = max(ood, key=lambda p: p[1]) if ood else (None, None)
    at_grok = dict(ood).get(t_grok) if t_grok is not None else None
    rows_file = runs_dir(home) / cfg.run_name / "eval_rows.json"
    n_eval = ("/".join(str(len(v["rows"])) for v in json.loads(rows_file.read_text()).values())
              if rows_file.is_file() else None)
    return {"setting": setting, "arm": arm, "seed": cfg.seed, "run_id": cfg.run_name, "status": status,
            "step": max(p[0] for p in series["test_id/acc"]), "cap": cfg.max_steps, "t_mem": t_mem, "t_grok": t_grok,
            "train_inferred_acc": last.get("train_inferred/acc", last.get("train/acc")),
            "test_id_acc": last.get("test_id/acc"), "test_ood_acc": last.get("test_ood/acc"),
            "best_ood_acc": best[1], "best_ood_step": best[0], "ood_at_t_grok": at_grok, "n_eval": n_eval,
            "train_min": _training_minutes(series.get("step_time", []), series["test_id/acc"])}


def _training_minutes(step_times: list[tuple[int, float]], evals: list[tuple[int, float]]) -> float:
    """Minutes spent in optimisation steps (each eval's mean step time x the steps since the previous
    eval; evaluations themselves and pauses between sessions not counted)."""
    previous = dict(zip([s for s, _ in evals[1:]], [s for s, _ in evals[:-1]], strict=True))
    return sum(t * (step - previous.get(step, 0)) for step, t in step_times) / 60


def composition_summary(table: list[dict]) -> list[dict]:
    """Per (setting, arm): mean ± std of each measure over its runs, and how many finished / grokked."""
    out = []
    for key in dict.fromkeys((r["setting"], r["arm"]) for r in table):
        group = [r for r in table if (r["setting"], r["arm"]) == key]
        grokked = [r for r in group if r["t_grok"] is not None]
        out.append({"setting": key[0], "arm": key[1],
                    "finished": f"{sum(r['status'] == 'finished' for r in group)}/{len(group)}",
                    "grokked": f"{len(grokked)}/{len(group)}",
                    **{k: _mean_std_n([r[k] for r in group]) for k in
                       ("t_mem", "t_grok", "train_inferred_acc", "test_id_acc", "test_ood_acc", "best_ood_acc",
                        "ood_at_t_grok")},
                    "n_eval": group[0]["n_eval"], "train_min": sum(r["train_min"] for r in group)})
    return out


def _mean_std_n(values: list) -> str | None:
    """'mean ± std (n)' of the values that exist."""
    present = [v for v in values if v is not None]
    return f"{_mean_std(present)} (n={len(present)})" if present else None


def _series(run_id: str, names: list[str], home: str | None) -> dict[str, list[tuple[int, float]]]:
    rows = _query("SELECT name, step, value FROM metrics WHERE run_id = ? AND name IN (SELECT unnest(?::VARCHAR[]))"
                  " ORDER BY name, step", [run_id, names], home)
    out: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in rows:
        out.setdefault(name, []).append((step, value))
    return out


# ---- clusters -----------------------------------------------------------------------------------

# The main job's grokking recipe (flows/config.py: PyTorch's init, Adam with L2 decay 0.005, no filter,
# masked diffusion with the `count` estimator), on three operations mod p clustered by operation.
CLUSTER_TRAIN = {"init": "torch", "optimizer": "adam", "weight_decay": 0.005, "grokfast": "none",
                 "mdm_estimator": "count", "batch_size": 512, "eval_schedule": "log", "keep_checkpoints": 1,
                 "progress": False}
CLUSTER_SIZES = {
    "quick": Size(seeds=1, max_steps=40, eval_every=20,
                  params={"p": 11, "operations": ["x+y", "x-y", "x*y"], "train_fraction": 0.6},
                  train={"batch_size": 64, "hidden_size": 32, "eval_max_rows": 256}),
    "full": Size(seeds=3, max_steps=10000, eval_every=500,
                 params={"p": 97, "operations": ["x+y", "x-y", "x*y"], "train_fraction": 0.5},
                 train={"eval_max_rows": 3000, "patience": 1000}),
}
HELD_OUT = "x*y"
CLUSTER_KS = (1, 4, 16, 64)


def clusters(size: Size, home: str | None, runner: Runner = LOCAL,
             report_only: bool = False) -> tuple[list[dict], list[str], str]:
    """A cluster-balanced snapshot; the `x*y` cluster removed from train; then k = 1, 4, 16, 64 of its
    examples (and 1% of them) added back. Each variant x seed trains in turn (continued from its
    checkpoint when it has one); the held-out cluster's TEST accuracy is logged at every evaluation.
    `report_only`: train nothing, report what the store has."""
    cfg = LoopConfig(home=home, **runner.loop_settings(), families=["modular"], family_params={"modular": size.params},
                     n_agents=2, episodes=_episodes_to_cover(size.params), policy="solver",
                     cluster_method="column", cluster_column="operation",
                     train_overrides={**CLUSTER_TRAIN, "max_steps": size.max_steps, "eval_every": size.eval_every,
                                      **size.train})
    if report_only and not _has_store(home):
        raise ValueError(f"nothing to report: no store at {store_location(home)} (run the experiment first)")
    if not report_only:
        steps.collect(cfg, "modular")
        steps.ingest(cfg)
    balanced = steps.curate(cfg, "modular", name="clusters-balanced")
    one_percent = max(1, round(0.01 * balanced["clusters"]["train"][HELD_OUT]))
    variants = [("balanced", None), ("held out", 0)] + [(f"k={k}", k) for k in CLUSTER_KS] \
        + [(f"1% (k={one_percent})", one_percent)]
    keys, train_cfgs = [], []
    for label, keep_k in variants:
        snap = balanced if keep_k is None else steps.curate(
            cfg, "modular", holdout=[HELD_OUT], keep_k=keep_k, name=f"clusters-heldout-k{keep_k}")
        for seed in range(size.seeds):
            keys.append((label, seed, snap))
            train_cfgs.append(steps.train_config(cfg, "modular", snap["path"], seed=seed,
                                                 run_name=f"clusters-{_slug(label)}-s{seed}-{snap['dataset_id'][:8]}"))
    if not report_only:
        train_runs(train_cfgs, runner)
    table, runs = [], []
    metric = f"test_id/cluster:{HELD_OUT}/acc"
    for (label, seed, snap), tcfg in zip(keys, train_cfgs, strict=True):
        # Held-out claims from test rows only: the cluster's accuracy on test_id, never mixed with its
        # (memorised) train rows, at every evaluation of the run.
        series = _series(tcfg.run_name, [metric, "test_id/acc"], home) if _has_store(home) else {}
        if not series.get("test_id/acc"):
            continue
        status = _run_status(tcfg.run_name, home)
        held = series.get(metric, [])
        best = max(held, key=lambda p: p[1]) if held else (None, None)
        table.append({"variant": label, "seed": seed, "run_id": tcfg.run_name, "status": status,
                      "step": series["test_id/acc"][-1][0], "train_rows": snap["counts"]["train"],
                      f"{HELD_OUT}_train_rows": snap["clusters"]["train"].get(HELD_OUT, 0),
                      "test_id_acc": series["test_id/acc"][-1][1],
                      f"{HELD_OUT}_acc": held[-1][1] if held else None,
                      f"best_{HELD_OUT}_acc": best[1], f"{HELD_OUT}_groks_at": next(
                          (step for step, v in held if v >= 0.95), None),
                      "t_grok": _query("SELECT t_grok FROM runs WHERE run_id = ?", [tcfg.run_name], home)[0][0]})
        if seed == 0:
            runs.append(tcfg.run_name)
        console.print(f"[clusters] {label} seed {seed}: {status} at {table[-1]['step']}, held-out cluster test "
                      f"acc {table[-1][f'{HELD_OUT}_acc']}, overall {table[-1]['test_id_acc']}")
    summary = []
    for label in dict.fromkeys(r["variant"] for r in table):
        group = [r for r in table if r["variant"] == label]
        groks = [r[f"{HELD_OUT}_groks_at"] for r in group if r[f"{HELD_OUT}_groks_at"] is not None]
        summary.append({"variant": label, "finished": f"{sum(r['status'] == 'finished' for r in group)}/{len(group)}",
                        f"{HELD_OUT}_train_rows": group[0][f"{HELD_OUT}_train_rows"],
                        **{k: _mean_std_n([r[k] for r in group]) for k in
                           ("test_id_acc", f"{HELD_OUT}_acc", f"best_{HELD_OUT}_acc", "t_grok")},
                        f"{HELD_OUT}_grokked": f"{len(groks)}/{len(group)}",
                        f"{HELD_OUT}_groks_at": _mean_std_n(groks)})
    lines = _markdown_table(summary, ["variant", "finished", f"{HELD_OUT}_train_rows", "test_id_acc", "t_grok",
                                      f"{HELD_OUT}_acc", f"best_{HELD_OUT}_acc", f"{HELD_OUT}_grokked",
                                      f"{HELD_OUT}_groks_at"])
    per_run = _markdown_table(table, ["variant", "seed", "status", "step", "train_rows", f"{HELD_OUT}_train_rows",
                                      "test_id_acc", "t_grok", f"{HELD_OUT}_acc", f"best_{HELD_OUT}_acc",
                                      f"{HELD_OUT}_groks_at"])
    first = train_cfgs[0]
    notes = (f"modular p={size.params['p']} with operations {size.params['operations']}, train fraction "
             f"{size.params['train_fraction']}, clustered by operation; {size.seeds} seed(s) per variant (init and "
             f"data order; one task world). The `{HELD_OUT}` cluster is removed from train, then k of its "
             f"examples are added back (1% = {one_percent} of its {balanced['clusters']['train'][HELD_OUT]} "
             f"training rows). Masked diffusion with the `{first.mdm_estimator}` estimator, width "
             f"{first.hidden_size}, {first.num_layers} layers, init `{first.init}`, {first.optimizer} weight decay "
             f"{first.weight_decay:g}, batch {first.batch_size}, step cap {size.max_steps}, stop {first.patience} "
             f"steps after T_grok. `{HELD_OUT}_acc`: the task's verifier on the cluster's test_id rows only (a "
             f"seeded sample of up to {first.eval_max_rows} test rows), at the last evaluation; "
             f"`{HELD_OUT}_groks_at`: the first evaluation where it is >= 0.95. Carvalho et al. 2025 report that "
             "with an under-sampled subclass removed the model never grokked it, and 1% of it restored late "
             "generalization.")
    body = "\n".join(["Mean ± std over seeds (n = runs):", "", *lines, "", "Per run:", "", *per_run])
    return table, runs, notes + "\n\n" + body


def _slug(label: str) -> str:
    return "".join(c for c in label.replace("%", "pct") if c.isalnum() or c == "-") or "run"


# ---- self_improve -------------------------------------------------------------------------------

SELF_IMPROVE_SIZES = {
    "quick": Size(seeds=1, max_steps=150, eval_every=50,
                  params={"p": 13, "operations": ["x+y", "x*y"], "train_fraction": 0.8, "rounds": 2,
                          "episodes": 40, "proposals": 150}),
    "full": Size(seeds=3, max_steps=300, eval_every=100,
                 params={"p": 31, "operations": ["x+y", "x*y"], "train_fraction": 0.8, "rounds": 3,
                         "episodes": 150, "proposals": 600}),
}


def self_improve(size: Size, home: str | None, runner: Runner = LOCAL) -> tuple[list[dict], list[str], str]:
    """Per seed (its own task world): the self-improvement loop, then a control that differs only in
    who labels the new prompts. Round 0 is shared. In round r >= 1 the model proposes answers to
    `proposals` training tasks drawn afresh for the round and its verified answers join the data; the
    control instead gets as many prompts labelled by the solver agent (drawn afresh too), and trains
    on for the same steps from its own previous round. Beside the model's hit rate: the rate at which
    random guesses (best-of-n_samples, uniform over the family's answers) pass the verifier."""
    p = dict(size.params)
    rounds, episodes, proposals = p.pop("rounds"), p.pop("episodes"), p.pop("proposals")
    table, runs = [], []
    for seed in range(size.seeds):
        cfg = LoopConfig(home=home, seed=seed, **runner.loop_settings(), families=["modular"],
                         family_params={"modular": p}, n_agents=2,
                         episodes=episodes, policy="solver",
                         train_overrides={"max_steps": size.max_steps, "eval_every": size.eval_every,
                                          "mdm_estimator": "count", "progress": False, **size.train})
        loop_id = f"self-improve-p{p['p']}-{size.max_steps}-s{seed}"
        steps.collect(cfg, "modular")
        steps.ingest(cfg)
        solver_ids = [r[0] for r in _query("SELECT agent_id FROM agents WHERE kind = 'solver'", [], home)]
        history = self_improve_flow(cfg=cfg, family="modular", rounds=rounds, episodes=proposals, loop_id=loop_id)
        control = _control_rounds(cfg, history, solver_ids, loop_id)
        chance = chance_hit_rate(cfg, proposals, seed)
        for arm, arm_rows in (("model", history), ("control", control)):
            for row in arm_rows:
                table.append({"seed": seed, "arm": arm, "round": row["round"], "run_id": row["run_id"],
                              "labelled": row["n_proposed"] if arm == "control" else row["n_verified"],
                              "proposed": row["n_proposed"] if arm == "model" else None,
                              "hit_rate": row["n_verified"] / row["n_proposed"]
                              if arm == "model" and row["n_proposed"] else None,
                              "chance_rate": chance if arm == "model" and row["round"] else None,
                              "train_rows": _train_rows(row["dataset_id"], home),
                              "steps": size.max_steps * (row["round"] + 1), "test_id_acc": row["test_id_acc"]})
            if seed == 0:
                runs += [row["run_id"] for row in arm_rows if arm == "model" or row["round"]]
        console.print(f"[self_improve] seed {seed}: model {history[-1]['test_id_acc']:.3f}, "
                      f"control {control[-1]['test_id_acc']:.3f}, chance hit rate {chance:.3f}")
    per_seed = _markdown_table(table, ["seed", "arm", "round", "proposed", "labelled", "hit_rate", "chance_rate",
                                       "train_rows", "steps", "test_id_acc"])
    summary = _markdown_table(_mean_std_by_round(table), ["arm", "round", "n", "labelled", "hit_rate",
                                                          "chance_rate", "test_id_acc"])
    notes = (f"modular p={p['p']} {p['operations']}, train fraction {p['train_fraction']}; {size.seeds} seed(s) "
             f"(each its own task world), {rounds} rounds of {size.max_steps} steps, masked diffusion with the "
             f"`count` estimator. Round 0: 2 solver agents x {episodes} episodes on training tasks. Model arm, "
             f"round r: the model samples {LoopConfig().n_samples} answers (temperature 1) for each of {proposals} "
             "training tasks drawn afresh for the round; a task counts as labelled when a sample passes the "
             "verifier. Control arm, round r: the solver agent labels as many freshly drawn training tasks as "
             "the model got verified that round; same steps, continuing from its own previous round. "
             "`chance_rate`: how often best-of-n uniform random guesses over the family's answers pass the "
             "verifier on the same kind of tasks (measured). Both arms de-duplicate, so `train_rows` counts "
             "distinct labelled tasks. test_id accuracy is on held-out tasks only.")
    body = "\n".join(["Mean ± std over seeds:", "", *summary, "", "Per seed:", "", *per_seed])
    return table, runs, notes + "\n\n" + body


def _control_rounds(cfg: LoopConfig, history: list[dict], solver_ids: list[str], loop_id: str) -> list[dict]:
    """The control arm: round 0 is the loop's own; round r adds as many solver-labelled prompts as the
    model got verified in round r, curated from the solver agent's trajectories only."""
    rows, checkpoint = [history[0]], _checkpoint_of(history[0]["run_id"], cfg.home)
    for model_row in history[1:]:
        r, n = model_row["round"], model_row["n_verified"]
        # +500: a draw seed of the control's own, used by neither round 0's agents nor any model round
        steps.collect(dataclasses.replace(cfg, n_agents=1), "modular", seed=steps.round_seed(cfg.seed, r) + 500,
                      episodes=n)
        steps.ingest(cfg)
        snap = steps.curate(cfg, "modular", agents=solver_ids, name=f"{loop_id}-control-r{r}")
        run = steps.train(steps.train_config(cfg, "modular", snap["path"], run_name=f"{loop_id}-control-r{r}",
                                             init_from=checkpoint))
        evaluation = steps.evaluate(cfg, run["checkpoint_dir"])
        checkpoint = run["checkpoint_dir"]
        rows.append({"round": r, "run_id": run["run_id"], "dataset_id": snap["dataset_id"], "n_proposed": n,
                     "n_verified": n, "test_id_acc": evaluation.get("test_id")})
    return rows


def chance_hit_rate(cfg: LoopConfig, n_tasks: int, seed: int) -> float:
    """Share of `n_tasks` training tasks (drawn like the model agent's) on which at least one of
    `cfg.n_samples` answers drawn uniformly from the family's distinct answers passes the verifier."""
    import random

    family = get_family("modular", **{**cfg.family_params["modular"], "seed": cfg.seed})
    pool = family.splits()["train"]
    answers = sorted({tuple(t.answer) for split in family.splits().values() for t in split})
    rng = random.Random(f"chance/{seed}")
    hits = 0
    for _ in range(n_tasks):
        task = pool[rng.randrange(len(pool))]
        hits += any(family.verify(task, list(rng.choice(answers))) for _ in range(cfg.n_samples))
    return hits / n_tasks


def _mean_std_by_round(table: list[dict]) -> list[dict]:
    out = []
    for arm in ("model", "control"):
        for r in sorted({row["round"] for row in table}):
            group = [row for row in table if row["arm"] == arm and row["round"] == r]
            if not group:
                continue
            out.append({"arm": arm, "round": r, "n": len(group),
                        **{k: _mean_std([row[k] for row in group]) for k in
                           ("labelled", "hit_rate", "chance_rate", "test_id_acc")}})
    return out


def _mean_std(values: list) -> str | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.0f} ± {std:.0f}" if mean >= 10 else f"{mean:.3f} ± {std:.3f}"


def _checkpoint_of(run_id: str, home: str | None) -> str:
    return _query("SELECT path FROM checkpoints WHERE run_id = ? ORDER BY step DESC LIMIT 1", [run_id], home)[0][0]


# ---- running and reporting ----------------------------------------------------------------------

EXPERIMENTS: dict[str, tuple[Callable, dict[str, Size]]] = {
    "grokfast": (grokfast, GROKFAST_SIZES),
    "composition": (composition, COMPOSITION_SIZES),
    "clusters": (clusters, CLUSTER_SIZES),
    "self_improve": (self_improve, SELF_IMPROVE_SIZES),
}


def run_experiment(name: str, *, quick: bool = False, size: str | None = None, seeds: int | None = None,
                   max_steps: int | None = None, out_dir: str | Path = "docs/results", home: str | None = None,
                   runner: Runner = LOCAL, **options: Any) -> dict[str, Any]:
    """Run experiment `name` at a size of its own (`size`: "quick", "full" (the default) or, where the
    experiment has one, "published"; `quick=True` is size "quick"); `seeds` / `max_steps` override that
    size's; `options` go to the experiment (grokfast's `setups` / `objectives`, composition's `arms`,
    `report_only`); returns {"table", "runs", "summary": md path, "plot": png path}."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    fn, sizes = EXPERIMENTS[name]
    size_name = size or ("quick" if quick else "full")
    if size_name not in sizes:
        raise ValueError(f"experiment {name!r} has no size {size_name!r}; sizes: {', '.join(sizes)}")
    chosen = dataclasses.replace(sizes[size_name])
    if seeds:
        chosen.seeds = seeds
    if max_steps:
        chosen.max_steps = max_steps
    home = str(grokloop_home(home))
    started = time.perf_counter()
    table, runs, body = fn(chosen, home, runner=runner, **options)
    wall = time.perf_counter() - started
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = {"train/acc": "-", "test_id/acc": "--", "test_ood/acc": ":"}
    if name == "composition":  # two_hop's T_mem is on its inferred train facts: drawn dash-dot beside train
        curves = None
    if name == "clusters":  # the question is the held-out cluster's own test accuracy
        curves = {"train/acc": "-", "test_id/acc": "--", f"test_id/cluster:{HELD_OUT}/acc": ":"}
    plot = plot_runs(runs, out / f"{name}.png", home=home, curves=curves) if runs else None
    summary = out / f"{name}.md"
    shown_options = {k: v for k, v in options.items() if k != "report_only"}
    command = " ".join([f"grokloop experiment {name}", *([f"--size {size_name}"] if size_name != "full" else []),
                        *([f"--seeds {seeds}"] if seeds else []), *([f"--max-steps {max_steps}"] if max_steps else []),
                        *(f"--{k} {v if isinstance(v, str) else ','.join(v)}" for k, v in shown_options.items())])
    how = ("this report was written from the store with `--report-only` (training goes on elsewhere; "
           f"{wall:.0f} s to write it)" if options.get("report_only") else f"wall time {wall / 60:.1f} min")
    summary.write_text(
        f"# Experiment: {name} ({size_name} size, {chosen.seeds} seed(s), "
        f"at most {chosen.max_steps} steps per run)\n\n"
        f"Reproduce: `{command}` ({how}). Runs: "
        f"{', '.join(f'`{r}`' for r in runs)} (in `{_shown(store_location(home))}`).\n\n"
        f"{body}\n\n" + (f"![{name}]({plot.name})\n" if plot else "No run has evaluated yet: no plot.\n")
    )
    return {"table": table, "runs": runs, "summary": summary, "plot": plot}


def _shown(path: Path | str) -> str:
    """A path as a reader of the summary would type it: relative to here when it is below here (a
    shared store's URL as it is)."""
    if isinstance(path, str):
        return path
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    def fmt(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def _has_store(home: str | None) -> bool:
    """Whether there is a store to read: the embedded file exists, or $GROKLOOP_STORE names a
    shared one (storage/lake.py)."""
    store = store_location(home)
    return not isinstance(store, Path) or store.is_file()


def _run_status(run_id: str, home: str | None) -> str | None:
    if not _has_store(home):
        return None
    rows = _query("SELECT status FROM runs WHERE run_id = ?", [run_id], home)
    return rows[0][0] if rows else None


def _query(sql: str, params: list, home: str | None) -> list[tuple]:
    with open_store(store_location(home), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def _rounds_from_store(loop_id: str, home: str | None) -> list[dict[str, Any]]:
    cols = ["round", "run_id", "dataset_id", "n_proposed", "n_verified", "test_id_acc"]
    rows = _query(f"SELECT {', '.join(cols)} FROM self_improve_rounds WHERE loop_id = ? ORDER BY round",
                  [loop_id], home)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _train_rows(dataset_id: str, home: str | None) -> int:
    return _query("SELECT count(*) FROM dataset_rows WHERE dataset_id = ? AND split = 'train'",
                  [dataset_id], home)[0][0]


def _episodes_to_cover(params: dict[str, Any]) -> int:
    """Episodes per agent (2 agents) so that sampling with replacement covers most training tasks."""
    n_train = int(params["p"] ** 2 * len(params["operations"]) * params["train_fraction"])
    return max(50, int(1.5 * n_train))
