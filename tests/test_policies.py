import dataclasses

import orjson
import pytest

from agents.policies import ExplorerPolicy, ModelPolicy, SolverPolicy, log_episode, run_episode
from agents.sdk import TrajectoryLogger
from agents.tasks import get_family
from agents.tasks.render import VOCAB_SIZE, decode_bytes, render_bytes
from storage.spool import published_segments, read_records

FAMILIES = {
    "modular": {"p": 31, "operations": ("x/y", "x^3+x*y")},
    "two_hop": {"n_entities": 60, "n_relations": 8, "relations_per_entity": 6, "ood_fraction": 0.2, "phi": 3.0},
    "programs": {},
    "strings": {"n_letters": 3, "word_len": 3},  # the fourth family: no line of agents/policies.py knows it
}


def _records(spool):
    recs = [r for seg in published_segments(spool) for r in read_records(seg)]
    trajs = {r["trajectory_id"]: r for r in recs if r["type"] == "trajectory"}
    outcomes = {r["trajectory_id"]: r for r in recs if r["type"] == "outcome"}
    steps = {}
    for r in recs:
        if r["type"] == "step":
            steps.setdefault(r["trajectory_id"], []).append(r)
    return trajs, outcomes, steps


@pytest.mark.parametrize("name", list(FAMILIES))
def test_solver_solves_every_split_and_logs_its_tool_calls(name, tmp_path):
    fam = get_family(name, seed=0, **FAMILIES[name])
    tasks = [t for split in fam.splits().values() for t in split[:40]]
    with TrajectoryLogger("solver", kind="solver", spool=tmp_path) as log:
        assert all(run_episode(SolverPolicy(), fam, t, log) for t in tasks)
    trajs, outcomes, steps = _records(tmp_path)
    assert len(trajs) == len(outcomes) == len(tasks)
    by_task = {t.task_id: t for t in tasks}
    for tid, tr in trajs.items():
        task = by_task[tr["task"]["task_id"]]
        assert tr["metadata"] == {"family": name, "operation": task.operation, "difficulty": task.difficulty,
                                  "split": task.split, "policy": "solver", "verified": True, "outcome": "solved"}
        assert outcomes[tid]["verified"] is True and outcomes[tid]["reward"] == 1.0
        assert fam.verify(task, outcomes[tid]["answer"])  # the verifier, re-run on what was logged
        calls = [s for s in steps[tid] if s["kind"] == "tool_call"]
        assert calls and all(s["status"] == "ok" for s in calls)
        assert steps[tid][-1]["kind"] == "answer"
        assert outcomes[tid]["n_steps"] == len(steps[tid])
    if name == "two_hop":  # a two-hop answer is found by chaining two lookups
        assert all(len([s for s in steps[tid] if s["tool_name"] == "lookup"]) == trajs[tid]["task"]["difficulty"]
                   for tid in trajs)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_explorer_failures_are_recorded_as_failures(name, tmp_path):
    fam = get_family(name, seed=0, **FAMILIES[name])
    tasks = fam.splits()["train"][:150]
    explorer = ExplorerPolicy(error_rate=0.6, seed=7)
    with TrajectoryLogger("explorer", kind="explorer", spool=tmp_path) as log:
        results = [run_episode(explorer, fam, t, log) for t in tasks]
    trajs, outcomes, steps = _records(tmp_path)
    assert len(trajs) == 150
    failed = [tid for tid, o in outcomes.items() if not o["verified"]]
    assert 30 <= len(failed) <= 120 and len(failed) == results.count(False)
    by_task = {t.task_id: t for t in tasks}
    for tid, tr in trajs.items():
        o = outcomes[tid]
        task = by_task[tr["task"]["task_id"]]
        # logged verdicts agree with the verifier applied afresh to the logged answer
        assert o["verified"] == (o["answer"] is not None and fam.verify(task, o["answer"]))
        assert tr["metadata"]["verified"] == o["verified"]
        assert tr["metadata"]["outcome"] == ("solved" if o["verified"] else
                                             "gave_up" if o["answer"] is None else "wrong")
        assert o["reward"] == (1.0 if o["verified"] else 0.0)
    assert {tr["metadata"]["outcome"] for tr in trajs.values()} >= {"solved", "wrong", "gave_up"}


def test_explorer_error_rate_zero_is_the_solver(tmp_path):
    fam = get_family("two_hop", **FAMILIES["two_hop"])
    with TrajectoryLogger("explorer", spool=tmp_path) as log:
        assert all(run_episode(ExplorerPolicy(0.0), fam, t, log) for t in fam.splits()["train"][:50])
    with pytest.raises(ValueError, match="error_rate"):
        ExplorerPolicy(1.5)


