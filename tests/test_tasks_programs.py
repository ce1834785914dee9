import pytest

from agents.tasks import get_family
from agents.tasks.programs import (
    PRIMITIVES,
    ProgramsFamily,
    fits,
    label_ambiguity,
    parse_program,
    run_program,
)


def test_primitives_against_plain_python():
    xs = [5, 2, 8, 3, 3]
    assert run_program(["+3"], xs) == [8, 5, 11, 6, 6]
    assert run_program(["*2"], xs) == [10, 4, 16, 6, 6]
    assert run_program(["even"], xs) == [2, 8]
    assert run_program(["odd"], xs) == [5, 3, 3]
    assert run_program([">4"], xs) == [5, 8]
    assert run_program(["sort", "take2"], xs) == [2, 3]
    assert run_program(["reverse", "drop1"], xs) == [3, 8, 2, 5]
    assert run_program(parse_program("drop2|take3"), xs) == [8, 3, 3]
    assert run_program([], xs) == xs
    with pytest.raises(ValueError, match="unknown primitive 'map'"):
        run_program(["map"], xs)


def test_verifier_accepts_right_and_equivalent_and_rejects_wrong():
    fam = ProgramsFamily(seed=0)
    s = fam.splits()
    for split in s.values():
        for t in split[::25]:
            assert fam.verify(t, list(t.answer))
            ins, outs = t.spec["inputs"], t.spec["outputs"]
            # The verifier runs the program: every program is judged by its behaviour alone.
            for prim in PRIMITIVES:
                expected = all(run_program([prim], x) == y for x, y in zip(ins, outs, strict=True))
                assert fam.verify(t, [prim]) == expected
            for bad in (None, "sort", [], ["[MASK]"], ["3"], [t.answer[0], "[UNK]"]):
                assert not fam.verify(t, bad)
    sort_task = next(t for t in s["train"] if t.answer == ("sort",))
    assert fam.verify(sort_task, ["sort", "sort"])  # a longer program with the same behaviour
    assert fam.verify(sort_task, ["reverse", "sort"])


def test_label_ambiguity_counts_the_programs_that_fit_each_task():
    fam = ProgramsFamily(seed=0)
    sorted_in = fam.task_from_prompt(["1", "2", "->", "1", "2", ";"], ["sort"])  # only sort of the three fits
    unsorted_in = fam.task_from_prompt(["2", "1", "->", "1", "2", ";"], ["sort"])  # sort and reverse both fit
    programs = [("+1",), ("reverse",), ("sort",)]
    assert label_ambiguity([sorted_in, unsorted_in], programs) == (0.5, 0.75)  # 1/1 and 1/2 on average
    with pytest.raises(ValueError, match="own program"):
        label_ambiguity([sorted_in], [("+1",)])
    # In a generated world a rule that reads only the examples cannot match every training label.
    share, ceiling = label_ambiguity(fam.splits()["train"][::40], fam.programs)
    assert 0 < share < 1 and 1 - share <= ceiling <= 1 - share / 2  # an ambiguous task gives at most 1/2


def test_canonical_labels_are_the_first_trained_program_that_fits():
    generating = ProgramsFamily(seed=2, n_examples=2, list_len=(2, 4), train_per_program=20)
    canonical = ProgramsFamily(seed=2, n_examples=2, list_len=(2, 4), train_per_program=20, labels="canonical")
    assert canonical.config_tag == generating.config_tag.replace("-u-", "-u-c-")  # other task ids, other runs
    trained = [p for p in canonical.programs if p not in {t.answer for t in canonical.splits()["test_ood"]}]
    changed = 0
    for split in ("train", "test_id", "test_ood"):
        for g, c in zip(generating.splits()[split], canonical.splits()[split], strict=True):
            assert (g.prompt, g.operation) == (c.prompt, c.operation)  # the same examples, the same program made them
            assert canonical.verify(c, c.answer)
            if split == "test_ood":
                assert c.answer == g.answer  # fits no trained program: its own is its label
                continue
            fitting = [p for p in trained if fits(p, c.spec["inputs"], c.spec["outputs"])]
            assert c.answer == fitting[0] and trained.index(c.answer) <= trained.index(g.answer)
            changed += c.answer != g.answer
    assert changed  # with two short examples some tasks are fit by an earlier program than their own
    relabelled = next(c for g, c in zip(generating.splits()["train"], canonical.splits()["train"], strict=True)
                      if c.answer != g.answer)
    assert canonical.task_from_ref(relabelled.ref()) == relabelled  # a stored task comes back with its label


