from collections import Counter

import pytest
from typer.testing import CliRunner

from agents.runner import run_agents
from agents.tasks import get_family
from flows.cli_agents import app
from storage.spool import published_segments, read_records

SMALL_TWO_HOP = {"n_entities": 60, "n_relations": 8, "relations_per_entity": 6, "phi": 3.0}


def _spool_records(spool):
    return [r for seg in published_segments(spool) for r in read_records(seg)]


def test_parallel_run_logs_every_episode_with_explorer_failures(tmp_path):
    report = run_agents("two_hop", n_agents=2, episodes=40, policy="mixed", error_rate=0.6, seed=3,
                        family_params=SMALL_TWO_HOP, spool=tmp_path, progress=False)
    recs = _spool_records(tmp_path)
    trajs = {r["trajectory_id"]: r for r in recs if r["type"] == "trajectory"}
    outcomes = {r["trajectory_id"]: r for r in recs if r["type"] == "outcome"}
    assert report.trajectories == len(trajs) == len(outcomes) == 80
    assert {r["metadata"]["split"] for r in trajs.values()} == {"train"}
    by_agent = Counter(r["agent"]["name"] for r in trajs.values())
    assert by_agent == report.by_agent == {"solver": 40, "explorer": 40}
    # Both processes logged (their pids name the segments).
    assert len({seg.name.rsplit("-", 1)[1] for seg in published_segments(tmp_path)}) == 2
    fam = get_family("two_hop", seed=3, **SMALL_TWO_HOP)
    train_ids = {t.task_id for t in fam.splits()["train"]}
    failures = Counter()
    for tid, tr in trajs.items():
        o = outcomes[tid]
        assert tr["task"]["task_id"] in train_ids
        assert tr["metadata"]["verified"] == o["verified"]
        if not o["verified"]:
            failures[tr["agent"]["name"]] += 1
            assert tr["metadata"]["outcome"] in {"wrong", "gave_up"} and o["reward"] == 0.0
    assert failures["solver"] == 0 and failures["explorer"] >= 8
    assert report.verified == 80 - failures["explorer"]
    assert report.outcomes.get("solved") == report.verified


def test_cli_run_and_families(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--family", "modular", "--agents", "1", "--episodes", "12",
                                 "--policy", "explorer", "--error-rate", "1.0", "-p", "p=13",
                                 "--home", str(tmp_path), "--no-ingest", "--no-progress"])
    assert result.exit_code == 0, result.output
    trajs = [r for r in _spool_records(tmp_path / "spool") if r["type"] == "trajectory"]
    assert len(trajs) == 12 and all(r["agent"]["kind"] == "explorer" for r in trajs)
    assert all(r["task"]["spec"]["p"] == 13 for r in trajs)
    result = runner.invoke(app, ["families", "-p", "two_hop:n_entities=50", "-p", "modular:p=7"])
    assert result.exit_code == 0, result.output
    assert "two_hop" in result.output and "p7-s0" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--family", "chess"], "unknown task family 'chess'"),
    (["--family", "modular", "--policy", "greedy"], "unknown policy 'greedy'"),
    (["--family", "modular", "--split", "test_ood"], "no test_ood tasks"),
    (["--family", "modular", "-p", "p=1"], "modulus p must be >= 2"),
    (["--family", "modular", "-p", "bogus"], "not key=value"),
])
def test_cli_rejects_bad_input_before_logging_anything(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run", *args, "--home", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not published_segments(tmp_path / "spool")
