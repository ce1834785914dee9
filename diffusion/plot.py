"""Grokking curves from the store: train vs test accuracy over steps, one panel per task family
(or per group the caller names: an experiment's arms, with their seeds in one panel).

    plot_runs(["loop-modular-1a2b3c4d"], "loop.png")
    plot_runs({"ar-s0": "ar", "ar-s1": "ar", "mdm-s0": "mdm"}, "arms.png")   # run -> panel

Train is solid, test ID dashed, test OOD dotted; each run has its own colour. T_mem (train accuracy
first >= 99%) and T_grok (test ID first >= 95%) are vertical lines where the run reached them, so the
delay between memorising and generalising is the gap between the two; with up to four runs in a
panel their steps are written above it, a row per run in its colour. The step axis is logarithmic
when the run evaluated on the log schedule (`eval_schedule=log`: points where a log axis is wide) and
linear otherwise (evenly spaced evals drawn on a log axis are one straight line over the first decade).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storage.home import store_location
from storage.store import open_store

# two_hop also logs train accuracy on the inferred facts alone (what T_mem is measured on)
CURVES = {"train/acc": "-", "train_inferred/acc": "-.", "test_id/acc": "--", "test_ood/acc": ":"}
STYLE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
ACCURACY_AXIS = (-0.02, 1.02)  # 0-1 with room for a curve on either edge


@dataclass
class RunCurves:
    run_id: str
    family: str
    log_axis: bool                                   # evaluated on the log schedule
    offset: int                                      # steps trained by the runs it started from
    t_mem: int | None
    t_grok: int | None
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # metric -> (steps, values)
    seed: int | None = None
    t_grok_held: int | None = None   # from here on test ID stayed at the threshold (`curve_grokking.held_from`)
    fell_back: bool = False          # reached the threshold (T_grok) and is below it at the last evaluation


def load_curves(run_ids: Sequence[str], home: str | Path | None = None,
                curves: Sequence[str] = tuple(CURVES)) -> list[RunCurves]:
    """The runs' accuracy series, family and T_mem / T_grok, from the store."""
    if not run_ids:
        raise ValueError("name at least one run to plot")
    with open_store(store_location(home), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, step, name, value FROM metrics"
            " WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND name IN (SELECT unnest(?::VARCHAR[]))"
            " ORDER BY run_id, name, step",
            [list(run_ids), list(curves)],
        ).fetchall()
        runs = {r[0]: r[1:] for r in con.execute(
            "SELECT r.run_id, r.parent_run_id, r.final_step, r.t_mem, r.t_grok, r.config, d.params->>'family',"
            " g.held_from FROM runs r LEFT JOIN datasets d USING (dataset_id)"
            " LEFT JOIN curve_grokking g ON g.run_id = r.run_id AND g.curve = 'test_id'").fetchall()}
    missing = [r for r in run_ids if r not in {row[0] for row in rows}]
    if missing:
        raise ValueError(f"no accuracy metrics in the store for run(s): {', '.join(missing)} (looked for "
                         f"{', '.join(curves)})")
    out = []
    for run_id in run_ids:
        _, _, t_mem, t_grok, config, dataset_family, held_from = runs[run_id]
        config = json.loads(config)
        out.append(RunCurves(run_id, dataset_family or config.get("family", "?"),
                             config.get("eval_schedule") == "log", _steps_before(run_id, runs), t_mem, t_grok,
                             seed=config.get("seed"), t_grok_held=held_from,
                             fell_back=t_grok is not None and held_from is None))
    by_id = {c.run_id: c for c in out}
    for run_id, step, name, value in rows:
        xs, ys = by_id[run_id].series.setdefault(name, ([], []))
        xs.append(by_id[run_id].offset + step)
        ys.append(value)
    return out


