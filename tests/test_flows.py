"""The Prefect flows end to end, under one temporary Prefect server for the whole session."""

from __future__ import annotations

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
        # Round r continues from round r-1's checkpoint.
        parents = con.execute("SELECT run_id, config->>'init_from' FROM runs WHERE run_id IN "
                              "(SELECT run_id FROM self_improve_rounds) ORDER BY created_at").fetchall()
        assert parents[0][1] is None and all(p[1] for p in parents[1:])


def test_serve_builds_cron_scheduled_deployments_with_the_loop_settings():
    from flows.deploy import deployments

    cfg = tiny_config("/tmp/somewhere")
    built = deployments(cfg, collect_cron="0 * * * *", train_cron="0 2 * * *")

    crons = {d.name: [s.schedule.cron for s in d.schedules] for d in built}
    assert crons == {"collect-hourly": ["0 * * * *"], "curate-nightly": ["0 2 * * *"],
                     "loop-nightly": ["0 2 * * *"]}
    for d in built:
        assert d.parameters["cfg"]["home"] == "/tmp/somewhere"
        assert d.parameters["cfg"]["episodes"] == cfg.episodes
