"""Dataset snapshots over a real store: select, curate, record, export, and the `dataset` commands."""

from __future__ import annotations

import json
import random
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from agents.tasks import get_family
from storage import datasets
from storage.datasets import (
    SnapshotSpec,
    export_snapshot,
    list_snapshots,
    show_snapshot,
    snapshot_rows,
)
from storage.store import connect

PARAMS = {"p": 11, "operations": ["x+y", "x-y", "x*y"], "train_fraction": 0.6, "seed": 0}


def family(params=PARAMS):
    params = dict(params)
    return get_family("modular", seed=params.pop("seed"), **params)


def build_snapshot(con, spec, **kwargs):
    """storage's build_snapshot with the task family the spec names, as flows/ passes it."""
    return datasets.build_snapshot(con, spec, get_family(spec.family, **spec.family_params), **kwargs)


def insert_trajectories(con, rows: list[dict]) -> None:
    """Bulk-insert trajectories (and their tasks) as one Arrow table each, as ingest would."""
    start = con.execute("SELECT count(*) FROM trajectories").fetchall()[0][0]
    traj = pa.table({
        "trajectory_id": [str(uuid.UUID(int=start + i + 1)) for i in range(len(rows))],
        "agent_id": [r.get("agent", "solver@1") for r in rows],
        "task_id": [r["task"].task_id for r in rows],
        "family": [r["task"].family for r in rows],
        "status": [r.get("status", "ok") for r in rows],
        "answer": [json.dumps(r["answer"]) for r in rows],
        "verified": [r["verified"] for r in rows],
        "metadata": [json.dumps({"operation": r["task"].operation, "outcome": "solved" if r["verified"]
                                 else "wrong"}) for r in rows],
    })
    tasks = {r["task"].task_id: r["task"] for r in rows}
    task_table = pa.table({
        "task_id": list(tasks), "family": [t.family for t in tasks.values()],
        "split": [t.split for t in tasks.values()], "operation": [t.operation for t in tasks.values()],
        "difficulty": [t.difficulty for t in tasks.values()],
        "spec": [json.dumps(t.ref()["spec"]) for t in tasks.values()],
    })
    con.register("task_table", task_table)
    con.register("traj", traj)
    con.execute("INSERT OR IGNORE INTO tasks BY NAME SELECT task_id, family, split, operation, difficulty, "
                "spec::JSON AS spec FROM task_table")
    con.execute("INSERT INTO trajectories BY NAME SELECT trajectory_id::UUID AS trajectory_id, agent_id, task_id, "
                "family, status, answer::JSON AS answer, verified, metadata::JSON AS metadata FROM traj")
    con.unregister("task_table")
    con.unregister("traj")


def experience(fam, *, per_task=2, wrong=True, on_test=True) -> list[dict]:
    """Every train task solved `per_task` times (duplicates), plus wrong answers and test-task answers."""
    splits = fam.splits()
    rows = [{"task": t, "answer": list(t.answer), "verified": True}
            for t in splits["train"] for _ in range(per_task)]
    if wrong:
        rows += [{"task": t, "answer": ["0"] if t.answer != ("0",) else ["1"], "verified": False}
                 for t in splits["train"][:30]]
    if on_test:   # an agent that solved test tasks: those must never reach train
        rows += [{"task": t, "answer": list(t.answer), "verified": True} for t in splits["test_id"][:25]]
    return rows


@pytest.fixture
def store(tmp_path):
    con = connect(tmp_path / "store.duckdb")
    insert_trajectories(con, experience(family()))
    yield con
    con.close()


def spec(**changes) -> SnapshotSpec:
    return SnapshotSpec(**{"family": "modular", "family_params": dict(PARAMS), "cluster_method": "column",
                           "cluster_column": "operation", **changes})


def train_of(snap) -> pa.Table:
    return pq.read_table(f"{snap.path}/train.parquet")


