"""The results pages' queries (docs/results/*.sql) on small stores whose answers are known: what a page
claims from them is what they compute, and they still bind to the store's views."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pyarrow as pa

from storage.query import run_sql
from storage.runs import record_run
from storage.store import connect

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _run(home, run_id: str, curves: dict[str, list[float]], status: str = "finished",
         config: str = '{"grok_threshold": 0.95}', t_mem: int | None = None, t_grok: int | None = None) -> None:
    row = {"run_id": run_id, "name": None, "objective": "mdm", "dataset_id": None,
           "config": config, "status": status, "parent_run_id": None, "t_mem": t_mem,
           "t_grok": t_grok, "grok_ratio": None, "grok_delay": None, "final_step": 20000}
    metrics = [(2500 * (i + 1), name, value) for name, curve in curves.items() for i, value in enumerate(curve)]
    assert record_run(home, row, metrics, final=True)


def test_the_late_falls_queries_on_a_run_whose_falls_are_known(home):
    connect().close()
    curves = {"test_id/cluster:x+y/acc": [0.5, 0.96, 0.97, 0.60, 0.98, 0.99, 0.90, 0.99],
              "test_id/cluster:x*y/acc": [0.4, 0.90, 0.96, 0.97, 0.97, 0.98, 0.99, 0.99],
              "test_id/cluster:x-y/acc": [0.1] * 8,
              "train/acc": [0.5, 0.99, 1.0, 0.90, 1.0, 1.0, 0.995, 0.98],
              "grad_norm": [1, 1, 1, 8, 1, 2, 4, 3]}
    _run(home, "clusters-balanced-long-s0", curves)
    _run(home, "clusters-balanced-betas0.90.95-nostop-s1-670a14b9", curves)  # grouped without seed and snapshot
    _run(home, "another-run-s0", curves)  # not one of the page's runs
    # at steps 2,500 ... 20,000, x+y and x*y together (their lowest): 0.4 0.90 0.96 0.60 0.97 0.98 0.90 0.99 --
    # at 95% from 7,500; after it they fall at 10,000 (to 0.60, train 0.90) and 17,500 (0.90, train 0.995)
    falls = run_sql((RESULTS / "clusters_falls.sql").read_text()).to_pylist()
    assert falls == [{"runs": runs, "n": 1, "evals": 6, "falls": 2, "below_80": 1, "falls_after_15000": 1,
                      "train_below_99_in_falls": "0.500 ± 0.000 (n=1)", "train_below_99_held": "0.250 ± 0.000 (n=1)",
                      "grad_norm_in_falls": "6.00 ± 0.00 (n=1)", "grad_norm_held": "1.50 ± 0.00 (n=1)"}
                     for runs in ("clusters-balanced-betas0.90.95-nostop", "clusters-balanced-long")]
    late = {r["cluster"]: r for r in run_sql((RESULTS / "clusters_late.sql").read_text()).to_pylist()}
    assert set(late) == {"x*y", "x+y", "x-y"} and late["x+y"]["runs"] == "clusters-balanced-long"
    assert (late["x+y"]["groks_at"], late["x+y"]["kept"], late["x+y"]["lowest_after"], late["x+y"]["at_20000"]) == \
        ("5000 ± 0 (n=1)", "0.714 ± 0.000 (n=1)", "0.600 ± 0.000 (n=1)", "0.990 ± 0.000 (n=1)")
    assert (late["x-y"]["reached_95"], late["x-y"]["groks_at"]) == (0, None)


def test_the_swapped_pairs_query_splits_test_rows_by_whether_b_op_a_was_trained_on(home):
    connect().close()
    rows = []
    for run_id, right_elsewhere in (("r0", 0), ("r1", 1)):
        rows += [(run_id, "train", "x+y", "1 + 2 =", True), (run_id, "train", "x+y", "5 + 6 =", True),
                 (run_id, "test_id", "x+y", "2 + 1 =", True),      # its swapped pair is a training row
                 (run_id, "test_id", "x+y", "6 + 5 =", True),
                 (run_id, "test_id", "x+y", "3 + 4 =", bool(right_elsewhere)),  # not
                 (run_id, "test_id", "x+y", "4 + 4 =", False)]
    answers = pa.table(dict(zip(["run_id", "split", "operation", "prompt", "correct"], zip(*rows, strict=True),
                                strict=True)))
    got = run_sql((RESULTS / "clusters_swapped_pairs.sql").read_text(), tables={"a": answers}).to_pylist()
    assert got == [
        {"operation": "x+y", "swapped_pair_in_train": False, "seeds": 2, "rows": 4, "test_acc": "0.250 ± 0.354"},
        {"operation": "x+y", "swapped_pair_in_train": True, "seeds": 2, "rows": 4, "test_acc": "1.000 ± 0.000"}]


def test_the_paired_query_sets_each_changed_run_beside_the_recipes_seed_on_its_snapshot(home):
    connect().close()
    steps = [0.5, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # train accuracy at 2,500 ... 20,000
    runs = {  # run id: (x-y test accuracy, train accuracy)
        "clusters-10pctk105-s0-db7ffdbc": ([0.1, 0.2, 0.5, 0.96, 0.7, 0.8, 0.9, 0.85], [*steps[:3], 0.9, *steps[4:]]),
        "clusters-10pctk105-grad_clip1.0-s0-db7ffdbc": ([0.1, 0.3, 0.6, 0.8, 0.9, 0.97, 0.98, 0.99], steps),
        "clusters-10pctk105-betas0.90.95-s0-db7ffdbc": ([0.1, 0.2, 0.96, 0.97, 0.5, 0.96, 0.97, 0.98], steps),
        "clusters-10pctk105-s1-db7ffdbc": ([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5], steps),
        "clusters-10pctk105-grad_clip1.0-s1-db7ffdbc": ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.6], steps),
        "clusters-15pctk157-grad_clip1.0-s0-6b62b5a0": ([0.1] * 8, steps),
        # the recipe's seed 1 on another snapshot (other rows): no pair for the clipped seed 1 above
        "clusters-10pctk105-betas0.90.95-s1-90e9e123": ([0.1] * 8, steps),
    }
    for run_id, (x_y, train) in runs.items():
        _run(home, run_id, {"test_id/cluster:x-y/acc": x_y, "train/acc": train})
    _run(home, "clusters-15pctk157-s0-6b62b5a0", {"test_id/cluster:x-y/acc": [0.1], "train/acc": [0.5]},
         status="running")  # its pair, still training: not a pair yet
    _run(home, "clusters-10pctk105-betas0.90.95-nostop-s0-db7ffdbc", {"test_id/cluster:x-y/acc": [0.99] * 8,
         "train/acc": steps})  # two settings in its name: not one setting changed
    got = run_sql((RESULTS / "clusters_paired.sql").read_text()).to_pylist()
    assert [(r["variant"], r["setting"], r["seed"]) for r in got] == [
        ("10pctk105", "betas0.90.95", "0"), ("10pctk105", "betas0.90.95", "changed - recipe (n=1)"),
        ("10pctk105", "grad_clip1.0", "0"), ("10pctk105", "grad_clip1.0", "1"),
        ("10pctk105", "grad_clip1.0", "changed - recipe (n=2)")]
    beta2, _, clip0, _, clip_paired = got
    assert (clip0["best_recipe"], clip0["best_changed"], clip0["groks_at_recipe"], clip0["groks_at_changed"]) == \
        ("0.960", "0.990", "10000", "15000")
    assert (clip0["end_recipe"], clip0["end_changed"], clip0["train_low_recipe"], clip0["train_low_changed"]) == \
        ("0.850 @ 20000", "0.990 @ 20000", "0.900", "0.990")
    # kept: the recipe's x-y at 95% in 1 of the 5 evaluations from 10,000 on; beta2 0.95's in 5 of 6 from 7,500
    assert (clip0["kept_recipe"], clip0["kept_changed"], beta2["kept_changed"], beta2["groks_at_changed"]) == \
        ("0.200", "1.000", "0.833", "7500")
    # best x-y: +0.03 (seed 0) and +0.20 (seed 1): mean 0.115, sample std 0.17 / sqrt(2)
    assert (clip_paired["best_changed"], clip_paired["groks_at_recipe"], clip_paired["groks_at_changed"]) == \
        ("+0.115 ± 0.120", "1/2 reach 95%", "1/2 reach 95%")


def test_the_late_query_windows_each_continued_clip_run(home):
    connect().close()
    late = [0.02, 0.03] + [0.04] * 6 + [0.05] * 11 + [0.97]  # steps 2,500 ... 50,000: 95% at the very end
    runs = {"clusters-1pctk10-grad_clip1.0-s0-4a134ab8": late,
            "clusters-1pctk10-grad_clip1.0-s1-4a134ab8": [0.01, 0.02, 0.06] + [0.03] * 17,
            "clusters-10pctk105-grad_clip1.0-s0-db7ffdbc": [0.5] * 8,  # at the grid's cap: not continued
            "clusters-1pctk10-s0-4a134ab8": [0.9] * 20}                 # continued, but without clipping
    for run_id, x_y in runs.items():
        _run(home, run_id, {"test_id/cluster:x-y/acc": x_y})
    got = run_sql((RESULTS / "clusters_clip" / "late.sql").read_text()).to_pylist()
    assert [(r["variant"], r["seed"]) for r in got] == [("1pctk10", "0"), ("1pctk10", "1"),
                                                        ("1pctk10", "mean ± std (n=2)")]
    seed0, seed1, summary = got
    assert (seed0["best_to_5000"], seed0["best_to_20000"], seed0["best_after_20000"], seed0["groks_at"], seed0["end"]) \
        == ("0.030", "0.040", "0.970", "50000", "0.970 @ 50000")
    assert (seed1["best_to_5000"], seed1["best_to_20000"], seed1["best_after_20000"], seed1["groks_at"]) == \
        ("0.020", "0.060", "0.030", None)
    # best after 20,000: 0.97 and 0.03, mean 0.5, sample std 0.94 / sqrt(2)
    assert (summary["best_after_20000"], summary["groks_at"], summary["end"]) == \
        ("0.500 ± 0.665", "1/2 reach 95%", "0.500 ± 0.665")


def test_the_programs_probe_query_reads_id_accuracy_from_t_mem_on(home):
    connect().close()
    def probe(run_id: str, tasks: int, t_mem: int | None, train: list[float], test_id: list[float]) -> None:
        config = json.dumps({"weight_decay": 0.1, "lr": 1e-3, "grokfast": "none", "seed": 0,
                             "family_params": {"train_per_program": tasks}})
        _run(home, run_id, {"train/acc": train, "test_id/acc": test_id, "test_ood/acc": [0.01] * len(train),
                            "weight_norm": [30.0 + i for i in range(len(train))]}, config=config, t_mem=t_mem)
    # memorised at the second evaluation (5,000), ID 0.40 there, best 0.45 after, ends at 0.41; train falls
    # back to 0.80 after T_mem and ends at 1.0
    probe("tpp20-wd0.1", 20, 5000, [0.5, 0.99, 0.80, 1.0], [0.30, 0.40, 0.45, 0.41])
    probe("tpp50-wd1", 50, None, [0.5, 0.6], [0.5, 0.55])  # never memorised
    probe("composition-x", 20, 2500, [1.0], [0.9])          # not a probe run
    got = run_sql((RESULTS / "composition_programs_probe" / "probe.sql").read_text()).to_pylist()
    assert [r["run_id"] for r in got] == ["tpp20-wd0.1", "tpp50-wd1"]
    mem, never = got
    assert (mem["t_mem"], mem["last_eval"], mem["x_t_mem"], mem["id_at_t_mem"], mem["id_best_after"]) == \
        (5000, 10000, 2.0, 0.40, 0.45)
    assert (mem["id_mean_from_t_mem"], mem["id_last"], mem["train_last"], mem["ood_best"]) == (0.42, 0.41, 1.0, 0.01)
    # the best's step; OOD is 0.01 at every evaluation, so its best is the first
    assert (mem["id_best_step"], mem["ood_best_step"]) == (7500, 2500)
    assert (mem["train_mean_from_t_mem"], mem["train_min_from_t_mem"]) == (0.93, 0.8)
    # ID 0.40, 0.45, 0.41 at 5,000, 7,500, 10,000: slope 0.01 per 5,000 steps = 2.0 points per 10,000
    assert mem["id_trend_per_10k"] == 2.0
    assert (mem["weight_norm_at_t_mem"], mem["weight_norm_last"]) == (31.0, 33.0)
    assert (never["tasks_per_program"], never["lr"], never["grokfast"], never["id_at_t_mem"], never["id_best_after"],
            never["id_last"]) == (50, 1e-3, "none", None, None, 0.55)
    assert (never["train_mean_from_t_mem"], never["weight_norm_at_t_mem"], never["weight_norm_last"]) == (None, None, 31.0)


def test_the_probe_spans_query_cuts_evaluations_after_t_mem_into_doublings(home):
    connect().close()
    # evaluations at 2,500 ... 20,000; memorised at 5,000, so the spans are 5,000 (1), 7,500 (1: 1.5 x),
    # 10,000-17,500 (2), 20,000 (3); ID rises exactly five points per doubling of the step count, so the
    # line reaches 95% nine doublings past 5,000: at 2,560,000
    test_id = [0.1] + [0.5 + 0.05 * math.log2(2500 * (i + 1) / 5000) for i in range(1, 8)]
    _run(home, "tpp200-wd0.1", {"train/acc": [0.5] + [1.0] * 7, "test_id/acc": test_id,
                                "test_ood/acc": [0.0, 0.1, 0.3, 0.0, 0.0, 0.0, 0.4, 0.2]}, t_mem=5000)
    _run(home, "tpp50-wd1", {"train/acc": [0.5, 0.6], "test_id/acc": [0.5, 0.55]})  # never memorised
    _run(home, "composition-x", {"train/acc": [1.0], "test_id/acc": [0.9]}, t_mem=2500)  # not a probe run
    # memorised at 2,500: one ID falls after it (no line to 95%), one rises too slowly to extrapolate
    _run(home, "tpp20-wd0.1", {"train/acc": [1.0] * 4, "test_id/acc": [0.4, 0.39, 0.38, 0.37]}, t_mem=2500)
    _run(home, "tpp50-wd0.1", {"train/acc": [1.0] * 4, "test_id/acc": [0.5, 0.501, 0.5016, 0.502]}, t_mem=2500)
    rows = run_sql((RESULTS / "composition_programs_probe" / "probe_spans.sql").read_text()).to_pylist()
    assert {(r["run_id"], r["id_95_extrapolated_at"]) for r in rows if r["run_id"] != "tpp200-wd0.1"} == \
        {("tpp20-wd0.1", None), ("tpp50-wd0.1", "> 1,000 M")}
    got = [r for r in rows if r["run_id"] == "tpp200-wd0.1"]
    assert [(r["run_id"], r["span"], r["first_step"], r["last_step"], r["evals"]) for r in got] == [
        ("tpp200-wd0.1", 1, 5000, 7500, 2), ("tpp200-wd0.1", 2, 10000, 17500, 4), ("tpp200-wd0.1", 3, 20000, 20000, 1)]
    assert [r["id_mean"] for r in got] == [round(100 * statistics.mean(test_id[a:b]), 1) for a, b in ((1, 3), (3, 7), (7, 8))]
    assert [r["ood_mean"] for r in got] == [20.0, 10.0, 20.0]
    assert {(r["id_points_per_doubling"], r["id_95_extrapolated_at"]) for r in got} == {(5.0, "2.6 M")}


def test_the_probe_seeds_query_reads_every_seed_over_the_doublings_all_of_them_completed(home):
    connect().close()
    def probe(run_id: str, seed: int, t_mem: int | None, test_id: list[float], test_ood: list[float],
              tasks: int = 200, grokfast: str = "none") -> None:
        config = json.dumps({"weight_decay": 0.1, "lr": 1e-3, "grokfast": grokfast, "seed": seed,
                             "family_params": {"train_per_program": tasks}})
        _run(home, run_id, {"train/acc": [1.0] * len(test_id), "test_id/acc": test_id, "test_ood/acc": test_ood},
             config=config, t_mem=t_mem)
    # evaluations at 2,500 ... 20,000. Seed 0 memorises at 5,000 and runs to 4 x T_mem, seed 1 at 2,500 and runs
    # to 4 x T_mem (3 doublings would need 40,000 and 20,000): both are read from T_mem to 4 x T_mem, seed 0 to
    # 17,500 (its 0.99 / 0.9 at 20,000 left out), seed 1 to 7,500. ID rises 2 and 4 points per doubling.
    steps = [2500 * (i + 1) for i in range(8)]
    id0 = [0.1] + [0.5 + 0.02 * math.log2(s / 5000) for s in steps[1:7]] + [0.99]
    probe("tpp200-wd0.1", 0, 5000, id0, [0.0] + [0.1] * 6 + [0.9])
    id1 = [0.3 + 0.04 * math.log2(s / 2500) for s in steps[:4]]
    probe("tpp200-wd0.1-s1", 1, 2500, id1, [0.0, 0.2, 0.1, 0.5])
    probe("tpp200-wd0.1-short", 0, 5000, id0[:4], [0.0] * 4)         # seed 0 again, shorter: counted once
    probe("tpp20-wd0.1", 0, 2500, [0.4] * 8, [0.0] * 8, tasks=20)     # a setting with one seed
    probe("tpp20-wd0.1-s1", 1, None, [0.2] * 8, [0.0] * 8, tasks=20)  # ... the other never memorised
    # the same world and seeds with the Grokfast-EMA filter: a setting of its own, read over its own window
    probe("tpp200-wd0.1-ema", 0, 2500, [0.9] * 8, [0.2] * 8, grokfast="ema")
    probe("tpp200-wd0.1-ema-s2", 2, 5000, [0.1] + [0.7] * 7, [0.4] * 8, grokfast="ema")
    got = run_sql((RESULTS / "composition_programs_probe" / "probe_seeds.sql").read_text()).to_pylist()
    assert [(r["grokfast"], r["n"], r["seeds"], r["window"]) for r in got] == \
        [("none", 2, "0,1", "T_mem to 4 x T_mem"), ("ema", 2, "0,2", "T_mem to 4 x T_mem")]
    assert (got[1]["id_mean"], got[1]["ood_mean"]) == ("80.0 ± 14.1", "30.0 ± 14.1")
    row = got[0]
    assert (row["tasks_per_program"], row["n"], row["seeds"], row["window"]) == (200, 2, "0,1", "T_mem to 4 x T_mem")
    assert row["t_mem"] == "3750 ± 1768"
    means = [statistics.mean(id0[1:7]), statistics.mean(id1[:3])]
    assert row["id_mean"] == f"{100 * statistics.mean(means):.1f} ± {100 * statistics.stdev(means):.1f}"
    assert row["id_points_per_doubling"] == f"3.00 ± {math.sqrt(2):.2f}"
    bests = [id0[6], id1[2]]
    assert row["id_best"] == f"{100 * statistics.mean(bests):.1f} ± {100 * statistics.stdev(bests):.1f}"
    assert (row["ood_mean"], row["ood_best"]) == ("10.0 ± 0.0", "15.0 ± 7.1")


def test_the_probe_ema_query_sets_each_filtered_run_beside_its_twin_to_the_step_every_filtered_run_reached(home):
    connect().close()
    def probe(run_id: str, seed: int, grokfast: str, test_id: list[float], test_ood: list[float] | None = None) -> None:
        config = json.dumps({"weight_decay": 0.1, "lr": 1e-3, "grokfast": grokfast, "seed": seed,
                             "family_params": {"train_per_program": 200}})
        _run(home, run_id, {"test_id/acc": test_id, "test_ood/acc": test_ood or [0.1] * len(test_id)}, config=config)
    # evaluations at 2,500, 5,000, ...: seed 0's filtered run reaches 10,000, seed 1's 7,500, so both pairs are
    # read to 7,500 (2,500 in the span 2,000-3,999; 5,000 and 7,500 in 4,000-7,999); seed 0's twin is the
    # longer of its two unfiltered runs; a filtered seed 2 with no twin is left out. Seed 0 gains 10 points
    # at every step, seed 1 loses 2.
    probe("tpp200-wd0.1-long", 0, "none", [0.5, 0.6, 0.7, 0.8, 0.8], [0.1, 0.1, 0.1, 0.1, 0.1])
    probe("tpp200-wd0.1", 0, "none", [0.0, 0.0])
    probe("tpp200-wd0.1-ema", 0, "ema", [0.6, 0.7, 0.8, 0.99], [0.1, 0.2, 0.3, 0.9])
    probe("tpp200-wd0.1-s1", 1, "none", [0.4, 0.5, 0.6, 0.7])
    probe("tpp200-wd0.1-ema-s1", 1, "ema", [0.38, 0.48, 0.58])
    probe("tpp200-wd0.1-ema-s2", 2, "ema", [0.9] * 4)
    got = run_sql((RESULTS / "composition_programs_probe" / "probe_ema.sql").read_text()).to_pylist()
    assert [(r["steps"], r["seed"], r["n"]) for r in got] == [
        ("2,500-2,500", "0", 1), ("2,500-2,500", "1", 1), ("2,500-2,500", "mean ± std", 2),
        ("5,000-7,500", "0", 1), ("5,000-7,500", "1", 1), ("5,000-7,500", "mean ± std", 2)]
    assert [r["id_gain"] for r in got] == ["+10.0", "-2.0", f"+4.0 ± {12 / math.sqrt(2):.1f}"] * 2
    # 5,000-7,500: seed 0 0.6, 0.7 -> 65 and 0.7, 0.8 -> 75; seed 1 55 and 53
    assert [(r["id_none"], r["id_ema"]) for r in got[3:]] == [("65.0", "75.0"), ("55.0", "53.0"), ("60.0 ± 7.1", "64.0 ± 15.6")]
    assert [r["ood_gain"] for r in got] == ["+0.0", "+0.0", "+0.0 ± 0.0", "+15.0", "+0.0", "+7.5 ± 10.6"]


def test_the_programs_20_query_summarises_each_window_and_a_run_that_never_memorised(home):
    """composition_programs_20/after_t_mem.sql: per window and arm, ID at T_mem, its mean and best from T_mem
    on, ID and OOD at the window's end, best OOD, all to its end: the grid's cap (20,000), then 10 x each
    run's T_mem (a run with none: its whole run, and — from T_mem); runs of another world are not counted."""
    connect().close()
    ar0 = {"test_id/acc": [0.1, 0.3, 0.4, 0.35, 0.3, 0.3, 0.3, 0.2],  # at steps 2,500 ... 20,000; T_mem 5,000
           "test_ood/acc": [0.0, 0.01, 0.02, 0.01, 0.0, 0.0, 0.0, 0.01]}
    _run(home, "composition-programs-canonical-20-ar-s0-aa", ar0, t_mem=5000)
    _run(home, "composition-programs-canonical-20-ar-s1-bb", {"test_id/acc": [0.5] * 8, "test_ood/acc": [0.03] * 8},
         t_mem=2500)
    # continued past the grid's cap (22,500: 90% ID and OOD), which its window leaves out, to 10 x T_mem (25,000)
    _run(home, "composition-programs-canonical-20-mdm-s0-cc",
         {"test_id/acc": [0.2] * 8 + [0.9, 0.4], "test_ood/acc": [0.05] * 8 + [0.9, 0.1]}, t_mem=2500)
    _run(home, "composition-programs-canonical-20-ar-shared-s0-ee", {"test_id/acc": [0.3] * 8, "test_ood/acc": [0.0] * 8},
         t_mem=2500)  # an arm whose name has a dash
    # never memorised: its second window is its whole run (to 20,000, the last metric step here)
    _run(home, "composition-programs-canonical-20-mdm-full-s0-ff",
         {"test_id/acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.65], "test_ood/acc": [0.0, 0.02, 0.08, 0.05] + [0.06] * 4})
    _run(home, "composition-programs-canonical-ar-s0-dd", {"test_id/acc": [0.9] * 8, "test_ood/acc": [0.9] * 8},
         t_mem=2500)  # another world
    got = run_sql((RESULTS / "composition_programs_20" / "after_t_mem.sql").read_text()).to_pylist()
    # AR: ID at T_mem 30% and 50%; from T_mem on, seed 0's mean is 2.15 / 7 = 30.7%, its best 40%
    ar = {"arm": "ar", "n": 2, "memorised": "2/2", "t_mem": "3750 ± 1768", "id_at_t_mem": "40.0 ± 14.1", "id_mean_after": "40.4 ± 13.6",
          "id_best_after": "45.0 ± 7.1", "ood_best": "2.5 ± 0.7"}
    mdm = {"arm": "mdm", "n": 1, "memorised": "1/1", "t_mem": "2500 ± 0", "id_at_t_mem": "20.0 ± 0.0"}
    shared = {"arm": "ar-shared", "n": 1, "memorised": "1/1", "t_mem": "2500 ± 0", "id_at_t_mem": "30.0 ± 0.0", "id_mean_after": "30.0 ± 0.0",
              "id_best_after": "30.0 ± 0.0", "ood_best": "0.0 ± 0.0"}
    full = {"arm": "mdm-full", "n": 1, "memorised": "0/1", "t_mem": "—", "id_at_t_mem": "—", "id_mean_after": "—",
            "id_best_after": "—", "id_end": "65.0 ± 0.0 (n=1)", "ood_end": "6.0 ± 0.0 (n=1)", "ood_best": "8.0 ± 0.0"}
    assert got == [
        {"to": "20,000", **ar, "id_end": "35.0 ± 21.2 (n=2)", "ood_end": "2.0 ± 1.4 (n=2)"},
        {"to": "20,000", **shared, "id_end": "30.0 ± 0.0 (n=1)", "ood_end": "0.0 ± 0.0 (n=1)"},
        {"to": "20,000", **mdm, "id_mean_after": "20.0 ± 0.0", "id_best_after": "20.0 ± 0.0",
         "id_end": "20.0 ± 0.0 (n=1)", "ood_end": "5.0 ± 0.0 (n=1)", "ood_best": "5.0 ± 0.0"},
        {"to": "20,000", **full},
        # AR's runs end at 20,000, short of 50,000 and 25,000: no value at the window's end
        {"to": "10 x T_mem", **ar, "id_end": "— (n=0)", "ood_end": "— (n=0)"},
        {"to": "10 x T_mem", **shared, "id_end": "— (n=0)", "ood_end": "— (n=0)"},
        # mdm to 25,000: ID mean (8 x 0.2 + 0.9 + 0.4) / 10
        {"to": "10 x T_mem", **mdm, "id_mean_after": "29.0 ± 0.0", "id_best_after": "90.0 ± 0.0",
         "id_end": "40.0 ± 0.0 (n=1)", "ood_end": "10.0 ± 0.0 (n=1)", "ood_best": "90.0 ± 0.0"},
        {"to": "10 x T_mem", **full}]


def test_the_t_grok_held_query_tells_a_first_crossing_that_held_from_one_that_fell_back(home):
    connect().close()
    _run(home, "composition-two_hop-ar-s0-aaaaaaaa", {"test_id/acc": [0.5, 0.96, 0.97, 0.98]})  # held from T_grok
    _run(home, "composition-two_hop-ar-s1-bbbbbbbb", {"test_id/acc": [0.5, 0.6, 0.96, 0.90, 0.99]})  # a dip, then held
    _run(home, "composition-two_hop-ar-s2-cccccccc", {"test_id/acc": [0.1] * 4})  # never
    _run(home, "composition-two_hop-ar-s3-dddddddd", {"test_id/acc": [0.2] * 4})  # never: two runs alike, two of n
    _run(home, "clusters-balanced-s0-deadbeef", {"test_id/acc": [0.5, 0.96, 0.93]})  # one evaluation at 95%
    _run(home, "tpp200-wd0.1", {"test_id/acc": [0.5] * 3})  # no run of its group reached 95%: no row
    got = run_sql((RESULTS / "t_grok_held.sql").read_text()).to_pylist()
    # steps 2,500, 5,000, ...: the two_hop seeds reach 95% at 5,000 and 7,500 and hold from 5,000 and 12,500
    assert got == [
        {"runs": "clusters-balanced-deadbeef", "n": 1, "reached": 1, "held": 0, "t_grok": "5000 ± 0",
         "held_after_t_grok": None, "kept": "0.500 ± 0.000", "lowest_after": "0.930 ± 0.000", "evals_after": "2-2"},
        {"runs": "composition-two_hop-ar", "n": 4, "reached": 2, "held": 2, "t_grok": "6250 ± 1768",
         "held_after_t_grok": "2500 ± 3536 (n=2)", "kept": "0.833 ± 0.236", "lowest_after": "0.930 ± 0.042",
         "evals_after": "3-3"}]


def test_the_patience_rule_query_stops_a_curve_where_each_rule_is_met(home):
    connect().close()
    # steps 2,500, 5,000, ...: 95% first at 5,000, below at 7,500, then at it from 10,000 until 15,000
    _run(home, "clusters-balanced-s0-aaaaaaaa", {"test_id/acc": [0.5, 0.96, 0.90, 0.97, 0.98, 0.60]},
         config='{"patience": 0}')
    _run(home, "clusters-balanced-s1-aaaaaaaa", {"test_id/acc": [0.1] * 3})  # never reached: no row
    _run(home, "composition-two_hop-ar-s0-bbbbbbbb", {"test_id/acc": [0.5, 0.96, 0.97]})  # not a balanced run
    got = run_sql((RESULTS / "clusters_held" / "patience_rule.sql").read_text()).to_pylist()
    # from T_grok: the first evaluation 500 steps on (7,500, at 90%); held: the first 500 steps into a
    # run of evaluations at 95% (10,000 starts one, 12,500 is 2,500 into it); after each, the 60% at 15,000
    assert got == [{"run_id": "clusters-balanced-s0-aaaaaaaa", "trained_patience": 0, "ran_to": 20000, "t_grok": 5000,
                    "first_crossing_stop": 7500, "first_crossing_test_id": 0.9, "first_crossing_at_95": False,
                    "first_crossing_lowest_after": 0.6, "held_stop": 12500, "held_test_id": 0.98,
                    "held_lowest_after": 0.6}]


def test_the_beta2_query_reads_the_stopped_run_and_its_no_stop_copy_seed_for_seed(home):
    connect().close()
    recipe = '{"betas": [0.9, 0.98], "seed": 0, "max_steps": %d, "patience": %d}'
    # the recipe's run, stopped by the rule at 7,500 of a 15,000 cap; its copy with no stop, trained on to
    # 20,000, falls once before the cap and to 10% after it (outside the window: not counted)
    _run(home, "clusters-balanced-s0-670a14b9", {"test_id/acc": [0.5, 0.96, 0.97], "train/acc": [0.99, 1, 1]},
         config=recipe % (15000, 500), t_mem=2500, t_grok=5000)
    _run(home, "clusters-balanced-nostop-s0-670a14b9",
         {"test_id/acc": [0.5, 0.96, 0.97, 0.70, 0.97, 0.98, 0.10, 0.10], "train/acc": [0.99, 1, 1, 0.5, 1, 1, 0, 0]},
         config=recipe % (20000, 0), t_mem=2500, t_grok=5000)
    # beta2 0.999: never holds, runs to the cap, and collapses to chance at 10,000
    _run(home, "clusters-balanced-betas0.90.999-s0-670a14b9",
         {"test_id/acc": [0.5, 0.96, 0.5, 0.03, 0.03, 0.1], "train/acc": [0.99, 1, 0.9, 0.05, 0, 0.2]},
         config=(recipe % (15000, 500)).replace("0.98", "0.999"), t_mem=2500, t_grok=5000)
    _run(home, "clusters-k1-s0-670a14b9", {"test_id/acc": [0.5] * 3}, config=recipe % (15000, 0))  # not balanced
    got = run_sql((RESULTS / "clusters_beta2" / "beta2.sql").read_text()).to_pylist()
    assert [tuple(r.values()) for r in got] == [
        ("0.980", "0", "2500", "5000", "0.970 @ 7500", "12500", "—", "0.500", "0.700", "1", "0.980 @ 15000"),
        ("0.980", "all (n=1)", "2500 ± 0", "5000 ± 0 (n=1)", "1/1 held", "1/1 held", "0/1 collapsed",
         "0.500 ± 0.000", "0.700 ± 0.000 (n=1)", "1.0 ± 0.0 (n=1)", "0.980 ± 0.000"),
        ("0.999", "0", "2500", "5000", "0.100 @ 15000 (cap)", "—", "10000", "0.000", "0.030", "4", "0.100 @ 15000"),
        ("0.999", "all (n=1)", "2500 ± 0", "5000 ± 0 (n=1)", "0/1 held", "0/1 held", "1/1 collapsed",
         "0.000 ± 0.000", "0.030 ± 0.000 (n=1)", "4.0 ± 0.0 (n=1)", "0.100 ± 0.000")]
