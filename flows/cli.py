"""The `grokloop` command. Each area keeps its commands in its own `flows/cli_*.py` module."""

from __future__ import annotations

import os

import typer

from flows import (
    cli_agents,
    cli_collector,
    cli_common,
    cli_dataset,
    cli_flows,
    cli_store,
    cli_train,
)

app = typer.Typer(
    cls=cli_common.OneLineErrors,  # an error a person can fix: one line, exit 2 (flows/cli_common.py)
    name="grokloop",
    help="Agent experience -> DuckDB store -> balanced datasets -> masked-diffusion grokking runs.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of any error"),
    store: str = typer.Option(None, "--store", envvar="GROKLOOP_STORE", show_envvar=True,
                              help="the store: ducklake:postgres://user@host:5432/db for the shared "
                                   "store (storage/lake.py); default <home>/store.duckdb"),
) -> None:
    cli_common.DEBUG = debug
    if store:  # read by storage.home.store_location, here and in the processes this one starts
        os.environ["GROKLOOP_STORE"] = store


app.add_typer(cli_store.app)                     # ingest, sql, export, import-runs, status
app.add_typer(cli_agents.app, name="agents")     # agents run, agents families
app.add_typer(cli_dataset.app, name="dataset")   # dataset build/list/show/export
app.add_typer(cli_train.app)                     # train, evaluate, plot, sample
app.add_typer(cli_flows.app)                     # run <flow>, serve, experiment
app.add_typer(cli_collector.app)                 # collector (OTLP/HTTP traces in)

if __name__ == "__main__":
    app()
