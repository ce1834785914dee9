"""Grokfast (Lee et al. 2024) on our trainer: steps to 95% test accuracy.

    python bench/grokking.py --ref --seeds 3 --max-steps 2000 --baseline-steps 300 --eval-every 50

`--ref` is the published setup itself (ironjr/grokfast, commit 93b2248, main.py): the reference
code's decoder (`arch=grokfast_ref`: learned absolute positions, the stream re-normalised in every
block, biases, PyTorch's init), its data (a*b mod 97 with y = 0 left out: 9,312 equations, half for
training), its loop (`reference_loop`: the last partial batch of each epoch is a step, warmup from
lr 0), Adam lr 1e-3, betas (0.9, 0.98), batch 512, AR on the answer token, validation accuracy on the
whole held-out half; then our architecture (`arch=denoiser`: RoPE, pre-LN, no biases) on the same
data, loop and settings; and beside both, the reference code itself, re-created
(diffusion/grokfast_reference.py: its decoder, data, split and loop, validation every epoch of 10
steps), on the same seeds and caps. Steps to 95% beside the published figures (EMA 910, MA 790, baseline
39,890), mean +- std over seeds; a capped run counts at its cap, so its mean is a lower bound. Then,
for the final checkpoint of every run, test accuracy by where the test item's commuted pair (y, x)
is: a model that has memorised the training half and knows x*y = y*x scores on the items whose pair
it trained on, and only there.

    python bench/grokking.py --setups baseline,ema --objectives mdm --seeds 1 --max-steps 3000

Without `--ref`: the `grokfast` experiment's grid (`grokloop experiment grokfast`) printed as a
table: our architecture on our split (y = 0 included, 9,409 equations), the published
hyperparameters, PyTorch's default init (`--init small`, GPT-2's N(0, 0.02), removes the grokking
delay altogether). Setups (flows/experiments/grokfast.py, GROKFAST_SETUPS):
    baseline (a)  Adam, no weight decay, no filter (the published baseline)
    wd       (a') Adam, L2 weight decay 0.005, no filter (the filter's own effect)
    ema      (b)  Grokfast-EMA alpha 0.98, lamb 2.0, L2 weight decay 0.005
    ma       (c)  Grokfast-MA window 100, lamb 5.0, L2 weight decay 0.01
each as masked diffusion (mdm: 1/t estimator; mdm-count: t integrated out) and as AR.
A run that never reaches 95% counts as the step cap; a ratio against a capped baseline is a
lower bound ("≥").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from diffusion.grokfast_reference import TOKEN_LAYOUTS
from flows.experiments.common import Size
from flows.experiments.grokfast import (
    GROKFAST_OBJECTIVES,
    GROKFAST_REF_SIZES,
    GROKFAST_SETUPS,
    grokfast_runs,
    speedups,
)

PUBLISHED = {"baseline": 39890, "ema": 910, "ma": 790}
COMMUTED_GROUPS = ("(y,x) in train", "(y,x) in test", "(y,x) not in data", "x = y")
ARCHS = {"grokfast_ref": "reference decoder, our trainer", "denoiser": "ours (RoPE, pre-LN), our trainer"}
REFERENCE_CODE = "reference code (re-created)"


def reference_code_runs(setups: list[str], seeds: int, caps: dict[str, int], home: str, *, p: int,
                        batch_size: int, layout: str = "reference") -> list[dict]:
    """The re-created reference loop for every (setup, seed), each kept in HOME/reference_code as
    JSON so that a rerun reports it without training it again. `layout`: its token ids or ours."""
    from diffusion.grokfast_reference import reference_run

    rows = []
    for setup in setups:
        s = GROKFAST_SETUPS[setup]
        for seed in range(seeds):
            variant = "" if layout == "reference" else f"-{layout}"
            path = Path(home) / "reference_code" / f"{setup}-s{seed}-p{p}-b{batch_size}-{caps[setup]}{variant}.json"
            if not path.is_file():
                run = reference_run(seed=seed, weight_decay=s["weight_decay"], grokfast=s["grokfast"],
                                    alpha=s.get("grokfast_alpha", 0.98), lamb=s.get("grokfast_lamb", 2.0),
                                    window=s.get("grokfast_window", 100), budget=caps[setup], p=p,
                                    batch_size=batch_size, layout=layout)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(dataclasses.asdict(run)))
            run = json.loads(path.read_text())
            rows.append({"arch": "reference_code", "objective": "ar", "setup": setup, "seed": seed,
                         "t_mem": run["t_mem"], "t_grok": run["steps_to_95"], "cap": caps[setup]})
            print(f" reference code ({layout} token ids) {setup} seed {seed}: steps to 95% {run['steps_to_95']} "
                  f"T_mem {run['t_mem']}")
    return rows


def commuted_accuracy(checkpoint_dir, family_params: dict, objective: str) -> dict[str, tuple[float, int]]:
    """Verifier accuracy on test items by where their commuted pair (y, x) is: in train, in test, in
    neither (x = 0 when y = 0 is left out), and on x = y (no pair)."""
    from diffusion.data import family_from_params, splits_from_family
    from diffusion.evaluate import answers_correct
    from diffusion.sample import predict
    from diffusion.train import load_model

    family = family_from_params("modular", family_params)
    tokenizer, splits = splits_from_family("modular", family_params)
    test = splits["test_id"]
    where = {(t.spec["x"], t.spec["y"]): split for split in ("train", "test") for t in
             splits["train" if split == "train" else "test_id"].tasks}
    pred = predict(objective, load_model(checkpoint_dir), test.ids, test.answer_mask, mask_id=tokenizer.mask_id)
    groups: dict[str, list[bool]] = {g: [] for g in COMMUTED_GROUPS}
    for task, ok in zip(test.tasks, answers_correct(family, tokenizer, test, pred).tolist(), strict=True):
        x, y = task.spec["x"], task.spec["y"]
        group = "x = y" if x == y else f"(y,x) in {where[y, x]}" if (y, x) in where else "(y,x) not in data"
        groups[group].append(ok)
    return {g: (sum(oks) / len(oks) if oks else float("nan"), len(oks)) for g, oks in groups.items()}


def reference(args) -> None:
    size = GROKFAST_REF_SIZES["quick" if args.quick else "full"]
    size = Size(seeds=args.seeds or size.seeds, max_steps=args.max_steps or size.max_steps,
                eval_every=args.eval_every or size.eval_every, params=size.params, train=size.train)
    setups = args.setups.split(",") if args.setups else ["ema", "ma", "baseline"]
    objectives = args.objectives.split(",") if args.objectives else ["ar"]
    home = args.home or tempfile.mkdtemp(prefix="grokloop-grokking-ref-")
    console = Console(width=200)  # a log file gets the whole table, not 80 columns
    # The published baseline (39,890 steps) may get a lower cap than the rest.
    slow_size = dataclasses.replace(size, max_steps=args.baseline_steps or size.max_steps)
    archs = args.archs.split(",") if args.archs else list(ARCHS)
    if unknown := [a for a in archs if a not in ARCHS]:
        raise SystemExit(f"unknown architecture(s) {unknown}; known: {', '.join(ARCHS)}")
    rows = []
    for setup in setups:  # in the order given
        for arch in archs:
            rows += grokfast_runs(slow_size if setup == "baseline" else size, home=home,
                                  objectives=objectives, setups=[setup], arch=arch, finished_only=args.existing)
    if not rows:
        raise SystemExit(f"no finished runs of this grid in {home}")
    caps = {s: (slow_size if s == "baseline" else size).max_steps for s in setups}
    reference_rows = [] if args.no_reference_code else reference_code_runs(
        setups, size.seeds, caps, home, p=size.params["p"], batch_size=size.train.get("batch_size", 512),
        layout=args.reference_layout)

    p = size.params["p"]
    title = (f"Published setup: steps to 95% val accuracy, a*b mod {p} without y = 0 ({p * (p - 1)} equations, "
             f"half for training), AR on the answer token, eval every {size.eval_every} steps on the whole val "
             f"half, cap {size.max_steps} (baseline: {slow_size.max_steps}), seeds 0..{size.seeds - 1}")
    steps_rows = []
    reference_label = REFERENCE_CODE + ("" if args.reference_layout == "reference" else ", our token ids")
    labels = {"reference_code": reference_label, **{a: ARCHS[a] for a in archs}}
    for arch, label in labels.items():
        arch_rows = reference_rows if arch == "reference_code" else [r for r in rows if r["arch"] == arch]
        for r in speedups(arch_rows):
            per_seed = [g["t_grok"] for g in arch_rows if (g["objective"], g["setup"]) == (r["objective"], r["setup"])]
            steps_rows.append({
                "architecture": label, "objective": r["objective"], "setup": r["setup"], "reached": r["reached"],
                "steps mean ± std": f"{'≥ ' if r['capped'] else ''}{r['steps_mean']:.0f} ± {r['steps_std']:.0f}",
                "per seed": ", ".join("-" if t is None else str(t) for t in per_seed),
                "n": r["reached"].split("/")[1],
                "published": f"{PUBLISHED[r['setup']]:,}" if r["setup"] in PUBLISHED else "-"})
    # no speed-up column: a CPU run caps the baseline far below 39,890, so any ratio would mean nothing
    steps_note = ("A run that never reached 95% counts at its cap (\"-\" per seed), so a mean marked ≥ is a lower "
                  "bound. The reference code checks validation accuracy after every epoch "
                  f"({math.ceil(p * (p - 1) // 2 / size.train.get('batch_size', 512))} steps), our trainer every "
                  f"{size.eval_every} steps. "
                  "Published (ironjr/grokfast README, one run each): EMA 910, MA 790, baseline 39,890 iterations.")

    commuted_title = ("Test accuracy of each run's final checkpoint, split by whether the commuted pair (y, x) "
                      "of the test item is in the training half (mean ± std over seeds; n = items per seed)")
    commuted_rows = []
    for arch, label in ARCHS.items():
        for objective in objectives:
            for setup in setups:
                group = [r for r in rows if (r["arch"], r["objective"], r["setup"]) == (arch, objective, setup)]
                if not group:
                    continue
                accs = [commuted_accuracy(r["checkpoint_dir"], {**size.params, "seed": r["seed"]},
                                          GROKFAST_OBJECTIVES[objective]["objective"]) for r in group]
                row = {"architecture": label, "objective": objective, "setup": setup,
                       "final steps": ",".join(r["checkpoint_dir"].name.split("_")[1] for r in group),
                       "test acc": f"{statistics.mean(r['final_test_acc'] for r in group):.3f}"}
                for g in COMMUTED_GROUPS:
                    vals = [a[g][0] for a in accs]
                    n = statistics.mean(a[g][1] for a in accs)
                    row[g] = f"{statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f} (n {n:.0f})"
                commuted_rows.append(row)

    for heading, table_rows in ((title, steps_rows), (commuted_title, commuted_rows)):
        table = Table(title=heading)
        for col in table_rows[0]:
            table.add_column(col)
        for r in table_rows:
            table.add_row(*r.values())
        console.print(table)
    print(steps_note)
    print(f"runs recorded in {home}; plot with: GROKLOOP_HOME={home} grokloop plot RUN...")
    if args.output:
        write_summary(Path(args.output), home, rows, title, steps_rows, steps_note, commuted_title, commuted_rows)


def write_summary(out: Path, home: str, rows: list[dict], title: str, steps_rows: list[dict], steps_note: str,
                  commuted_title: str, commuted_rows: list[dict]) -> None:
    """OUT.md with both tables and the command, OUT.png with the seed-0 curves."""
    import sys

    from diffusion.plot import plot_runs

    def markdown(table_rows: list[dict]) -> str:
        lines = ["| " + " | ".join(table_rows[0]) + " |", "|" + "---|" * len(table_rows[0])]
        return "\n".join(lines + ["| " + " | ".join(r.values()) + " |" for r in table_rows])

    out.parent.mkdir(parents=True, exist_ok=True)
    runs = [r["run_id"] for r in rows if r["seed"] == 0]
    plot = plot_runs(runs, out.with_suffix(".png"), home=home)
    # the command that trains these runs: without where they were kept and reported
    argv, shown = sys.argv[1:], []
    while argv:
        arg = argv.pop(0)
        if arg in ("--home", "--output", "--archs"):
            argv.pop(0)
        elif arg != "--existing":
            shown.append(arg)
    command = "python bench/grokking.py " + " ".join(shown)
    out.with_suffix(".md").write_text(
        f"# The published Grokfast setup: the reference code and our trainer, side by side\n\nReproduce: `{command}` (CPU, one thread per run). "
        f"Seed-0 runs: {', '.join(f'`{r}`' for r in runs)}.\n\n{title}.\n\n{markdown(steps_rows)}\n\n"
        f"{steps_note}\n\n{commuted_title}.\n\n{markdown(commuted_rows)}\n\n![grokfast_ref]({plot.name})\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=None, help=f"subset of {','.join(GROKFAST_SETUPS)}")
    parser.add_argument("--objectives", default=None, help=f"subset of {','.join(GROKFAST_OBJECTIVES)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setup (default 3)")
    parser.add_argument("--p", type=int, default=97, help="the modulus")
    parser.add_argument("--max-steps", type=int, default=None, help="step cap per run (default 5000; --ref 3000)")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evals (default 50; --ref 10)")
    parser.add_argument("--init", default="torch", choices=("torch", "small"), help="initial weight scale")
    parser.add_argument("--home", default=None, help="grokloop home for the runs (default: a temp dir)")
    parser.add_argument("--baseline-steps", type=int, default=None,
                        help="--ref: step cap of the published baseline (no filter, no weight decay); default --max-steps")
    parser.add_argument("--output", default=None,
                        help="--ref: also write OUTPUT.md (both tables) and OUTPUT.png (seed-0 curves)")
    parser.add_argument("--archs", default=None, help=f"--ref: subset of {','.join(ARCHS)} (default both)")
    parser.add_argument("--existing", action="store_true",
                        help="--ref: train nothing, report the finished runs in --home")
    parser.add_argument("--ref", action="store_true", help="the published setup (reference decoder), then ours")
    parser.add_argument("--no-reference-code", action="store_true",
                        help="--ref: leave out the re-created reference code's own runs")
    parser.add_argument("--reference-layout", default="reference", choices=TOKEN_LAYOUTS,
                        help="--ref: the reference code on its own token ids or on grokloop's tokenizer's")
    parser.add_argument("--quick", action="store_true", help="p=23, 1 seed, a few hundred steps: a smoke run")
    args = parser.parse_args()
    if args.ref:
        return reference(args)
    if args.quick:
        args.p, args.seeds, args.max_steps = 23, 1, 300
    args.seeds, args.max_steps = args.seeds or 3, args.max_steps or 5000
    args.eval_every = args.eval_every or 50
    setups = args.setups.split(",") if args.setups else list(GROKFAST_SETUPS)
    objectives = args.objectives.split(",") if args.objectives else list(GROKFAST_OBJECTIVES)

    home = args.home or tempfile.mkdtemp(prefix="grokloop-grokking-")
    size = Size(seeds=args.seeds, max_steps=args.max_steps, eval_every=args.eval_every,
                params={"p": args.p, "operations": ["x*y"], "train_fraction": 0.5})
    rows = grokfast_runs(size, home=home, objectives=objectives, setups=setups, init=args.init)

    table = Table(title=f"steps to 95% test accuracy, a*b mod {args.p} (cap {args.max_steps}, {args.seeds} seed(s), "
                        f"init {args.init})")
    for col in ("objective", "setup", "reached", "mean", "std", "speed-up vs baseline", "published"):
        table.add_column(col)
    for r in speedups(rows):
        table.add_row(r["objective"], r["setup"], r["reached"], f"{r['steps_mean']:.0f}", f"{r['steps_std']:.0f}",
                      r.get("speedup", "-"), str(PUBLISHED.get(r["setup"], "-")))
    Console().print(table)
    for setup in setups:
        means = {o: statistics.mean(r["t_grok"] or r["cap"] for r in rows if r["objective"] == o and r["setup"] == setup)
                 for o in objectives}
        for o in objectives:
            if o != "ar" and "ar" in means:
                print(f"{setup}: {o} / ar steps = {means[o] / means['ar']:.2f} (< 1: diffusion groks sooner)")
    print(f"runs recorded in {home}; plot with: GROKLOOP_HOME={home} grokloop plot RUN...")


if __name__ == "__main__":
    main()
