"""`grokloop agents run` and `grokloop agents families`."""

from __future__ import annotations

import typer
from rich.table import Table

from agents.tasks import FAMILY_NAMES, get_family
from flows.cli_common import FAMILY, HOME, OneLineErrors, console, err_console, family_params
from flows.cli_output import print_table
from flows.config import LoopConfig
from storage.home import spool_dir, store_location
from storage.ingest import ingest_spool
from storage.store import open_store

app = typer.Typer(cls=OneLineErrors,
                  help="Agents that attempt tasks and log verified (and failed) trajectories.",
                  no_args_is_help=True)


@app.command("run")
def run(
    family: str = FAMILY,
    agents: int = typer.Option(4, "--agents", "-n", help="agent processes"),
    episodes: int = typer.Option(100, "--episodes", "-e", help="episodes per agent process"),
    policy: str = typer.Option("mixed", help="solver | explorer | mixed"),
    error_rate: float = typer.Option(0.3, help="explorer's share of episodes that go wrong"),
    seed: int = typer.Option(0, help="task world and agent randomness"),
    split: str = typer.Option("train", help="split the agents draw tasks from"),
    param: list[str] = typer.Option(None, "--param", "-p", help="family parameter key=value, repeatable"),
    home: str = HOME,
    ingest: bool = typer.Option(True, "--ingest/--no-ingest", help="ingest the spool into the store after"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Run agents in parallel processes, then ingest what they logged."""
    # imported here: the SDK imports pandas (0.4 s), which `grokloop --help` need not wait for
    from agents.runner import run_agents

    # bad settings raise here, before any agent process starts
    report = run_agents(family, n_agents=agents, episodes=episodes, policy=policy,
                        error_rate=error_rate, seed=seed, family_params=family_params(family, param),
                        spool=spool_dir(home), split=split, progress=progress)
    table = Table(title=f"agents on {family} ({policy}, split {split})")
    for col in ("trajectories", "verified", "outcomes", "segments", "seconds", "traj/s"):
        table.add_column(col)
    table.add_row(str(report.trajectories), str(report.verified),
                  ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())),
                  str(report.segments), f"{report.seconds:.2f}", f"{report.rate:.0f}")
    print_table(table, console, err_console)
    if ingest:
        with open_store(store_location(home)) as con:
            result = ingest_spool(con, spool_dir(home))
        console.print(f"ingested: {result}")


@app.command("families")
def families(
    seed: int = typer.Option(0, help="task world seed"),
    param: list[str] = typer.Option(None, "--param", "-p",
                                    help="family:key=value, e.g. two_hop:n_entities=2000, repeatable"),
    family_defaults: bool = typer.Option(False, "--family-defaults",
                                         help="the families' own default sizes instead of the loop's"),
) -> None:
    """List the task families with their split sizes and vocabulary, at the sizes `grokloop run loop` uses."""
    per_family: dict[str, list[str]] = {name: [] for name in FAMILY_NAMES}
    for item in param or []:
        name, sep, kv = item.partition(":")
        if not sep or name not in per_family:
            raise ValueError(f"{item!r}: expected family:key=value with family in {', '.join(FAMILY_NAMES)}")
        per_family[name].append(kv)
    loop_params = {} if family_defaults else LoopConfig().family_params
    sizes_of = "family defaults" if family_defaults else "the loop's sizes"
    table = Table(title=f"task families (seed {seed}, {sizes_of})")
    for col in ("family", "train", "test_id", "test_ood", "vocab", "prompt+answer", "parameters"):
        table.add_column(col)
    for name in FAMILY_NAMES:
        params = {**loop_params.get(name, {}), **family_params(name, per_family[name])}
        fam = get_family(name, seed=seed, **params)
        sizes = {k: len(v) for k, v in fam.splits().items()}
        tok = fam.tokenizer()
        table.add_row(name, str(sizes["train"]), str(sizes["test_id"]), str(sizes["test_ood"]),
                      str(tok.vocab_size), f"{tok.prompt_len}+{tok.answer_len}", fam.config_tag)
    print_table(table, console, err_console)
