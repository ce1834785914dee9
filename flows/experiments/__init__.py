"""Named experiments: `grokloop experiment NAME [--quick]`, one module each.

Each runs its configurations and seeds through the same plain functions as the loop
(`flows.steps`, `diffusion.train`), so every run, metric and evaluation lands in the store;
then it writes `docs/results/NAME.png` (and any other figure it names, `NAME_<suffix>.png`),
`docs/results/NAME.md` with the table of results, and `docs/results/NAME_runs.parquet`: its runs
and every metric they recorded (storage.runs.export_runs), so that the page's numbers outlive the
store they were read from (`grokloop import-runs` puts them back in one; `--report-only` rewrites the page).
The numbers in the tables are read back from the store, not from memory.

    grokfast      a*b mod 97: Adam baseline vs weight decay vs Grokfast-EMA / -MA, diffusion vs AR
    composition   two_hop and programs: ID and OOD accuracy, masked diffusion vs AR at equal params/steps
    clusters      a cluster-balanced snapshot, one cluster held out, then k = 1, 4, 16, 64, 1%, 10%, 15%, 25%, 50% of it back
    self_improve  rounds of the model agent's verified data vs as many agent-labelled prompts
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusion.plot import plot_runs
from flows.experiments import clusters, composition, grokfast, self_improve
from flows.experiments.common import FIGURES, LOCAL, Size
from flows.runners import Runner
from storage.home import grokloop_home, store_location
from storage.runs import export_runs, last_stored_step, runs_trained_on

# Below this line a results page is a person's words: regenerating the page keeps them (hand_written).
HAND_WRITTEN = "<!-- hand-written below: kept when this page is written again -->"
DEFAULT_OUT = Path("docs/results")

# name -> (the experiment, its sizes, its figures: file suffix -> plot_runs options or a function
# (table, png path) -> png path; or a function of the experiment's options that gives them)
EXPERIMENTS: dict[str, tuple[Callable, dict[str, Size], dict[str, dict[str, Any]] | Callable]] = {
    "grokfast": (grokfast.grokfast, grokfast.GROKFAST_SIZES, FIGURES),
    "composition": (composition.composition, composition.COMPOSITION_SIZES, composition.FIGURES),
    "clusters": (clusters.clusters, clusters.CLUSTER_SIZES,
                 lambda options: clusters.figures(options.get("held_out"), options.get("variants"))),
    "self_improve": (self_improve.self_improve, self_improve.SELF_IMPROVE_SIZES, FIGURES),
}


def experiment_size(name: str, size_name: str, seeds: int | None = None, max_steps: int | None = None):
    """Experiment `name`'s size `size_name`, its seeds and step cap overridden where given (a copy)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    sizes = EXPERIMENTS[name][1]
    if size_name not in sizes:
        raise ValueError(f"experiment {name!r} has no size {size_name!r}; sizes: {', '.join(sizes)}")
    chosen = dataclasses.replace(sizes[size_name])
    if seeds:
        chosen.seeds = seeds
    if max_steps:
        chosen.max_steps = max_steps
    return chosen


