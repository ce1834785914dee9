"""Each named experiment at its --quick size: summary and plot written, numbers read from the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flows.experiments import EXPERIMENTS, run_experiment
from flows.experiments.clusters import HELD_OUT, figures
from storage.datasets import snapshot_rows
from storage.store import open_store


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_quick_experiment_writes_summary_and_plot_from_the_store(name, tmp_path, prefect_server, capsys):
    out = tmp_path / "results"
    result = run_experiment(name, quick=True, out_dir=out, home=str(tmp_path / "home"))
    printed = capsys.readouterr().out.splitlines()

    summary, plot = result["summary"], result["plot"]
    assert summary == out / f"{name}.md" and plot == out / f"{name}.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    text = summary.read_text()
    assert f"# Experiment: {name}" in text and "| " in text and f"![{name}]({name}.png)" in text
    assert f"Trained on: cpu, {torch.get_num_threads()} thread" in text  # the runs' own record
    if name == "composition":  # OOD accuracy alone, on an axis fitted to it
        assert result["plots"] == [plot, out / "composition_ood.png"] and "(composition_ood.png)" in text
    if name == "clusters":  # and the held-out cluster's accuracy against its rows back
        rows_plot = out / "clusters_rows.png"
        assert result["plots"] == [plot, rows_plot] and "(clusters_rows.png)" in text
        assert rows_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rows_plot.stat().st_size > 10_000

    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        stored = {run_id: {"t_mem": t_mem, "t_grok": t_grok}
                  for run_id, t_mem, t_grok in con.execute("SELECT run_id, t_mem, t_grok FROM runs").fetchall()}
        assert set(result["runs"]) <= set(stored)
        for run_id in result["runs"]:
            assert run_id in text
            n_metrics = con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [run_id]).fetchone()[0]
            assert n_metrics > 0
            # its progress while it trained: a line per evaluation, naming the run (runs share the log)
            evals = con.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND name = 'test_id/acc'",
                                [run_id]).fetchone()[0]
            assert sum(line.startswith(f"{run_id} step ") for line in printed) == evals > 0
        # Every T_mem and T_grok the table reports is the one the store recorded for that run.
        for row in result["table"]:
            for key in ("t_mem", "t_grok"):
                if "run_id" in row and key in row:
                    assert row[key] == stored[row["run_id"]][key]
            if "t_grok_held" in row:  # where test ID came back to 95% for good, from the curve itself
                curve = con.execute("SELECT step, value FROM metrics WHERE run_id = ? AND name = 'test_id/acc' "
                                    "ORDER BY step", [row["run_id"]]).fetchall()
                below = [s for s, v in curve if v < 0.95]
                held = [s for s, v in curve if v >= 0.95 and (not below or s > below[-1])]
                assert row["t_grok_held"] == (held[0] if held else None)
        if name == "clusters":  # the held-out cluster's accuracy is its test_id rows' (never train rows')
            assert all("t_mem" in row for row in result["table"])
            variants = [row["variant"] for row in result["table"]]
            assert variants[:6] == ["balanced", "held out", "k=1", "k=4", "k=16", "k=64"]
            assert [v.split(" ")[0] for v in variants[6:]] == ["1%", "10%", "15%", "25%", "50%"]
            for row in result["table"]:
                (acc,) = con.execute("SELECT value FROM metrics WHERE run_id = ? AND name = ? ORDER BY step DESC "
                                     "LIMIT 1", [row["run_id"], f"test_id/cluster:{HELD_OUT}/acc"]).fetchone()
                assert row[f"{HELD_OUT}_acc"] == acc
            held_out = next(r for r in result["table"] if r["variant"] == "held out")
            assert held_out[f"{HELD_OUT}_train_rows"] == 0 and held_out[f"{HELD_OUT}_groks_at"] is None
            assert "others_grok_at" in text and f"| {HELD_OUT}_kept |" in text and "| others_lowest |" in text
            # Only the balanced runs stop early: the others' overall test accuracy can pass the level
            # while the removed cluster is still rising, so they run to the cap.
            patience = dict(con.execute("SELECT run_id, (config->>'$.patience')::INT FROM runs").fetchall())
            assert [patience[r["run_id"]] for r in result["table"]] == [20] + [0] * 10
        if name == "composition":  # every arm of every setting, the OOD measures from the run's whole curve
            assert {(r["setting"], r["arm"]) for r in result["table"]} == {
                (s, a) for s in ("two_hop", "programs") for a in ("ar", "mdm", "mdm-full", "ar-shared", "ar-1layer")}
            for row in result["table"]:
                ood = [v for (v,) in con.execute("SELECT value FROM metrics WHERE run_id = ? AND name = "
                                                 "'test_ood/acc' ORDER BY step", [row["run_id"]]).fetchall()]
                assert len(ood) > 3 and row["test_ood_acc"] == ood[-1] and row["best_ood_acc"] == max(ood)
            assert "mdm-full" in text and "`count` estimator" in text
            # equal parameters: the count the table states is the trained model's
            from diffusion.checkpoint import load_model, resolve_checkpoint

            two_hop = {r["arm"]: r for r in result["table"] if r["setting"] == "two_hop"}
            trained = load_model(resolve_checkpoint(tmp_path / "home" / "runs" / two_hop["ar-shared"]["run_id"]))
            assert two_hop["ar-shared"]["params"] == sum(p.numel() for p in trained.parameters())
            assert two_hop["ar-shared"]["width"] > two_hop["ar"]["width"] and two_hop["mdm"]["params"] == \
                two_hop["ar"]["params"]

    if name == "self_improve":  # started again: the same table from the store; nothing collected or trained
        before = _stored_counts(tmp_path / "home")
        again = run_experiment(name, quick=True, out_dir=tmp_path / "again", home=str(tmp_path / "home"))
        assert again["table"] == result["table"] and _stored_counts(tmp_path / "home") == before


def _stored_counts(home) -> tuple[int, int, int]:
    with open_store(home / "store.duckdb", read_only=True) as con:
        return con.execute("SELECT (SELECT count(*) FROM trajectories), (SELECT count(*) FROM datasets), "
                           "(SELECT count(*) FROM metrics)").fetchone()


def test_clusters_train_fraction_trains_another_world_and_running_it_again_continues_it(tmp_path, monkeypatch,
                                                                                        prefect_server):
    """`--train-fraction 0.8` at the quick size (p = 11, three operations): every run's snapshot tests on
    the 20% of each table the family holds out, the runs record that world, the page says how to repeat
    it; the same command again collects nothing more and trains under the same run names."""
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    out = tmp_path / "results"
    command = ["experiment", "clusters", "--quick", "--max-steps", "20", "--train-fraction", "0.8", "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        before = con.execute("SELECT (SELECT count(*) FROM trajectories), (SELECT count(*) FROM datasets)").fetchone()
    # Run again (an interrupted grid is restarted so): the same snapshots and runs, no second collection.
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    text = (out / "clusters.md").read_text()
    assert "`grokloop experiment clusters --size quick --max-steps 20 --train-fraction 0.8`" in text
    assert "train fraction 0.8," in text
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        assert con.execute("SELECT (SELECT count(*) FROM trajectories), (SELECT count(*) FROM datasets)").fetchone() \
            == before
        runs = con.execute("SELECT run_id, dataset_id, config->>'$.family_params.train_fraction' FROM runs").fetchall()
        assert len(runs) == 11 and {fraction for *_, fraction in runs} == {"0.8"}
        for run_id, dataset_id, _ in runs:
            assert run_id in text
            (n_test,) = con.execute("SELECT count(*) FROM dataset_rows WHERE dataset_id = ? AND split = 'test_id'",
                                    [dataset_id]).fetchone()
            assert n_test == 3 * (121 - round(0.8 * 121))  # quick's own 0.6 would test on 144


def test_clusters_held_out_removes_another_operation_and_shares_the_balanced_runs(tmp_path, monkeypatch,
                                                                                 prefect_server):
    """`--held-out 'x*y'` after the default grid (x-y held out) in the same home: the balanced runs are
    the same runs (not trained again), the ten others are new, built without x*y's training rows (k of
    them back), and the page reports x*y's own test accuracy; a run continued past the cap shows in the
    page's header."""
    from typer.testing import CliRunner

    from flows.cli import app

    assert HELD_OUT == "x-y"
    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    base = ["experiment", "clusters", "--quick", "--max-steps", "20"]
    first = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "default")])
    assert first.exit_code == 0, first.output
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        before = dict(con.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
    second = CliRunner().invoke(app, [*base, "--held-out", "x*y", "--out", str(tmp_path / "xy")])
    assert second.exit_code == 0, second.output
    text = (tmp_path / "xy" / "clusters.md").read_text()
    assert "`grokloop experiment clusters --size quick --max-steps 20 --held-out 'x*y'`" in text  # as a shell takes it
    assert "The `x*y` cluster is removed from train" in text and " x*y_acc | best_x*y_acc |" in text
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        after = dict(con.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
        balanced = [r for r in before if r.startswith("clusters-balanced-")]
        assert len(after) == len(before) + 10 and all(after[r] == before[r] for r in before)
        assert all(r in text for r in balanced)
        new = [r for r in after if r not in before]
        rows = dict(con.execute(
            "SELECT r.run_id, count(*) FILTER (WHERE d.split = 'train' AND d.cluster = 'x*y') FROM runs r "
            "JOIN dataset_rows d USING (dataset_id) WHERE r.run_id IN (SELECT unnest(?)) GROUP BY ALL", [new]).fetchall())
        heldout, k4 = (next(r for r in new if r.startswith(prefix)) for prefix in ("clusters-heldout-", "clusters-k4-"))
        assert rows[heldout] == 0 and rows[k4] == 4
        (n_points,) = con.execute("SELECT count(*) FROM metrics WHERE run_id = ? AND name = 'test_id/cluster:x*y/acc'",
                                  [heldout]).fetchone()
        assert n_points >= 1
    # One run continued past the cap: the page's header says so when it is written again.
    resumed = CliRunner().invoke(app, ["train", "--resume", heldout, "max_steps=40", "progress=false"])
    assert resumed.exit_code == 0, resumed.output
    again = CliRunner().invoke(app, [*base, "--held-out", "x*y", "--report-only", "--out", str(tmp_path / "xy")])
    assert again.exit_code == 0, again.output
    assert "at most 20 steps per run; 1 of the 11 runs continued past it, to at most 40)" in \
        (tmp_path / "xy" / "clusters.md").read_text().splitlines()[0]
    # The grid started again leaves that run as it is: trained to 40, its config says so.
    rerun = CliRunner().invoke(app, [*base, "--held-out", "x*y", "--out", str(tmp_path / "xy")])
    assert rerun.exit_code == 0, rerun.output
    assert f"{heldout}: continued past this cap of 20 (in the store to step 40)" in " ".join(rerun.output.split())
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        assert con.execute("SELECT config->>'$.max_steps' FROM runs WHERE run_id = ?", [heldout]).fetchone() == ("40",)


def test_means_of_steps_print_as_steps_and_of_accuracies_as_fractions():
    from flows.experiments.common import mean_std_n

    assert mean_std_n([-1000, 0, None]) == "-500 ± 707 (n=2)"  # a delay: steps, even near zero
    assert mean_std_n([0, 0]) == "0 ± 0 (n=2)"
    assert mean_std_n([0.5, 0.25]) == "0.375 ± 0.177 (n=2)"
    assert mean_std_n([None]) is None


def test_clusters_variants_and_settings_train_runs_of_their_own(tmp_path, monkeypatch, prefect_server):
    """`--variants 'balanced,1%' --settings grad_clip=1.0`: two of the grid's variants, each run with the
    setting changed and named for it (the grid's own runs stay as they are); the page says what changed."""
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    base = ["experiment", "clusters", "--quick", "--max-steps", "20", "--variants", "balanced,1%"]
    clipped = CliRunner().invoke(app, [*base, "--settings", "grad_clip=1.0", "--out", str(tmp_path / "clip")])
    assert clipped.exit_code == 0, clipped.output
    plain = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    text = (tmp_path / "clip" / "clusters.md").read_text()
    assert "--variants balanced,1% --settings grad_clip=1.0`" in text
    assert "Changed from the recipe for every run: `grad_clip=1.0`" in text
    with open_store(tmp_path / "home" / "store.duckdb", read_only=True) as con:
        runs = dict(con.execute("SELECT run_id, (config->>'$.grad_clip')::DOUBLE FROM runs").fetchall())
    assert len(runs) == 4 and sorted(r.split("-s0-")[0] for r in runs) == [
        "clusters-1pctk1", "clusters-1pctk1-grad_clip1.0", "clusters-balanced", "clusters-balanced-grad_clip1.0"]
    assert all((clip == 1.0) == ("grad_clip1.0" in run_id) and (run_id in text) == (clip == 1.0)
               for run_id, clip in runs.items())
    assert "clusters-heldout" not in text and "clusters-k" not in text

    # The store is lost: the page's Parquet file puts its runs, and their snapshots' descriptions, in a new
    # one, and the page is written again from it alone, number for number; nothing trains on a description.
    fresh = tmp_path / "fresh"
    imported = CliRunner().invoke(app, ["import-runs", str(tmp_path / "clip" / "clusters_runs.parquet"),
                                        "--home", str(fresh)])
    assert imported.exit_code == 0 and "imported 2 run(s)" in imported.output, imported.output
    monkeypatch.setenv("GROKLOOP_HOME", str(fresh))
    restored = CliRunner().invoke(app, [*base, "--settings", "grad_clip=1.0", "--report-only",
                                        "--out", str(tmp_path / "restored")])
    assert restored.exit_code == 0, restored.output
    tables = [[line for line in (tmp_path / d / "clusters.md").read_text().splitlines() if line.startswith("|")]
              for d in ("clip", "restored")]
    assert len(tables[0]) == 4 + 4 and tables[0] == tables[1]
    columns = [c.strip() for c in tables[0][4].strip("|").split("|")]  # the per-run table's, and its rows
    minutes = [float(row.strip("|").split("|")[columns.index("train_min")]) for row in tables[0][6:]]
    assert len(minutes) == 2 and all(0 < m < 5 for m in minutes)  # each run's 20 steps' wall time, in minutes
    with open_store(fresh / "store.duckdb", read_only=True) as con:
        (dataset_id,) = con.execute("SELECT any_value(dataset_id) FROM runs").fetchone()
        with pytest.raises(ValueError, match=f"snapshot {dataset_id} has no rows in this store: it came with imported"):
            snapshot_rows(con, dataset_id)


def test_the_clusters_grid_in_two_fresh_homes_records_the_same_curves(tmp_path, monkeypatch, prefect_server):
    """A fresh machine repeats a page: its agents collect again (two of them, side by side, logging in an
    order of their own), and the snapshots, so every run's batches and evaluations, come out the same.
    Curation in time order gave each home other train rows in another order."""
    from typer.testing import CliRunner

    from flows.cli import app

    curves = []
    for home in ("a", "b"):
        monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / home))
        result = CliRunner().invoke(app, ["experiment", "clusters", "--quick", "--max-steps", "20",
                                          "--variants", "balanced,k=4", "--out", str(tmp_path / home / "out")])
        assert result.exit_code == 0, result.output
        with open_store(tmp_path / home / "store.duckdb", read_only=True) as con:
            curves.append(con.execute(  # run names end in their snapshot's id, which names its trajectories
                "SELECT regexp_replace(run_id, '-[0-9a-f]{8}$', ''), step, name, value FROM metrics "
                "WHERE name <> 'step_time' ORDER BY ALL").fetchall())
    assert len({run for run, *_ in curves[0]}) == 2 and len(curves[0]) > 100
    assert curves[0] == curves[1]


