"""`grokloop experiment composition`: two_hop and programs in long runs; T_mem, T_grok, ID and OOD
accuracy over the whole run, for AR, masked diffusion and AR with one shared block, at equal
parameters, data and steps."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from agents.tasks import SPLITS, get_family
from agents.tasks.programs import label_ambiguity
from diffusion.config import config_from_dict
from diffusion.model import parameter_count, shared_width
from diffusion.train import TrainConfig, end_step
from flows.cli_output import markdown_table
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
from storage.home import runs_dir

# The arms, at equal parameters, data and steps. "mdm": masked diffusion on the answer given the
# prompt (the `count` estimator: with a one-token answer, cross-entropy on it with bidirectional
# attention); "mdm-full": the same ELBO over the whole sequence (it also learns the head from the
# relations and the tail, ...), where diffusion's objective itself differs from AR's; "ar-shared": the
# AR transformer with one block applied num_layers times, widened to the same parameter count
# (diffusion.model.shared_width): the cross-layer sharing Wang et al. 2024 point at for OOD composition;
# "ar-1layer": that block applied once (the same parameters and width, one layer deep), which separates
# what sharing does from what the wider block does. "ar-wide" (run only when named: 4x the parameters,
# off the equal-parameter grid): num_layers unshared blocks at the shared block's width, the same
# compute per step as ar-shared, which separates sharing from width. "ar-full" (run only when named):
# AR's loss on every token, not the answer only, mdm-full's control: it separates what diffusion does
# from what a loss on the whole sequence does (on programs, predicting the examples' outputs too).
COMPOSITION_ARMS: dict[str, dict[str, Any]] = {
    "ar": {"objective": "ar"},
    "mdm": {"objective": "mdm", "mdm_estimator": "count"},
    "mdm-full": {"objective": "mdm", "mdm_estimator": "count", "full_sequence": True},
    "ar-shared": {"objective": "ar", "share_layers": True},
    "ar-1layer": {"objective": "ar", "num_layers": 1},
    "ar-wide": {"objective": "ar"},
    "ar-full": {"objective": "ar", "full_sequence": True},
}
# the arms at the width of one block widened to the others' parameter count
SHARED_WIDTH_ARMS = ("ar-shared", "ar-1layer", "ar-wide")
# the arms run only when --arms names them, and those of them off the equal-parameter grid
NAMED_ONLY_ARMS = ("ar-wide", "ar-full")
UNEQUAL_PARAMETER_ARMS = ("ar-wide",)
DEFAULT_ARMS = tuple(arm for arm in COMPOSITION_ARMS if arm not in NAMED_ONLY_ARMS)
# Optimisation of every arm (Wang et al. 2024: AdamW, weight decay 0.1, no Grokfast; lr 1e-3 for a
# small model on a CPU). Runs stop once test ID has stayed at 95% for `patience` steps past 10 x T_mem,
# or at the cap (the CPU size's AR run memorises its inferred facts in ~10^4 steps: hence 10^5), or, for a run that
# memorises late, at 10 x its T_mem past the cap; evals on the log schedule place T_mem and T_grok on a
# log-step axis.
COMPOSITION_TRAIN = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "grokfast": "none",
                     "warmup_steps": 10, "eval_schedule": "log", "mem_multiple": 10.0, "keep_checkpoints": 1}

# The figures: diffusion.plot's default curves (two_hop's T_mem is on its inferred train facts, drawn
# dash-dot beside train); then OOD accuracy alone on an axis fitted to it, where a rise from chance
# (2.5% at the CPU size) to 20% is visible and not a flat dotted line on 0-1.
FIGURES = {"": {"curves": None}, "_ood": {"curves": {"test_ood/acc": ":"}, "ylim": None}}

PROGRAMS_CPU_WORLD = {"list_len": (2, 4), "n_examples": 2, "train_per_program": 200, "test_per_program": 30}
# Settings: name -> (family, world). The default ("full") is the CPU size; see docs/results/composition.md
# for why two_hop's world is this one (phi, not size, sets how fast it groks: Wang et al. 2024, Fig. 3).
COMPOSITION_SIZES = {
    # quick: every run ends at its cap (no 10 x T_mem past it), so a test's run stays as short as it asks
    "quick": Size(seeds=1, max_steps=60, eval_every=20,
                  train={"batch_size": 64, "hidden_size": 32, "num_layers": 2, "eval_max_rows": 128,
                         "patience": 20, "mem_multiple": 0.0}, params={
        "two_hop": ("two_hop", {"n_entities": 40, "n_relations": 8, "relations_per_entity": 8, "phi": 2.0,
                                "ood_fraction": 0.4, "test_size": 500}),
        "programs": ("programs", {"train_per_program": 4, "test_per_program": 2})}),
    "full": Size(seeds=3, max_steps=100000, eval_every=1000,
                 train={"batch_size": 256, "hidden_size": 64, "num_layers": 4, "eval_max_rows": 1000,
                        "patience": 5000}, params={
        "two_hop": ("two_hop", {"n_entities": 40, "n_relations": 28, "relations_per_entity": 28, "phi": 18.0,
                                "ood_fraction": 0.15, "test_size": 3000}),
        # PROGRAMS_WORLD_REASON says why this world; 30 test tasks per program: >= 500 OOD items (19-21
        # held-out compositions), as two_hop has
        "programs": ("programs", PROGRAMS_CPU_WORLD),
        # the same tasks, each labelled with the first trained program that fits its examples
        "programs-canonical": ("programs", {**PROGRAMS_CPU_WORLD, "labels": "canonical"}),
        # a tenth of the training tasks: a world where AR memorises (PROGRAMS_20_REASON)
        "programs-canonical-20": ("programs", {**PROGRAMS_CPU_WORLD, "train_per_program": 20,
                                               "labels": "canonical"})}),
    # Wang et al. 2024's own world (2,000 entities, 200 relations, 20 per entity, 5% OOD atomic facts)
    # at two of its phi, and its model (8 layers, width 768): a GPU's size.
    "published": Size(seeds=3, max_steps=200000, eval_every=1000,
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

PROGRAMS_WORLD_REASON = (
    "Why this programs world: the first one (3 examples of 3-5 items, 40 training tasks per program, 38 "
    "tokens) memorised (AR at step 5,000, `mdm` at 9,000) and sat at 34% / 39% ID to steps 6,599 / 9,640 on "
    "one seed, ~2 steps/s here: three seeds of each arm to 10 x T_mem were days of this CPU. This one shows 2 "
    "examples of 2-4 items (22 tokens, ~2x faster a step) and has 5x the training tasks per program (200: "
    "more data per rule, which in Wang et al.'s two_hop, as φ, speeds generalisation). A 4,000-step AR probe "
    "(batch 128, one seed) rose to 80% train / 71-76% ID with no memorisation gap: whether any arm reaches "
    "95% ID within the cap is what the runs measure. Every test_ood task's examples fit no trained program "
    "(agents/tasks/programs.py): without that, 42% of them would be answered by a program seen in training.")
PROGRAMS_CANONICAL_REASON = (
    "Why `programs-canonical`: with two examples of 2-4 items about 45% of the training tasks fit more than one "
    "program, and `programs` labels each with the program that made it: a model matches those labels only by "
    "memorising them, which weight decay cannot remove without giving up training loss, so there may be no "
    "rule-only solution for a run to grok towards. Here the same tasks are labelled with the first trained "
    "program, shortest first, that fits their examples: one rule fits every label, as in two_hop.")
PROGRAMS_20_REASON = (
    "Why `programs-canonical-20`: on `programs-canonical` (200 training tasks per program) no arm memorises "
    "within 3,000 steps (train and ID rise together): there is no T_mem to grok after. With 20 tasks per "
    "program (1,900 training tasks) AR memorises at step 1,000-1,500 (docs/results/composition_programs_probe, "
    "two inits), so 10 x T_mem is ~15,000 steps: a grid a CPU runs in hours.")
WORLD_REASONS = {"two_hop": CPU_SIZE_REASON, "programs": PROGRAMS_WORLD_REASON,
                 "programs-canonical": PROGRAMS_CANONICAL_REASON, "programs-canonical-20": PROGRAMS_20_REASON}

# What each arm is, for the page (its depth and width come from its config).
ARM_ROLES = {
    "ar": "the autoregressive transformer",
    "mdm": "masked diffusion on the answer given the prompt, `count` estimator",
    "mdm-full": "masked diffusion, the ELBO over the whole sequence (its logged loss is over every token: compare "
                "it with the other arms by accuracy)",
    "ar-shared": "AR whose layers share one block, widened to AR's parameter count",
    "ar-1layer": "`ar-shared`'s block applied once",
    "ar-wide": "AR with unshared blocks at `ar-shared`'s width: ~4x the parameters, the same compute per step",
    "ar-full": "AR with its loss on every token (a language model's), not the answer only: `mdm-full`'s control "
               "(its loss includes inputs no model can predict: compare it by accuracy)",
}


def composition_notes(size: Size, plan: list, arms, worlds=None) -> str:
    """What the page's runs are: seeds, each arm as run, the worlds, when a run stops, what each
    column measures."""
    first = plan[0][2]
    off_grid = [f"`{arm}`" for arm in arms if arm in UNEQUAL_PARAMETER_ARMS]
    equal = (f"at equal data and steps (and parameters, but for {', '.join(off_grid)})" if off_grid else
             "at equal parameters, data and steps")
    notes = (f"{size.seeds} seed(s) per arm (seed s: world seed s and init seed s), arms {equal}: "
             + "; ".join(_arm_line(arm, cfg) for arm, cfg in _first_of_each_arm(plan).items())
             + f". Batch {first.batch_size}, AdamW lr {first.lr:g}, weight decay {first.weight_decay:g}, no "
             "Grokfast. Worlds: "
             + "; ".join(f"`{n}` = {fam} {world}" for n, (fam, world) in size.params.items()
                         if not worlds or n in worlds)
             + ". " + _stopping_note(size.max_steps, first)
             + ". Accuracy is the task's verifier on the decoded answer, on a "
             "seeded sample of each split fixed for the run (`n_eval`: train / test_id / test_ood rows). "
             "T_mem: first eval with train accuracy >= 0.99 (two_hop: on the inferred train facts); "
             "T_grok: first eval with test_id accuracy >= 0.95 (— = never, within the steps run); `t_grok_held`: "
             "the eval from which test_id accuracy stayed >= 0.95 to the last (— = the last is below: a first "
             "crossing that fell back; `held`, per arm: runs with one); `delay`: "
             "T_grok - T_mem (negative: in-distribution accuracy got there first); `x_t_mem`: the last evaluation's "
             "step / T_mem, how long the run went on after memorising (the question needs >= 10). "
             "ID = held-out compositions of seen pieces; OOD = compositions of atomic facts / primitive "
             "pairs never seen composed in training. best OOD is over every evaluation of the run. `train_min`: "
             "minutes of optimisation steps where the runs trained (`Trained on`; the summary: all of an arm's runs together). `train_exact`, per "
             "run: train rows whose answer matches the training label token for token (the verifier's accuracy "
             "also counts any other right answer).")
    for name, reason in WORLD_REASONS.items():  # why each CPU world, on the pages that run it
        if (not worlds or name in worlds) and size.params.get(name) == COMPOSITION_SIZES["full"].params[name]:
            notes += "\n\n" + reason
    for name in dict.fromkeys(name for name, _, cfg in plan if cfg.family == "programs"):
        seeds = {cfg.seed: cfg.family_params for setting, _, cfg in plan if setting == name}
        notes += "\n\n" + programs_label_note(name, list(seeds.values()))
    return notes


def _stopping_note(cap: int, cfg: TrainConfig) -> str:
    """When the page's runs end: the cap, moved on to mem_multiple x T_mem for a run that memorises
    late, and the stopping rule."""
    late = f"{cfg.mem_multiple:g} x T_mem" if cfg.mem_multiple else ""
    note = f"Step cap {cap}" + (f", or {late} where that is later (a run that memorises late goes on past the "
                                "cap to it)" if late else "")
    note += "; " + (f"a run stops once test ID has stayed at {cfg.grok_threshold:.0%} for {cfg.patience} steps"
                    + (f" past {late}" if late else "")
                    if cfg.patience else "every run goes on to the cap (`--patience 0`: no stopping rule)")
    return note + (" (`until`, per run: what ends it as it was last run, `rule, cap N` or `cap N` alone with "
                   "`--patience 0`" + (f", `({late})` where the cap moved" if late else "")
                   + "; `steps`, per arm: how far its runs went)")


def programs_label_note(name: str, worlds: list[dict], sample: int = 2000) -> str:
    """How far the examples determine a `programs` training label, over a seeded sample of each world's
    train tasks: what `train_exact` is to be read against."""
    shares, ceilings, sizes = [], [], set()
    for world in worlds:
        fam = get_family("programs", **world)
        train = fam.splits()["train"]
        tasks = random.Random(0).sample(train, min(sample, len(train)))
        share, ceiling = label_ambiguity(tasks, fam.programs)
        shares.append(share)
        ceilings.append(ceiling)
        sizes.add(len(tasks))
    head = (f"Training labels on `{name}` ({'/'.join(map(str, sorted(sizes)))} sampled train tasks per world, "
            f"one world a seed): {mean_std_n(shares)} of the tasks have examples that more than one program fits")
    if worlds[0].get("labels") == "canonical":  # one setting: every seed's world is labelled alike
        return (head + "; each task's label is the first trained program, shortest first, that fits (`labels` "
                "canonical), a function of the examples, so `train_exact` can reach 1 without memorising labels.")
    return (head + f", so the best any function of the examples can match the training label (the program that made "
            f"the examples) exactly is {mean_std_n(ceilings)} (1/k for k fitting programs, on average). "
            "`train_exact` above that is labels memorised; accuracy, the verifier, counts every fitting program right.")


def _arm_line(arm: str, cfg: TrainConfig) -> str:
    shape = (f"one block of width {cfg.hidden_size} applied {cfg.num_layers} times" if cfg.share_layers
             else f"{cfg.num_layers} layer{'s' * (cfg.num_layers > 1)} of width {cfg.hidden_size}")
    return f"`{arm}` = {ARM_ROLES[arm]} ({shape})"


def _first_of_each_arm(plan: list) -> dict[str, TrainConfig]:
    first: dict[str, TrainConfig] = {}
    for _, arm, cfg in plan:
        first.setdefault(arm, cfg)
    return first


def composition_configs(size: Size, home: str | None, arms=DEFAULT_ARMS,
                        patience: int | None = None, worlds=None) -> list[tuple[str, str, Any]]:
    """(setting, arm, TrainConfig) of every run: setting by setting (two_hop first), then seed by seed,
    so a partial grid has whole seeds of the first setting; `worlds`: only these settings of the size.
    Seed s is its own world and its own init. A run's name carries a hash of everything but when it
    stops (the step cap, and `patience`: steps test ID stays at 95% once past 10 x T_mem, 0 = to the cap): the
    same command continues it, a larger --max-steps or --patience 0 runs it on, another size is another run."""
    if unknown := [a for a in arms if a not in COMPOSITION_ARMS]:
        raise ValueError(f"unknown arm(s) {unknown}; known: {', '.join(COMPOSITION_ARMS)}")
    if unknown := [w for w in worlds or () if w not in size.params]:
        raise ValueError(f"unknown world(s) {unknown} at this size; its worlds: {', '.join(size.params)}")
    settings = {**COMPOSITION_TRAIN, **size.train}
    out = []
    for name, (family, world) in size.params.items():
        if worlds and name not in worlds:
            continue
        for seed in range(size.seeds):
            for arm in arms:
                overrides = {**settings, **COMPOSITION_ARMS[arm]}
                if arm in SHARED_WIDTH_ARMS:  # the width of `settings`' parameters in one block
                    overrides["hidden_size"] = _shared_width(family, world, settings)
                params = {**world, "seed": seed}
                tag = _digest({"family": family, "params": params, "train": overrides,
                               "eval_every": size.eval_every})
                if patience is not None:  # after the digest: when a run stops is not which run it is
                    overrides["patience"] = patience
                out.append((name, arm, TrainConfig(
                    family=family, family_params=params, seed=seed, home=home, progress=False,
                    max_steps=size.max_steps, eval_every=size.eval_every,
                    run_name=f"composition-{name}-{arm}-s{seed}-{tag}", **overrides)))
    return out


def _shared_width(family: str, world: dict, overrides: dict) -> int:
    base = TrainConfig()
    return shared_width(**_sequence_shape(family, world),
                        **{k: overrides.get(k, getattr(base, k)) for k in ("hidden_size", "num_layers", "num_heads",
                                                                           "mlp_ratio")})


def _parameters(cfg: TrainConfig) -> int:
    """The run's trainable parameters (its model built on the meta device): what "equal parameters" means."""
    return parameter_count(**_sequence_shape(cfg.family, cfg.family_params), hidden_size=cfg.hidden_size,
                           num_layers=cfg.num_layers, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                           share_layers=cfg.share_layers)


