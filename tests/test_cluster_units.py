"""The runner setting and the URL spool without a cluster: fsspec's in-memory filesystem stands in
for object storage (tests/test_cluster.py runs the real S3 server and Dask cluster)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import fsspec
import pytest
import torch

from agents.sdk import TrajectoryLogger
from flows.config import LoopConfig
from flows.runners import Runner
from storage.home import is_url, runs_dir, spool_location, store_path
from storage.ingest import ingest_spool
from storage.spool import published_segments, read_records, remove_stale_tmp, write_segment
from storage.store import open_store


@pytest.mark.parametrize("given, waits", [(None, 180), ("45", 45)])
def test_the_ephemeral_prefect_server_is_waited_for_180_s_unless_told_otherwise(given, waits):
    # A fresh interpreter: the setting is read from the environment flows sets for this process and its workers.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    if given:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = given
    read = ("import flows; from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as t; "
            "print(t.value())")
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == str(waits)


def test_a_workers_prefect_server_that_does_not_start_in_time_is_named_with_what_to_change():
    # The timeout at 0 s: the server cannot answer in time, as on cores busy with other runs (stop 59:
    # a grid started under `nice -n 19` beside two runs failed this way, with Prefect's "timed out" alone).
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0", PYTHONPATH=str(Path(__file__).parents[1]))
    start = "import flows; from flows.runners import workers_prefect_api; workers_prefect_api()"
    out = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert ("did not answer within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=0 s" in out.stderr
            and "PREFECT_API_URL" in out.stderr), out.stderr[-2000:]


WORKERS_API = """
import os, sys
import flows  # first, as the CLI imports it: its Prefect settings
from prefect import task
from prefect.server.api.server import SubprocessASGIServer
from flows.runners import Runner, fan_out

@task
def api(i):  # where this worker reports to, how many Prefect servers it started itself, its malloc setting
    import psutil
    started = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    return (os.environ.get("PREFECT_API_URL"), sum("prefect.server.api.server" in c for c in started),
            os.environ.get("MALLOC_TRIM_THRESHOLD_"))

print(fan_out(Runner(sys.argv[1], n_workers=2), api, [(0,), (1,)]), SubprocessASGIServer().api_url)
"""


@pytest.mark.parametrize("runner", ["ray", "dask"])
def test_a_local_cluster_s_workers_report_to_this_process_s_ephemeral_prefect_server(runner):
    """A fresh interpreter without PREFECT_API_URL, as a user runs the CLI. The workers leave glibc's
    malloc as a plain process has it: Dask's nanny would set MALLOC_TRIM_THRESHOLD_, and a training run
    in such a worker ran at 0.58x (flows.runners.local_cluster)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MALLOC_TRIM_THRESHOLD_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", WORKERS_API, runner], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    workers, here = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert here.startswith("http://127.0.0.1:") and ast.literal_eval(workers) == [(here, 0, None), (here, 0, None)]


