"""bench/composition_gpu.py, the published size on a lent GPU without Prefect: its runs are the
experiment's own (same names), stopped at the deadline as Ctrl-C would stop them, and the one Parquet
file it writes puts them in a store where `grokloop experiment composition --report-only` reports them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.experiments import run_experiment
from flows.experiments.composition import COMPOSITION_SIZES, composition_configs
from storage.runs import import_runs

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "composition_gpu.py"


def _script(*args, timeout=300):
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("batched", [False, True])
def test_runs_stopped_at_the_deadline_are_the_experiments_runs_and_its_page_reports_them(tmp_path, batched):
    """One process per run, or (--batched) per arm: its 2 seeds as one batched model."""
    seeds = 2 if batched else 1
    plan = tmp_path / "plan.json"
    _script("plan", plan, "--size", "quick", "--arms", "ar", "mdm", "--worlds", "two_hop", "--max-steps", 10**6,
            "--seeds", seeds)
    size = dataclasses.replace(COMPOSITION_SIZES["quick"], seeds=seeds)
    expected = [c.run_name for _, _, c in composition_configs(size, None, ("ar", "mdm"), worlds=["two_hop"])]
    assert [c["run_name"] for c in json.loads(plan.read_text())] == expected

    out = tmp_path / "runs.parquet"
    printed = _script("run", plan, "--minutes", 0.5, "--out", out, "--workdir", tmp_path / "work", "--device", "cpu",
                      *(["--batched"] if batched else []))
    assert f"{len(expected)} run(s) in 2 process(es)" in printed and f"wrote {len(expected)} run(s)" in printed
    table = pq.read_table(out).to_pylist()
    assert {r["run_id"] for r in table} == set(expected)
    assert {r["status"] for r in table} == {"stopped"}  # the deadline, not the cap of 10^6, ended them
    assert all(f"{name} " in printed and "stopped" in printed for name in expected)
    steps = {r["run_id"]: r["step"] for r in table if r["metric"] == "test_id/acc"}
    assert all(step > 0 for step in steps.values())

    home = tmp_path / "home"
    assert import_runs(str(home), out) == len(expected)
    report = run_experiment("composition", out_dir=tmp_path / "page", home=str(home), quick=True, seeds=seeds,
                            arms=["ar", "mdm"], report_only=True)
    rows = [r for r in report["table"] if r["setting"] == "two_hop"]
    assert [(r["run_id"], r["status"]) for r in rows] == [(name, "stopped") for name in expected]
    assert all(r["step"] == max(s for run, s in steps.items() if run == r["run_id"]) for r in rows)
