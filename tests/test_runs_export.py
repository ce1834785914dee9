"""Runs carried between stores as one Parquet file (storage.runs.export_runs / import_runs, `grokloop
import-runs`): what a results page ships so that its numbers outlive the store they came from."""

from __future__ import annotations

import json
import re

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from diffusion.records import run_record
from diffusion.train import TrainConfig
from flows.cli import app
from flows.experiments import trained_on_line
from storage.home import store_path
from storage.runs import export_runs, import_runs, record_run

ROW = {"run_id": "r1", "name": "r1", "objective": "ar", "dataset_id": None,
       "config": json.dumps({"max_steps": 300, "patience": 0}), "status": "running", "parent_run_id": None,
       "t_mem": None, "t_grok": None, "grok_ratio": None, "grok_delay": None, "final_step": 100}


def stored(home, sql: str) -> list[tuple]:
    with duckdb.connect(str(store_path(home)), read_only=True) as con:
        return con.execute(sql).fetchall()


RUNS = "SELECT run_id, name, objective, config::VARCHAR, status, t_mem, t_grok, grok_delay, final_step FROM runs ORDER BY 1"
METRICS = "SELECT run_id, step, name, value FROM metrics ORDER BY ALL"


@pytest.fixture
def source(tmp_path):
    """A store with two runs (one finished, one with no metric yet) and one run left out of the export."""
    home = tmp_path / "source"
    record_run(home, ROW, [(100, "test_ood/acc", 0.025), (100, "train/acc", 0.5)])
    record_run(home, {**ROW, "status": "finished", "t_mem": 200, "t_grok": 250, "grok_delay": 50,
                      "final_step": 300}, [(200, "train/acc", 0.99), (300, "test_ood/acc", 0.04)], final=True)
    record_run(home, {**ROW, "run_id": "r2", "name": "r2"})
    record_run(home, {**ROW, "run_id": "other", "name": "other"}, [(1, "train/acc", 0.1)])
    return home


def test_exported_runs_come_back_whole_in_another_store_and_twice_is_once(source, tmp_path):
    path = tmp_path / "page_runs.parquet"
    assert export_runs(source, ["r1", "r2"], path) == 2
    table = pq.read_table(path)
    assert table.num_rows == 4 + 1  # r1's four metric points, r2's run row alone
    target = tmp_path / "target"
    assert import_runs(target, path) == 2
    assert import_runs(target, path) == 2
    assert stored(target, RUNS) == [r for r in stored(source, RUNS) if r[0] != "other"]
    assert stored(target, METRICS) == [r for r in stored(source, METRICS) if r[0] != "other"]
    # what the target already holds that is newer than the file stays
    record_run(target, {**ROW, "status": "failed", "final_step": 400}, [(400, "train/acc", 0.3)], final=True)
    import_runs(target, path)
    assert stored(target, "SELECT status, final_step FROM runs WHERE run_id = 'r1'") == [("failed", 400)]
    assert (400, "train/acc", 0.3) in stored(target, "SELECT step, name, value FROM metrics")


def test_a_file_that_is_not_a_runs_export_is_named_and_changes_nothing(source, tmp_path):
    path = tmp_path / "runs.parquet"
    export_runs(source, ["r1", "r2"], path)
    before = stored(source, RUNS), stored(source, METRICS)
    table = pq.read_table(path)
    not_parquet = tmp_path / "notes.md"
    not_parquet.write_text("# not a table\n")
    no_metric_column = tmp_path / "no_metric.parquet"
    pq.write_table(table.drop_columns(["metric", "config"]), no_metric_column)
    half_a_row = tmp_path / "half.parquet"  # r1's rows are written before the bad one: none may land
    changed = table.to_pylist()
    changed = [{**r, "status": "finished", "final_step": 999} for r in changed[:-1]] + [{**changed[-1], "run_id": None}]
    pq.write_table(pa.Table.from_pylist(changed, schema=table.schema), half_a_row)
    bad_description = tmp_path / "bad_description.parquet"  # a snapshot description that is not one
    described = [{**r, "dataset_params": '{"dataset_id": "another", "counts": {}}'} for r in table.to_pylist()]
    pq.write_table(pa.Table.from_pylist(described), bad_description)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad, message in [(not_parquet, "is not a Parquet file of runs"),
                         (no_metric_column, "lacks column(s) config, metric of a runs export"),
                         (half_a_row, "a row without its run's run_id"),
                         (bad_description, "run r1's dataset_params is not its snapshot's description (dataset_id "
                                           "None): it describes snapshot another"),
                         (truncated, "is not a Parquet file of runs")]:
        with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}.*{re.escape(message)}"):
            import_runs(source, bad)
        result = CliRunner().invoke(app, ["import-runs", str(bad), "--home", str(source)])
        assert result.exit_code == 2 and message in result.output.replace("\n", " ")
        assert (stored(source, RUNS), stored(source, METRICS)) == before


