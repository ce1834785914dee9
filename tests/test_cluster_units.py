"""The runner setting and the URL spool without a cluster: fsspec's in-memory filesystem stands in
for object storage (tests/test_cluster.py runs the real S3 server and Dask cluster)."""

from __future__ import annotations

import duckdb
import fsspec
import pytest

from agents.sdk import TrajectoryLogger
from flows.config import LoopConfig
from flows.runners import Runner
from storage.home import is_url, spool_location
from storage.ingest import ingest_spool
from storage.spool import published_segments, read_records, remove_stale_tmp, write_segment
from storage.store import open_store


@pytest.mark.parametrize("settings, message", [
    ({"runner": "ray"}, "unknown runner 'ray'; known: local, dask"),
    ({"dask_address": "tcp://h:8786"}, "dask_address is set but the runner is local"),
    ({"runner": "dask", "dask_workers": 0}, "dask_workers must be >= 1, got 0"),
])
def test_a_bad_runner_setting_is_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**settings).runner_settings()


def test_runner_settings_from_the_command_line():
    cfg = LoopConfig.from_overrides(["runner=dask", "dask_address=tcp://10.0.0.5:8786", "spool=s3://b/p/spool"])
    assert cfg.runner_settings() == Runner("dask", "tcp://10.0.0.5:8786", 2)
    assert spool_location(cfg.spool) == "s3://b/p/spool"


def test_urls_and_paths(tmp_path):
    assert is_url("s3://bucket/spool") and is_url("memory://x")
    assert not is_url(tmp_path) and not is_url("file:///tmp/spool") and not is_url(None)
    assert spool_location(f"file://{tmp_path}/spool") == tmp_path / "spool"
    assert spool_location(None, tmp_path) == tmp_path / "spool"


@pytest.fixture
def memory_spool():
    url = "memory://grokloop-test/spool"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists("/grokloop-test"):
        fs.rm("/grokloop-test", recursive=True)


def _log(spool, n: int) -> set[str]:
    ids = set()
    with TrajectoryLogger("tester", spool=spool) as log:
        for i in range(n):
            with log.trajectory(task={"family": "modular", "task_id": f"t{i}"}) as traj:
                traj.step(tool_name="act", observation={"i": i})
                traj.finish(answer=i, verified=True)
                ids.add(str(traj.id))
    return ids


def test_a_url_spool_is_written_listed_and_ingested_exactly_once(memory_spool, tmp_path):
    logged = _log(memory_spool, 5)
    segments = published_segments(memory_spool)
    assert segments and all(s.startswith(memory_spool + "/") and s.endswith(".arrow") for s in segments)
    assert remove_stale_tmp(memory_spool) == []
    assert {r["trajectory_id"] for s in segments for r in read_records(s) if r["type"] == "trajectory"} == logged
    fs = fsspec.filesystem("memory")
    assert not [p for p in fs.find("/grokloop-test") if p.endswith(".tmp")]  # nothing but whole segments

    with open_store(tmp_path / "store.duckdb") as con:
        report = ingest_spool(con, memory_spool)
        assert report.trajectories == 5
        # A segment put back under the spool (a retried move, a second writer of the same bytes)
        # is known by its digest: nothing is ingested twice.
        moved = published_segments(f"{memory_spool}/ingested")
        assert len(moved) == len(segments) and published_segments(memory_spool) == []
        write_segment(memory_spool, fs.cat_file(moved[0].removeprefix("memory://")))
        assert ingest_spool(con, memory_spool).trajectories == 0
    with duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True) as con:
        stored = {r[0] for r in con.execute("SELECT trajectory_id::VARCHAR FROM trajectories").fetchall()}
    assert stored == logged


def test_an_empty_or_missing_url_spool_ingests_nothing(memory_spool, tmp_path):
    assert published_segments(memory_spool) == []
    with open_store(tmp_path / "store.duckdb") as con:
        assert ingest_spool(con, memory_spool).trajectories == 0
