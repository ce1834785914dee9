"""`grokloop run FLOW`, `grokloop serve`, `grokloop experiment NAME`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from diffusion.config import TrainConfig
from diffusion.plot import plot_runs
from flows.cli_common import HOME, OneLineErrors, console, err_console
from flows.cli_output import print_table
from flows.config import LoopConfig
from storage.home import grokloop_home, store_location

# The flows import Prefect, and training torch (seconds each): each command imports them when it
# runs, so `grokloop --help` and the store's commands do not wait for them.

app = typer.Typer(cls=OneLineErrors)
run_app = typer.Typer(cls=OneLineErrors,
                      help="Run a flow once, now (Prefect's local ephemeral server unless PREFECT_API_URL is set).",
                      no_args_is_help=True)
app.add_typer(run_app, name="run")

SETTINGS = typer.Argument(None, help="LoopConfig overrides as key=value (JSON values), e.g. episodes=200")


def _cfg(settings: list[str] | None, home: str | None) -> LoopConfig:
    """Every setting typed and checked here, before a flow (or any agent) starts; `--home` is the
    `home=` setting."""
    if home and any(s.startswith("home=") for s in settings or []):
        raise ValueError("the home is given twice (--home and home=): give one")
    return LoopConfig.from_overrides([*(settings or []), *([f"home={json.dumps(home)}"] if home else [])])


@run_app.command("loop")
def run_loop(settings: list[str] | None = SETTINGS, home: str = HOME) -> None:
    """The main job: collect -> curate -> train -> evaluate for every family."""
    from flows.flows import loop_flow  # Prefect: see the top

    cfg = _cfg(settings, home)
    console.print(_expected_time(cfg), soft_wrap=True)
    summary = loop_flow(cfg=cfg)
    table = Table(title="grokloop loop")
    for col in ("family", "train rows", "run", "T_mem", "T_grok", "ID acc", "OOD acc"):
        table.add_column(col)
    for family, part in summary.items():
        run, ev = part["run"], part["evaluation"]
        table.add_row(family, str(part["dataset"]["counts"].get("train", "?")), run["run_id"],
                      _step(run["t_mem"]), _step(run["t_grok"]), _pct(ev.get("test_id")), _pct(ev.get("test_ood")))
    console.print(table)
    plot = plot_runs([p["run"]["run_id"] for p in summary.values()], grokloop_home(cfg.home) / "runs" / "loop.png",
                     home=cfg.home)
    console.print(_reading(summary, plot), soft_wrap=True)
    console.print(f"{'store:':<21} {store_location(cfg.home)}   (try: grokloop sql \"SELECT * FROM success_rate\")")
    for family, part in summary.items():
        console.print(f"{family + ' dataset:':<21} {part['dataset']['path']}", soft_wrap=True)
        console.print(f"{family + ' checkpoint:':<21} {part['run']['checkpoint_dir']}", soft_wrap=True)
    console.print(f"{'plot:':<21} {plot}", soft_wrap=True)


# CPU seconds per 1,000 training steps (evaluations included) at each family's default size, and for
# the rest of the loop (Prefect start, collect, curate, final evaluation, plot). modular: measured,
# the default run (README, "What the main job does": 245 s of CPU for 1,500 steps). two_hop and
# programs: rough, from issue 20's run of all three (programs ~3x the others).
SECONDS_PER_1000_STEPS = {"modular": 135.0, "two_hop": 135.0, "programs": 400.0}
SECONDS_OUTSIDE_TRAINING = 40.0


def _expected_time(cfg) -> str:
    from flows.steps import train_config  # torch: see the top

    steps = {f: train_config(cfg, f, None, run_name="-").max_steps for f in cfg.families}
    seconds = SECONDS_OUTSIDE_TRAINING + sum(
        n / 1000 * SECONDS_PER_1000_STEPS.get(f, max(SECONDS_PER_1000_STEPS.values())) for f, n in steps.items())
    plan = ", ".join(f"{f} {n:,} steps" for f, n in steps.items())
    return (f"grokloop loop: {plan}. Expected time: about {seconds / 60:.0f} min of CPU "
            "(the wall time on 2 free cores; longer while other work shares them).")


def _reading(summary: dict, plot: Path) -> str:
    """What the table means, in words: the thresholds, and for each run whether it grokked."""
    from flows.flows import grok_verdict  # imported by the command already (Prefect: see the top)

    t = TrainConfig()
    lines = [f"T_mem: first evaluation with train accuracy >= {t.mem_threshold:.0%} (memorised). "
             f"T_grok: first with test ID accuracy >= {t.grok_threshold:.0%} (generalised). "
             "Grokking is generalising long after memorising: T_grok well past T_mem."]
    for family, part in summary.items():
        run, ev = part["run"], part["evaluation"]
        if run["t_grok"] is not None and grok_verdict(run, ev, t.grok_threshold) != "grokked":
            lines.append(f"  {family}: reached {t.grok_threshold:.0%} ID at step {run['t_grok']:,} but ended at "
                         f"{_pct(ev.get('test_id'))} (step {run['final_step']:,}): not held, not grokked.")
        elif run["t_grok"] is not None and run["t_mem"] is not None:
            lines.append(f"  {family}: grokked. Memorised at step {run['t_mem']:,}, generalised at step "
                         f"{run['t_grok']:,} ({run['t_grok'] / max(run['t_mem'], 1):.1f}x later).")
        elif run["t_grok"] is not None:
            lines.append(f"  {family}: reached {t.grok_threshold:.0%} ID at step {run['t_grok']:,} "
                         "without first memorising the training set (no delay to see).")
        elif run["t_mem"] is not None:
            lines.append(f"  {family}: memorised at step {run['t_mem']:,} but did not generalise in "
                         f"{run['final_step']:,} steps (ID {_pct(ev.get('test_id'))}): not grokked.")
        else:
            lines.append(f"  {family}: neither memorised nor generalised in {run['final_step']:,} steps "
                         f"(train {_pct(ev.get('train'))}, ID {_pct(ev.get('test_id'))}).")
    lines.append(f"The plot ({plot}) has one panel per family: train solid, test ID dashed, test OOD dotted, "
                 "T_mem and T_grok as vertical lines.")
    return "\n".join(lines)


@run_app.command("collect")
def run_collect(settings: list[str] | None = SETTINGS, home: str = HOME) -> None:
    """Agents -> spool -> store."""
    from flows.flows import collect_flow  # Prefect: see the top

    console.print_json(json.dumps(collect_flow(cfg=_cfg(settings, home)), default=str))


@run_app.command("curate")
def run_curate(settings: list[str] | None = SETTINGS, home: str = HOME) -> None:
    """One snapshot per family (the same store and settings give the same snapshot back)."""
    from flows.flows import curate_flow  # Prefect: see the top

    console.print_json(json.dumps(curate_flow(cfg=_cfg(settings, home)), default=str))


@run_app.command("self-improve")
def run_self_improve(
    rounds: int = typer.Option(2, help="rounds after the first training run"),
    family: str = typer.Option("modular"),
    episodes: int = typer.Option(200, help="model-agent attempts per round"),
    loop_id: str = typer.Option("self-improve", help="the loop's name: the same one again goes on from the "
                                "rounds the store has (more --rounds extend it)"),
    settings: list[str] | None = SETTINGS,
    home: str = HOME,
) -> None:
    """Rounds of model agent -> verifier -> ingest -> curate -> train on -> evaluate."""
    from flows.flows import self_improve_flow  # Prefect: see the top

    history = self_improve_flow(cfg=_cfg(settings, home), family=family, rounds=rounds, episodes=episodes,
                                loop_id=loop_id)
    table = Table(title=f"self-improve {loop_id} ({family})")
    for col in ("round", "proposed", "verified", "ID acc", "OOD acc", "run"):
        table.add_column(col)
    for row in history:
        table.add_row(str(row["round"]), str(row["n_proposed"]), str(row["n_verified"]),
                      _pct(row["test_id_acc"]), _pct(row["test_ood_acc"]), row["run_id"])
    print_table(table, console, err_console)


@app.command()
def serve(
    collect_cron: str = typer.Option("0 * * * *", help="collect: hourly"),
    train_cron: str = typer.Option("0 2 * * *", help="curate + train + evaluate: nightly"),
    settings: list[str] | None = SETTINGS,
    home: str = HOME,
) -> None:
    """Serve the deployments on cron schedules until interrupted (Ctrl-C)."""
    from flows.deploy import serve_deployments  # Prefect: see the top

    serve_deployments(_cfg(settings, home), collect_cron=collect_cron, train_cron=train_cron)


@app.command()
def experiment(
    name: str = typer.Argument(..., help="grokfast | composition | clusters | self_improve"),
    quick: bool = typer.Option(False, "--quick", help="the few-minute size (--size quick)"),
    size: str = typer.Option("", help="quick | full (the default: this CPU's size) | published (composition: "
                                      "Wang et al.'s two_hop world and model, for a GPU)"),
    arms: str = typer.Option("", help="composition only: a subset of ar,mdm,mdm-full,ar-shared,ar-1layer (the "
                                      "default), or ar-wide (4 blocks at ar-shared's width: 4x the parameters), "
                                      "ar-full (AR's loss on every token: mdm-full's control)"),
    worlds: str = typer.Option("", help="composition only: a subset of the size's worlds (full: two_hop,programs; "
                                        "published: two_hop-phi7.2,two_hop-phi18)"),
    report_only: bool = typer.Option(False, "--report-only", help="train nothing: write the summary and plot "
                                                                  "from what the store has now (runs may go on)"),
    seeds: int = typer.Option(0, help="override the number of seeds (0: the size's default)"),
    max_steps: int = typer.Option(0, help="override the step cap per run (0: the size's default; composition: "
                                          "a run that memorises late goes on to 10 x its T_mem)"),
    patience: int | None = typer.Option(None, help="composition only: a run stops once test ID has stayed at "
                                                      "95% this many steps past 10 x T_mem (0: to the cap whatever it reached); like "
                                                      "the cap, not part of a run's name: runs continue"),
    train_fraction: float | None = typer.Option(None, help="clusters only: the share of each operation's table "
                                                          "that trains (default: the size's; full 0.5)"),
    held_out: str = typer.Option("", help="clusters only: the operation whose cluster is removed (default x-y; "
                                          "full: x+y, x-y or x*y); the balanced runs are shared"),
    variants: str = typer.Option("", help="clusters only: a subset of balanced,held out,k=1,k=4,k=16,k=64,1%,"
                                           "10%,15%,25%,50% (default: all)"),
    settings: str = typer.Option("", help="clusters only: training settings changed for every run, "
                                          "'key=value ...' (e.g. 'grad_clip=1.0'); runs of their own"),
    out: Path | None = typer.Option(None, help="where NAME.md and NAME.png go (default docs/results, where a page "
                                                "written by another command is not replaced: say --out)"),
    setups: str = typer.Option("", help="grokfast only: a subset, e.g. baseline,ema"),
    objectives: str = typer.Option("", help="grokfast only: a subset, e.g. mdm-count,ar"),
    init: str = typer.Option("", help="grokfast only: torch (the published init, default) or small"),
    runner: str = typer.Option("local", help="where the runs train: local (in turn) | dask | ray (side by side)"),
    dask_address: str = typer.Option("", help="runner dask: an existing scheduler (tcp://host:8786); "
                                              "none starts a local cluster"),
    dask_workers: int = typer.Option(2, help="runner dask (ray) without an address: worker processes (CPUs)"),
    ray_address: str = typer.Option("", help="runner ray: an existing cluster (ray://host:10001, auto); "
                                             "none starts a local Ray"),
    home: str = HOME,
) -> None:
    """Run a named experiment: runs recorded in the store, a plot and docs/results/NAME.md."""
    from flows.experiments import run_experiment  # torch: see the top

    options = {k: v.split(",") for k, v in (("setups", setups), ("objectives", objectives)) if v}
    options |= {"init": init} if init else {}
    if options and name != "grokfast":
        raise ValueError("--setups, --objectives and --init apply to the grokfast experiment only")
    for flag, value in (("arms", arms), ("worlds", worlds)):
        if value and name != "composition":
            raise ValueError(f"--{flag} applies to the composition experiment only")
        options |= {flag: value.split(",")} if value else {}
    if patience is not None and name != "composition":
        raise ValueError("--patience applies to the composition experiment only")
    if patience is not None and patience < 0:
        raise ValueError(f"--patience must be >= 0 (0: run to the cap), got {patience}")
    options |= {"patience": patience} if patience is not None else {}
    if train_fraction is not None and name != "clusters":
        raise ValueError("--train-fraction applies to the clusters experiment only")
    options |= {"train_fraction": train_fraction} if train_fraction is not None else {}
    if held_out and name != "clusters":
        raise ValueError("--held-out applies to the clusters experiment only")
    options |= {"held_out": held_out} if held_out else {}
    for flag, value in (("variants", variants.split(",") if variants else []), ("settings", settings)):
        if value and name != "clusters":
            raise ValueError(f"--{flag} applies to the clusters experiment only")
        options |= {flag: value} if value else {}
    if report_only and name not in ("composition", "clusters"):
        raise ValueError("--report-only applies to the composition and clusters experiments")
    options |= {"report_only": True} if report_only else {}
    if quick and size and size != "quick":
        raise ValueError(f"--quick and --size {size} disagree: give one")
    where = LoopConfig(runner=runner, dask_address=dask_address or None, dask_workers=dask_workers,
                       ray_address=ray_address or None).runner_settings()
    result = run_experiment(name, quick=quick, size=size or None, seeds=seeds or None, max_steps=max_steps or None,
                            out_dir=out, home=home, runner=where, **options)
    plots = ", ".join(str(p) for p in result["plots"]) or "(none: no run has evaluated yet)"
    console.print(f"summary: {result['summary']}\nplots:   {plots}")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _step(x) -> str:
    return "-" if x is None else str(x)
