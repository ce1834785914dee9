"""Issue 14, failure 5: a logging process that gets SIGTERM or SIGINT publishes its buffer; a
final flush that fails exits non-zero with one line; no `.tmp` litter after a failed or killed
write (stale ones are removed by ingest and `grokloop status`)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from storage.ingest import ingest_spool
from storage.spool import (
    TMP_SUFFIX,
    published_segments,
    read_records,
    remove_stale_tmp,
    write_segment,
)
from storage.store import connect

LOGGING = textwrap.dedent("""
    import signal, sys, time
    from agents.sdk import TrajectoryLogger
    spool, mode = sys.argv[1], sys.argv[2]
    if mode == "own-handler":  # a program's own handler, set before the logger: still called
        signal.signal(signal.SIGTERM, lambda *_: (print("OWN HANDLER", flush=True), sys.exit(7)))
    log = TrajectoryLogger("sig", "1", spool=spool, flush_bytes=1 << 30, flush_seconds=3600)
    t = log.trajectory({"family": "modular", "task_id": "m/1"})
    for i in range(500):
        t.step(tool_name="add", arguments={"i": i}, result=i)
    print("READY", flush=True)
    if mode == "busy":  # the signal lands while steps are being appended
        while True:
            t.step(tool_name="add", result=0)
    time.sleep(60)
""")


def logged_steps(spool):
    return sum(1 for seg in published_segments(spool) for r in read_records(seg) if r["type"] == "step")


@pytest.mark.parametrize(("signum", "mode", "status"), [
    (signal.SIGTERM, "sleep", -signal.SIGTERM),   # the default action still ends the process
    (signal.SIGINT, "sleep", -signal.SIGINT),     # KeyboardInterrupt, as without the SDK
    (signal.SIGTERM, "own-handler", 7),           # the program's handler still runs
    (signal.SIGTERM, "busy", -signal.SIGTERM),    # mid-append: flushed once the append is done
])
def test_a_signal_publishes_the_buffer_then_does_what_it_did_before(tmp_path, signum, mode, status):
    spool = tmp_path / "spool"
    child = subprocess.Popen([sys.executable, "-c", LOGGING, str(spool), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "READY"
    time.sleep(0.2)
    child.send_signal(signum)
    out, err = child.communicate(timeout=30)
    assert child.returncode == status, err
    assert ("OWN HANDLER" in out) == (mode == "own-handler")
    n = logged_steps(spool)
    assert n >= 500 if mode == "busy" else n == 500
    assert not list(spool.glob(f"*{TMP_SUFFIX}"))
    con = connect(tmp_path / "store.duckdb")
    assert ingest_spool(con, spool).steps == n  # and all of it lands


FAILING_FLUSH = textwrap.dedent("""
    import sys
    from agents.sdk import TrajectoryLogger
    log = TrajectoryLogger("a", "1", spool=sys.argv[1], flush_bytes=1 << 30)
    with log.trajectory({"family": "modular", "task_id": "m/1"}) as t:
        t.step(result=1)
""")


def test_a_failed_final_flush_exits_non_zero_with_one_line(tmp_path):
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool should be")
    result = subprocess.run([sys.executable, "-c", FAILING_FLUSH, str(blocker)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not publish" in lines[0] and "they are lost" in lines[0]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_a_failed_write_leaves_no_tmp_file(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_segment(tmp_path, b"x" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from storage import spool
    def stall(fd):
        print("WRITING", flush=True)
        import time; time.sleep(60)
    os.fsync = stall
    spool.write_segment(spool.Path(sys.argv[1]), b"x" * 100_000)
""")


def test_a_killed_write_leaves_a_tmp_that_ingest_and_status_remove_once_stale(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(spool)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "WRITING"
    (tmp,) = spool.glob(f"*{TMP_SUFFIX}")
    assert remove_stale_tmp(spool, max_age=0) == []   # its writer is alive: not litter yet
    child.kill()
    child.wait()
    assert remove_stale_tmp(spool) == []              # dead, but young: left for a while
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    con = connect(tmp_path / "store.duckdb")
    ingest_spool(con, spool)
    assert not tmp.exists()
    # and `grokloop status` does the same
    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path))
    tmp.write_bytes(b"half")
    os.utime(tmp, (old, old))
    con.close()
    result = subprocess.run([sys.executable, "-m", "flows.cli", "status"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "removed 1 stale temp file" in result.stdout.replace("\n", " ")
    assert not tmp.exists()


def test_a_failed_background_write_is_raised_by_the_next_flush(tmp_path):
    from agents.sdk import TrajectoryLogger

    blocker = tmp_path / "spool"
    blocker.write_text("a file where the spool should be")
    log = TrajectoryLogger("a", "1", spool=blocker, flush_bytes=1, flush_seconds=60)
    t = log.trajectory({"family": "modular", "task_id": "m/1"})  # a full buffer: written by a thread
    with pytest.raises(OSError):
        log.flush()
    t.step(result=1)
    with pytest.raises(OSError):
        log.close()
    assert blocker.read_text() == "a file where the spool should be"