def test_snapshot_end_to_end_balanced_recorded_exported_and_readable_by_the_trainer(store, tmp_path):
    from datasets import load_from_disk

    from diffusion.data import splits_from_snapshot

    fam = family()
    splits = fam.splits()
    snap = build_snapshot(store, spec(balance_cap=40, name="capped"), home=tmp_path)

    # Balanced: every operation cluster has min(its unique train tasks, 40) rows (duplicates removed).
    per_op = {op: sum(t.operation == op for t in splits["train"]) for op in PARAMS["operations"]}
    assert snap.clusters["train"] == {op: min(n, 40) for op, n in per_op.items()}
    assert snap.clusters["pool"] == {op: 2 * n for op, n in per_op.items()}
    assert snap.counts["duplicates"] == sum(per_op.values())
    assert snap.counts["dropped_test_task"] == 25 and snap.built

    # The store, the parquet files and the HF export hold the same rows in the same order.
    recorded = snapshot_rows(store, snap.dataset_id)
    exported = pa.concat_tables([pq.read_table(f"{snap.path}/{s}.parquet") for s in
                                 ("train", "test_id", "test_ood")])
    assert exported.equals(recorded)
    hf = load_from_disk(f"{snap.path}/hf")
    for split in ("train", "test_id", "test_ood"):
        assert hf[split].to_list() == recorded.filter(pa.compute.equal(recorded["split"], split)).to_pylist()

    meta = json.loads((tmp_path / "datasets" / snap.dataset_id / "meta.json").read_text())
    assert meta["dataset_id"] == snap.dataset_id and meta["family"] == "modular"
    assert meta["family_params"] == PARAMS and meta["spec"]["balance_cap"] == 40
    assert meta["counts"]["train"] == sum(snap.clusters["train"].values())
    card = (tmp_path / "datasets" / snap.dataset_id / "README.md").read_text()
    assert "| x*y | " in card and "split: test_id" in card

    # Test splits are the family's test tasks with canonical answers, labelled with their operation.
    test_id = pq.read_table(f"{snap.path}/test_id.parquet").to_pylist()
    assert [(r["task_id"], r["answer"], r["cluster"]) for r in test_id] == [
        (t.task_id, list(t.answer), t.operation) for t in splits["test_id"]]

    tokenizer, encoded, _ = splits_from_snapshot(snap.path)
    assert len(encoded["train"]) == snap.counts["train"] and len(encoded["test_id"]) == len(splits["test_id"])

    assert [s["dataset_id"] for s in list_snapshots(store)] == [snap.dataset_id]
    sizes = {(r["split"], r["cluster"]): (r["rows_before"], r["rows_after"])
             for r in show_snapshot(store, snap.dataset_id[:6])["cluster_sizes"]}
    assert sizes[("train", "x+y")] == (2 * per_op["x+y"], min(per_op["x+y"], 40))


def test_train_never_leaks_test_tasks_and_uses_verified_agent_answers(store, tmp_path):
    fam = family()
    splits = fam.splits()
    train_ids = {t.task_id for t in splits["train"]}
    snap = build_snapshot(store, spec(), home=tmp_path)
    train = train_of(snap).to_pylist()
    assert {r["task_id"] for r in train} == train_ids           # every train task once, no test task
    canonical = {t.task_id: list(t.answer) for t in splits["train"]}
    assert all(r["answer"] == canonical[r["task_id"]] for r in train)   # the wrong answers are not there
    ids = store.execute("SELECT trajectory_id::VARCHAR FROM trajectories WHERE verified").fetchall()
    assert {r["trajectory_id"] for r in train} <= {i[0] for i in ids}


