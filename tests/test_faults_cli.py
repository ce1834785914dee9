"""Issue 14, failure 6: an error a person can fix is one line naming the problem and the way
out, exit code 2; the traceback only with `grokloop --debug`."""

from __future__ import annotations

import errno
import subprocess
import sys

import duckdb
import pytest

from flows.cli_common import explain
from storage.store import StoreError


def grokloop(home, *args):
    env = {"GROKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(sys.path)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180)


@pytest.mark.parametrize("args", [
    ["ingest"],
    ["train", "family=modular", "max_steps=2", "eval_every=1"],
    ["dataset", "build", "--family", "modular"],
])
def test_a_home_under_a_regular_file_is_one_line(tmp_path, args):
    (tmp_path / "file").write_text("not a folder")
    result = grokloop(tmp_path / "file" / "home", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: not a directory") and "GROKLOOP_HOME" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_home_nobody_may_create_is_one_line(tmp_path):
    result = grokloop("/sys/grokloop-test-home", "ingest")  # /sys: not writable, even for root
    assert result.returncode == 2
    assert "/sys/grokloop-test-home" in result.stderr and "GROKLOOP_HOME" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = grokloop(tmp_path / "file" / "home", "--debug", "ingest")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "NotADirectoryError" in result.stderr


def test_a_full_disk_and_duckdb_io_errors_are_explained():
    try:
        with open("/dev/full", "wb") as full:  # a real ENOSPC
            full.write(b"x")
            full.flush()
    except OSError as err:
        disk_full = err
    assert disk_full.errno == errno.ENOSPC
    wrapped = StoreError("ingest failed")
    wrapped.__cause__ = disk_full
    assert explain(wrapped).startswith("disk full: ") and "free space" in explain(wrapped)
    io = duckdb.IOException('IO Error: Could not write file "store.duckdb": No space left on device')
    assert explain(io).startswith("disk full: IO Error: Could not write file")
    assert explain(KeyError("a bug")) is None  # a bug keeps its traceback