def _sequence_shape(family: str, world: dict) -> dict[str, int]:
    """What a model of this world's tokens is sized by: its vocabulary and sequence length."""
    tok = get_family(family, **world).tokenizer()
    return {"vocab_size": tok.vocab_size, "max_seq_len": tok.seq_len}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def composition(size: Size, home: str | None, runner: Runner = LOCAL, arms=DEFAULT_ARMS,
                report_only: bool = False, patience: int | None = None,
                worlds=None) -> tuple[list[dict], dict[str, str], str]:
    """Every (seed, setting, arm) run in turn (one process, one at a time: batching seeds is slower on
    a small CPU), each continued from its checkpoint when it has one; then the table from the store.
    `report_only`: train nothing, report what the store has (finished or not, marked). `patience`: the
    size's stopping rule replaced (0: every run to the cap, whatever it reached). `worlds`: only these
    settings (two_hop, programs at the CPU size)."""
    plan = composition_configs(size, home, arms, patience, worlds)
    if not report_only:
        train_runs([cfg for _, _, cfg in plan], runner)
    table = [row for name, arm, cfg in plan if (row := _composition_row(name, arm, cfg, home))]
    for row in table:
        console.print(f"[composition] {row['setting']}/{row['arm']} seed {row['seed']}: {row['status']} at "
                      f"{row['step']}, T_mem {row['t_mem']} T_grok {row['t_grok']} ID {row['test_id_acc']} "
                      f"OOD {row['test_ood_acc']}")
    summary = markdown_table(composition_summary(table),
                              ["setting", "arm", "params", "width", "steps", "finished", "t_mem", "t_grok", "delay",
                               "grokked", "held", "train_inferred_acc", "test_id_acc", "test_ood_acc", "best_ood_acc",
                               "ood_at_t_grok", "n_eval", "train_min"])
    per_run = markdown_table(table, ["setting", "arm", "seed", "status", "step", "until", "t_mem", "x_t_mem", "t_grok",
                                      "t_grok_held", "delay",
                                      "train_inferred_acc", "train_exact", "test_id_acc", "test_ood_acc", "best_ood_acc",
                                      "best_ood_step", "ood_at_t_grok", "n_eval", "train_min"])
    notes = composition_notes(size, plan, arms, worlds)
    milestones = ood_milestones(size.max_steps, size.eval_every,
                                ended=[r["step"] for r in table if r["status"] in ("finished", "stopped")])
    over_run = markdown_table(ood_over_run(table, milestones), ["setting", "arm", *map(str, milestones)])
    body = "\n".join(["Mean ± std over seeds (n = runs; T_mem / T_grok over the runs that reached them):", "",
                      *summary, "", "OOD accuracy at fixed steps, mean ± std over the runs that reached the step:",
                      "", *over_run, "", "Per run:", "", *per_run])
    panels = {row["run_id"]: f"{row['setting']} / {row['arm']}" for row in table}  # every seed, a panel an arm
    return table, panels, notes + "\n\n" + body