def run_experiment(name: str, *, quick: bool = False, size: str | None = None, seeds: int | None = None,
                   max_steps: int | None = None, out_dir: str | Path | None = None, home: str | None = None,
                   runner: Runner = LOCAL, **options: Any) -> dict[str, Any]:
    """Run experiment `name` at a size of its own (`size`: "quick", "full" (the default) or, where the
    experiment has one, "published"; `quick=True` is size "quick"); `seeds` / `max_steps` override that
    size's; `options` go to the experiment (grokfast's `setups` / `objectives`, composition's `arms`,
    `worlds`, `patience`, `report_only`; clusters' `train_fraction`, `held_out`); returns {"table", "runs",
    "summary": md path, "plot": the main png, "plots": all}. Without `out_dir` the page goes to
    docs/results, unless a page there was written by another command: then nothing runs (ValueError)."""
    size_name = size or ("quick" if quick else "full")
    chosen = experiment_size(name, size_name, seeds, max_steps)
    command = experiment_command(name, size_name, seeds, max_steps, options)
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    if out_dir is None:
        check_not_replacing(out / f"{name}.md", command)
    fn, _, figures = EXPERIMENTS[name]
    figures = figures(options) if callable(figures) else figures
    home = str(grokloop_home(home))
    started = time.perf_counter()
    table, runs, body = fn(chosen, home, runner=runner, **options)
    wall = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    plots = [figure(table, out / f"{name}{suffix}.png") if callable(figure)
             else plot_runs(runs, out / f"{name}{suffix}.png", home=home, **figure)
             for suffix, figure in figures.items()] if runs else []
    summary = out / f"{name}.md"
    data = out / f"{name}_runs.parquet"
    if runs:
        export_runs(home, list(runs), data)
    how = ("this report was written from the store with `--report-only` (training goes on elsewhere; "
           f"{wall:.0f} s to write it)" if options.get("report_only") else f"wall time {wall / 60:.1f} min")
    kept = hand_written(summary)
    summary.write_text(
        f"# Experiment: {name} ({size_name} size, {chosen.seeds} seed(s), {_steps_run(home, runs, chosen.max_steps)})\n\n"
        f"Reproduce: `{command}` ({how}). Runs: "
        f"{', '.join(f'`{r}`' for r in runs)} (in `{_shown(store_location(home))}`).\n\n"
        + (f"Trained on: {trained_on_line(home, list(runs))}.\n\n" if runs else "") +
        f"{body}\n\n" + (f"Every evaluation of these runs: `{data.name}` (one row per run, step and metric; "
                           f"`duckdb -c \"FROM '{_shown(data)}'\"`, or `grokloop import-runs {_shown(data)}` "
                           "to put the runs in a store and rewrite this page with `--report-only`).\n\n" if runs else "")
        + ("".join(f"![{p.stem}]({p.name})\n" for p in plots) or "No run has evaluated yet: no plot.\n")
        + kept
    )
    return {"table": table, "runs": runs, "summary": summary, "plot": plots[0] if plots else None, "plots": plots}


def experiment_command(name: str, size_name: str, seeds: int | None, max_steps: int | None,
                       options: dict[str, Any]) -> str:
    """The command line that runs this grid (the page's "Reproduce:"); `--report-only` of a grid is
    the same grid."""
    shown = {k: v for k, v in options.items() if k != "report_only"}
    return " ".join([f"grokloop experiment {name}", *([f"--size {size_name}"] if size_name != "full" else []),
                     *([f"--seeds {seeds}"] if seeds else []), *([f"--max-steps {max_steps}"] if max_steps else []),
                     *(f"--{k.replace('_', '-')} {shlex.quote(','.join(v) if isinstance(v, list) else str(v))}"
                       for k, v in shown.items())])


def check_not_replacing(page: Path, command: str) -> None:
    """ValueError unless `page` is free for `command`: absent, or written by the same command (a longer
    run of the same grid, `--report-only`). A committed page is not replaced by a quick try or a part of
    its grid."""
    written_by = re.search(r"Reproduce: `([^`]*)`", page.read_text()) if page.is_file() else None
    if written_by and written_by.group(1) != command:
        raise ValueError(f"{page} was written by `{written_by.group(1)}`, not by `{command}`: give this "
                         f"one's page a folder of its own with --out DIR (--out {page.parent} replaces it)")


def _steps_run(home: str, run_ids, cap: int) -> str:
    """The step cap, and how far any run went past it (continued with `grokloop train --resume RUN
    max_steps=N`): the page's header must not say less than its runs show."""
    past = [step for step in (last_stored_step(home, r) for r in run_ids) if step is not None and step > cap]
    return f"at most {cap} steps per run" + (f"; {len(past)} of the {len(run_ids)} runs continued past it, to at "
                                             f"most {max(past)}" if past else "")


def trained_on_line(home: str, run_ids: list[str]) -> str:
    """Where the runs trained, in words: their exact numbers repeat only on the same thread count,
    torch and device (diffusion.records.trained_on)."""
    def where(on: dict | None) -> str:
        if on is None:
            return "not recorded (rows from before runs recorded it)"
        threads = f"{on['threads']} thread{'s' if on['threads'] != 1 else ''}"
        return f"{on['device']}, {threads}, torch {on['torch']}" if on["device"] == "cpu" \
            else f"{on['device']}, torch {on['torch']}"
    return "; ".join(f"{where(on)} ({n} run{'s' if n != 1 else ''})" for on, n in runs_trained_on(home, run_ids))


def hand_written(page: Path) -> str:
    """What a person wrote at the end of a results page, below HAND_WRITTEN (the marker included), so
    that writing the page again from the store (a longer run, `--report-only`) keeps it."""
    text = page.read_text() if page.is_file() else ""
    return "\n" + text[text.index(HAND_WRITTEN):] if HAND_WRITTEN in text else ""


def _shown(path: Path | str) -> str:
    """A path as a reader of the summary would type it: relative to here when it is below here (a
    shared store's URL as it is)."""
    if isinstance(path, str):
        return path
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
