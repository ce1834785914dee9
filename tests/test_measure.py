"""Measurements: accuracy is the family's verifier on the decoded answer, evaluation rows are a seeded
sample fixed for the run, per-cluster accuracy is per split (held-out claims from test rows only)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from agents.tasks import get_family
from agents.tasks.programs import PRIMITIVES
from diffusion.data import EncodedSplit, encode_rows, eval_rows, splits_from_family
from diffusion.evaluate import accuracy_by_split, answers_correct, estimate
from diffusion.sample import exact_match
from diffusion.train import TrainConfig, load_config, train

P5 = {"p": 5, "train_fraction": 0.6, "seed": 0}


class Lookup(torch.nn.Module):
    """A model that fills every row from a table: prompt ids -> the full row it should produce."""

    def __init__(self, table: dict[tuple[int, ...], list[int]], vocab_size: int, prompt_len: int):
        super().__init__()
        self.table, self.vocab_size, self.prompt_len = table, vocab_size, prompt_len
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # weight_norm needs a parameter

    def forward(self, ids, causal=False):
        rows = torch.tensor([self.table[tuple(r[: self.prompt_len].tolist())] for r in ids])  # (B, T)
        if causal:  # position j predicts token j+1
            rows = torch.cat([rows[:, 1:], rows[:, -1:]], 1)
        return 8.0 * F.one_hot(rows[:, : ids.shape[1]], self.vocab_size).float()


def lookup_for(tokenizer, splits: dict[str, EncodedSplit], answer_of) -> Lookup:
    """`answer_of(split, task)` -> answer symbols the model gives for that task."""
    table = {}
    for name, split in splits.items():
        for task, row in zip(split.tasks, split.ids.tolist(), strict=True):
            ids, _ = tokenizer.encode_pair(list(task.prompt), list(answer_of(name, task)))
            assert ids[: tokenizer.prompt_len] == row[: tokenizer.prompt_len]
            table[tuple(row[: tokenizer.prompt_len])] = ids
    return Lookup(table, tokenizer.vocab_size, tokenizer.prompt_len)


def other_correct_program(fam, task):
    """A program other than the canonical answer that the verifier accepts, or None."""
    for n in (1, 2):
        for program in itertools.product(PRIMITIVES, repeat=n):
            if program != task.answer and fam.verify(task, list(program)):
                return list(program)
    return None


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_a_correct_non_canonical_programs_answer_counts_as_correct(objective):
    fam = get_family("programs", seed=0)
    tokenizer, splits = splits_from_family("programs", {"seed": 0})
    test_id = splits["test_id"]
    alternative = {}
    for task in test_id.tasks:
        if (other := other_correct_program(fam, task)) is not None:
            alternative[task.task_id] = other
        if len(alternative) == 5:
            break
    assert len(alternative) == 5
    rows = [i for i, t in enumerate(test_id.tasks) if t.task_id in alternative]
    wrong = next(i for i, t in enumerate(test_id.tasks)
                 if t.task_id not in alternative and fam.verify(t, ["reverse"]) is False)
    split = test_id.subset(rows + [wrong])
    given = {**alternative, split.tasks[-1].task_id: ["reverse"]}
    model = lookup_for(tokenizer, {"test_id": split}, lambda _, t: given[t.task_id])

    results = accuracy_by_split(objective, model, {"test_id": split}, fam, tokenizer, n_steps=2)
    assert results["test_id"] == (6, pytest.approx(5 / 6))       # the verifier: 5 correct answers
    assert results["test_id/exact"] == (6, 0.0)                   # none of them the canonical one
    # The one definition, applied to the decoded answers directly.
    pred = torch.tensor([model.table[tuple(r[: tokenizer.prompt_len].tolist())] for r in split.ids])
    assert answers_correct(fam, tokenizer, split, pred).tolist() == [True] * 5 + [False]
    assert not exact_match(pred, split.ids, split.answer_mask).any()


def test_a_padding_token_inside_an_answer_is_not_accepted():
    fam = get_family("programs", seed=0)
    tokenizer, splits = splits_from_family("programs", {"seed": 0})
    split = splits["train"].subset([next(i for i, t in enumerate(splits["train"].tasks) if len(t.answer) == 1)])
    (task,) = split.tasks
    pred = split.ids.clone()
    cols = split.answer_mask[0].nonzero().flatten()
    assert answers_correct(fam, tokenizer, split, pred).tolist() == [True]     # "prog [PAD]"
    pred[0, cols[0]], pred[0, cols[1]] = tokenizer.pad_id, tokenizer.index[task.answer[0]]
    assert answers_correct(fam, tokenizer, split, pred).tolist() == [False]    # "[PAD] prog"


def clustered_modular():
    """p=5 modular with clusters on every row: train rows and test rows share the clusters."""
    fam = get_family("modular", **P5)
    tokenizer = fam.tokenizer()
    splits = {}
    for name, tasks in fam.splits().items():
        splits[name] = encode_rows(tokenizer, [t.prompt for t in tasks], [t.answer for t in tasks],
                                   [t.task_id for t in tasks], [f"x{int(t.prompt[0]) % 2}" for t in tasks],
                                   tasks=tasks)
    return fam, tokenizer, splits


def wrong_answer(task):
    return (str((int(task.answer[0]) + 1) % 5),)


def test_per_cluster_test_accuracy_ignores_train_rows():
    fam, tokenizer, splits = clustered_modular()
    # Memorised train rows, wrong test rows: a held-out claim must read 0, not a mix.
    model = lookup_for(tokenizer, splits, lambda name, t: t.answer if name == "train" else wrong_answer(t))
    results = accuracy_by_split("mdm", model, splits, fam, tokenizer, n_steps=1)
    assert results["train/cluster:x0"][1] == results["train/cluster:x1"][1] == 1.0
    assert results["test_id/cluster:x0"][1] == results["test_id/cluster:x1"][1] == 0.0
    assert results["test_id/cluster:x0"][0] + results["test_id/cluster:x1"][0] == len(splits["test_id"])
    assert not any(k.startswith("cluster") for k in results)

    cfg = TrainConfig(family="modular", family_params=P5, sampler_steps=1, eval_max_rows=0)
    metrics = estimate(cfg, model, splits, fam, tokenizer, step=0)
    assert metrics["train/cluster:x0/acc"] == metrics["train/cluster:x1/acc"] == 1.0
    assert metrics["test_id/cluster:x0/acc"] == metrics["test_id/cluster:x1/acc"] == 0.0
    assert metrics["train/acc"] == metrics["train/exact"] == 1.0 and metrics["test_id/acc"] == 0.0
    assert {k: v for k, v in metrics.items() if k.endswith("/n")} == {f"{s}/n": len(splits[s]) for s in splits
                                                                      if len(splits[s])}


def test_eval_rows_are_a_seeded_sample_not_the_first_rows():
    tokenizer, splits = splits_from_family("two_hop", {"n_entities": 60, "n_relations": 10,
                                                       "relations_per_entity": 8, "phi": 4.0,
                                                       "ood_fraction": 0.2, "test_size": 500, "seed": 0})
    rows = eval_rows(splits, max_rows=256, seed=0)
    assert set(rows) == set(splits)
    for name, idx in rows.items():
        n = len(splits[name])
        assert len(idx) == min(256, n) and len(set(idx)) == len(idx) and all(0 <= i < n for i in idx)
        assert idx != list(range(len(idx))) if n > 256 else idx == list(range(n))  # small: whole
    assert rows == eval_rows(splits, max_rows=256, seed=0)            # fixed by the seed
    assert rows["train"] != eval_rows(splits, max_rows=256, seed=1)["train"]
    # two_hop lists atomic facts first: the first 256 rows are all atomic, a sample is not.
    train = splits["train"]
    assert {t.spec["kind"] for t in train.tasks[:256]} == {"atomic"}
    assert {train.tasks[i].spec["kind"] for i in rows["train"]} == {"atomic", "inferred"}
    # A small split is used whole; 0 means every row.
    small = {"test_id": splits["test_id"].subset(list(range(10)))}
    assert eval_rows(small, max_rows=256, seed=0) == {"test_id": list(range(10))}
    assert eval_rows(splits, max_rows=0, seed=0)["train"] == list(range(len(train)))


TWO_HOP = {"n_entities": 30, "n_relations": 6, "relations_per_entity": 6, "phi": 3.0,
           "ood_fraction": 0.2, "test_size": 100, "seed": 0}


def test_two_hop_reports_atomic_and_inferred_train_accuracy_and_the_run_keeps_its_eval_rows(tmp_path):
    cfg = TrainConfig(family="two_hop", family_params=TWO_HOP, hidden_size=16, num_layers=1, num_heads=2,
                      batch_size=16, max_steps=3, eval_every=3, eval_max_rows=64, sampler_steps=1,
                      home=str(tmp_path), run_name="th", progress=False)
    result = train(cfg)
    m = result.metrics
    assert {"train/acc", "train/exact", "train_atomic/acc", "train_inferred/acc", "test_id/acc",
            "test_ood/acc"} <= set(m)
    stored = json.loads((result.run_dir / "eval_rows.json").read_text())
    assert set(stored) == {"train", "test_id", "test_ood"} and len(stored["train"]["rows"]) == 64
    # A resumed run evaluates the same rows even when told a different size.
    again = train(load_config("th", ["max_steps=6", "eval_max_rows=8"], home=str(tmp_path)), resume=True)
    assert again.final_step == 6
    assert json.loads((result.run_dir / "eval_rows.json").read_text()) == stored


def test_t_mem_is_on_the_inferred_train_facts(tmp_path, monkeypatch):
    import diffusion.evaluate as evaluate_module

    fake = {"train/acc": 1.0, "train_atomic/acc": 1.0, "train_inferred/acc": 0.5, "test_id/acc": 0.0,
            "train/loss": 0.0, "test_id/loss": 0.0, "weight_norm": 1.0}
    monkeypatch.setattr(evaluate_module, "estimate", lambda *a, **k: dict(fake))
    cfg = TrainConfig(family="two_hop", family_params=TWO_HOP, hidden_size=16, num_layers=1, num_heads=2,
                      batch_size=16, max_steps=2, eval_every=1, home=str(tmp_path), run_name="tm",
                      progress=False)
    assert train(cfg).t_mem is None  # atomic facts memorised, inferred ones not: not memorised


def test_a_snapshot_with_an_unparseable_prompt_is_refused_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from diffusion.data import splits_from_snapshot

    (tmp_path / "meta.json").write_text(json.dumps({"dataset_id": "d", "family": "modular",
                                                    "family_params": P5}))
    for split in ("train", "test_id", "test_ood"):
        pq.write_table(pa.table({
            "task_id": ["bad/1"], "family": ["modular"], "split": [split], "cluster": [None],
            "prompt": [["1", "?", "2", "="]], "answer": [["2"]]}), tmp_path / f"{split}.parquet")
    with pytest.raises(ValueError, match="bad/1"):
        splits_from_snapshot(tmp_path)


@pytest.mark.parametrize("name,params", [("modular", {"p": 7, "operations": ["x+y", "x/y"]}),
                                         ("two_hop", TWO_HOP), ("programs", {})])
def test_every_family_rebuilds_a_task_from_its_prompt_for_its_verifier(name, params):
    params = dict(params)
    fam = get_family(name, seed=int(params.pop("seed", 0)), **params)
    for split in fam.splits().values():
        for task in split[::7]:
            rebuilt = fam.task_from_prompt(task.prompt)
            assert fam.verify(rebuilt, list(task.answer))
            assert fam.kind_of(rebuilt) == fam.kind_of(task)
    with pytest.raises(ValueError, match=name):
        fam.task_from_prompt(("nonsense",))


def test_decode_answer_drops_trailing_padding_only():
    tok = get_family("programs", seed=0).tokenizer()
    sort, pad = tok.index["sort"], tok.pad_id
    assert tok.decode_answer([sort, pad]) == ["sort"]
    assert tok.decode_answer([pad, sort]) == ["[PAD]", "sort"]
    assert tok.decode_answer([pad, pad]) == []
