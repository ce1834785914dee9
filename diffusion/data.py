"""Training data as fixed-length token tensors, from a task family or a dataset snapshot.

A row is (prompt symbols, answer symbols, cluster or None); the tokenizer is always the
family's, so a model trained on a snapshot reads the same vocabulary as the family's agents.

Snapshot directory (written by curation):
    meta.json           {"dataset_id", "family", "family_params": {..., "seed"}}
    train.parquet, test_id.parquet, test_ood.parquet
                        task_id, family, split, cluster (nullable), prompt list<str>, answer list<str>
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.tasks import SPLITS, Tokenizer, get_family

SNAPSHOT_COLUMNS = ("task_id", "family", "split", "cluster", "prompt", "answer")


@dataclass
class EncodedSplit:
    ids: torch.Tensor             # (N, T) long: prompt padded to prompt_len, then answer
    answer_mask: torch.Tensor     # (N, T) bool: True at answer positions
    task_ids: list[str]
    clusters: list[str | None]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take(self, n: int) -> EncodedSplit:
        """The first n rows (evaluation on a fixed subset)."""
        return EncodedSplit(self.ids[:n], self.answer_mask[:n], self.task_ids[:n], self.clusters[:n])


def encode_rows(
    tokenizer: Tokenizer, prompts: Sequence[Sequence[str]], answers: Sequence[Sequence[str]],
    task_ids: Sequence[str], clusters: Sequence[str | None] | None = None,
) -> EncodedSplit:
    if not (len(prompts) == len(answers) == len(task_ids)):
        raise ValueError(
            f"rows disagree in length: {len(prompts)} prompts, {len(answers)} answers, {len(task_ids)} ids"
        )
    ids, masks = [], []
    for task_id, prompt, answer in zip(task_ids, prompts, answers, strict=True):
        if len(prompt) > tokenizer.prompt_len or len(answer) > tokenizer.answer_len:
            raise ValueError(
                f"row {task_id!r} does not fit the tokenizer: prompt {len(prompt)} > "
                f"{tokenizer.prompt_len} or answer {len(answer)} > {tokenizer.answer_len} symbols"
            )
        row, mask = tokenizer.encode_pair(list(prompt), list(answer))
        ids.append(row)
        masks.append(mask)
    T = tokenizer.seq_len
    return EncodedSplit(
        ids=torch.tensor(ids, dtype=torch.long).view(-1, T),
        answer_mask=torch.tensor(masks, dtype=torch.bool).view(-1, T),
        task_ids=list(task_ids),
        clusters=list(clusters) if clusters is not None else [None] * len(task_ids),
    )


def splits_from_family(name: str, params: dict) -> tuple[Tokenizer, dict[str, EncodedSplit]]:
    params = dict(params)
    family = get_family(name, seed=int(params.pop("seed", 0)), **params)
    tokenizer = family.tokenizer()
    out = {}
    for split, tasks in family.splits().items():
        out[split] = encode_rows(tokenizer, [t.prompt for t in tasks], [t.answer for t in tasks],
                                 [t.task_id for t in tasks])
    return tokenizer, out


def read_snapshot_meta(directory: str | Path) -> dict:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not a dataset snapshot: no meta.json")
    meta = json.loads(meta_path.read_text())
    missing = [k for k in ("dataset_id", "family", "family_params") if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks {', '.join(missing)}")
    return meta


def splits_from_snapshot(directory: str | Path) -> tuple[Tokenizer, dict[str, EncodedSplit], dict]:
    import pyarrow.parquet as pq

    directory = Path(directory)
    meta = read_snapshot_meta(directory)
    params = dict(meta["family_params"])
    family = get_family(meta["family"], seed=int(params.pop("seed", 0)), **params)
    tokenizer = family.tokenizer()
    out = {}
    for split in SPLITS:
        path = directory / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"snapshot {directory} has no {split}.parquet")
        table = pq.read_table(path)
        missing = [c for c in SNAPSHOT_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
        cols = table.select(list(SNAPSHOT_COLUMNS)).to_pydict()
        out[split] = encode_rows(tokenizer, cols["prompt"], cols["answer"], cols["task_id"], cols["cluster"])
    return tokenizer, out, meta


def load_splits(cfg) -> tuple[Tokenizer, dict[str, EncodedSplit]]:
    """The tokenizer and {train, test_id, test_ood} for a TrainConfig (snapshot if `cfg.dataset`)."""
    if cfg.dataset:
        tokenizer, splits, _ = splits_from_snapshot(cfg.dataset)
        return tokenizer, splits
    return splits_from_family(cfg.family, cfg.family_params)


class BatchSampler:
    """Epoch-wise shuffled batches from its own generator; `state_dict` is the exact data position.
    `keep_last`: an epoch's last, smaller batch is a step of its own (else those rows wait an epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, keep_last: bool = False):
        if n == 0:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.keep_last = n, min(batch_size, n), keep_last
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.n or (self.pos + self.batch_size > self.n and not self.keep_last):
            self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
