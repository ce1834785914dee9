"""`grokloop experiment composition --size published` on a lent GPU that has torch but not the
orchestration stack (no Prefect, no pip registry), in a fixed window of wall time.

    python bench/composition_gpu.py plan .gpu/plan.json --arms ar mdm --worlds two_hop-phi18   # here
    python bench/composition_gpu.py run .gpu/plan.json --minutes 8 --out $OUT/runs.parquet  # on the GPU
    python bench/composition_gpu.py run .gpu/plan.json --minutes 8 --out $OUT/runs.parquet --batched
    grokloop import-runs runs.parquet                                                          # here again
    grokloop experiment composition --size published --arms ar,mdm --worlds two_hop-phi18 --report-only

`plan` writes the experiment's own TrainConfigs (the same run names as the experiment's, so the
page reports them). `run` trains every planned run at once, one process each on the one GPU (each
process launch-bound, side by side they keep the GPU busy), or with `--batched` one process per
arm and world whose seeds train as one batched model (diffusion/batched.py), each process with its
own store (one DuckDB writer each); at the deadline it stops them as Ctrl-C would (SIGTERM:
checkpoint, recorded `stopped`), then writes every run and metric to one Parquet file (`grokloop
import-runs` reads it) and prints steps/s and the last evaluation of each run. The checkpoints stay
on that machine. Steps/s per run are its share of the GPU: runs side by side do not add up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion.config import config_from_dict, config_to_json  # noqa: E402


def plan(path: Path, size: str, arms: list[str], worlds: list[str] | None, seeds: int | None,
         max_steps: int | None) -> None:
    from flows.experiments import experiment_size
    from flows.experiments.composition import composition_configs

    # the cap is not part of a run's name: the experiment continues these runs past it
    chosen = experiment_size("composition", size, seeds, max_steps)
    cfgs = [cfg for _, _, cfg in composition_configs(chosen, None, tuple(arms), worlds=worlds)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([json.loads(config_to_json(cfg)) for cfg in cfgs], indent=1))
    print(f"planned {len(cfgs)} run(s) in {path}: " + ", ".join(cfg.run_name for cfg in cfgs))


def train_group(config_file: Path) -> None:
    """The runs in `config_file`: one alone, or several seeds as one batched model."""
    from diffusion.batched import train_batched
    from diffusion.train import train

    cfgs = [config_from_dict(c) for c in json.loads(config_file.read_text())]
    if len(cfgs) == 1:
        train(cfgs[0])
    else:
        train_batched(cfgs)


def groups(cfgs: list, batched: bool) -> list[list[int]]:
    """Which planned runs train in one process: each alone, or (batched) those that differ only in
    what differs between the seeds of one arm and world."""
    from diffusion.batched import PER_RUN

    if not batched:
        return [[i] for i in range(len(cfgs))]
    by_setting: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        setting = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PER_RUN}
        by_setting.setdefault(json.dumps(setting, sort_keys=True, default=str), []).append(i)
    return list(by_setting.values())


def run(plan_file: Path, minutes: float, out: Path, workdir: Path, device: str, batched: bool = False) -> None:
    planned = [config_from_dict(c) for c in json.loads(plan_file.read_text())]
    workdir.mkdir(parents=True, exist_ok=True)
    procs, cfgs = [], []
    for g, members in enumerate(groups(planned, batched)):
        # its own store; checkpoints only when stopped (each is weights + Adam: ~0.7 GB at 8 x 768)
        mine = [dataclasses.replace(planned[i], home=str(workdir / f"home{g}"), device=device, progress=False,
                                    checkpoint_every=10**9, checkpoint_minutes=0, keep_checkpoints=1)
                for i in members]
        config_file = workdir / f"config{g}.json"
        config_file.write_text(json.dumps([json.loads(config_to_json(cfg)) for cfg in mine]))
        log = open(workdir / f"run{g}.log", "w")  # noqa: SIM115 (the child's, for its life)
        procs.append((mine[0], subprocess.Popen([sys.executable, __file__, "group", str(config_file)],
                                                stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})))
        cfgs += mine
    print(f"{len(cfgs)} run(s) in {len(procs)} process(es)", flush=True)
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline and any(p.poll() is None for _, p in procs):
        time.sleep(2)
    for _, p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # the loop checkpoints and records the run stopped
    for cfg, p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            print(f"{cfg.run_name}: did not stop within 120 s of SIGTERM; killed")
    export(cfgs, workdir, out)


def export(cfgs, workdir: Path, out: Path) -> None:
    from storage.runs import export_runs

    tables = []
    for i, cfg in enumerate(cfgs):
        part = workdir / f"runs{i}.parquet"
        try:
            export_runs(cfg.home, [cfg.run_name], part)
        except Exception as e:  # a run that never recorded: say so, export the others
            print(f"{cfg.run_name}: not exported ({e}); its process's log is in {workdir}")
            continue
        tables.append(pq.read_table(part))
    if not tables:
        raise SystemExit("no run recorded anything")
    table = pa.concat_tables(tables)
    pq.write_table(table, out)
    print(f"wrote {len(tables)} run(s) to {out}")
    summary(table)


def summary(table: pa.Table) -> None:
    """Per run: status, last step evaluated, steps/s, and the last evaluation's accuracies."""
    rows = table.to_pylist()
    names = ("train_inferred/acc", "test_id/acc", "test_ood/acc", "step_time")
    print(f"{'run':60} {'status':8} {'step':>7} {'steps/s':>8} {'t_mem':>7} {'t_grok':>7} "
          f"{'train':>6} {'ID':>6} {'OOD':>6}")
    for run_id in dict.fromkeys(r["run_id"] for r in rows):
        mine = [r for r in rows if r["run_id"] == run_id]
        last = {}
        for r in mine:
            if r["metric"] in names and r["step"] >= last.get(r["metric"], (-1, 0))[0]:
                last[r["metric"]] = (r["step"], r["value"])
        head = mine[0]
        step = last.get("test_id/acc", (0, None))[0]
        rate = 1 / last["step_time"][1] if last.get("step_time") else float("nan")
        acc = [f"{last[n][1]:.3f}" if n in last else "-" for n in names[:3]]
        print(f"{run_id:60} {head['status']:8} {step:>7} {rate:>8.1f} {head['t_mem']!s:>7} {head['t_grok']!s:>7} "
              f"{acc[0]:>6} {acc[1]:>6} {acc[2]:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="write the experiment's TrainConfigs (needs the full install)")
    p.add_argument("path", type=Path)
    p.add_argument("--size", default="published")
    p.add_argument("--arms", nargs="+", default=["ar", "mdm"])
    p.add_argument("--worlds", nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=None, help="fewer seeds than the size's")
    p.add_argument("--max-steps", type=int, default=None, help="another step cap than the size's")
    r = sub.add_parser("run", help="train the planned runs side by side until done or --minutes")
    r.add_argument("plan_file", type=Path)
    r.add_argument("--minutes", type=float, required=True)
    r.add_argument("--out", type=Path, required=True, help="the Parquet file of every run and metric")
    r.add_argument("--workdir", type=Path, default=Path("/tmp/composition_gpu"))
    r.add_argument("--device", default="cuda")
    r.add_argument("--batched", action="store_true", help="one process per arm and world: its seeds batched")
    o = sub.add_parser("group", help=argparse.SUPPRESS)
    o.add_argument("config_file", type=Path)
    args = parser.parse_args()
    if args.command == "plan":
        plan(args.path, args.size, args.arms, args.worlds, args.seeds, args.max_steps)
    elif args.command == "run":
        run(args.plan_file, args.minutes, args.out, args.workdir, args.device, args.batched)
    else:
        train_group(args.config_file)


if __name__ == "__main__":
    main()
