import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import diffusion.train as train_module
from agents.tasks import get_family
from diffusion.evaluate import evaluate_checkpoint
from diffusion.plot import plot_runs
from diffusion.train import (
    Pace,
    TrainConfig,
    apply_overrides,
    has_checkpoint,
    load_config,
    load_model,
    train,
)
from storage.home import store_path

P5 = {"p": 5, "train_fraction": 0.6, "seed": 0}


def tiny(home, run_name, **kw):
    base = dict(family="modular", family_params=P5, hidden_size=32, num_layers=1, num_heads=2, lr=3e-3,
                weight_decay=0.0, batch_size=8, max_steps=200, eval_every=20, sampler_steps=1,
                grokfast="ema", home=str(home), run_name=run_name, progress=False)
    return TrainConfig(**{**base, **kw})


def metric_rows(home, run_id, drop=("step_time",)):
    """(step, name, value) of a run; step_time is wall-clock, the only metric that may differ."""
    con = duckdb.connect(str(store_path(home)), read_only=True)
    try:
        rows = con.execute("SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY step, name",
                           [run_id]).fetchall()
    finally:
        con.close()
    return [r for r in rows if r[1] not in drop]


def run_row(home, run_id):
    con = duckdb.connect(str(store_path(home)), read_only=True)
    try:
        cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))
    finally:
        con.close()


def write_snapshot(directory, *, clusters=True, drop_column=None):
    """A curation-style snapshot: the family's train rows, test_id = the same rows, empty OOD."""
    fam = get_family("modular", seed=0, p=5, train_fraction=0.6)
    tasks = fam.splits()["train"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").write_text(json.dumps(
        {"dataset_id": "ds-test", "family": "modular", "family_params": P5}))
    for split, rows in (("train", tasks), ("test_id", tasks), ("test_ood", [])):
        table = pa.table({
            "task_id": pa.array([t.task_id for t in rows], pa.string()),
            "family": pa.array(["modular"] * len(rows), pa.string()),
            "split": pa.array([split] * len(rows), pa.string()),
            "cluster": pa.array([f"x{int(t.prompt[0]) % 2}" if clusters else None for t in rows], pa.string()),
            "prompt": pa.array([list(t.prompt) for t in rows], pa.list_(pa.string())),
            "answer": pa.array([list(t.answer) for t in rows], pa.list_(pa.string())),
        })
        if drop_column:
            table = table.drop_columns([drop_column])
        pq.write_table(table, directory / f"{split}.parquet")
    return directory


