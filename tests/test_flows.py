"""The Prefect flows end to end, under one temporary Prefect server for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import steps
from flows.config import LoopConfig
from storage.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_server")


def tiny_config(home, **changes) -> LoopConfig:
    cfg = LoopConfig(
        home=str(home),
        families=["modular"],
        family_params={"modular": {"p": 7, "operations": ["x+y"], "train_fraction": 0.6}},
        n_agents=1,
        episodes=40,
        policy="mixed",
        train_overrides={"max_steps": 20, "eval_every": 10, "batch_size": 64, "hidden_size": 32,
                         "num_heads": 2, "progress": False},
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def counts(home) -> dict[str, int]:
    tables = ["trajectories", "steps", "datasets", "dataset_rows", "runs", "metrics", "evaluations",
              "checkpoints", "self_improve_rounds"]
    with open_store(home / "store.duckdb", read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_loop_lands_trajectories_snapshot_run_metrics_and_evaluation(tmp_path):
    from flows.flows import loop_flow

    summary = loop_flow(cfg=tiny_config(tmp_path))

    n = counts(tmp_path)
    assert n["trajectories"] == 40
    assert n["steps"] > 0
    assert n["datasets"] == 1 and n["dataset_rows"] > 0
    assert n["runs"] == 1
    assert n["metrics"] > 0 and n["evaluations"] > 0
    part = summary["modular"]
    assert 0.0 <= part["evaluation"]["test_id"] <= 1.0
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        run_id, dataset_id, status = con.execute("SELECT run_id, dataset_id, status FROM runs").fetchone()
        assert (run_id, dataset_id) == (part["run"]["run_id"], part["dataset"]["dataset_id"])
        assert status == "finished"
        last_step = con.execute("SELECT max(step) FROM metrics WHERE run_id = ?", [run_id]).fetchone()[0]
        assert last_step == 20


def test_curate_twice_builds_once(tmp_path):
    from flows.flows import collect_flow, curate_flow

    cfg = tiny_config(tmp_path)
    collect_flow(cfg=cfg)
    first = curate_flow(cfg=cfg)
    second = curate_flow(cfg=cfg)

    assert first["modular"]["built"] is True and second["modular"]["built"] is False
    assert first["modular"]["dataset_id"] == second["modular"]["dataset_id"]
    assert counts(tmp_path)["datasets"] == 1
    # New data is a new snapshot: the cache is on the fingerprint, not on the flow's parameters.
    collect_flow(cfg=tiny_config(tmp_path, seed=1, episodes=10))
    third = curate_flow(cfg=cfg)
    assert third["modular"]["dataset_id"] != first["modular"]["dataset_id"]


def test_train_task_killed_mid_run_is_retried_and_resumes(tmp_path, monkeypatch):
    """The first attempt dies in training step 15, after the mid-run checkpoint at step 10; Prefect's
    retry resumes from that checkpoint (not from step 0), and the metrics equal an uninterrupted run's.
    Evaluations at 0 and 20 only: the step-10 checkpoint is not an evaluation step."""
    import diffusion.train as train_module
    from flows.flows import collect_flow, curate_flow, train_flow

    cfg = tiny_config(tmp_path)
    cfg.train_overrides = {**cfg.train_overrides, "eval_every": 20, "checkpoint_every": 10}
    collect_flow(cfg=cfg)
    snap = curate_flow(cfg=cfg)["modular"]

    real_forward = train_module.Denoiser.forward
    calls = {"train_forwards": 0, "starts": [], "resumed_from": []}
    original_train = train_module.train

    def spying_train(train_cfg, *, resume=False):
        calls["starts"].append(resume)
        if resume:
            calls["resumed_from"].append(train_module.latest_checkpoint(
                tmp_path / "runs" / train_cfg.run_name).name)
        return original_train(train_cfg, resume=resume)

    def dying_forward(self, *args, **kwargs):
        if self.training:  # training steps only; evaluation runs in eval mode
            calls["train_forwards"] += 1
            if calls["train_forwards"] == 15 and len(calls["starts"]) == 1:  # step 14 of the first try
                raise RuntimeError("simulated crash mid-run")
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", spying_train)
    monkeypatch.setattr(train_module.Denoiser, "forward", dying_forward)
    crashed = train_flow(cfg=cfg, family="modular", dataset_dir=snap["path"], run_name="crashy")
    monkeypatch.undo()

    assert calls["starts"] == [False, True]  # the retry resumed instead of restarting
    assert calls["resumed_from"] == ["step_10"]
    assert calls["train_forwards"] == 15 + 10  # steps 10..19 again, not 0..19
    clean = train_flow(cfg=cfg, family="modular", dataset_dir=snap["path"], run_name="clean")
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        def series(run_id):
            return con.execute("SELECT step, name, value FROM metrics WHERE run_id = ? AND name NOT IN "
                               "('step_time') ORDER BY step, name", [run_id]).fetchall()
        assert series(crashed["run_id"]) == series(clean["run_id"])
        assert series(crashed["run_id"])


def test_self_improve_two_rounds_records_both(tmp_path):
    from flows.flows import self_improve_flow

    cfg = tiny_config(tmp_path, policy="solver", episodes=15)
    steps.collect(cfg, "modular")
    history = self_improve_flow(cfg=cfg, family="modular", rounds=2, episodes=30, loop_id="t")

    assert [row["round"] for row in history] == [0, 1, 2]
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        rows = con.execute("SELECT round, n_proposed, run_id FROM self_improve_rounds WHERE loop_id = 't' "
                           "ORDER BY round").fetchall()
        assert [r[0] for r in rows] == [0, 1, 2]
        assert [r[1] for r in rows] == [0, 30, 30]
        model_rows = con.execute("SELECT count(*) FROM trajectories t JOIN agents a USING (agent_id) "
                                 "WHERE a.kind = 'model'").fetchone()[0]
        assert model_rows == 60
        # Each round draws fresh tasks for the model: the rounds' task lists differ.
        drawn = con.execute("SELECT a.version, list(t.task_id ORDER BY t.trajectory_id) FROM trajectories t "
                            "JOIN agents a USING (agent_id) WHERE a.kind = 'model' GROUP BY a.version").fetchall()
        assert len(drawn) == 2 and drawn[0][1] != drawn[1][1]
        # Round r continues from round r-1's checkpoint.
        parents = con.execute("SELECT run_id, config->>'init_from' FROM runs WHERE run_id IN "
                              "(SELECT run_id FROM self_improve_rounds) ORDER BY created_at").fetchall()
        assert parents[0][1] is None and all(p[1] for p in parents[1:])


def test_self_improve_started_again_goes_on_from_the_rounds_in_the_store_and_proposes_nothing_twice(tmp_path):
    """Two rounds recorded, then round 2 interrupted after its proposals reached the spool: the same
    loop_id with one more round keeps rounds 0-1 as stored (not trained again), ingests the spooled
    proposals instead of drawing them again, and trains round 2 on from round 1."""
    from flows.flows import self_improve_flow

    cfg = tiny_config(tmp_path, policy="solver", episodes=15)
    steps.collect(cfg, "modular")
    first = self_improve_flow(cfg=cfg, family="modular", rounds=1, episodes=30, loop_id="t")
    (_, r1_checkpoint) = steps.recorded_rounds(cfg, "t", "modular")[1]
    steps.propose(cfg, "modular", r1_checkpoint, episodes=30, seed=steps.round_seed(cfg.seed, 2))  # then killed

    def counts():
        with open_store(tmp_path / "store.duckdb", read_only=True) as con:
            return dict(con.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())

    before = counts()
    again = self_improve_flow(cfg=cfg, family="modular", rounds=2, episodes=30, loop_id="t")

    assert again[:2] == first and [row["round"] for row in again] == [0, 1, 2]
    assert again[2]["n_proposed"] == 30
    after = counts()
    assert {run: after[run] for run in before} == before and set(after) - set(before) == {again[2]["run_id"]}
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        by_version = dict(con.execute("SELECT a.version, count(*) FROM trajectories t JOIN agents a USING (agent_id) "
                                      "WHERE a.kind = 'model' GROUP BY ALL").fetchall())
        assert sorted(by_version.values()) == [30, 30]  # round 1's and round 2's proposals, once each
        (init_from,) = con.execute("SELECT config->>'init_from' FROM runs WHERE run_id = ?",
                                   [again[2]["run_id"]]).fetchone()
    assert Path(init_from).resolve() == Path(r1_checkpoint).resolve()
    # Nothing left to do: the same call again reads all three rounds back.
    assert self_improve_flow(cfg=cfg, family="modular", rounds=2, episodes=30, loop_id="t") == again
    assert counts() == after
    # The same loop_id on another task world is an error that names it, before anything is done.
    other = tiny_config(tmp_path, policy="solver", episodes=15,
                        family_params={"modular": {"p": 11, "operations": ["x+y"], "train_fraction": 0.6}})
    with pytest.raises(ValueError, match=r"loop 't' is in the store on modular \{.*'p': 7.*not on modular .*'p': 11"):
        self_improve_flow(cfg=other, family="modular", rounds=3, episodes=30, loop_id="t")
    assert counts() == after


def test_scheduled_collect_draws_new_tasks_each_run_and_a_plain_collect_repeats(tmp_path):
    from flows.flows import collect_flow

    cfg = tiny_config(tmp_path, family_params={"modular": {"p": 23, "operations": ["x+y"], "train_fraction": 0.6}},
                      policy="solver")
    plain = [collect_flow(cfg=cfg) for _ in range(2)]
    scheduled = [collect_flow(cfg=cfg, fresh_seed=True) for _ in range(2)]
    assert plain[0]["seed"] == plain[1]["seed"] == cfg.seed
    assert len({cfg.seed, scheduled[0]["seed"], scheduled[1]["seed"]}) == 3
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        ids = [r[0] for r in con.execute("SELECT task_id FROM trajectories ORDER BY trajectory_id").fetchall()]
        splits = {r[0] for r in con.execute("SELECT DISTINCT split FROM tasks").fetchall()}
    runs = [sorted(ids[i:i + 40]) for i in range(0, 160, 40)]  # one agent, 40 episodes per collect
    assert len(ids) == 160 and runs[0] == runs[1]  # the same seed draws the same tasks again
    assert runs[2] != runs[0] and runs[3] != runs[0] and runs[3] != runs[2]
    assert splits == {"train"}  # new draws from the same world's training tasks


def test_serve_builds_cron_scheduled_deployments_with_the_loop_settings():
    from flows.deploy import deployments

    cfg = tiny_config("/tmp/somewhere")
    built = deployments(cfg, collect_cron="0 * * * *", train_cron="0 2 * * *")

    crons = {d.name: [s.schedule.cron for s in d.schedules] for d in built}
    assert crons == {"collect-hourly": ["0 * * * *"], "curate-nightly": ["0 2 * * *"],
                     "loop-nightly": ["0 2 * * *"]}
    fresh = {d.name: d.parameters.get("fresh_seed", False) for d in built}
    assert fresh == {"collect-hourly": True, "curate-nightly": False, "loop-nightly": True}
    for d in built:
        assert d.parameters["cfg"]["home"] == "/tmp/somewhere"
        assert d.parameters["cfg"]["episodes"] == cfg.episodes


def test_prefect_yaml_schedules_collect_and_loop_with_fresh_draws():
    import yaml

    declared = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
    fresh = {d["name"]: d.get("parameters", {}).get("fresh_seed", False) for d in declared}
    assert fresh["collect-hourly"] is True and fresh["loop-nightly"] is True


def test_prefect_yaml_loop_on_dask_is_a_valid_loop_config_once_deployed(monkeypatch):
    """What `prefect deploy` makes of the cluster deployment (its {{ $VAR }} filled from the
    environment, as prefect's deploy does) is a loop config that passes every check."""
    import yaml
    from prefect.utilities.templating import apply_values

    from flows.config import LoopConfig, check_loop_config
    from flows.flows import loop_flow

    declared = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
    for name, value in {"GROKLOOP_DASK_ADDRESS": "tcp://10.0.0.5:8786", "GROKLOOP_S3": "s3://lab/grokloop",
                        "GROKLOOP_HOME": "/mnt/shared/grokloop"}.items():
        monkeypatch.setenv(name, value)
    deployment = apply_values(next(d for d in declared if d["name"] == "loop-on-dask"), {}, remove_notset=False)
    assert deployment["entrypoint"] == "flows/flows.py:loop_flow"
    params = loop_flow.validate_parameters(deployment["parameters"])
    cfg = check_loop_config(params["cfg"])
    assert isinstance(cfg, LoopConfig) and params["fresh_seed"] is True
    assert (cfg.runner, cfg.dask_address, cfg.spool, cfg.shared_home) == (
        "dask", "tcp://10.0.0.5:8786", "s3://lab/grokloop/spool", "s3://lab/grokloop")
    assert deployment["work_pool"]["job_variables"]["env"]["GROKLOOP_HOME"] == "/mnt/shared/grokloop"


def test_run_loop_says_what_to_expect_and_reads_its_table(tmp_path):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    params = json.dumps({"modular": {"p": 7, "operations": ["x+y"], "train_fraction": 0.6}})
    overrides = json.dumps({"max_steps": 20, "eval_every": 10, "batch_size": 64, "hidden_size": 32,
                            "num_heads": 2, "progress": False, "eval_schedule": "log"})
    res = CliRunner().invoke(app, ["run", "loop", f"home={tmp_path}", 'families=["modular"]',
                                   f"family_params={params}", "n_agents=1", "episodes=40",
                                   f"train_overrides={overrides}"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "grokloop loop: modular 20 steps. Expected time: about" in out
    assert "T_mem: first evaluation with train accuracy >= 99% (memorised)" in out
    assert "modular: " in out and ("grokked" in out or "not grokked" in out or "neither memorised" in out)
    assert (tmp_path / "runs" / "loop.png").is_file()


def test_family_line_says_whether_the_run_grokked():
    from flows.flows import family_line

    part = {"run": {"final_step": 2000, "t_mem": 200, "t_grok": 900},
            "evaluation": {"train": 1.0, "test_id": 0.981, "test_ood": None}, "seconds": 95.2}
    assert family_line(0, 2, "modular", part) == (
        "[1/2] modular: 2,000 steps in 95 s, train 100.0%, ID 98.1%, OOD -, T_mem 200, T_grok 900 (grokked)")
    part["evaluation"]["test_id"] = 0.52  # crossed at 900 and fell back: a run that reached its cap
    assert family_line(0, 2, "modular", part).endswith("T_grok 900 (reached 95% ID, below it at the end)")
    part["run"]["t_grok"] = None
    assert family_line(1, 2, "two_hop", part).endswith("T_grok - (did not reach 95% ID)")
