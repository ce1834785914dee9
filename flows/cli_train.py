"""`grokloop train | evaluate | plot | sample`: training runs and what they learned."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import typer
from rich.table import Table

from agents.tasks import SPLITS
from diffusion.config import TrainConfig, config_like, load_config, train_overrides
from diffusion.plot import STYLE_NAMES, plot_runs
from flows.cli_common import HOME, OneLineErrors, console, err_console
from flows.cli_output import print_table
from storage.runs import match_runs

# diffusion.train, .evaluate, .checkpoint and flows.model_agent import torch (seconds): each command imports
# them when it runs, so `grokloop --help` and the store's commands do not wait for torch.

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    resume: str = typer.Option(None, "--resume", help="continue this run from its latest checkpoint"),
    like: str = typer.Option(None, "--like", help="a new run with this run's settings, the key=value ones "
                                                  "replacing theirs (e.g. lr=1e-3 run_name=...)"),
    home: str = HOME,
) -> None:
    """Train a masked-diffusion model (or objective=ar). Settings as key=value, e.g.
    `grokloop train max_steps=3000 grokfast=ema family_params='{"p": 97, "train_fraction": 0.4}'`."""
    from diffusion.distributed import is_main  # torch: see the top
    from diffusion.train import train as train_loop  # torch: see the top

    overrides = list(ctx.args)
    if resume and like:
        raise ValueError("--resume continues a run, --like starts a new one from a run's settings: give one")
    if resume:
        cfg = load_config(resume, overrides, home=home)
    elif like:
        cfg = config_like(like, overrides, home=home)
    else:
        cfg = train_overrides(TrainConfig(home=home), overrides)
    result = train_loop(cfg, resume=bool(resume))
    if not is_main():  # under torchrun: rank 0 reports the run
        return
    console.print(
        f"run {result.run_id}: {result.status} at step {result.final_step}; "
        f"T_mem {result.t_mem if result.t_mem is not None else '-'}, "
        f"T_grok {result.t_grok if result.t_grok is not None else '-'}\n"
        f"checkpoint: {result.checkpoint_dir}"
    )


@app.command()
def evaluate(
    run: str = typer.Argument(..., help="run id, run directory or checkpoint directory"),
    n_steps: int = typer.Option(0, "--n-steps", help="denoising steps (0: the run's sampler_steps)"),
    split: list[str] = typer.Option(None, "--split", help="train | test_id | test_ood (repeatable)"),
    answers: Path = typer.Option(None, "--answers", help="also every row's answer and the model's, to this "
                                 "Parquet file (query it: grokloop sql --table answers=FILE)"),
    home: str = HOME,
) -> None:
    """Exact-match accuracy of a run's latest checkpoint per split, recorded in `evaluations`."""
    from diffusion.evaluate import evaluate_checkpoint  # torch: see the top

    results = evaluate_checkpoint(run, splits=split or SPLITS, n_steps=n_steps or None, home=home,
                                  answers=answers)
    table = Table("split", "rows", "metric", "accuracy", title=f"evaluation of {run}")
    for split_name, rows, metric, acc in sorted(_by_split(results), key=lambda r: r[1] != "all"):
        table.add_row(split_name, rows, metric, f"{100 * acc:.2f}%")
    print_table(table, console, err_console)


def _by_split(results: dict[str, float]) -> list[tuple[str, str, str, float]]:
    """(split, which rows, metric, accuracy) from the names diffusion/evaluate.py gives: "test_id",
    "test_id/exact", "test_id/cluster:x*y" (or an older "cluster:x*y" pooled over the evaluated
    splits). A cluster's name may hold a "/" (x/y)."""
    out = []
    for name, acc in results.items():
        split_name, _, group = ("all evaluated", "", name) if name.startswith("cluster:") else name.partition("/")
        metric = "exact match" if group == "exact" else "verified"
        rows = group.replace("cluster:", "cluster ", 1) if group.startswith("cluster:") else "all"
        out.append((split_name, rows, metric, acc))
    return out


@app.command()
def plot(
    runs: list[str] = typer.Argument(..., help="run ids to overlay, or glob patterns of them ('clusters-15pct*'); "
                                                 "PANEL=RUN draws RUN (every run a pattern matches) in a panel of "
                                                 "that name (default: a panel per task family)"),
    output: Path = typer.Option(Path("grokking.png"), "--output", "-o", help="PNG to write"),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="a stored metric to draw instead of train / "
                                     "test ID / test OOD (repeatable), e.g. 'test_id/cluster:x+y/acc'"),
    linear: bool = typer.Option(False, "--linear", help="a linear step axis (what happens late) instead of the "
                                "log axis of runs on the log eval schedule"),
    home: str = HOME,
) -> None:
    """Grokking curves (train vs test accuracy over log steps) from the store, as a PNG."""
    curves = dict(zip(metric, itertools.cycle(STYLE_NAMES), strict=False)) if metric else None
    # accuracies on 0-1 as always; anything else (a loss) on an axis fitted to it
    fitted = any(not m.endswith("/acc") for m in metric or ())
    panels = {run: panel or None for panel, _, pattern in (r.rpartition("=") for r in runs)
              for run in match_runs(home, pattern)}
    path = plot_runs(panels, output, home=home, curves=curves, log_steps=False if linear else None,
                     **({"ylim": None} if fitted else {}))
    console.print(f"wrote {path}")


@app.command()
def sample(
    run: str = typer.Argument(..., help="run id or checkpoint directory"),
    family: str = typer.Option(None, "--family", help="task family (default: the run's)"),
    split: str = typer.Option("test_id", "--split"),
    n: int = typer.Option(5, "--n", help="tasks to show"),
    n_samples: int = typer.Option(3, "--n-samples", help="answers sampled per task"),
    n_steps: int = typer.Option(0, "--n-steps", help="denoising steps (0: the run's sampler_steps)"),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    home: str = HOME,
) -> None:
    """Show a few tasks, the model's sampled answers and the verifier's verdicts."""
    from diffusion.checkpoint import checkpoint_meta, resolve_checkpoint  # torch: see the top
    from flows.model_agent import family_of, load_proposer

    checkpoint = resolve_checkpoint(run, home)
    meta = checkpoint_meta(checkpoint)
    if family and family != meta["family"]:
        raise ValueError(f"run {run} was trained on {meta['family']!r}; its tokenizer cannot read {family!r}")
    fam = family_of(meta)
    pool = fam.splits().get(split)
    if not pool:
        raise ValueError(f"family {fam.name!r} has no {split!r} tasks")
    tasks = random.Random(seed).sample(pool, min(n, len(pool)))
    propose = load_proposer(checkpoint, n_steps=n_steps or None, temperature=temperature, seed=seed)
    samples = propose(tasks, n_samples)
    table = Table("prompt", "expected", "samples (✓ verified)", title=f"{meta['run_id']} step {meta['step']}")
    for task, answers in zip(tasks, samples, strict=True):
        shown = [" ".join(a) + (" ✓" if fam.verify(task, a) else " ✗") for a in answers]
        table.add_row(" ".join(task.prompt), " ".join(task.answer), " | ".join(shown))
    print_table(table, console, err_console)
