import pytest

from agents.tasks import get_family
from diffusion.train import TrainConfig, train
from flows.model_agent import load_proposer, model_policy, run_model_agent
from storage.spool import published_segments, read_records

P5 = {"p": 5, "train_fraction": 0.6, "seed": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A model that has memorized modular p=5's train split (and not its test split)."""
    home = tmp_path_factory.mktemp("home")
    cfg = TrainConfig(family="modular", family_params=P5, hidden_size=64, num_layers=1, num_heads=2,
                      lr=3e-3, weight_decay=0.0, batch_size=16, max_steps=200, eval_every=100,
                      sampler_steps=1, mdm_estimator="count", home=str(home), run_name="agent",
                      progress=False)
    result = train(cfg)
    assert result.metrics["train/acc"] == 1.0
    return result.checkpoint_dir


def read_spool(spool):
    records = []
    for seg in published_segments(spool):
        records += read_records(seg)
    return records


def test_proposer_samples_several_answers_per_task(checkpoint):
    fam = get_family("modular", **P5)
    tasks = fam.splits()["train"][:4]
    samples = load_proposer(checkpoint, temperature=0.0)(tasks, 3)
    assert len(samples) == 4 and all(len(s) == 3 for s in samples)
    assert [s[0] for s in samples] == [list(t.answer) for t in tasks]  # greedy = memorized answer
    hot = load_proposer(checkpoint, temperature=50.0, seed=1)(tasks, 8)
    assert any(len({tuple(a) for a in s}) > 1 for s in hot)  # high temperature varies the samples


def test_model_agent_attempts_land_in_the_spool_checked_by_the_verifier(checkpoint, tmp_path):
    fam = get_family("modular", **P5)
    by_id = {t.task_id: t for split in fam.splits().values() for t in split}
    train_report = run_model_agent(checkpoint, episodes=12, n_samples=2, temperature=0.0,
                                   spool=tmp_path, split="train")
    test_report = run_model_agent(checkpoint, episodes=12, n_samples=2, temperature=0.0, seed=3,
                                  spool=tmp_path, split="test_id")
    assert train_report.attempts == 12 and train_report.verified == 12  # memorized
    assert test_report.verified < 12                                   # not generalized (yet)
    records = read_spool(tmp_path)
    starts = [r for r in records if r["type"] == "trajectory"]
    outcomes = {r["trajectory_id"]: r for r in records if r["type"] == "outcome"}
    assert len(starts) == 24
    for start in starts:
        assert start["agent"]["kind"] == "model"
        assert start["agent"]["checkpoint"] == str(checkpoint)
        task = by_id[start["task"]["task_id"]]
        outcome = outcomes[start["trajectory_id"]]
        assert outcome["verified"] == fam.verify(task, outcome["answer"])
    # Every sample is a step with the verifier's verdict; the policy stops at the first verified one.
    task_of = {s["trajectory_id"]: by_id[s["task"]["task_id"]] for s in starts}
    samples = [r for r in records if r["type"] == "step" and r["kind"] == "sample"]
    for step in samples:
        assert step["result"]["verified"] == fam.verify(task_of[step["trajectory_id"]], step["result"]["answer"])
    per_attempt = [sum(s["trajectory_id"] == t for s in samples) for t in outcomes]
    assert all(n == (1 if outcomes[t]["verified"] else 2) or (n == 2 and outcomes[t]["verified"])
               for t, n in zip(outcomes, per_attempt, strict=True))
    assert sum(o["verified"] for o in outcomes.values()) == 12 + test_report.verified


def test_model_policy_carries_the_checkpoint(checkpoint):
    policy = model_policy(checkpoint, n_samples=2)
    assert policy.kind == "model" and policy.checkpoint == str(checkpoint)
    assert policy.version == "agent@200"


def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_proposer(tmp_path)
