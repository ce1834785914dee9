"""Training data as fixed-length token tensors, from a task family or a dataset snapshot.

A row is (prompt symbols, answer symbols, cluster or None); the tokenizer is always the
family's, so a model trained on a snapshot reads the same vocabulary as the family's agents.

Snapshot directory (written by curation):
    meta.json           {"dataset_id", "family", "family_params": {..., "seed"}}
    train.parquet, test_id.parquet, test_ood.parquet
                        task_id, family, split, cluster (nullable), prompt list<str>, answer list<str>
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.tasks import SPLITS, Task, TaskFamily, Tokenizer, get_family
from storage.home import is_url
from storage.shared import local_copy

SNAPSHOT_COLUMNS = ("task_id", "family", "split", "cluster", "prompt", "answer")


@dataclass
class EncodedSplit:
    ids: torch.Tensor             # (N, T) long: prompt padded to prompt_len, then answer
    answer_mask: torch.Tensor     # (N, T) bool: True at answer positions
    task_ids: list[str]
    clusters: list[str | None]
    tasks: list[Task] | None = None  # what the family's verifier checks each row's answer against

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, answer_mask) of these rows: a training batch."""
        return self.ids[idx], self.answer_mask[idx]

    def subset(self, rows: Sequence[int]) -> EncodedSplit:
        """These rows, in this order."""
        rows = list(rows)
        index = torch.tensor(rows, dtype=torch.long)
        return EncodedSplit(self.ids[index], self.answer_mask[index], [self.task_ids[i] for i in rows],
                            [self.clusters[i] for i in rows],
                            [self.tasks[i] for i in rows] if self.tasks is not None else None)


def eval_rows(splits: dict[str, EncodedSplit], max_rows: int, seed: int) -> dict[str, list[int]]:
    """Rows each split is evaluated on: a seeded uniform sample of `max_rows` (sorted), or the whole
    split when it is no larger (or max_rows is 0). Not the first rows: a split's order is its
    generator's (two_hop lists every atomic fact before the inferred ones)."""
    out = {}
    for name, split in splits.items():
        n = len(split)
        if not max_rows or n <= max_rows:
            out[name] = list(range(n))
        else:  # one generator per split, seeded by its name: one split's sample never moves another's
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            out[name] = sorted(torch.randperm(n, generator=g)[:max_rows].tolist())
    return out


def encode_rows(
    tokenizer: Tokenizer, prompts: Sequence[Sequence[str]], answers: Sequence[Sequence[str]],
    task_ids: Sequence[str], clusters: Sequence[str | None] | None = None,
    tasks: Sequence[Task] | None = None,
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
        tasks=list(tasks) if tasks is not None else None,
    )


@functools.lru_cache(maxsize=8)
def _family(name: str, params_json: str) -> TaskFamily:
    params = json.loads(params_json)
    return get_family(name, seed=int(params.pop("seed", 0)), **params)


def family_from_params(name: str, params: dict) -> TaskFamily:
    """The task family (a deterministic world, built once per process: two_hop's graph, programs' list)."""
    return _family(name, json.dumps(params, sort_keys=True))


def splits_from_family(name: str, params: dict) -> tuple[Tokenizer, dict[str, EncodedSplit]]:
    family = family_from_params(name, params)
    tokenizer = family.tokenizer()
    out = {}
    for split, tasks in family.splits().items():
        out[split] = encode_rows(tokenizer, [t.prompt for t in tasks], [t.answer for t in tasks],
                                 [t.task_id for t in tasks], tasks=tasks)
    return tokenizer, out


def snapshot_dir(directory: str | Path) -> Path:
    """A snapshot directory, or a local copy of one published on the shared home (a URL)."""
    return local_copy(str(directory), "meta.json") if is_url(directory) else Path(directory)