@pytest.mark.parametrize("settings, message", [
    ({"runner": "spark"}, "unknown runner 'spark'; known: local, dask, ray"),
    ({"runner": "ray", "ray_address": "10.0.0.5"}, "ray_address '10.0.0.5' is not a Ray address"),
    ({"runner": "ray", "dask_address": "tcp://h:8786"}, "dask_address is set but the runner is ray; set runner=dask"),
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


def _memory_tree(root: str, path: str = ""):
    """A URL under memory://ROOT for one test; ROOT is removed afterwards."""
    yield f"memory://{root}{path}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture
def memory_spool():
    yield from _memory_tree("grokloop-test", "/spool")


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


# --- the shared home: checkpoints and dataset exports at a URL -------------------------------------

@pytest.fixture
def memory_home():
    yield from _memory_tree("grokloop-shared-test")


def _tiny(home, run_name, **kw):
    from diffusion.train import TrainConfig

    base = dict(family="modular", family_params={"p": 5, "train_fraction": 0.6, "seed": 0}, hidden_size=32,
                num_layers=1, num_heads=2, lr=3e-3, weight_decay=0.0, batch_size=8, max_steps=80, eval_every=20,
                sampler_steps=1, grokfast="ema", home=str(home), run_name=run_name, progress=False)
    return TrainConfig(**{**base, **kw})


def _metrics(home, run_id):
    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as con:
        return con.execute("SELECT step, name, value FROM metrics WHERE run_id = ? AND name <> 'step_time'"
                           " ORDER BY ALL", [run_id]).fetchall()


def test_a_run_on_the_shared_home_resumes_on_another_machine_from_its_published_checkpoint(memory_home, tmp_path):
    """Trained from a snapshot export published on the shared home, stopped at step 40, its run
    directory then gone (another machine): resumed from the URL, it ends where the uninterrupted run
    made here ends."""
    import dataclasses

    from diffusion.checkpoint import latest_checkpoint, load_model, resolve_checkpoint
    from diffusion.config import load_config
    from diffusion.train import train
    from storage import shared
    from storage.datasets import publish_snapshot
    from tests.test_train import write_snapshot

    export = write_snapshot(tmp_path / "datasets" / "ds-test")
    dataset = publish_snapshot(export, memory_home)
    assert dataset == f"{memory_home}/datasets/ds-test"
    assert shared.children(dataset) == ["meta.json", "test_id.parquet", "test_ood.parquet", "train.parquet"]

    cfg = _tiny(tmp_path / "home", "mover", dataset=dataset, shared_home=memory_home, max_steps=40)
    first = train(cfg)
    run_url = f"{memory_home}/runs/mover"
    assert first.checkpoint_dir == f"{run_url}/checkpoints/step_40" == latest_checkpoint(run_url)
    assert shared.children(f"{run_url}/checkpoints") == ["step_0", "step_20", "step_40"]
    run_dir = tmp_path / "home" / "runs" / "mover"
    assert not (run_dir / "checkpoints").exists()  # only on the shared home
    shutil.rmtree(run_dir)

    with pytest.raises(FileNotFoundError, match="no run 'mover': no config.json under .*add shared_home=URL"):
        load_config("mover", ["max_steps=80"], home=str(tmp_path / "home"))
    # what `grokloop train --resume mover shared_home=URL max_steps=80` resumes: the config the run left there
    moved = load_config("mover", [f"shared_home={memory_home}", "max_steps=80"], home=str(tmp_path / "home"))
    assert moved == dataclasses.replace(cfg, max_steps=80, home=str(tmp_path / "home"), run_id="mover")
    resumed = train(moved, resume=True)
    assert resumed.final_step == 80 and resumed.checkpoint_dir == f"{run_url}/checkpoints/step_80"
    reference = train(_tiny(tmp_path / "ref", "mover", dataset=str(export)))
    assert _metrics(tmp_path / "home", "mover") == _metrics(tmp_path / "ref", "mover")
    assert len(_metrics(tmp_path / "ref", "mover")) > 5 * 4
    # keep_checkpoints (3) holds on the shared home too; the URL of a run resolves to its latest
    assert shared.children(f"{run_url}/checkpoints") == ["step_40", "step_60", "step_80"]
    assert resolve_checkpoint(run_url) == f"{run_url}/checkpoints/step_80"
    here, there = load_model(reference.checkpoint_dir), load_model(resolve_checkpoint(run_url))
    assert all(torch.equal(a, b) for a, b in zip(here.state_dict().values(), there.state_dict().values(),
                                                  strict=True))


def test_a_half_published_checkpoint_is_never_read(memory_home, tmp_path):
    """A worker killed while uploading step_40 leaves its objects without grokloop.json (published
    last) and `latest` at step_20: a resume takes step_20, and the half one is refused by name."""
    from diffusion.checkpoint import has_checkpoint, latest_checkpoint, local_checkpoint
    from diffusion.train import train
    from storage import shared

    cfg = _tiny(tmp_path, "half", shared_home=memory_home, max_steps=20)
    assert not has_checkpoint(cfg)
    train(cfg)
    assert has_checkpoint(cfg)
    run_url = f"{memory_home}/runs/half"
    step_20 = f"{run_url}/checkpoints/step_20"
    for name in shared.children(step_20):  # step_40, cut short before its last object
        if name != "grokloop.json":
            shared.write_bytes(f"{run_url}/checkpoints/step_40/{name}", shared.read_bytes(f"{step_20}/{name}"))
    assert latest_checkpoint(run_url) == step_20
    with pytest.raises(FileNotFoundError, match="step_40 is not a grokloop checkpoint"):
        local_checkpoint(f"{run_url}/checkpoints/step_40")
    assert (local_checkpoint(step_20) / "state.pt").is_file()


def test_a_shared_home_must_be_a_url(tmp_path):
    from diffusion.train import TrainConfig, apply_overrides

    with pytest.raises(ValueError, match="shared_home must be a URL such as s3://bucket/prefix, got '/mnt/x'"):
        LoopConfig.from_overrides(["shared_home=/mnt/x"])
    with pytest.raises(ValueError, match="shared_home must be a URL"):
        apply_overrides(TrainConfig(home=str(tmp_path)), ["shared_home=relative/dir"])
    assert LoopConfig.from_overrides(["shared_home=s3://b/p"]).shared_home == "s3://b/p"


def test_a_republished_directory_replaces_its_local_copy(memory_home, tmp_path, monkeypatch):
    from storage import shared

    monkeypatch.setattr(shared.tempfile, "gettempdir", lambda: str(tmp_path))
    fs, url = fsspec.filesystem("memory"), f"{memory_home}/export"
    fs.pipe({"/grokloop-shared-test/export/rows.txt": b"v1", "/grokloop-shared-test/export/meta.json": b"{}"})
    first = shared.local_copy(url, "meta.json")
    assert (first / "rows.txt").read_bytes() == b"v1" and shared.local_copy(url, "meta.json") == first
    fs.pipe({"/grokloop-shared-test/export/rows.txt": b"v2", "/grokloop-shared-test/export/meta.json": b'{"v": 2}'})
    second = shared.local_copy(url, "meta.json")
    assert second != first and (second / "rows.txt").read_bytes() == b"v2"
    assert sorted((tmp_path / "grokloop-shared").iterdir()) == [second]  # the stale copy is gone


def test_a_training_fan_out_that_ends_early_records_the_runs_it_left_running_as_stopped(tmp_path):
    """What a cluster stop leaves: a worker killed mid-run never records its run's end. `train_on`
    records the runs still `running` as stopped at the step they reached (the command's own error is
    still raised); runs already over keep their status; a worker that outlived the command writes a
    newer row, which wins. Both call forms: a list of seeds (train_seeds_task) and one config."""
    from prefect import task

    from diffusion.records import run_record
    from diffusion.train import TrainConfig
    from flows.flows import train_on
    from storage.runs import _save_pending, flush_pending, record_run

    home = str(tmp_path)
    cfgs = {name: TrainConfig(run_id=name, run_name=name, home=home) for name in ("lost", "done", "crashed")}
    for name, status, step in [("lost", "running", 40), ("done", "finished", 100), ("crashed", "failed", 30)]:
        record_run(home, run_record(cfgs[name], status, step, None, None, None))

    def worker_lost(_):
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        train_on(Runner(), task(worker_lost), [([cfgs["lost"], cfgs["done"]],), (cfgs["crashed"],)], name="t")

    def runs() -> dict:
        with open_store(store_path(home), read_only=True) as con:
            return {r: (s, n) for r, s, n in con.execute("SELECT run_id, status, final_step FROM runs").fetchall()}

    assert runs() == {"lost": ("stopped", 40), "done": ("finished", 100), "crashed": ("failed", 30)}
    # A record the lost worker made before the mark, at a later evaluation, that waited as a file for
    # a busy store and lands after it: the run stays stopped, at the step and T_mem it had reached.
    made = (datetime.now(UTC) - timedelta(minutes=1)).replace(tzinfo=None).isoformat()
    _save_pending(runs_dir(home) / "lost", {"run": {**run_record(cfgs["lost"], "running", 50, 45, None, None),
                                                    "updated_at": made}, "metrics": [[50, "train/acc", 1.0]]})
    with open_store(store_path(home)) as con:
        assert flush_pending(con, home) == 1
    assert runs()["lost"] == ("stopped", 50)
    record_run(home, run_record(cfgs["lost"], "running", 60, 45, None, None))  # its worker lived on
    assert runs()["lost"] == ("running", 60)