def test_holdout_removes_the_cluster_from_train_and_keeps_tests_intact(store, tmp_path):
    full = build_snapshot(store, spec(), home=tmp_path)
    held = build_snapshot(store, spec(holdout_clusters=["x*y"]), home=tmp_path)
    few = build_snapshot(store, spec(holdout_clusters=["x*y"], holdout_keep_k=3), home=tmp_path)

    ops = {t.task_id: t.operation for t in family().splits()["train"]}
    assert not [r for r in train_of(held).to_pylist() if r["cluster"] == "x*y" or ops[r["task_id"]] == "x*y"]
    assert held.clusters["train"]["x+y"] == full.clusters["train"]["x+y"]
    assert few.clusters["train"]["x*y"] == 3
    for split in ("test_id", "test_ood"):
        assert pq.read_table(f"{held.path}/{split}.parquet").equals(pq.read_table(f"{full.path}/{split}.parquet"))
    assert len({full.dataset_id, held.dataset_id, few.dataset_id}) == 3


def test_same_inputs_same_fingerprint_other_seed_other_rows(store, tmp_path):
    first = build_snapshot(store, spec(balance_cap=20, seed=0), home=tmp_path)
    n_rows = store.execute("SELECT count(*) FROM dataset_rows").fetchone()[0]
    again = build_snapshot(store, spec(balance_cap=20, seed=0, name="renamed"), home=tmp_path)
    assert again.dataset_id == first.dataset_id and not again.built
    assert store.execute("SELECT count(*) FROM dataset_rows").fetchone()[0] == n_rows

    other = build_snapshot(store, spec(balance_cap=20, seed=1), home=tmp_path)
    assert other.dataset_id != first.dataset_id
    assert other.clusters["train"] == first.clusters["train"]                    # same promised counts
    assert set(train_of(other)["task_id"].to_pylist()) != set(train_of(first)["task_id"].to_pylist())

    insert_trajectories(store, experience(family(), per_task=1, wrong=False, on_test=False)[:1])
    grown = build_snapshot(store, spec(balance_cap=20, seed=0), home=tmp_path)
    assert grown.dataset_id != first.dataset_id


def test_a_deleted_export_is_rewritten_from_the_store(store, tmp_path):
    import shutil

    snap = build_snapshot(store, spec(balance_cap=10), home=tmp_path)
    before = train_of(snap)
    shutil.rmtree(snap.path)
    again = build_snapshot(store, spec(balance_cap=10), home=tmp_path)
    assert not again.built and train_of(again).equals(before)


@pytest.mark.parametrize("method", ["kmeans", "hkmeans"])
def test_kmeans_snapshot_labels_test_items_and_records_assignments(store, tmp_path, method):
    snap = build_snapshot(store, spec(cluster_method=method, n_clusters=3, n_subclusters=2, temperature=0,
                                      dedup="minhash"), home=tmp_path)
    train_clusters = set(snap.clusters["train"])
    test = pq.read_table(f"{snap.path}/test_id.parquet")
    assert set(test["cluster"].to_pylist()) <= set(snap.clusters["pool"]) and None not in test["cluster"].to_pylist()
    assert len(set(snap.clusters["train"].values())) == 1        # T=0: uniform over clusters
    n_pool = store.execute("SELECT count(*) FROM cluster_assignments WHERE clustering_id = ?",
                           [snap.clustering_id]).fetchone()[0]
    assert n_pool == snap.counts["pool"]
    sizes = store.execute("SELECT cluster, rows FROM cluster_sizes WHERE clustering_id = ?",
                          [snap.clustering_id]).fetchall()
    assert dict(sizes) == snap.clusters["pool"] and train_clusters <= set(dict(sizes))


def table_counts(con) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("datasets", "dataset_rows", "clusterings", "cluster_assignments")}


@pytest.mark.parametrize("bad, message", [
    (dict(holdout_clusters=["x/y"]), r"unknown cluster\(s\) \['x/y'\]"),
    (dict(where="agent_id = ?", where_params=[]), "has 1 '\\?' but 0 parameter"),
    (dict(where="no_such_column = 1"), "bad where condition"),
    (dict(agents=["nobody@0"]), "no usable trajectories"),
    (dict(family_params={**PARAMS, "seed": 5}), "does not have"),
    (dict(cluster_method="dbscan"), "cluster_method must be one of"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(balance_cap=0), "balance_cap must be >= 1"),
])
def test_bad_specs_are_clear_errors_and_store_nothing(store, tmp_path, bad, message):
    before = table_counts(store)
    with pytest.raises(ValueError, match=message):
        build_snapshot(store, spec(**bad), home=tmp_path)
    assert table_counts(store) == before
    assert not any((tmp_path / "datasets").glob("*"))