def test_where_runs_trained_travels_with_their_rows_and_the_page_names_it(source, tmp_path):
    """A run repeats exactly only on the same thread count, torch and device: the run row records
    them (diffusion.records.trained_on), an export carries them, and a page says them, naming the
    runs whose rows predate the record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not this machine's default: the record is read, not assumed
    try:
        row = run_record(TrainConfig(run_name="r3", run_id="r3", home=str(source)), "finished", 300, 200, 250, None)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(row["config"])["trained_on"] == {"torch": torch.__version__, "device": "cpu", "threads": 3}
    record_run(source, row, [(300, "train/acc", 1.0)], final=True)
    path = tmp_path / "page_runs.parquet"
    export_runs(source, ["r1", "r2", "r3"], path)
    target = tmp_path / "target"
    import_runs(target, path)
    for home in (source, target):
        assert trained_on_line(str(home), ["r1", "r2", "r3"]) == (
            "not recorded (rows from before runs recorded it) (2 runs); "
            f"cpu, 3 threads, torch {torch.__version__} (1 run)")


def test_another_training_under_a_stored_run_id_is_refused_and_nothing_lands(source, tmp_path):
    """A rerun from scratch that kept its run id would have its metrics upserted into the stored run's,
    one curve made of two trainings; the run exported again (or continued) is the same values, and
    wall time (`step_time`) may differ where a stretch was trained again after a stop."""
    page = tmp_path / "page_runs.parquet"
    export_runs(source, ["r1", "r2"], page)
    target = tmp_path / "target"
    import_runs(target, page)
    with duckdb.connect(str(store_path(target))) as con:  # the wall time of a stretch trained before a stop
        con.execute("INSERT INTO metrics VALUES ('r1', 300, 'step_time', 4.2)")
    record_run(source, {**ROW, "status": "finished", "final_step": 400},
               [(300, "step_time", 9.9), (400, "train/acc", 1.0)], final=True)  # r1 continued
    export_runs(source, ["r1"], page)
    assert import_runs(target, page) == 1
    before = stored(target, RUNS), stored(target, METRICS)
    assert ("r1", 300, "step_time", 9.9) in before[1] and ("r1", 400, "train/acc", 1.0) in before[1]
    rerun = tmp_path / "rerun"  # r1 trained again elsewhere, and a new run beside it in the same file
    record_run(rerun, ROW, [(100, "test_ood/acc", 0.025), (100, "train/acc", 0.625), (200, "train/acc", 0.75)])
    record_run(rerun, {**ROW, "run_id": "new", "name": "new"}, [(1, "train/acc", 0.1)])
    export_runs(rerun, ["r1", "new"], page)
    message = ("2 of 3 shared metric values differ; the first: train/acc at step 100 is 0.5 in the store, 0.625 "
               "in the file): the store holds another training under the same run id")
    with pytest.raises(ValueError, match=f"^{re.escape(str(page))}: run r1 \\({re.escape(message)}"):
        import_runs(target, page)
    assert (stored(target, RUNS), stored(target, METRICS)) == before
