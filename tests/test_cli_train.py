"""`grokloop train | evaluate | plot` and the store commands around a run, from the command line: one
run trained, then every command on it (resume, an ablation, per-row answers in SQL, plots, export)."""

import json

import duckdb
import pytest
from typer.testing import CliRunner

from storage.home import store_path


def test_cli_train_evaluate_plot(tmp_path):
    from flows.cli_store import app as store_app
    from flows.cli_train import app

    runner = CliRunner()
    args = ["train", "--home", str(tmp_path), "family_params={\"p\": 5, \"train_fraction\": 0.6}",
            "hidden_size=16", "num_layers=1", "num_heads=2", "max_steps=20", "eval_every=10",
            "batch_size=8", "run_name=cli", "progress=false", "objective=ar"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "run cli: finished at step 20" in res.output
    res = runner.invoke(app, ["train", "--resume", "cli", "--home", str(tmp_path), "max_steps=30"])
    assert res.exit_code == 0 and "finished at step 30" in res.output
    res = runner.invoke(app, ["evaluate", "cli", "--home", str(tmp_path), "--answers", str(tmp_path / "a.parquet")])
    assert res.exit_code == 0 and "test_id" in res.output
    # every row's answer, in SQL beside the store: its accuracy per split is the one just recorded
    query = "SELECT split, count(*) AS n, avg(correct::INT) AS acc FROM a GROUP BY split ORDER BY split"
    res = runner.invoke(store_app, ["sql", query, "--table", f"a={tmp_path / 'a.parquet'}", "--home", str(tmp_path),
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(store_path(str(tmp_path))), read_only=True) as con:
        recorded = con.sql("SELECT split, n, accuracy FROM evaluations WHERE split IN ('train', 'test_id')"
                           " ORDER BY split").fetchall()
    assert [(r["split"], r["n"], r["acc"]) for r in map(json.loads, res.output.splitlines())] == \
        [(s, n, pytest.approx(a)) for s, n, a in recorded]
    for spec, message in (("a", "NAME=FILE"), (f"a={tmp_path / 'none.parquet'}", "cannot read"),
                          (f"a={tmp_path / 'runs' / 'cli' / 'config.json'}", "as Parquet")):
        res = runner.invoke(store_app, ["sql", "SELECT 1", "--table", spec, "--home", str(tmp_path)])
        assert res.exit_code == 2 and message in res.output, res.output
    res = runner.invoke(app, ["plot", "cli", "--output", str(tmp_path / "p.png"), "--home", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "p.png").is_file()
    res = runner.invoke(app, ["plot", "cli", "-o", str(tmp_path / "m.png"), "--metric", "train/loss",
                              "--home", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "m.png").read_bytes() != (tmp_path / "p.png").read_bytes()
    res = runner.invoke(app, ["plot", "cli", "--metric", "test_id/cluster:nope/acc", "--home", str(tmp_path)])
    assert res.exit_code == 2 and "test_id/cluster:nope/acc" in res.output

    # the store's views: where the run is, and each accuracy with the rows it is over (p=5: 15 train, 10 test)
    with duckdb.connect(str(store_path(str(tmp_path))), read_only=True) as con:
        progress = con.sql("SELECT run_id, status, step, test_id_acc FROM run_progress").fetchall()
        acc = con.sql("SELECT split, acc, n, stderr FROM split_accuracy WHERE step = 30 ORDER BY split").fetchall()
        stored = dict(con.sql("SELECT name, value FROM metrics WHERE step = 30 AND name LIKE '%/acc'").fetchall())
    assert progress == [("cli", "finished", 30, stored["test_id/acc"])]
    assert [(split, a, n) for split, a, n, _ in acc] == [("test_id", stored["test_id/acc"], 10),
                                                         ("train", stored["train/acc"], 15)]
    assert all(se == pytest.approx((a * (1 - a) / n) ** 0.5) for _, a, n, se in acc)
    # an ablation: a new run with cli's settings but one, which is left as it was
    res = runner.invoke(app, ["train", "--like", "cli", "--home", str(tmp_path), "lr=0.01", "run_name=cli-lr"])
    assert res.exit_code == 0 and "run cli-lr: finished at step 30" in res.output
    cli, ablation = (json.loads((tmp_path / "runs" / r / "config.json").read_text()) for r in ("cli", "cli-lr"))
    assert ablation["lr"] == 0.01 and cli["lr"] != 0.01 and ablation["run_id"] == "cli-lr"
    assert {k: v for k, v in ablation.items() if k not in ("lr", "run_id", "run_name")} == \
        {k: v for k, v in cli.items() if k not in ("lr", "run_id", "run_name")}
    # PANEL=RUN: a panel each, so the figure is wider than the one panel of a family (--linear: a linear step axis)
    res = runner.invoke(app, ["plot", "lr 1e-3=cli", "lr 1e-2=cli-lr", "--linear", "-o", str(tmp_path / "panels.png"),
                              "--home", str(tmp_path)])
    width = {n: int.from_bytes((tmp_path / n).read_bytes()[16:20], "big") for n in ("panels.png", "p.png")}
    assert res.exit_code == 0 and width["panels.png"] > width["p.png"], width
    # both runs, their numbers, into another store and back out of it as they were
    out, other = tmp_path / "runs.parquet", tmp_path / "other"
    res = runner.invoke(store_app, ["export-runs", "cli", "cli-lr", "-o", str(out), "--home", str(tmp_path)])
    assert res.exit_code == 0 and "wrote 2 run(s)" in res.output
    assert runner.invoke(store_app, ["import-runs", str(out), "--home", str(other)]).exit_code == 0
    metrics = "SELECT run_id, step, name, value FROM metrics ORDER BY ALL"
    with duckdb.connect(str(store_path(str(tmp_path))), read_only=True) as a, \
            duckdb.connect(str(store_path(str(other))), read_only=True) as b:
        assert a.sql(metrics).fetchall() == b.sql(metrics).fetchall()
    before = out.read_bytes()
    res = runner.invoke(store_app, ["export-runs", "cli", "ghost", "-o", str(out), "--home", str(tmp_path)])
    assert res.exit_code == 2 and "run(s) ghost" in res.output and out.read_bytes() == before
    # a glob pattern stands for the runs it matches, in order: the same file, the same figure
    res = runner.invoke(store_app, ["export-runs", "cli*", "-o", str(tmp_path / "glob.parquet"), "--home", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "glob.parquet").read_bytes() == before
    for runs, png in ((["cli", "cli-lr"], "both.png"), (["cli*"], "glob.png")):
        assert runner.invoke(app, ["plot", *runs, "-o", str(tmp_path / png), "--home", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "glob.png").read_bytes() == (tmp_path / "both.png").read_bytes()
    for command in (app, store_app):
        name = "plot" if command is app else "export-runs"
        res = runner.invoke(command, [name, "ghost-*", "-o", str(tmp_path / "g"), "--home", str(tmp_path)])
        assert res.exit_code == 2 and "no run in the store matches 'ghost-*'" in res.output, res.output
    res = runner.invoke(app, ["train", "--like", "cli", "--resume", "cli", "--home", str(tmp_path)])
    assert res.exit_code == 2 and "give one" in res.output
    res = runner.invoke(app, ["train", "--home", str(tmp_path), "lr=fast"])
    assert res.exit_code == 2 and "lr must be a number" in res.output
    # cli continued is the same training, and its export lands on what `other` holds; cli trained again
    # from scratch (another init) is another training under the same run id: refused, `other` as it was
    res = runner.invoke(app, ["train", "--resume", "cli", "--home", str(tmp_path), "max_steps=40"])
    assert res.exit_code == 0 and "finished at step 40" in res.output
    assert runner.invoke(store_app, ["export-runs", "cli", "-o", str(out), "--home", str(tmp_path)]).exit_code == 0
    res = runner.invoke(store_app, ["import-runs", str(out), "--home", str(other)])
    assert res.exit_code == 0, res.output
    with duckdb.connect(str(store_path(str(other))), read_only=True) as con:
        held = con.sql(metrics).fetchall()
    assert max(step for run_id, step, _, _ in held if run_id == "cli") == 40
    rerun = tmp_path / "rerun"
    assert runner.invoke(app, [args[0], "--home", str(rerun), *args[3:], "seed=1"]).exit_code == 0
    assert runner.invoke(store_app, ["export-runs", "cli", "-o", str(out), "--home", str(rerun)]).exit_code == 0
    res = runner.invoke(store_app, ["import-runs", str(out), "--home", str(other)])
    message = " ".join(res.output.replace("│", " ").split())
    assert res.exit_code == 2 and "run cli (" in message and "another training under the same run id" in message, message
    with duckdb.connect(str(store_path(str(other))), read_only=True) as con:
        assert con.sql(metrics).fetchall() == held