def _composition_row(setting: str, arm: str, cfg, home: str | None) -> dict[str, Any] | None:
    """One run's line from the store (None when it has not evaluated yet)."""
    found = query("SELECT r.status, r.final_step, r.t_mem, r.t_grok, g.held_from, r.config FROM runs r "
                  "LEFT JOIN curve_grokking g ON g.run_id = r.run_id AND g.curve = 'test_id' WHERE r.run_id = ?",
                  [cfg.run_name], home) if has_store(home) else []
    if not found:
        return None
    status, step, t_mem, t_grok, t_grok_held, config = found[0]
    series = metric_series(cfg.run_name, ["train_inferred/acc", "train/acc", "train/exact", "test_id/acc",
                                          "test_ood/acc", "step_time",
                                          *(f"{split}/n" for split in SPLITS)], home)
    if not series.get("test_id/acc"):
        return None
    last = {name: points[-1][1] for name, points in series.items()}
    ood = series.get("test_ood/acc", [])
    best = max(ood, key=lambda p: p[1]) if ood else (None, None)
    at_grok = dict(ood).get(t_grok) if t_grok is not None else None
    step_reached = max(p[0] for p in series["test_id/acc"])
    counts = [int(series[f"{split}/n"][-1][1]) for split in SPLITS if series.get(f"{split}/n")]
    rows_file = runs_dir(home) / cfg.run_name / "eval_rows.json"  # runs from before the store had counts
    if not counts and rows_file.is_file():
        counts = [len(v["rows"]) for v in json.loads(rows_file.read_text()).values()]
    return {"setting": setting, "arm": arm, "seed": cfg.seed, "run_id": cfg.run_name, "params": _parameters(cfg),
            "width": cfg.hidden_size, "status": status,
            "step": step_reached, "until": _until(config_from_dict(json.loads(config)), t_mem),
            "t_mem": t_mem, "x_t_mem": f"{step_reached / t_mem:.1f}" if t_mem else None, "t_grok": t_grok,
            "t_grok_held": t_grok_held,
            "delay": t_grok - t_mem if t_grok is not None and t_mem is not None else None,
            "train_inferred_acc": last.get("train_inferred/acc", last.get("train/acc")),
            "train_exact": last.get("train/exact"),
            "test_id_acc": last.get("test_id/acc"), "test_ood_acc": last.get("test_ood/acc"),
            "best_ood_acc": best[1], "best_ood_step": best[0], "ood_at_t_grok": at_grok, "ood": dict(ood),
            "n_eval": "/".join(map(str, counts)) or None,
            "train_min": training_minutes(series.get("step_time", []), series["test_id/acc"])}