def test_a_committed_page_is_not_replaced_by_another_command(tmp_path, monkeypatch):
    """docs/results/NAME.md, written by one command, is kept when another (a --quick try, a part of its
    grid) runs without --out: one line naming both commands, exit 2, before anything trains; the same
    command (here its --report-only) rewrites it; --out gives the other one its own folder."""
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    home = str(tmp_path / "home")
    page = tmp_path / "docs" / "results" / "composition.md"
    page.parent.mkdir(parents=True)
    committed = "# Experiment: composition\n\nReproduce: `grokloop experiment composition --size quick` (1 min).\n"
    page.write_text(committed)

    for part in (["--quick", "--arms", "ar"], ["--worlds", "programs", "--report-only"]):
        result = CliRunner().invoke(app, ["experiment", "composition", *part, "--home", home])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {Path('docs/results/composition.md')} was written by "
                                        "`grokloop experiment composition --size quick`, not by `grokloop "
                                        "experiment composition"), result.output
        assert page.read_text() == committed and not (tmp_path / "home" / "runs").exists()

    same = CliRunner().invoke(app, ["experiment", "composition", "--quick", "--report-only", "--home", home])
    assert same.exit_code == 0, same.output
    assert "Reproduce: `grokloop experiment composition --size quick` (this report" in page.read_text()
    elsewhere = CliRunner().invoke(app, ["experiment", "composition", "--quick", "--arms", "ar", "--report-only",
                                         "--out", "docs/results/ar", "--home", home])
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "--arms ar" in (page.parent / "ar" / "composition.md").read_text()
    assert "--arms" not in page.read_text()


def test_a_clusters_page_of_balanced_runs_alone_has_no_rows_back_plot():
    """Rows of a removed cluster added back are what `_rows` plots: with only the balanced variant there
    are none; any grid with a removal variant has it."""
    assert list(figures(variants=["balanced"])) == [""]
    assert list(figures()) == list(figures(variants=["balanced", "1%"])) == ["", "_rows"]