def test_a_run_from_a_snapshot_is_named_and_configured_by_the_snapshot_family(tmp_path):
    snap = write_snapshot(tmp_path / "snap")  # modular rows, p=5
    cfg = tiny(tmp_path, None, dataset=str(snap), family="two_hop", family_params={}, max_steps=2)
    result = train(cfg)
    assert result.run_id.startswith("mdm-modular-")
    saved = json.loads((tmp_path / "runs" / result.run_id / "config.json").read_text())
    assert saved["family"] == "modular" and saved["family_params"] == P5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run every restart test compares against."""
    home = tmp_path_factory.mktemp("home")
    result = train(tiny(home, "ref", max_steps=300))
    return home, result


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_a_tiny_model_memorizes_a_tiny_dataset_from_a_snapshot(tmp_path, objective):
    snap = write_snapshot(tmp_path / "snap")
    # The count estimator: the 1/t form has too much variance on 1-token answers to memorize
    # 15 rows reliably in 300 steps (see test_objective for both being the same ELBO).
    # Four heads: with two, full-batch training of this 1-layer model can stall at 14/15 rows (two
    # rows sharing one 50/50 prediction) for some seeds; with four, seeds 0-2 memorise by step 100.
    result = train(tiny(tmp_path, f"fit-{objective}", dataset=str(snap), objective=objective,
                        max_steps=300, batch_size=16, hidden_size=64, num_heads=4, mdm_estimator="count"))
    assert result.metrics["train/acc"] == 1.0
    assert result.metrics["train/cluster:x0/acc"] == 1.0 and result.metrics["train/cluster:x1/acc"] == 1.0
    assert "test_ood/acc" not in result.metrics  # an empty split is not a 0% split
    # test_id is the train set, so generalization comes with no delay: T_grok <= T_mem, stated as such.
    row = run_row(tmp_path, result.run_id)
    assert row["status"] == "finished" and row["dataset_id"] == "ds-test" and row["objective"] == objective
    assert row["t_mem"] == result.t_mem is not None and row["t_grok"] == result.t_grok is not None
    assert row["grok_delay"] == result.t_grok - result.t_mem <= 0
    names = {n for _, n, _ in metric_rows(tmp_path, result.run_id, drop=())}
    assert {"train/loss", "train/acc", "test_id/acc", "test_id/loss", "weight_norm", "grad_norm",
            "grokfast/filter_ratio", "lr", "step_time", "train/batch_loss"} <= names


def test_metrics_and_checkpoints_are_recorded(reference):
    home, result = reference
    rows = metric_rows(home, "ref")
    assert sorted({s for s, _, _ in rows}) == list(range(0, 301, 20))
    assert result.checkpoint_dir.name == "step_300"
    assert (result.run_dir / "latest").read_text() == "step_300"
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert kept == ["step_260", "step_280", "step_300"]  # keep_checkpoints=3, no temp dirs left
    assert has_checkpoint(tiny(home, "ref"))
    ratio = [v for s, n, v in rows if n == "grokfast/filter_ratio"]
    assert all(r > 0 for r in ratio)  # the EMA filter adds something every step


def _spawn(cfg):
    code = ("import json, sys; from diffusion.train import config_from_dict, train;"
            " train(config_from_dict(json.loads(sys.argv[1])))")
    # The same number of threads as the reference trained with in this process: bit-exact
    # comparisons need the same float reduction order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(cfg))], env=env,
                            cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_checkpoint(run_dir, proc, min_step=40, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = run_dir / "latest"
        if latest.is_file() and int(latest.read_text().split("_")[1]) >= min_step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read().decode()}")
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_identical_metrics(reference, tmp_path, sig):
    ref_home, _ = reference
    cfg = tiny(tmp_path, "victim", max_steps=300)
    proc = _spawn(cfg)
    _wait_for_checkpoint(tmp_path / "runs" / "victim", proc)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:  # SIGTERM: checkpoint, mark stopped, then exit as SIGTERM means (143), no traceback
        assert rc == 128 + signal.SIGTERM, proc.stderr.read().decode()
        assert b"Traceback" not in proc.stderr.read()
        row = run_row(tmp_path, "victim")
        assert row["status"] == "stopped" and row["final_step"] < 300
        assert (tmp_path / "runs" / "victim" / "latest").read_text() == f"step_{row['final_step']}"
    result = train(load_config("victim", home=str(tmp_path)), resume=True)
    assert result.final_step == 300 and result.status == "finished"
    assert metric_rows(tmp_path, "victim") == metric_rows(ref_home, "ref")
    assert run_row(tmp_path, "victim")["status"] == "finished"
    # Resuming a complete run changes nothing, leaves it finished and reports its last evaluation.
    again = train(load_config("victim", home=str(tmp_path)), resume=True)
    assert again.final_step == 300 and run_row(tmp_path, "victim")["status"] == "finished"
    assert again.metrics == result.metrics and again.t_grok == result.t_grok
    assert metric_rows(tmp_path, "victim") == metric_rows(ref_home, "ref")


def test_ctrl_c_on_grokloop_train_checkpoints_records_stopped_and_exits_130(reference, tmp_path):
    """A person's Ctrl-C does what SIGTERM does (checkpoint at this step, `stopped`), and the
    command exits 130 (typer's code for it), no traceback; the run resumes to the uninterrupted numbers."""
    ref_home, _ = reference
    cfg = tiny(tmp_path, "victim", max_steps=300)
    settings = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in asdict(cfg).items()
                if k in ("family", "family_params", "hidden_size", "num_layers", "num_heads", "lr", "weight_decay",
                         "batch_size", "max_steps", "eval_every", "sampler_steps", "grokfast", "run_name", "progress")]
    code = "import sys; from flows.cli import app; sys.argv[0] = 'grokloop'; app()"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # Ctrl-C reaches a process whose SIGINT is not ignored (a background job of a script ignores it,
    # and so would this child of a backgrounded test run, without the reset).
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *settings, "--home", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_checkpoint(tmp_path / "runs" / "victim", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err.decode()
    row = run_row(tmp_path, "victim")
    assert row["status"] == "stopped" and 0 < row["final_step"] < 300
    assert (tmp_path / "runs" / "victim" / "latest").read_text() == f"step_{row['final_step']}"
    assert f"Ctrl-C: saved step {row['final_step']}; resume with --resume victim" in out.decode()
    assert b"Traceback" not in err
    result = train(load_config("victim", home=str(tmp_path)), resume=True)
    assert result.final_step == 300 and run_row(tmp_path, "victim")["status"] == "finished"
    assert metric_rows(tmp_path, "victim") == metric_rows(ref_home, "ref")


def test_an_interrupt_mid_step_records_stopped_and_the_run_resumes(reference, tmp_path, monkeypatch):
    """A second Ctrl-C interrupts at once (KeyboardInterrupt mid-step): the run is recorded `stopped`,
    not failed, and continues from its last checkpoint. A SIGINT the process ignores stays ignored."""
    ref_home, _ = reference
    real, handlers = train_module.learning_rate, []

    def interrupted_at_137(cfg, step):  # the loop calls it once a step, inside its signal handling
        handlers.append(signal.getsignal(signal.SIGINT))
        if step == 137:
            raise KeyboardInterrupt
        return real(cfg, step)

    monkeypatch.setattr(train_module, "learning_rate", interrupted_at_137)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(tiny(tmp_path, "victim", max_steps=300))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handlers and all(h is signal.SIG_IGN for h in handlers)
    row = run_row(tmp_path, "victim")
    assert row["status"] == "stopped" and row["final_step"] == 137
    monkeypatch.setattr(train_module, "learning_rate", real)
    result = train(load_config("victim", home=str(tmp_path)), resume=True)
    assert result.final_step == 300 and run_row(tmp_path, "victim")["status"] == "finished"
    assert metric_rows(tmp_path, "victim") == metric_rows(ref_home, "ref")


def test_a_run_killed_with_sigkill_is_named_by_status_and_marked_stopped_by_hand(tmp_path, monkeypatch):
    """SIGKILL leaves a run `running` with nobody to say otherwise: `grokloop status` names it once it
    has been quiet (an hour; no wait here), `grokloop mark-stopped` records it stopped and leaves a
    finished run alone, a bad name changes nothing, and the run continues to its end."""
    from datetime import timedelta

    from typer.testing import CliRunner

    import flows.cli_store
    from flows.cli import app

    def cli(*args):
        return CliRunner().invoke(app, [*args, "--home", str(tmp_path)])

    train(tiny(tmp_path, "done", max_steps=20))
    proc = _spawn(tiny(tmp_path, "victim", max_steps=300))
    _wait_for_checkpoint(tmp_path / "runs" / "victim", proc)
    proc.kill()
    proc.wait(timeout=60)
    assert run_row(tmp_path, "victim")["status"] == "running"
    assert "victim (last" not in cli("status").output  # recorded moments ago: not quiet yet
    monkeypatch.setattr(flows.cli_store, "QUIET_RUN", timedelta(0))
    quiet = " ".join(cli("status").output.split())
    assert "1 recorded `running` with no record for over 0 h" in quiet and "victim (last" in quiet

    bad = cli("mark-stopped", "victim", "nosuch")
    assert bad.exit_code == 2 and "no run in the store matches 'nosuch'" in bad.output
    assert run_row(tmp_path, "victim")["status"] == "running"  # nothing marked when any name is wrong
    marked = cli("mark-stopped", "vic*", "done")
    assert marked.exit_code == 0, marked.output
    assert "recorded 1 run(s) as stopped: victim" in marked.output
    assert "1 not running, left as they were: done" in marked.output
    assert [run_row(tmp_path, r)["status"] for r in ("victim", "done")] == ["stopped", "finished"]
    assert "victim (last" not in cli("status").output

    result = train(load_config("victim", home=str(tmp_path)), resume=True)
    assert result.final_step == 300 and run_row(tmp_path, "victim")["status"] == "finished"


def test_stopping_and_extending_a_run_matches_the_uninterrupted_one(reference, tmp_path):
    ref_home, _ = reference
    train(tiny(tmp_path, "short", max_steps=100))
    result = train(load_config("short", ["max_steps=300"], home=str(tmp_path)), resume=True)
    assert result.final_step == 300
    assert metric_rows(tmp_path, "short") == metric_rows(ref_home, "ref")


def test_bad_settings_are_refused_by_name_and_nothing_is_written(tmp_path):
    cfg = TrainConfig(home=str(tmp_path))
    with pytest.raises(ValueError, match="unknown training setting 'max_step'"):
        apply_overrides(cfg, ["max_step=10"])
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        apply_overrides(cfg, ["batch_size=1.5"])
    with pytest.raises(ValueError, match="grokfast must be one of"):
        apply_overrides(cfg, ["grokfast=fast"])
    with pytest.raises(ValueError, match="family_params must be a JSON object"):
        apply_overrides(cfg, ["family_params=[1]"])
    with pytest.raises(ValueError, match=r"min_lr must be in \[0, lr = 0.001\]"):
        apply_overrides(cfg, ["lr_decay=cosine", "min_lr=0.01"])
    got = apply_overrides(cfg, ["--max_steps=7", "betas=[0.9,0.99]", "run_name=x", "dataset=none"])
    assert (got.max_steps, got.betas, got.run_name, got.dataset) == (7, (0.9, 0.99), "x", None)
    with pytest.raises(FileNotFoundError, match="no run 'nope'"):
        load_config("nope", home=str(tmp_path))
    broken = write_snapshot(tmp_path / "broken", drop_column="answer")
    with pytest.raises(ValueError, match="lacks column"):
        train(tiny(tmp_path, "bad", dataset=str(broken)))
    assert not (tmp_path / "runs" / "bad").exists() and not store_path(tmp_path).exists()


def test_cosine_decay_takes_the_lr_from_warmup_down_to_min_lr_at_max_steps(tmp_path):
    lr, low, warmup, cap = 3e-3, 3e-4, 10, 100
    train(tiny(tmp_path, "cos", lr=lr, min_lr=low, lr_decay="cosine", warmup_steps=warmup, max_steps=cap,
               eval_every=10))
    logged = {step: value for step, name, value in metric_rows(tmp_path, "cos") if name == "lr"}
    # the lr logged at an evaluation is the one the last update (step - 1) used
    expected = {s: low + 0.5 * (1 + math.cos(math.pi * (s - 1 - warmup) / (cap - warmup))) * (lr - low)
                for s in range(warmup + 10, cap + 1, 10)}
    assert {s: logged[s] for s in expected} == pytest.approx(expected, rel=1e-6)
    assert logged[cap] == pytest.approx(low, rel=1e-2) and logged[warmup + 10] > 0.95 * lr
    assert all(logged[s] > logged[s + 10] for s in range(warmup + 10, cap, 10))
    # a run that stops at 60 and is then extended to 100 keeps its curve when decay_steps fixes it ...
    train(tiny(tmp_path, "part", lr=lr, min_lr=low, lr_decay="cosine", warmup_steps=warmup, max_steps=60,
               decay_steps=cap, eval_every=10))
    train(load_config("part", ["max_steps=130"], home=str(tmp_path)), resume=True)
    extended = {step: value for step, name, value in metric_rows(tmp_path, "part") if name == "lr"}
    assert {s: extended[s] for s in expected} == pytest.approx(expected, rel=1e-6)
    assert extended[120] == extended[130] == pytest.approx(low)     # ... and stays at min_lr after it
    # ... and without it, the extension moves to the longer curve (what decay_steps is for)
    train(tiny(tmp_path, "moved", lr=lr, min_lr=low, lr_decay="cosine", warmup_steps=warmup, max_steps=60,
               eval_every=10))
    train(load_config("moved", ["max_steps=100"], home=str(tmp_path)), resume=True)
    moved = {step: value for step, name, value in metric_rows(tmp_path, "moved") if name == "lr"}
    assert moved[60] < expected[60] and moved[70] > moved[60]


def test_an_existing_run_is_not_overwritten(reference):
    home, _ = reference
    before = metric_rows(home, "ref")
    with pytest.raises(FileExistsError, match="already exists"):
        train(tiny(home, "ref", max_steps=20))
    assert metric_rows(home, "ref") == before


def test_evaluate_and_plot_from_the_store(reference, tmp_path):
    home, result = reference
    accs = evaluate_checkpoint("ref", home=str(home))
    final = {n: v for s, n, v in metric_rows(home, "ref") if s == 300}
    assert accs["train"] == final["train/acc"] and accs["test_id"] == final["test_id/acc"]
    assert accs["train/exact"] == final["train/exact"]
    con = duckdb.connect(str(store_path(home)), read_only=True)
    evals = con.execute("SELECT split, n, step, sampler FROM evaluations WHERE run_id = 'ref' ORDER BY split").fetchall()
    con.close()
    assert [(s, n, st) for s, n, st, _ in evals] == [("test_id", 10, 300), ("test_id/exact", 10, 300),
                                                     ("train", 15, 300), ("train/exact", 15, 300)]
    assert json.loads(evals[0][3])["scheduler"] == "BlockRefinementScheduler"
    png = plot_runs(["ref"], tmp_path / "curves.png", home=str(home))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no accuracy metrics"):
        plot_runs(["ref", "ghost"], tmp_path / "x.png", home=str(home))


def test_the_log_rate_is_over_the_last_interval_not_since_start():
    now = iter([0.0, 100.0, 110.0])  # 10 steps slowed by dense early evals, then 1,000 in 10 s
    pace = Pace(0, clock=lambda: next(now))
    assert pace.line(10, 2_010) == " | 0.1 steps/s ETA 05:33:20"
    assert pace.line(1_010, 2_010) == " | 100.0 steps/s ETA 00:00:10"


def test_log_schedule_adds_log_spaced_evals_below_eval_every(tmp_path):
    train(tiny(tmp_path, "log", max_steps=30, eval_every=20, eval_schedule="log"))
    train(tiny(tmp_path, "lin", max_steps=30, eval_every=20))
    evals = {run: sorted({s for s, n, _ in metric_rows(tmp_path, run) if n == "train/acc"}) for run in ("log", "lin")}
    assert evals == {"log": [0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 15, 18, 20, 30], "lin": [0, 20, 30]}
    with pytest.raises(ValueError, match="eval_schedule must be one of linear, log"):
        apply_overrides(tiny(tmp_path, "bad"), ["eval_schedule=sqrt"])


def test_checkpoints_follow_checkpoint_every_not_only_eval_steps(tmp_path):
    result = train(tiny(tmp_path, "ck", max_steps=100, eval_every=20, checkpoint_every=30, keep_checkpoints=0))
    kept = sorted(int(p.name.split("_")[1]) for p in (result.run_dir / "checkpoints").iterdir())
    assert kept == [0, 30, 60, 90, 100]
    con = duckdb.connect(str(store_path(tmp_path)), read_only=True)
    recorded = [s for (s,) in con.execute("SELECT step FROM checkpoints WHERE run_id = 'ck' ORDER BY step").fetchall()]
    evals = [s for (s,) in con.execute("SELECT DISTINCT step FROM metrics WHERE run_id = 'ck' ORDER BY step").fetchall()]
    (latest_step, latest_path), = con.execute("SELECT step, path FROM latest_checkpoints WHERE run_id = 'ck'").fetchall()
    con.close()
    assert recorded == kept and evals == [0, 20, 40, 60, 80, 100]
    assert latest_step == 100 and Path(latest_path).name == "step_100"
    # Resuming from a checkpoint between evaluations rewrites the same metrics (as if killed at 30).
    before = metric_rows(tmp_path, "ck")
    for step in (60, 90, 100):
        shutil.rmtree(result.run_dir / "checkpoints" / f"step_{step}")
    (result.run_dir / "latest").write_text("step_30")
    again = train(load_config("ck", home=str(tmp_path)), resume=True)
    assert again.final_step == 100 and metric_rows(tmp_path, "ck") == before


@pytest.mark.parametrize(("minutes", "kept"), [(0, [0, 12]), (1e-9, list(range(13)))])
def test_a_run_also_checkpoints_by_the_clock_between_scheduled_checkpoints(tmp_path, minutes, kept):
    """No scheduled checkpoint between 0 and 12; a clock rule of ~0 minutes is due after every step."""
    result = train(tiny(tmp_path, "clock", max_steps=12, eval_every=50, checkpoint_minutes=minutes,
                        keep_checkpoints=0))
    assert sorted(int(p.name.split("_")[1]) for p in (result.run_dir / "checkpoints").iterdir()) == kept


def test_the_directory_is_fsynced_after_each_atomic_rename(tmp_path, monkeypatch):
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        real_replace(src, dst)
        if os.path.basename(dst) == "latest" or os.path.basename(dst).startswith("step_"):
            events.append(("replace", os.path.dirname(os.path.abspath(dst))))

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            events.append(("fsync", path))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    result = train(tiny(tmp_path, "sync", max_steps=0))
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renames) == 2  # the checkpoint directory, then the latest pointer
    for i in renames:
        assert ("fsync", events[i][1]) in events[i + 1:], events
    assert {events[i][1] for i in renames} == {str(result.run_dir / "checkpoints"), str(result.run_dir)}


