from pathlib import Path

import pytest

from agents.tasks import get_family
from agents.tasks.strings import StringsFamily

SMALL = {"n_letters": 3, "word_len": 3, "test_size": 1000}


def test_operations_against_plain_python():
    fam = StringsFamily(n_letters=4)
    w = list("dbca")
    assert fam.run(["reverse"], w) == list("acbd")
    assert fam.run(["rotl"], w) == list("bcad")
    assert fam.run(["rotr"], w) == list("adbc")
    assert fam.run(["swap"], w) == list("bdca")
    assert fam.run(["sort"], w) == list("abcd")
    assert fam.run(["shift"], w) == list("acdb")  # d wraps round to a
    assert fam.run(["sort", "rotl"], w) == list("bcda")  # left to right
    assert fam.run(["rotl", "sort"], w) == list("abcd")
    with pytest.raises(ValueError, match="unknown operation 'upper'"):
        fam.run(["upper"], w)
    with pytest.raises(ValueError, match="'e' is not a letter of 'abcd'"):
        fam.run(["sort"], list("abce"))


def test_splits_hold_out_compositions_and_words():
    fam = get_family("strings", seed=1, **SMALL)
    s = fam.splits()
    ids = [t.task_id for split in s.values() for t in split]
    assert len(ids) == len(set(ids))
    # train: every single operation on every word (27 x 6), and the ID compositions on the train words
    singles = [t for t in s["train"] if t.difficulty == 1]
    assert len(singles) == 27 * 6 and {fam.kind_of(t) for t in singles} == {"single"}
    train_pairs = {t.operation for t in s["train"] if t.difficulty == 2}
    ood_pairs = {t.operation for t in s["test_ood"]}
    assert len(train_pairs) + len(ood_pairs) == 36 and len(ood_pairs) == 9
    assert {t.operation for t in s["test_id"]} == train_pairs
    assert all(op in fam.operations for pair in ood_pairs for op in pair.split(">"))  # known parts, new whole
    train_words = {t.prompt[:3] for t in s["train"] if t.difficulty == 2}
    test_words = {t.prompt[:3] for split in ("test_id", "test_ood") for t in s[split]}
    assert train_words and test_words and not train_words & test_words
    assert len(train_words | test_words) == 27
    assert {fam.kind_of(t) for split in ("test_id", "test_ood") for t in s[split]} == {"composed"}


def test_test_splits_are_capped_seeded_samples():
    a = get_family("strings", seed=2, test_size=50).splits()
    b = get_family("strings", seed=2, test_size=50).splits()
    assert len(a["test_id"]) == len(a["test_ood"]) == 50
    assert [t.task_id for t in a["test_ood"]] == [t.task_id for t in b["test_ood"]]
    c = get_family("strings", seed=3, test_size=50).splits()
    assert [t.task_id for t in a["test_ood"]] != [t.task_id for t in c["test_ood"]]


def test_verifier_tokenizer_and_prompt_round_trip():
    fam = get_family("strings", **SMALL)
    tok = fam.tokenizer()
    for split in fam.splits().values():
        for t in split[::7]:
            assert fam.verify(t, list(t.answer))
            assert not fam.verify(t, list(t.answer)[::-1]) or t.answer == t.answer[::-1]
            for bad in (None, "abc", [], ["[MASK]"] * 3, list(t.answer)[:-1]):
                assert not fam.verify(t, bad)
            ids, mask = tok.encode_pair(t.prompt, t.answer)
            assert tok.unk_id not in ids and len(ids) == tok.seq_len == 5 + 3
            assert tok.decode_answer([i for i, m in zip(ids, mask, strict=True) if m]) == list(t.answer)
            again = fam.task_from_prompt(t.prompt, t.answer, task_id=t.task_id, split=t.split)
            assert (again.operation, again.difficulty, again.spec) == (t.operation, t.difficulty, t.spec)
            assert fam.verify(again, list(t.answer))
    for prompt in (["a", "b"], ["a", "b", "x", "sort"], ["a", "b", "c"], ["a", "b", "c", "sort", "rotl", "swap"]):
        with pytest.raises(ValueError, match="strings: "):
            fam.task_from_prompt(prompt)


def test_tools_and_solver_moves():
    fam = get_family("strings", **SMALL)
    task = fam.splits()["test_ood"][0]
    calls = []

    class Recorder:
        def call(self, tool, **arguments):
            calls.append((tool, arguments))
            return fam.tools(task)[tool](**arguments)

        def note(self, **fields):
            raise AssertionError("no notes expected")

    assert fam.solve(task, Recorder()) == list(task.answer)
    first, second = task.operation.split(">")
    assert [(tool, a["op"]) for tool, a in calls] == [("apply", first), ("apply", second)]
    assert calls[1][1]["word"] == fam.run([first], task.prompt[:3])  # the second call reads the first's result
    assert fam.answer_symbols(task) == ["a", "b", "c"]


@pytest.mark.parametrize(("params", "message"), [
    ({"n_letters": 1}, "n_letters must be in"), ({"word_len": 1}, "word_len must be >= 2"),
    ({"ood_fraction": 1.0}, "ood_fraction and test_words"), ({"test_size": 0}, "test_size must be >= 1"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        get_family("strings", **params)


def test_a_fourth_family_runs_the_loop_end_to_end_with_no_policy_code(tmp_path):
    """agents run -> ingest -> dataset build -> a short train, through the CLI, for a family
    agents/policies.py never names."""
    import orjson
    from typer.testing import CliRunner

    from flows.cli import app
    from storage.store import open_store

    assert "strings" not in (Path(__file__).parents[1] / "agents" / "policies.py").read_text()
    home, params = str(tmp_path), ["-p", "n_letters=3", "-p", "word_len=3"]
    runner = CliRunner()
    result = runner.invoke(app, ["agents", "run", "--family", "strings", *params, "--agents", "2",
                                 "--episodes", "150", "--home", home, "--no-progress"])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        outcomes = dict(con.execute("SELECT metadata->>'outcome', count(*) FROM trajectories GROUP BY 1").fetchall())
        tools = {r[0] for r in con.execute("SELECT DISTINCT tool_name FROM steps WHERE kind = 'tool_call'").fetchall()}
    assert sum(outcomes.values()) == 300 and outcomes["solved"] > 150 and {"wrong", "gave_up"} <= set(outcomes)
    assert tools == {"apply"}

    result = runner.invoke(app, ["dataset", "build", "--family", "strings", *params, "--home", home])
    assert result.exit_code == 0, result.output
    (snapshot,) = (tmp_path / "datasets").iterdir()
    meta = orjson.loads((snapshot / "meta.json").read_bytes())
    assert meta["family"] == "strings" and meta["counts"]["train"] > 0

    result = runner.invoke(app, ["train", f"dataset={snapshot}", "max_steps=4", "eval_every=2", "hidden_size=16",
                                 "num_layers=1", "num_heads=2", "batch_size=16", "run_name=strings-e2e",
                                 "--home", home])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT DISTINCT name FROM metrics WHERE run_id = 'strings-e2e'").fetchall()}
    # accuracy by the family's verifier on each split; single and composed train rows apart (kind_of)
    assert {"train/acc", "test_id/acc", "test_ood/acc", "train_single/acc", "train_composed/acc"} <= names
    assert any(n.startswith("test_ood/cluster:") for n in names)  # per held-out composition
