import pytest

from agents.tasks import get_family
from agents.tasks.two_hop import TwoHopFamily

SMALL = {"n_entities": 80, "n_relations": 10, "relations_per_entity": 6, "ood_fraction": 0.1,
         "phi": 3.0, "test_size": 500}


def _atomic_and_trained_hops(train):
    """Read back, from the training set alone, the atomic facts and which of them occur as a
    hop of some trained inferred fact (independently of the generator's bookkeeping)."""
    atomic = {(t.prompt[0], t.prompt[1]): t.answer[0] for t in train if len(t.prompt) == 2}
    used = set()
    for t in train:
        if len(t.prompt) == 3:
            h, r1, r2 = t.prompt
            bridge = atomic[h, r1]
            assert atomic[bridge, r2] == t.answer[0]  # trained inferred facts compose atomic facts
            used |= {(h, r1), (bridge, r2)}
    return atomic, used


def test_ood_only_composes_atomic_facts_never_seen_in_a_trained_inferred_fact():
    fam = TwoHopFamily(seed=1, **SMALL)
    s = fam.splits()
    atomic, used = _atomic_and_trained_hops(s["train"])
    assert len(atomic) == 80 * 6  # every atomic fact is trained
    assert s["test_ood"], "the small setting must still have OOD items"
    for t in s["test_ood"]:
        h, r1, r2 = t.prompt
        bridge = atomic[h, r1]
        assert (h, r1) not in used and (bridge, r2) not in used
        assert atomic[bridge, r2] == t.answer[0]
    for t in s["test_id"]:  # ID test: both hops do occur in trained inferred facts
        h, r1, r2 = t.prompt
        bridge = atomic[h, r1]
        assert (h, r1) in used and (bridge, r2) in used
        assert atomic[bridge, r2] == t.answer[0]


def test_training_size_follows_phi():
    fam = TwoHopFamily(seed=0, **SMALL)
    s = fam.splits()
    n_atomic = 80 * 6
    inferred = [t for t in s["train"] if t.difficulty == 2]
    assert len(inferred) == round(3.0 * n_atomic)  # phi x |all atomic facts| (Wang et al. 2024), OOD ones too
    assert len(s["test_id"]) == 500


def test_splits_disjoint_deterministic_and_seeded():
    s = get_family("two_hop", seed=2, **SMALL).splits()
    ids = [t.task_id for split in s.values() for t in split]
    assert len(ids) == len(set(ids))
    prompts = {k: {t.prompt for t in v} for k, v in s.items()}
    assert not prompts["train"] & prompts["test_id"]
    assert not prompts["train"] & prompts["test_ood"]
    assert not prompts["test_id"] & prompts["test_ood"]
    again = get_family("two_hop", seed=2, **SMALL).splits()
    assert all([t.task_id for t in again[k]] == [t.task_id for t in s[k]] for k in s)
    other = get_family("two_hop", seed=3, **SMALL).splits()
    assert {(t.prompt, t.answer) for t in other["train"]} != {(t.prompt, t.answer) for t in s["train"]}


def test_verifier_accepts_right_and_rejects_wrong():
    fam = TwoHopFamily(seed=0, **SMALL)
    s = fam.splits()
    for split in s.values():
        for t in split[:200]:
            assert fam.verify(t, list(t.answer))
            wrong = f"e{(int(t.answer[0][1:]) + 1) % 80}"
            assert not fam.verify(t, [wrong])
            for bad in (None, t.answer[0], [t.answer[0], t.answer[0]], ["r1"], ["[MASK]"], []):
                assert not fam.verify(t, bad)


def test_lookup_tool_and_tokenizer():
    fam = TwoHopFamily(seed=0, **SMALL)
    t = next(t for t in fam.splits()["test_id"])
    lookup = fam.tools(t)["lookup"]
    bridge = lookup(t.prompt[0], t.prompt[1])
    assert lookup(bridge, t.prompt[2]) == t.answer[0]
    assert lookup("e999", "r0") is None and lookup("r0", "e1") is None
    tok = fam.tokenizer()
    for split in fam.splits().values():
        for task in split[:100]:
            ids, _ = tok.encode_pair(task.prompt, task.answer)
            assert tok.unk_id not in ids and len(ids) == 4
    assert fam.task_from_ref(t.ref()) == t


def test_published_setting_builds():
    fam = get_family("two_hop", n_entities=2000, n_relations=200, relations_per_entity=20,
                     ood_fraction=0.05, phi=7.2, test_size=3000)
    s = fam.splits()
    n_atomic = 2000 * 20
    assert sum(t.difficulty == 1 for t in s["train"]) == n_atomic
    assert sum(t.difficulty == 2 for t in s["train"]) == round(7.2 * n_atomic)
    assert len(s["test_id"]) == 3000
    assert 0 < len(s["test_ood"]) <= 3000
    assert all(t.spec["ood_hops"] == 2 for t in s["test_ood"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"relations_per_entity": 30, "n_relations": 20}, "relations_per_entity"),
    ({"ood_fraction": 1.0}, "ood_fraction"),
    ({"n_entities": 1}, "entities"),
    ({"phi": -1}, "phi"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwoHopFamily(**kwargs)


def test_a_world_without_an_id_test_is_refused():
    fam = TwoHopFamily(n_entities=60, n_relations=6, relations_per_entity=3)  # 3 chains per fact < phi
    with pytest.raises(ValueError, match="leaving no ID test"):
        fam.splits()