def test_resume_with_grokfast_ma_state_is_bit_exact(tmp_path):
    ma = {"grokfast": "ma", "grokfast_window": 7, "grokfast_lamb": 5.0, "max_steps": 60}
    whole = train(tiny(tmp_path, "ma-whole", **ma))
    part = train(tiny(tmp_path, "ma-part", **ma, checkpoint_every=5, keep_checkpoints=0))
    # Rewind to step 25 (between evaluations, the MA window half full), as if killed there.
    for ckpt in (part.run_dir / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 25:
            shutil.rmtree(ckpt)
    (part.run_dir / "latest").write_text("step_25")
    state = torch.load(part.run_dir / "checkpoints" / "step_25" / "state.pt", weights_only=False)
    assert state["grokfast"]["count"] == 7 and state["step"] == 25
    again = train(load_config("ma-part", home=str(tmp_path)), resume=True)
    assert again.final_step == 60
    assert metric_rows(tmp_path, "ma-part") == metric_rows(tmp_path, "ma-whole")
    a = load_model(whole.checkpoint_dir).state_dict()
    b = load_model(again.checkpoint_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(whole.checkpoint_dir / "state.pt", weights_only=False)["grokfast"]
    sb = torch.load(again.checkpoint_dir / "state.pt", weights_only=False)["grokfast"]
    assert sa.keys() == sb.keys() and (sa["count"], sa["next"]) == (sb["count"], sb["next"])
    assert all(torch.equal(sa[part][k], sb[part][k]) for part in ("window", "sum") for k in sa[part])


def test_masked_diffusion_defaults_to_the_count_estimator():
    assert TrainConfig().mdm_estimator == "count"


def test_metrics_are_mirrored_to_tensorboard_event_files(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home, result = reference
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    stored = {}
    for step, name, value in metric_rows(home, "ref", drop=()):
        stored.setdefault(name, []).append((step, value))
    assert set(events.Tags()["scalars"]) == set(stored)
    for name, points in stored.items():
        board = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in board] == [s for s, _ in points]
        assert [v for _, v in board] == pytest.approx([v for _, v in points], rel=1e-6)