def test_a_failure_while_recording_rolls_back_and_leaves_no_directory(store, tmp_path):
    from storage.datasets import fingerprint, select_trajectories
    from storage.store import StoreError

    s = spec(balance_cap=10)
    dataset_id = fingerprint(s, select_trajectories(store, s)["trajectory_id"].to_pylist())
    # A stray row under the id the snapshot will get makes its bulk insert fail half way.
    store.execute("INSERT INTO dataset_rows (dataset_id, row_idx, task_id, family, split, prompt, answer) "
                  "VALUES (?, 0, 't', 'modular', 'train', ['1'], ['2'])", [dataset_id])
    before = table_counts(store)
    with pytest.raises(StoreError, match=f"recording snapshot {dataset_id} failed"):
        build_snapshot(store, s, home=tmp_path)
    assert table_counts(store) == before
    assert not any((tmp_path / "datasets").glob("*"))


def test_answers_that_cannot_be_encoded_are_dropped_and_counted(store, tmp_path):
    t = family().splits()["train"][0]
    con = store
    insert_trajectories(con, [{"task": t, "answer": ["999"], "verified": True},        # not a symbol
                              {"task": t, "answer": ["1", "2"], "verified": True},     # too long
                              {"task": t, "answer": "1", "verified": True}])           # not a list
    snap = build_snapshot(con, spec(), home=tmp_path)
    assert snap.counts["dropped_unfit"] == 3
    assert all(r["answer"] == list(t.answer) for r in train_of(snap).to_pylist() if r["task_id"] == t.task_id)


def test_export_formats_and_errors(store, tmp_path):
    from datasets import load_from_disk

    snap = build_snapshot(store, spec(balance_cap=15), home=tmp_path)
    rows = snapshot_rows(store, snap.dataset_id)
    out = export_snapshot(store, snap.dataset_id, tmp_path / "pq")
    assert pq.read_table(out / "train.parquet").equals(rows.filter(pa.compute.equal(rows["split"], "train")))
    hf = load_from_disk(str(export_snapshot(store, snap.dataset_id, tmp_path / "hf", format="hf")))
    assert sum(len(hf[s]) for s in hf) == rows.num_rows
    with pytest.raises(FileExistsError, match="not empty"):
        export_snapshot(store, snap.dataset_id, tmp_path / "pq")
    with pytest.raises(ValueError, match="no dataset snapshot 'feed'"):
        export_snapshot(store, "feed", tmp_path / "x")
    with pytest.raises(ValueError, match="format must be parquet or hf"):
        export_snapshot(store, snap.dataset_id, tmp_path / "y", format="csv")


