"""`grokloop train` under torchrun: data parallel on CPU (gloo), the same steps as one process."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from test_train import metric_rows

from diffusion.distributed import Processes

TINY = ['family_params={"p": 5, "train_fraction": 0.6}', "hidden_size=32", "num_layers=1", "num_heads=2",
        "batch_size=8", "max_steps=50", "eval_every=1", "checkpoint_every=10", "keep_checkpoints=0",
        "grokfast=ema", "progress=false"]


def grokloop_train(home, *args, nproc=1):
    """`grokloop train` in a subprocess; under `torchrun --nproc_per_node nproc` when nproc > 1."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launch if nproc > 1 else [sys.executable]), "-m", "flows.cli", "train", "--home", str(home), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_the_slices_of_a_batch_cover_it_once_and_weigh_as_its_mean():
    import torch

    for n, world in ((8, 2), (7, 3), (3, 3)):
        procs = [Processes(rank=r, world_size=world) for r in range(world)]
        covered = [i for p in procs for i in range(n)[p.rows(n)]]
        assert covered == list(range(n))
        # slice means weighted by share, averaged as DDP averages: the mean of the whole batch
        values = torch.arange(n, dtype=torch.float64)
        avg = sum(float(p.share(values[p.rows(n)].mean(), p.rows(n), n)) for p in procs) / world
        assert avg == pytest.approx(float(values.mean()))
    assert Processes().rows(5) == slice(0, 5) and not Processes().distributed


def _join_and_leave(rank: int, port: int, raises: bool, out) -> None:
    import torch.distributed as dist

    from diffusion.distributed import processes

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        with processes() as procs:
            inside = dist.is_initialized() and procs.mean(float(rank)) == 0.5
            if raises:
                raise RuntimeError("the block failed")
    except RuntimeError:
        pass
    out.put((rank, inside, dist.is_initialized()))


@pytest.mark.parametrize("raises", [False, True])
def test_a_process_leaves_the_process_group_it_joined(raises):
    """Left to interpreter exit, gloo's threads can abort a process (SIGABRT) whose peer has gone."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_join_and_leave, args=(r, port, raises, out)) for r in range(2)]
    for w in workers:
        w.start()
    results = sorted(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert results == [(0, True, False), (1, True, False)]  # joined, averaged, and left
    assert [w.exitcode for w in workers] == [0, 0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 50 steps as one process and as two (torchrun, gloo), in one home."""
    home = tmp_path_factory.mktemp("home")
    finish(grokloop_train(home, *TINY, "run_name=one"))
    out = finish(grokloop_train(home, *TINY, "run_name=two", nproc=2))
    return home, out


@pytest.mark.slow  # torchrun and its trainer processes
def test_two_processes_take_the_steps_one_process_takes(runs):
    home, out = runs
    one, two = metric_rows(home, "one"), metric_rows(home, "two")
    assert [(s, n) for s, n, _ in two] == [(s, n) for s, n, _ in one]
    batch_loss = [(s, v) for s, n, v in one if n == "train/batch_loss"]
    assert [s for s, _ in batch_loss] == list(range(1, 51))  # the loss of every one of the 50 steps
    for (step, name, a), (_, _, b) in zip(one, two, strict=True):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), (step, name)
    # the model moved: the curve is not flat, so matching it means something
    assert batch_loss[-1][1] < 0.9 * batch_loss[0][1]
    assert out.count("run two: finished at step 50") == 1  # rank 0 reports; the other process is quiet
    config = json.loads((home / "runs" / "two" / "config.json").read_text())
    assert config["batch_size"] == 8  # the global batch, split 4 + 4


def _rank_process(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "flows.cli" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} process under torchrun")


@pytest.mark.slow  # torchrun and its trainer processes
def test_a_rank_killed_mid_run_resumes_to_the_same_final_metrics(runs, tmp_path):
    ref_home, _ = runs
    home = tmp_path
    launcher = grokloop_train(home, *TINY, "run_name=victim", nproc=2)
    rank1 = _rank_process(launcher, 1)
    latest = home / "runs" / "victim" / "latest"
    deadline = time.monotonic() + 240
    while not (latest.is_file() and int(latest.read_text().split("_")[1]) >= 20):
        assert time.monotonic() < deadline and launcher.poll() is None, "no checkpoint at step 20"
        time.sleep(0.01)
    rank1.send_signal(signal.SIGKILL)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode != 0, out
    killed_at = int(latest.read_text().split("_")[1])
    assert 20 <= killed_at < 50

    resumed = finish(grokloop_train(home, "--resume", "victim", nproc=2))
    assert "run victim: finished at step 50" in resumed
    assert metric_rows(home, "victim") == metric_rows(ref_home, "two")


@pytest.mark.slow  # torchrun and its trainer processes
def test_a_batch_smaller_than_the_processes_is_refused(tmp_path):
    settings = ['family_params={"p": 5, "train_fraction": 0.6}', "hidden_size=16", "num_layers=1", "num_heads=2",
                "batch_size=1", "max_steps=2", "run_name=tiny", "progress=false"]
    proc = grokloop_train(tmp_path, *settings, nproc=2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "a batch of 1 rows cannot be split over 2 processes" in out