def test_splits_hold_out_compositions_and_inputs():
    fam = get_family("programs", seed=1)
    s = fam.splits()
    ids = [t.task_id for split in s.values() for t in split]
    assert len(ids) == len(set(ids))
    train_ops = {t.operation for t in s["train"]}
    ood_ops = {t.operation for t in s["test_ood"]}
    assert ood_ops and not ood_ops & train_ops
    assert {t.operation for t in s["test_id"]} <= train_ops
    trained_prims = {p for op in train_ops for p in op.split("|")}
    assert all(set(op.split("|")) <= trained_prims for op in ood_ops)  # new compositions, known parts
    assert all(len(op.split("|")) == 2 for op in ood_ops)
    # test_id: unseen inputs of seen compositions
    train_inputs = {(t.operation, tuple(x)) for t in s["train"] for x in t.spec["inputs"]}
    assert all((t.operation, tuple(x)) not in train_inputs for t in s["test_id"] for x in t.spec["inputs"])


@pytest.mark.parametrize("world", [{}, {"list_len": (2, 4), "n_examples": 2, "train_per_program": 200}])
def test_ood_tasks_fit_no_trained_program(world):
    """Only a composition never trained answers a test_ood task: no program of the training split
    fits its examples (with two short examples, 42% of them would otherwise)."""
    fam = ProgramsFamily(seed=0, test_per_program=5, **world)
    s = fam.splits()
    trained = {t.answer for t in s["train"]}
    for t in s["test_ood"]:
        assert fam.verify(t, list(t.answer))
        assert not any(fam.verify(t, list(p)) for p in trained), t.task_id
    assert len({t.operation for t in s["test_ood"]}) == round(0.2 * sum(len(p) == 2 for p in fam.programs))
    # test_id keeps what a program's examples allow: some of its tasks are fit by other programs too
    assert any(sum(fam.verify(t, list(p)) for p in trained) > 1 for t in s["test_id"])


def test_deterministic_and_seeded():
    a, b = get_family("programs", seed=5).splits(), get_family("programs", seed=5).splits()
    assert all([(t.task_id, t.prompt) for t in a[k]] == [(t.task_id, t.prompt) for t in b[k]] for k in a)
    c = get_family("programs", seed=6).splits()
    assert {t.operation for t in c["test_ood"]} != {t.operation for t in a["test_ood"]}


def test_programs_are_distinct_behaviours_and_tasks_tokenize():
    fam = ProgramsFamily(seed=0)
    assert ("sort", "sort") not in fam.programs and ("sort",) in fam.programs
    tok = fam.tokenizer()
    for split in fam.splits().values():
        for t in split:
            assert any(t.spec["outputs"])
            ids, mask = tok.encode_pair(t.prompt, t.answer)
            assert tok.unk_id not in ids and len(ids) == tok.seq_len
            assert tok.decode(ids) == list(t.prompt + t.answer)


def test_tools_and_ref_round_trip():
    fam = ProgramsFamily(seed=0)
    t = fam.splits()["test_ood"][0]
    tools = fam.tools(t)
    assert tools["run"](t.operation, t.spec["inputs"][0]) == t.spec["outputs"][0]
    assert tools["apply"]("reverse", [1, 2, 3]) == [3, 2, 1]
    with pytest.raises(ValueError, match="unknown primitive"):
        tools["apply"]("rotate", [1])
    assert fam.task_from_ref(t.ref()) == t


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"list_len": (4, 2)}, "list_len"),
    ({"ood_fraction": 1.5}, "ood_fraction"),
    ({"max_len": 0}, "max_len"),
    ({"labels": "noisy"}, "labels must be one of generating, canonical, got 'noisy'"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgramsFamily(**kwargs)