def read_snapshot_meta(directory: str | Path) -> dict:
    directory = snapshot_dir(directory)
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

    directory = snapshot_dir(directory)
    meta = read_snapshot_meta(directory)
    family = family_from_params(meta["family"], meta["family_params"])
    tokenizer = family.tokenizer()
    out = {}
    for split in SPLITS:
        path = directory / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"snapshot {directory} has no {split}.parquet")
        table = pq.read_table(path)
        _check_columns(table.column_names, path)
        out[split] = encode_snapshot_rows(table.select(list(SNAPSHOT_COLUMNS)).to_pydict(), family, tokenizer,
                                          split, path)
    return tokenizer, out, meta


def encode_snapshot_rows(cols: dict[str, list], family: TaskFamily, tokenizer: Tokenizer, split: str,
                         source: Path) -> EncodedSplit:
    """Snapshot rows (columns as lists) encoded, each with the task its verifier checks."""
    tasks = []
    for task_id, prompt, answer in zip(cols["task_id"], cols["prompt"], cols["answer"], strict=True):
        try:
            tasks.append(family.task_from_prompt(prompt, answer, task_id=task_id, split=split))
        except ValueError as err:
            raise ValueError(f"{source}: row {task_id!r}: {err}") from err
    return encode_rows(tokenizer, cols["prompt"], cols["answer"], cols["task_id"], cols["cluster"], tasks=tasks)


def _check_columns(names: Sequence[str], source: Path) -> None:
    missing = [c for c in SNAPSHOT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{source} lacks column(s) {', '.join(missing)}")


class StreamedSplit:
    """A snapshot split read from its HF `datasets` export (hf/: Arrow files, memory-mapped), encoded a
    batch at a time: the rows stay on disk, so a snapshot larger than memory trains like one that fits
    (the same batches, the same numbers). Evaluation rows are encoded once (`subset`)."""

    def __init__(self, rows, family: TaskFamily, tokenizer: Tokenizer, split: str, source: Path):
        self.rows, self.family, self.tokenizer, self.split, self.source = rows, family, tokenizer, split, source

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cols = self.rows[idx.tolist()]
        encoded = encode_rows(self.tokenizer, cols["prompt"], cols["answer"], cols["task_id"])
        return encoded.ids, encoded.answer_mask

    def subset(self, rows: Sequence[int]) -> EncodedSplit:
        return encode_snapshot_rows(self.rows[list(rows)], self.family, self.tokenizer, self.split, self.source)


def streamed_snapshot(directory: str | Path) -> tuple[Tokenizer, dict[str, StreamedSplit]]:
    """The snapshot's splits from its hf/ export (`datasets.load_from_disk` memory-maps them)."""
    # imported here: HF datasets takes a second to import, and only a streamed run needs it
    from datasets import load_from_disk

    directory = snapshot_dir(directory)  # a URL's local copy: memory-mapped from this machine's disk
    meta = read_snapshot_meta(directory)
    family = family_from_params(meta["family"], meta["family_params"])
    hf = directory / "hf"
    if not (hf / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"snapshot {directory} has no hf/ export to stream from "
                                "(`grokloop dataset build` writes one beside the Parquet files)")
    parts = load_from_disk(str(hf))
    missing = [s for s in SPLITS if s not in parts]
    if missing:
        raise ValueError(f"{hf} lacks split(s) {', '.join(missing)}")
    tokenizer = family.tokenizer()
    for split in SPLITS:
        _check_columns(parts[split].column_names, hf / split)
    return tokenizer, {s: StreamedSplit(parts[s], family, tokenizer, s, hf / s) for s in SPLITS}


def load_family(cfg) -> TaskFamily:
    """The family a TrainConfig's rows come from (the snapshot's, if `cfg.dataset`): its verifier scores them."""
    if cfg.dataset:
        meta = read_snapshot_meta(cfg.dataset)
        return family_from_params(meta["family"], meta["family_params"])
    return family_from_params(cfg.family, cfg.family_params)


def load_splits(cfg) -> tuple[Tokenizer, dict[str, EncodedSplit | StreamedSplit]]:
    """The tokenizer and {train, test_id, test_ood} for a TrainConfig (snapshot if `cfg.dataset`, read
    a batch at a time if `cfg.stream`)."""
    if cfg.dataset and cfg.stream:
        return streamed_snapshot(cfg.dataset)
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
