"""`grokloop dataset build | list | show | export`: cluster-balanced dataset snapshots."""

from __future__ import annotations

import json

import typer
from rich.table import Column, Table

from flows.cli_common import FAMILY, HOME, OneLineErrors, console, err_console, family_params
from flows.cli_output import print_table
from storage.home import store_location
from storage.store import open_store

# storage.datasets takes over a second to import (scipy, clustering): each command imports
# it when it runs, so `grokloop --help` and the other commands do not wait for it.

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True,
                  help="Cluster-balanced dataset snapshots of the store.")


@app.command()
def build(
    family: str = FAMILY,
    param: list[str] = typer.Option(None, "--param", "-p", help="family parameter key=value (repeatable)"),
    family_seed: int = typer.Option(0, "--family-seed", help="seed of the task world (its splits)"),
    method: str = typer.Option("column", "--method", help="column | kmeans | hkmeans"),
    column: str = typer.Option("operation", "--column", help="metadata column for --method column"),
    k: int = typer.Option(8, "--k", help="clusters (hkmeans: top level)"),
    k_sub: int = typer.Option(4, "--k-sub", help="hkmeans: clusters inside each top-level cluster"),
    dedup: str = typer.Option("exact", "--dedup", help="none | exact | minhash"),
    cap: int = typer.Option(None, "--cap", help="at most this many train rows per cluster"),
    temperature: float = typer.Option(1.0, "--temperature", "-T", help="1 natural, 0 uniform over clusters"),
    total: int = typer.Option(None, "--total", help="train rows to draw (default: largest exact-share sample)"),
    holdout: list[str] = typer.Option(None, "--holdout", help="cluster removed from train (repeatable)"),
    keep_k: int = typer.Option(0, "--keep-k", help="rows of each held-out cluster kept in train"),
    agent: list[str] = typer.Option(None, "--agent", help="only these agent ids (repeatable)"),
    outcome: list[str] = typer.Option(None, "--outcome", help="only these outcomes (repeatable)"),
    since: str = typer.Option(None, "--since", help="start_time >= this (ISO 8601)"),
    until: str = typer.Option(None, "--until", help="start_time < this (ISO 8601)"),
    where: str = typer.Option(None, "--where", help="extra SQL condition over the selected columns"),
    where_param: list[str] = typer.Option(None, "--where-param", help="a `?` parameter of --where"),
    include_unverified: bool = typer.Option(False, "--include-unverified", help="not only verified answers"),
    seed: int = typer.Option(0, "--seed", help="k-means init and sampling seed"),
    name: str = typer.Option(None, "--name", help="display name"),
    home: str = HOME,
) -> None:
    """Select, cluster, dedup, balance and hold out; record the snapshot and export it."""
    from storage.datasets import SnapshotSpec, build_snapshot  # slow import: see the top

    spec = SnapshotSpec(
        family=family, family_params={**family_params(family, param), "seed": family_seed},
        verified_only=not include_unverified, outcomes=outcome or None, agents=agent or None,
        since=since, until=until, where=where, where_params=list(where_param or []),
        cluster_method=method, cluster_column=column, n_clusters=k, n_subclusters=k_sub, dedup=dedup,
        balance_cap=cap, temperature=temperature, balance_total=total,
        holdout_clusters=list(holdout or []), holdout_keep_k=keep_k, seed=seed, name=name,
    )
    with open_store(store_location(home)) as con:
        snap = build_snapshot(con, spec, home=home, progress=True)
    verb = "built" if snap.built else "already recorded"
    console.print(f"snapshot [bold]{snap.dataset_id}[/bold] {verb}: {snap.counts['train']} train, "
                  f"{snap.counts['test_id']} test_id, {snap.counts['test_ood']} test_ood rows\n{snap.path}")
    _cluster_table(snap.clusters)


@app.command("list")
def list_(home: str = HOME) -> None:
    """Every recorded snapshot, oldest first."""
    from storage.datasets import list_snapshots  # slow import: see the top

    with open_store(store_location(home), read_only=True) as con:
        snaps = list_snapshots(con)
    table = Table("name", "family", "train", "test_id", "test_ood", "created")
    table.columns.insert(0, Column("dataset_id", no_wrap=True, min_width=20))   # ids are copied from here
    for s in snaps:
        table.add_row(s["dataset_id"], s["name"] or "", s["family"], str(s["n_train"]), str(s["n_test_id"]),
                      str(s["n_test_ood"]), str(s["created_at"])[:19])
    print_table(table, console, err_console)


@app.command()
def show(
    dataset_id: str = typer.Argument(..., help="snapshot id (or a unique prefix)"),
    as_json: bool = typer.Option(False, "--json", help="everything as JSON"),
    home: str = HOME,
) -> None:
    """A snapshot's spec, curation counts and cluster sizes before/after balancing."""
    from storage.datasets import show_snapshot  # slow import: see the top

    with open_store(store_location(home), read_only=True) as con:
        meta = show_snapshot(con, dataset_id)
    if as_json:
        console.print_json(json.dumps(meta, default=str))
        return
    console.print(f"[bold]{meta['dataset_id']}[/bold] {meta.get('name') or ''} — {meta['family']} "
                  f"{json.dumps(meta['family_params'], sort_keys=True)}\n{meta['export_path']}")
    console.print("curation: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))
    table = Table("split", "cluster", "before", "after")
    for row in meta["cluster_sizes"]:
        table.add_row(row["split"], str(row["cluster"]), str(row["rows_before"]), str(row["rows_after"]))
    print_table(table, console, err_console)


@app.command()
def export(
    dataset_id: str = typer.Argument(..., help="snapshot id (or a unique prefix)"),
    out_dir: str = typer.Argument(..., help="a new (or empty) directory"),
    fmt: str = typer.Option("parquet", "--format", help="parquet | hf"),
    home: str = HOME,
) -> None:
    """Write a recorded snapshot from the store as Parquet (+ meta.json, README.md) or an HF DatasetDict."""
    from storage.datasets import export_snapshot  # slow import: see the top

    with open_store(store_location(home), read_only=True) as con:
        out = export_snapshot(con, dataset_id, out_dir, format=fmt)
    console.print(f"exported to {out}")


def _cluster_table(clusters: dict[str, dict[str, int]]) -> None:
    splits = ("pool", "train", "test_id", "test_ood")
    names = sorted({c for s in splits for c in clusters.get(s, {})})
    table = Table("cluster", *splits)
    for c in names:
        table.add_row(c, *(str(clusters.get(s, {}).get(c, 0)) for s in splits))
    print_table(table, console, err_console)