def _until(last: TrainConfig, t_mem: int | None) -> str:
    """What ends the run, as it was last run (the config of its latest record in the store): the cap
    alone (patience 0) or the stopping rule, then the cap; the cap is mem_multiple x T_mem when that
    is past max_steps (a run that memorised late)."""
    end = end_step(last, t_mem)
    cap = f"cap {end}" + (f" ({last.mem_multiple:g} x T_mem)" if end > last.max_steps else "")
    return cap if not last.patience else f"rule, {cap}"


def ood_milestones(cap: int, eval_every: int, count: int = 6, ended=()) -> list[int]:
    """At most `count` evaluation steps: multiples of one stride (itself a multiple of eval_every), then the
    cap, which the run also evaluates. 8,000 by 1,000 is 2, 4, 6, 8 thousand, not an uneven 1, 3, 4, 5, 7, 8.
    Plus the steps where runs `ended` (finished or stopped), so arms run to different caps meet in one column."""
    evals = -(-cap // eval_every)  # ceil: the cap itself is evaluated when it is not a multiple
    stride = -(-evals // count) * eval_every
    return sorted({*[*range(stride, cap, stride), cap][-count:], *ended})


def ood_over_run(table: list[dict], steps: list[int]) -> list[dict]:
    """Per (setting, arm): OOD accuracy at each of `steps`, over the runs that evaluated there: whether
    out-of-distribution accuracy moves late in a run, after the end-of-run columns of other arms."""
    out = []
    for key in dict.fromkeys((r["setting"], r["arm"]) for r in table):
        group = [r for r in table if (r["setting"], r["arm"]) == key]
        out.append({"setting": key[0], "arm": key[1],
                    **{str(step): mean_std_n([r["ood"].get(step) for r in group]) for step in steps}})
    return out


def n_eval_range(counts: list[str | None]) -> str | None:
    """Rows evaluated per split over an arm's runs, from theirs ("1000/1000/741", ...): "1000/1000/668-741"
    (each seed is its own world, so its OOD split has its own size); None when no run has counts."""
    known = [[int(n) for n in c.split("/")] for c in counts if c]
    if not known:
        return None
    spans = [(min(col), max(col)) for col in zip(*known, strict=True)]
    return "/".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans)


def composition_summary(table: list[dict]) -> list[dict]:
    """Per (setting, arm): mean ± std of each measure over its runs, and how many finished / grokked."""
    out = []
    for key in dict.fromkeys((r["setting"], r["arm"]) for r in table):
        group = [r for r in table if (r["setting"], r["arm"]) == key]
        grokked = [r for r in group if r["t_grok"] is not None]
        steps = sorted({r["step"] for r in group})
        out.append({"setting": key[0], "arm": key[1], "params": group[0]["params"], "width": group[0]["width"],
                    "steps": "-".join(str(s) for s in dict.fromkeys((steps[0], steps[-1]))),
                    "finished": f"{sum(r['status'] == 'finished' for r in group)}/{len(group)}",
                    "grokked": f"{len(grokked)}/{len(group)}",
                    "held": f"{sum(r['t_grok_held'] is not None for r in group)}/{len(group)}",
                    **{k: mean_std_n([r[k] for r in group]) for k in
                       ("t_mem", "t_grok", "delay", "train_inferred_acc", "test_id_acc", "test_ood_acc",
                        "best_ood_acc", "ood_at_t_grok")},
                    "n_eval": n_eval_range([r["n_eval"] for r in group]),
                    "train_min": sum(r["train_min"] for r in group)})
    return out