def test_dataset_commands(tmp_path):
    from flows.cli_dataset import app

    con = connect(tmp_path / "store.duckdb")
    insert_trajectories(con, experience(family(), on_test=False))
    con.close()
    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    base = ["build", "--family", "modular", "-p", "p=11", "-p", 'operations=["x+y","x-y","x*y"]',
            "-p", "train_fraction=0.6", "--cap", "12", *home]
    built = runner.invoke(app, [*base, "--holdout", "x-y", "--keep-k", "2"])
    assert built.exit_code == 0, built.output
    with connect(tmp_path / "store.duckdb", read_only=True) as con:
        dataset_id = list_snapshots(con)[0]["dataset_id"]
        assert snapshot_rows(con, dataset_id).filter(
            pa.compute.equal(snapshot_rows(con, dataset_id)["cluster"], "x-y")).num_rows == 2 + sum(
            t.operation == "x-y" for t in family().splits()["test_id"])
    assert dataset_id in runner.invoke(app, ["list", *home]).output
    shown = runner.invoke(app, ["show", dataset_id[:8], "--json", *home])
    assert shown.exit_code == 0 and json.loads(shown.output)["counts"]["train"] == 12 + 12 + 2
    exported = runner.invoke(app, ["export", dataset_id, str(tmp_path / "out"), "--format", "hf", *home])
    assert exported.exit_code == 0 and (tmp_path / "out" / "dataset_dict.json").is_file()

    bad = runner.invoke(app, [*base, "--holdout", "x^y"])
    assert bad.exit_code == 2 and "unknown cluster(s) ['x^y']" in bad.output
    missing = runner.invoke(app, ["show", "nope", *home])
    assert missing.exit_code == 2 and "no dataset snapshot 'nope'" in missing.output


def test_agent_logs_ingested_become_a_snapshot(tmp_path):
    """SDK -> spool -> ingest -> snapshot: solved train tasks become train rows, test tasks never do."""
    from agents.sdk import TrajectoryLogger
    from storage.ingest import ingest_spool

    params = {"p": 5, "operations": ["x+y", "x*y"], "train_fraction": 0.6, "seed": 0}
    fam = family(params)
    splits = fam.splits()
    log = TrajectoryLogger("solver", "1", spool=tmp_path / "spool")
    for task in splits["train"] + splits["test_id"][:5]:
        with log.trajectory(task, metadata={"operation": task.operation, "outcome": "solved"}) as t:
            t.step(tool_name="compute", arguments={"prompt": list(task.prompt)}, result=list(task.answer))
            t.finish(answer=list(task.answer), verified=fam.verify(task, task.answer), reward=1.0)
    with log.trajectory(splits["train"][0]) as t:       # a wrong attempt: not training data
        t.finish(answer=["0"] if splits["train"][0].answer != ("0",) else ["1"], verified=False)
    log.close()
    con = connect(tmp_path / "store.duckdb")
    ingest_spool(con, tmp_path / "spool")

    snap = build_snapshot(con, spec(family_params=params, holdout_clusters=["x*y"], holdout_keep_k=1),
                          home=tmp_path)
    train = train_of(snap).to_pylist()
    assert snap.counts["selected"] == len(splits["train"]) + 5 and snap.counts["dropped_test_task"] == 5
    assert sorted(r["task_id"] for r in train) == sorted(
        [t.task_id for t in splits["train"] if t.operation == "x+y"]
        + [r["task_id"] for r in train if r["cluster"] == "x*y"])
    assert snap.clusters["train"]["x*y"] == 1
    assert pq.read_table(f"{snap.path}/test_id.parquet")["task_id"].to_pylist() == [
        t.task_id for t in splits["test_id"]]
    con.close()


def test_the_same_experience_logged_in_another_order_curates_to_the_same_rows(tmp_path):
    """Agents that log side by side interleave differently each time: the snapshot (its rows, their
    order, so the batches a seed draws) must depend on what was collected, not on when each row landed."""
    fam = family()
    rows = experience(fam)
    spec = SnapshotSpec(family="modular", family_params=PARAMS, cluster_method="column", cluster_column="operation",
                        holdout_clusters=["x-y"], holdout_keep_k=5)
    curated = []
    for name, order in (("logged", rows), ("reversed", rows[::-1]), ("shuffled", random.Random(0).sample(rows, len(rows)))):
        with connect(tmp_path / f"{name}.duckdb") as con:
            insert_trajectories(con, order)
            snap = build_snapshot(con, spec, home=tmp_path / name)
            curated.append(snapshot_rows(con, snap.dataset_id).select(["task_id", "split", "cluster", "prompt", "answer"]))
    assert curated[0].num_rows > 100 and curated[0].equals(curated[1]) and curated[0].equals(curated[2])
