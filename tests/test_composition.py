"""The composition experiment's plan and its continuation: an interrupted grid, run again, continues
every unfinished run from its checkpoint and leaves finished runs alone."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.experiments import HAND_WRITTEN, run_experiment
from flows.experiments.composition import (
    COMPOSITION_SIZES,
    DEFAULT_ARMS,
    composition,
    composition_configs,
    composition_notes,
    n_eval_range,
    ood_milestones,
    ood_over_run,
)

ARGS = {"quick": True, "max_steps": 200, "arms": ["ar"]}


def test_arms_have_equal_parameters_and_the_published_size_is_wang_et_al():
    from agents.tasks import get_family
    from diffusion.model import parameter_count

    plan = composition_configs(COMPOSITION_SIZES["full"], home=None)
    two_hop = {arm: cfg for name, arm, cfg in plan if name == "two_hop" and cfg.seed == 0}
    tok = get_family("two_hop", **two_hop["ar"].family_params).tokenizer()
    counts = {arm: parameter_count(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len, hidden_size=c.hidden_size,
                                   num_layers=c.num_layers, num_heads=c.num_heads, share_layers=c.share_layers)
              for arm, c in two_hop.items()}
    assert counts["ar"] == counts["mdm"] == counts["mdm-full"]
    assert abs(counts["ar-shared"] - counts["ar"]) / counts["ar"] < 0.06 and two_hop["ar-shared"].share_layers
    # the one-layer control: the shared arm's block applied once (same parameters and width)
    assert counts["ar-1layer"] == counts["ar-shared"] and two_hop["ar-1layer"].num_layers == 1
    assert two_hop["ar-1layer"].hidden_size == two_hop["ar-shared"].hidden_size > two_hop["ar"].hidden_size
    assert {c.mdm_estimator for c in two_hop.values() if c.objective == "mdm"} == {"count"}
    # off the grid unless named: ar-wide, the shared arm's width in unshared layers (4x its parameters)
    assert "ar-wide" not in two_hop
    wide = composition_configs(COMPOSITION_SIZES["full"], home=None, arms=("ar-wide",), worlds=("two_hop",))[0][2]
    assert (wide.hidden_size, wide.num_layers, wide.share_layers) == (two_hop["ar-shared"].hidden_size, 4, False)
    assert wide.run_name.startswith("composition-two_hop-ar-wide-s0-")
    # and ar-full, mdm-full's control: AR's model with its loss on every token
    full = composition_configs(COMPOSITION_SIZES["full"], home=None, arms=("ar-full",), worlds=("two_hop",))[0][2]
    assert "ar-full" not in two_hop and full.full_sequence and full.objective == "ar"
    assert (full.hidden_size, full.num_layers, full.share_layers) == (two_hop["ar"].hidden_size, 4, False)
    assert len({(c.max_steps, c.batch_size, c.lr, c.weight_decay) for c in two_hop.values()}) == 1
    assert {cfg.seed for _, _, cfg in plan} == {0, 1, 2}
    # the CPU world has >= 500 OOD items and phi x |all atomic facts| inferred train facts
    fam = get_family("two_hop", **two_hop["ar"].family_params)
    splits = fam.splits()
    assert len(splits["test_ood"]) >= 500
    programs = next(cfg for name, _, cfg in plan if name == "programs")
    assert len(get_family("programs", **programs.family_params).splits()["test_ood"]) >= 500
    assert sum(t.difficulty == 2 for t in splits["train"]) == round(fam.phi * fam.n_entities * fam.k)
    published = {cfg.family_params["phi"]: cfg for _, _, cfg in composition_configs(COMPOSITION_SIZES["published"],
                                                                                     home=None)}
    assert set(published) == {7.2, 18.0}
    world = published[18.0].family_params
    assert (world["n_entities"], world["n_relations"], world["relations_per_entity"]) == (2000, 200, 20)


def test_ood_over_the_run_is_read_at_fixed_steps_from_the_runs_that_reached_them():
    assert ood_milestones(60000, 1000) == [10000, 20000, 30000, 40000, 50000, 60000]
    assert ood_milestones(60, 20) == [20, 40, 60]  # every one an evaluation step
    assert ood_milestones(8000, 1000) == [2000, 4000, 6000, 8000]  # an even stride, none skipped unevenly
    assert ood_milestones(20000, 1000) == [4000, 8000, 12000, 16000, 20000]
    assert ood_milestones(2500, 1000) == [1000, 2000, 2500]  # a cap off the schedule is still evaluated
    # arms stopped at 3,000 beside one run on to 20,000: a column where all of them are
    assert ood_milestones(20000, 1000, ended=[3000, 3000, 20000]) == [3000, 4000, 8000, 12000, 16000, 20000]
    runs = [{"setting": "two_hop", "arm": "ar-shared", "ood": {20: 0.02, 40: 0.10, 60: 0.20}},
            {"setting": "two_hop", "arm": "ar-shared", "ood": {20: 0.04, 40: 0.06}},  # stopped before 60
            {"setting": "two_hop", "arm": "ar", "ood": {20: 0.03, 40: 0.03, 60: 0.03}}]
    shared, ar = ood_over_run(runs, [20, 40, 60])
    assert shared == {"setting": "two_hop", "arm": "ar-shared", "20": "0.030 ± 0.014 (n=2)",
                      "40": "0.080 ± 0.028 (n=2)", "60": "0.200 ± 0.000 (n=1)"}
    assert ar["60"] == "0.030 ± 0.000 (n=1)"


def test_the_summary_gives_the_range_of_rows_evaluated_over_seeds():
    # each seed's world has its own OOD split: the range, not the first seed's count
    assert n_eval_range(["1000/1000/741", "1000/1000/728", None, "1000/1000/668"]) == "1000/1000/668-741"
    assert n_eval_range([None, None]) is None


def test_the_stopping_rule_can_be_replaced_without_renaming_the_runs():
    """--patience 0 runs the same runs on past their rule (it is not part of a run's name, like the cap)."""
    size = COMPOSITION_SIZES["full"]
    default, to_the_cap = composition_configs(size, None), composition_configs(size, None, patience=0)
    assert [c.run_name for _, _, c in to_the_cap] == [c.run_name for _, _, c in default]
    assert {c.patience for _, _, c in default} == {5000} and {c.patience for _, _, c in to_the_cap} == {0}
    assert [c.run_name for _, _, c in composition_configs(dataclasses.replace(size, eval_every=500), None)] \
        != [c.run_name for _, _, c in default]  # what a run is does rename it


def test_a_world_can_be_run_alone_under_the_same_run_names():
    size = COMPOSITION_SIZES["full"]
    everything = composition_configs(size, None, arms=["ar"])
    programs = composition_configs(size, None, arms=["ar"], worlds=["programs"])
    assert [c.run_name for _, _, c in programs] == [c.run_name for n, _, c in everything if n == "programs"]
    assert len(programs) == size.seeds
    with pytest.raises(ValueError, match=r"unknown world\(s\) \['two_hop-phi18'\] at this size; its worlds: "
                                         r"two_hop, programs, programs-canonical, "
                                         r"programs-canonical-20"):
        composition_configs(size, None, worlds=["two_hop-phi18"])
    published = composition_configs(COMPOSITION_SIZES["published"], None, arms=["ar"], worlds=["two_hop-phi18"])
    assert {c.family_params["phi"] for _, _, c in published} == {18.0}


def test_the_page_describes_the_arms_it_ran_and_no_others():
    size = COMPOSITION_SIZES["full"]
    wide = composition_notes(size, composition_configs(size, None, ["ar-wide"], worlds=["two_hop"]), ["ar-wide"],
                             ["two_hop"])
    assert "arms at equal data and steps (and parameters, but for `ar-wide`): `ar-wide` = AR with unshared " \
           "blocks at `ar-shared`'s width: ~4x the parameters, the same compute per step (4 layers of width 128)." \
           in wide
    assert not re.search(r"`(ar|mdm|mdm-full|ar-shared|ar-1layer)` =|programs", wide)
    grid = composition_notes(size, composition_configs(size, None), DEFAULT_ARMS)
    assert "arms at equal parameters, data and steps: `ar` = the autoregressive transformer (4 layers of width 64)" \
           in grid and "(one block of width 128 applied 4 times)" in grid and "`programs` = programs" in grid
    assert all(f"`{arm}` = " in grid for arm in DEFAULT_ARMS) and "`ar-wide` =" not in grid
    # how far the examples fix a programs training label, measured on each seed's world
    share, ceiling = re.search(r"`programs` \(2000 sampled train tasks per world, one world a seed\): "
                               r"(0\.\d+) ± 0\.\d+ \(n=3\) of the tasks have examples that more than one program "
                               r"fits, so .* exactly is (0\.\d+) ± ", grid).groups()
    assert 0 < float(share) < 1 and 1 - float(share) <= float(ceiling) < 1
    assert f"Training labels on `programs-canonical` (2000 sampled train tasks per world, one world a seed): " \
           f"{share} ± " in grid and "a function of the examples, so `train_exact` can reach 1" in grid


def test_a_bad_arm_or_size_is_named():
    with pytest.raises(ValueError, match=r"unknown arm\(s\) \['diffusion'\]"):
        composition_configs(COMPOSITION_SIZES["quick"], home=None, arms=["diffusion"])
    with pytest.raises(ValueError, match="has no size 'published'"):
        run_experiment("clusters", size="published")


def test_an_interrupted_grid_continues_each_run_from_its_checkpoint(tmp_path, monkeypatch, prefect_server):
    home = tmp_path / "home"
    plan = composition_configs(COMPOSITION_SIZES["quick"], str(home), arms=ARGS["arms"])
    first_run = plan[0][2].run_name
    code = ("from flows.experiments import run_experiment; "
            f"run_experiment('composition', quick=True, max_steps={ARGS['max_steps']}, arms={ARGS['arms']!r}, "
            f"out_dir={str(tmp_path / 'out')!r}, home={str(home)!r})")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = home / "runs" / first_run / "latest"
    deadline = time.time() + 300
    while not (latest.is_file() and latest.read_text() not in ("", "step_0")):  # a checkpoint past the start
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the trainer finishes its step, checkpoints, exits 143
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    saved = int(latest.read_text().removeprefix("step_"))
    assert 0 < saved < ARGS["max_steps"]
    assert not (home / "runs" / plan[1][2].run_name).exists()  # the grid stopped there

    import diffusion.train as train_module

    calls, real_train = [], train_module.train

    def spy(cfg, *, resume=False):
        run_dir = home / "runs" / cfg.run_name
        calls.append((cfg.run_name, resume, (run_dir / "latest").read_text() if resume else None))
        return real_train(cfg, resume=resume)

    monkeypatch.setattr(train_module, "train", spy)
    result = run_experiment("composition", out_dir=tmp_path / "out", home=str(home), **ARGS)
    assert calls == [(first_run, True, f"step_{saved}"), (plan[1][2].run_name, False, None)]
    assert all(r["status"] == "finished" and r["step"] == ARGS["max_steps"] for r in result["table"])
    assert {r["until"] for r in result["table"]} == {"rule, cap 200"}

    # run again with the rule off: every run is finished, nothing trains, nothing is rewritten; the page
    # is written again from the store, says how far the runs went and what ends them now, and what a
    # person wrote at its end is kept
    checkpoints = {p: p.stat().st_mtime_ns for p in home.glob("runs/*/checkpoints/*/*")}
    calls.clear()
    notes = f"{HAND_WRITTEN}\n\nRead with: chance is 1 in 40.\n"
    result["summary"].write_text(result["summary"].read_text() + "\n" + notes)
    again = run_experiment("composition", out_dir=tmp_path / "out", home=str(home), patience=0, **ARGS)
    page = again["summary"].read_text()
    assert page.endswith(notes) and page.count("Read with") == 1 and "| ar |" in page
    assert {r["until"] for r in again["table"]} == {"cap 200"} and "--patience 0" in page
    assert re.search(r"\| two_hop \| ar \| \d+ \| 32 \| 200 \| 1/1 \|", page)  # width, how far its runs went
    assert [c[:2] for c in calls] == [(first_run, True), (plan[1][2].run_name, True)]
    assert checkpoints == {p: p.stat().st_mtime_ns for p in home.glob("runs/*/checkpoints/*/*")}
    assert [r["t_grok"] for r in again["table"]] == [r["t_grok"] for r in result["table"]]

    # the store is lost: the page's Parquet file puts its runs in a new one, and the page is written
    # again from it alone, with the same numbers (the eval rows' counts too: they are metrics)
    data = tmp_path / "out" / "composition_runs.parquet"
    assert "composition_runs.parquet" in page and data.is_file()
    fresh = tmp_path / "fresh"
    imported = subprocess.run([sys.executable, "-m", "flows.cli", "import-runs", str(data), "--home", str(fresh)],
                              env=env, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0 and "imported 2 run(s)" in imported.stdout, imported.stderr
    restored = run_experiment("composition", out_dir=tmp_path / "restored", home=str(fresh), patience=0,
                              report_only=True, **ARGS)
    assert restored["table"] == again["table"]
    assert all(r["n_eval"] and len(r["n_eval"].split("/")) == 3 for r in restored["table"])

    # trained there with a higher cap, the imported runs (numbers, no checkpoints) are left as the store
    # has them, not started again from step 0 over their curves; `grokloop train` on one says why
    stored = _store_contents(fresh)
    calls.clear()
    longer = run_experiment("composition", out_dir=tmp_path / "restored", home=str(fresh), patience=0,
                            **{**ARGS, "max_steps": 2 * ARGS["max_steps"]})
    assert calls == [] and _store_contents(fresh) == stored and not list(fresh.glob("runs/*"))
    assert [(r["status"], r["step"], r["test_ood_acc"]) for r in longer["table"]] == \
        [(r["status"], r["step"], r["test_ood_acc"]) for r in again["table"]]
    extend = dataclasses.replace(plan[0][2], home=str(fresh), max_steps=2 * ARGS["max_steps"])
    with pytest.raises(FileNotFoundError, match=f"run '{first_run}' is in the store to step 200, but its "
                                                "directory and checkpoints are not under"):
        real_train(extend, resume=True)
    assert _store_contents(fresh) == stored and not list(fresh.glob("runs/*"))


def _store_contents(home: Path) -> tuple[list, list]:
    import duckdb

    with duckdb.connect(str(home / "store.duckdb"), read_only=True) as con:
        return (con.execute("SELECT run_id, status, final_step, t_mem, t_grok FROM runs ORDER BY run_id").fetchall(),
                con.execute("SELECT run_id, step, name, value FROM metrics ORDER BY ALL").fetchall())


@pytest.mark.parametrize(("args", "message"), [
    (["composition", "--size", "huge"], "error: experiment 'composition' has no size 'huge'; sizes: quick, full, "
                                        "published"),
    (["composition", "--quick", "--arms", "ar,diffusion"], "error: unknown arm(s) ['diffusion']; known: ar, mdm, "
                                                           "mdm-full, ar-shared, ar-1layer, ar-wide, "
                                                           "ar-full"),
    (["clusters", "--report-only"], "error: nothing to report: no store at "),
    (["composition", "--quick", "--patience", "-5"], "error: --patience must be >= 0 (0: run to the cap), got -5"),
    (["clusters", "--quick", "--patience", "0"], "error: --patience applies to the composition experiment only"),
    (["composition", "--quick", "--worlds", "two_hop,sudoku"], "error: unknown world(s) ['sudoku'] at this size; "
                                                              "its worlds: two_hop, programs"),
    (["clusters", "--worlds", "two_hop"], "error: --worlds applies to the composition experiment only"),
    (["composition", "--quick", "--train-fraction", "0.5"], "error: --train-fraction applies to the clusters "
                                                            "experiment only"),
    (["clusters", "--quick", "--train-fraction", "1.5"], "error: --train-fraction must be in (0, 1), got 1.5"),
    (["grokfast", "--quick", "--held-out", "x-y"], "error: --held-out applies to the clusters experiment only"),
    (["clusters", "--quick", "--held-out", "x/y"], "error: --held-out must be one of the operations x+y, x-y, x*y, "
                                                   "got 'x/y'"),
])
def test_experiment_command_errors_are_one_line_and_start_nothing(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["experiment", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert not (tmp_path / "home" / "runs").exists() and not (tmp_path / "out").exists()


def test_arms_and_sizes_belong_to_their_experiments(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    for args, message in ((["clusters", "--arms", "ar"], "--arms applies to the composition experiment only"),
                          (["composition", "--quick", "--size", "full"], "--quick and --size full disagree")):
        result = CliRunner().invoke(app, ["experiment", *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "home").exists()


def test_each_run_says_how_many_times_t_mem_it_went_on(home):
    """`x_t_mem`: the last evaluation's step / T_mem, so a run capped before 10 x T_mem shows it (mdm's
    seed 2 on programs-canonical-20 memorised at 5,000 and ended at the grid's cap, 20,000: 4.0)."""
    from diffusion.records import run_record
    from storage.runs import record_run

    size, home = COMPOSITION_SIZES["full"], str(home)
    plan = composition_configs(size, home, arms=("mdm",), patience=0, worlds=("programs-canonical-20",))
    grokked, never, memorised = (cfg for *_, cfg in plan)  # seeds 0, 1, 2
    for cfg, t_mem, t_grok, steps in ((grokked, 1000, 1000, (1000, 5000, 20000)), (memorised, 5000, None, (1000, 5000, 20000)),
                                      (never, None, None, (1000, 8000))):
        metrics = [(s, name, 0.3) for s in steps for name in ("train/acc", "test_ood/acc")]
        # seed 0 reaches 95% ID at its first evaluation, falls back, and is there again at its last
        ids = (0.96, 0.5, 0.97) if t_grok else (0.3,) * len(steps)
        metrics += [(s, "test_id/acc", acc) for s, acc in zip(steps, ids, strict=True)]
        row = run_record(dataclasses.replace(cfg, run_id=cfg.run_name), "finished", steps[-1], t_mem, t_grok, None)
        assert record_run(home, row, metrics, final=True)
    table, _, body = composition(size, home, arms=("mdm",), patience=0, worlds=("programs-canonical-20",),
                                 report_only=True)
    assert [(r["seed"], r["step"], r["t_mem"], r["x_t_mem"]) for r in table] == [
        (0, 20000, 1000, "20.0"), (1, 8000, None, None), (2, 20000, 5000, "4.0")]
    assert "| programs-canonical-20 | mdm | 2 | finished | 20000 | cap 100000 | 5000 | 4.0 |" in body
    # T_grok is the first crossing; `t_grok_held` where ID came back to 95% and stayed (here the last evaluation)
    assert [(r["t_grok"], r["t_grok_held"]) for r in table] == [(1000, 20000), (None, None), (None, None)]
    assert "| 1000 | 20000 | 0 |" in body and "| 1/3 | 1/3 |" in body  # t_grok, t_grok_held, delay; grokked, held


def test_a_grid_continues_a_run_past_its_cap_to_10_x_its_t_mem_and_no_further(home):
    """Stored at 25,000 of a 20,000 cap: T_mem 5,000 puts its own cap at 50,000, so the grid run again
    continues it; T_mem 2,000 (cap 20,000) leaves it as the store has it (continued by hand). In a new
    home (no store yet) every run trains."""
    from diffusion.checkpoint import write_run_config
    from diffusion.records import run_record
    from flows.experiments.common import trainable_here
    from storage.home import runs_dir
    from storage.runs import record_run

    size, home = dataclasses.replace(COMPOSITION_SIZES["full"], max_steps=20000), str(home)
    plan = composition_configs(size, home, arms=("mdm",), patience=0, worlds=("programs-canonical-20",))
    late, early, fresh = (cfg for _, _, cfg in plan)
    assert trainable_here([late, early, fresh]) == [late, early, fresh]  # no store yet: all of them
    for cfg, t_mem in ((late, 5000), (early, 2000)):
        row = run_record(dataclasses.replace(cfg, run_id=cfg.run_name), "finished", 25000, t_mem, None, None)
        assert record_run(home, row, [(25000, "test_id/acc", 0.3)], final=True)
        write_run_config(runs_dir(home) / cfg.run_name, cfg)  # trained here, not imported
    assert [cfg.run_name for cfg in trainable_here([late, early, fresh])] == [late.run_name, fresh.run_name]