def test_model_policy_verifies_and_logs_every_sample(tmp_path):
    fam = get_family("modular", p=31, operations=("x+y",))
    tasks = fam.splits()["train"][:4]
    calls = []

    def propose(batch, n_samples):
        calls.append(len(batch))
        # sample 0 is wrong, sample 1 right for the first two tasks; all wrong for the rest
        return [[["[MASK]"], list(t.answer) if i < 2 else ["0", "1"]] for i, t in enumerate(batch)]

    policy = ModelPolicy(propose, n_samples=2, name="mdm", checkpoint="ckpt-1")
    policy.prepare(tasks)
    with TrajectoryLogger(policy.name, kind=policy.kind, spool=tmp_path) as log:
        outcomes = [log_episode(policy, fam, t, log) for t in tasks]
    assert calls == [4]  # one batched call
    assert outcomes == ["solved", "solved", "wrong", "wrong"]
    trajs, outs, steps = _records(tmp_path)
    for tid, tr in trajs.items():
        samples = [s for s in steps[tid] if s["kind"] == "sample"]
        assert [s["result"]["verified"] for s in samples] == (
            [False, True] if tr["metadata"]["verified"] else [False, False])
        if tr["metadata"]["verified"]:
            assert outs[tid]["answer"] == [tr["task"]["spec"]["answer"][0]]
    wrong = [o for o in outs.values() if not o["verified"]]
    assert all(o["answer"] == ["[MASK]"] for o in wrong)  # the first sample stands for the failure


def test_model_policy_bad_proposer_is_named_and_crash_is_recorded(tmp_path):
    fam = get_family("modular", p=31, operations=("x+y",))
    tasks = fam.splits()["train"][:3]
    with pytest.raises(ValueError, match="2 sample lists for 3 tasks"):
        ModelPolicy(lambda batch, n: [[["1"]]] * 2).prepare(tasks)

    def broken(batch, n):
        raise RuntimeError("checkpoint has no weights")

    with TrajectoryLogger("mdm", spool=tmp_path) as log:
        assert log_episode(ModelPolicy(broken), fam, tasks[0], log) == "error"
    trajs, outs, _ = _records(tmp_path)
    (o,) = outs.values()
    assert o["status"] == "error" and o["verified"] is False and "checkpoint has no weights" in o["error"]


def test_render_bytes_round_trips_a_logged_trajectory(tmp_path):
    fam = get_family("programs")
    with TrajectoryLogger("solver", spool=tmp_path) as log:
        run_episode(SolverPolicy(), fam, fam.splits()["train"][0], log)
    trajs, outs, steps = _records(tmp_path)
    (tid,) = trajs
    record = {"trajectory": trajs[tid], "steps": steps[tid], "outcome": outs[tid]}
    ids = render_bytes(record)
    assert all(3 <= i < VOCAB_SIZE for i in ids)
    assert orjson.loads(decode_bytes(ids)) == orjson.loads(orjson.dumps(record))
    reordered = dict(reversed(list(record.items())))
    assert render_bytes(reordered) == ids  # key order does not change the tokens
    assert render_bytes(record, max_len=10) == ids[:10]
    assert render_bytes("é") == [0xC3 + 3, 0xA9 + 3]


def test_explorer_mistakes_come_from_the_family_moves_not_from_family_names():
    """Stopping one move short answers what that move returned where it is an answer (two_hop: the
    bridge entity; strings: the word after the first operation), else a wrong symbol of the right
    sort (modular: another residue); a misread prompt makes the moves on what was misread."""
    from agents.policies import Environment, StepRecorder

    explorer = ExplorerPolicy(error_rate=1.0, seed=3)
    two_hop = get_family("two_hop", **FAMILIES["two_hop"])
    task = two_hop.splits()["test_ood"][0]
    steps = StepRecorder()
    bridge = two_hop.lookup(task.prompt[0], task.prompt[1])
    assert explorer._partial(two_hop, task, steps) == [bridge]
    assert [(s["tool_name"], s["arguments"]) for s in steps.steps] == [
        ("lookup", {"h": task.prompt[0], "r": task.prompt[1]})]

    strings = get_family("strings", **FAMILIES["strings"])
    task = next(t for t in strings.splits()["test_ood"] if t.answer != tuple(strings.run(t.prompt[3:4], t.prompt[:3])))
    assert explorer._partial(strings, task, StepRecorder()) == strings.run(task.prompt[3:4], task.prompt[:3])

    modular = get_family("modular", **FAMILIES["modular"])
    task = modular.splits()["train"][0]
    steps = StepRecorder()
    wrong = explorer._partial(modular, task, steps)
    assert len(wrong) == 1 and wrong != list(task.answer) and int(wrong[0]) < modular.p
    assert steps.steps == []  # one move solves it: nothing acted, the answer made wrong in the head

    misread = dataclasses.replace(task, prompt=("3", "x^3+x*y", "4", "="))  # what `_wrong_call` hands on
    steps = StepRecorder()
    assert modular.solve(misread, Environment(modular, task, steps)) == [str((3**3 + 3 * 4) % modular.p)]
    assert steps.steps[0]["arguments"] == {"op": "x^3+x*y", "x": "3", "y": "4"}
