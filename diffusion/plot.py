"""Grokking curves from the store: train vs test accuracy over log steps, several runs overlaid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.home import store_path
from storage.store import open_store

CURVES = {"train/acc": "-", "test_id/acc": "--", "test_ood/acc": ":"}


def plot_runs(run_ids: Sequence[str], out: str | Path, home: str | Path | None = None,
              curves: dict[str, str] | None = None) -> Path:
    """Accuracy curves of `run_ids` from the store; `curves` maps metric name -> line style
    (default: train solid, test ID dashed, test OOD dotted). A run started from another run's
    checkpoint (a self-improvement round) is drawn from where its parent stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curves or CURVES
    if not run_ids:
        raise ValueError("name at least one run to plot")
    with open_store(store_path(home), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, step, name, value FROM metrics"
            " WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND name IN (SELECT unnest(?::VARCHAR[]))"
            " ORDER BY run_id, name, step",
            [list(run_ids), list(curves)],
        ).fetchall()
        lineage = {r[0]: r[1:] for r in con.execute(
            "SELECT run_id, parent_run_id, final_step, t_grok FROM runs").fetchall()}
    marks = {run_id: t_grok for run_id, (_, _, t_grok) in lineage.items()}
    offset = {run_id: _steps_before(run_id, lineage) for run_id in run_ids}
    found = {r[0] for r in rows}
    missing = [r for r in run_ids if r not in found]
    if missing:
        raise ValueError(f"no accuracy metrics in the store for run(s): {', '.join(missing)}")
    series: dict[tuple[str, str], tuple[list, list]] = {}
    for run_id, step, name, value in rows:
        xs, ys = series.setdefault((run_id, name), ([], []))
        xs.append(max(offset[run_id] + step, 1))  # step 0 on a log axis
        ys.append(value)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run_id in enumerate(run_ids):
        color = colors[i % len(colors)]
        for name, style in curves.items():
            if (run_id, name) in series:
                xs, ys = series[run_id, name]
                label = name.removesuffix("/acc")
                ax.plot(xs, ys, style, color=color, label=f"{run_id} {label}")
        if marks.get(run_id) is not None:
            ax.axvline(max(offset[run_id] + marks[run_id], 1), color=color, alpha=0.3, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("optimization step")
    ax.set_ylabel("accuracy (task verifier)")
    ax.set_ylim(-0.02, 1.02)
    styles = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
    ax.set_title("; ".join(f"{n.removesuffix('/acc')} ({styles.get(st, st)})" for n, st in curves.items())
                 + "; T_grok marked", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
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