def grokking_figure(runs: Sequence[RunCurves], curves: dict[str, str] | None = None,
                    panels: Mapping[str, str] | None = None, ylim: tuple[float, float] | None = ACCURACY_AXIS,
                    log_steps: bool | None = None):
    """A matplotlib Figure: one panel per family (in order of first appearance), or per `panels[run_id]`;
    up to four panels a row. Each run has its colour; in named panels of one run per seed, each seed has
    its colour in every panel. `ylim=None` fits the accuracy axis to the curves (a curve near chance,
    such as OOD accuracy, is a flat line on 0-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves or CURVES
    panel_of = {r.run_id: (panels or {}).get(r.run_id) or r.family for r in runs}
    titles = list(dict.fromkeys(panel_of.values()))
    in_panel = {t: [r for r in runs if panel_of[r.run_id] == t] for t in titles}
    seeds_of = {t: [r.seed for r in panel] for t, panel in in_panel.items()}
    # panels the caller named, of one run per seed: a colour per seed, one legend
    by_seed = {t: bool(panels) and None not in ss and len(set(ss)) == len(ss) for t, ss in seeds_of.items()}
    ncols = min(4, len(titles))
    nrows = -(-len(titles) // ncols)
    width = 4.6 * ncols + 1.2 if all(by_seed.values()) else 5.5 * ncols + 3  # room for a legend a panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.2 * nrows), squeeze=False, layout="constrained",
                             sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds: dict = {}
    for ax, title in zip(axes.flat, titles, strict=False):
        panel = in_panel[title]
        log_axis = any(r.log_axis for r in panel) if log_steps is None else log_steps
        marks = []  # (T_mem / T_grok text, colour) of each run that reached one
        for i, run in enumerate(panel):
            color = colors[(run.seed if by_seed[title] else i) % len(colors)]
            for name, style in curves.items():
                if name in run.series:
                    xs, ys = run.series[name]
                    if log_axis:  # step 0 has no place on a log axis
                        xs, ys = zip(*[(x, y) for x, y in zip(xs, ys, strict=True) if x > 0], strict=True)
                    label = f"{name.removesuffix('/acc')} {run.run_id}" if not by_seed[title] else f"seed {run.seed}"
                    ax.plot(xs, ys, style, color=color, label=label)
            for at, line in ((run.t_mem, ":"), (run.t_grok, "-")):
                if at is not None:
                    ax.axvline(run.offset + max(at, 1 if log_axis else 0), color=color, linestyle=line, alpha=0.6,
                               linewidth=1.2)
            if run.t_mem is not None or run.t_grok is not None:
                marks.append((f"T_mem {_step(run.t_mem)} · T_grok {_step(run.t_grok)}{_held(run)}", color))
        if len(marks) > 4:  # many runs: their lines stay, the text would crowd the title
            marks = []
        # above the frame, one row a run (runs often reach them at the same or nearby steps)
        for row, (text, color) in enumerate(marks):
            ax.annotate(text, (0.0, 1.0), xycoords="axes fraction", xytext=(2, 2 + 10 * (len(marks) - 1 - row)),
                        textcoords="offset points", ha="left", va="bottom", fontsize=8, color=color)
        if log_axis:
            ax.set_xscale("log")
        ax.set_title(title, pad=6 + 10 * len(marks))
        ax.set_xlabel("optimization step" + (" (log)" if log_axis else ""))
        ax.set_ylabel("accuracy (task verifier)" if all(n.endswith("/acc") for n in curves) else "value")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if by_seed[title]:  # seed -> colour, the same in every panel (the line styles are in the title)
            seeds.update({h.get_label(): h for h in ax.lines if h.get_label().startswith("seed")})
        else:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    if seeds:
        fig.legend([_solid(seeds[k]) for k in sorted(seeds)], sorted(seeds), loc="outside right upper", fontsize=8)
    drawn = [n for n in curves if any(n in r.series for r in runs)]
    fig.suptitle(", ".join(f"{n.removesuffix('/acc')} {STYLE_NAMES.get(curves[n], curves[n])}" for n in drawn)
                 + "\nvertical lines: T_mem dotted, T_grok solid", fontsize=9)
    return fig


def _step(at: int | None) -> str:
    return "—" if at is None else f"{at:,}"


def _held(run: RunCurves) -> str:
    """T_grok is a first crossing: whether test ID stayed there, when the store says it did not, or
    came back to it for good only later."""
    if run.fell_back:
        return " (not held)"
    if run.t_grok is not None and run.t_grok_held is not None and run.t_grok_held != run.t_grok:
        return f" (held from {run.t_grok_held:,})"
    return ""


def _solid(line):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=line.get_color())


def plot_runs(run_ids: Sequence[str] | Mapping[str, str | None], out: str | Path, home: str | Path | None = None,
              curves: dict[str, str] | None = None, ylim: tuple[float, float] | None = ACCURACY_AXIS,
              log_steps: bool | None = None) -> Path:
    """Accuracy curves of `run_ids` from the store into a PNG; `curves` maps metric name -> line style
    (default: train solid, test ID dashed, test OOD dotted). `run_ids` as a mapping names each run's
    panel (None: its family's). A run started from another run's checkpoint (a self-improvement round)
    is drawn from where its parent stopped. `ylim=None`: the accuracy axis fitted to the curves.
    `log_steps`: the step axis log or linear (None: log for runs on the log eval schedule)."""
    import matplotlib.pyplot as plt

    curves = curves or CURVES
    panels = run_ids if isinstance(run_ids, Mapping) else None
    fig = grokking_figure(load_curves(list(run_ids), home, tuple(curves)), curves, panels, ylim, log_steps)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _steps_before(run_id: str, lineage: dict[str, tuple]) -> int:
    """Steps trained by the chain of parents a run started from (0 for a run from scratch)."""
    total, seen = 0, {run_id}
    parent = lineage.get(run_id, (None,))[0]
    while parent in lineage and parent not in seen:
        seen.add(parent)
        total += lineage[parent][1] or 0
        parent = lineage[parent][0]
    return total
