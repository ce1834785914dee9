"""What every task family provides: tasks with splits, a verifier, a tokenizer, tools, and the
moves that solve a task with those tools (what the agents' policies use; agents/policies.py has
no family-specific code, so a new family plugs in here and nowhere else).

A task is rendered as symbols: `prompt` (what the model/agent is given) and
`answer` (the canonical solution). The tokenizer maps symbols to ids over a
small fixed vocabulary with `[PAD]` and `[MASK]`; a training row is
`prompt + answer`, padded to the family's fixed `prompt_len + answer_len`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SPLITS = ("train", "test_id", "test_ood")
PAD, MASK, UNK = "[PAD]", "[MASK]", "[UNK]"


@dataclass(frozen=True)
class Task:
    family: str
    task_id: str                    # deterministic: same family parameters + seed -> same id
    split: str                      # train | test_id | test_ood
    prompt: tuple[str, ...]         # symbols shown to the solver
    answer: tuple[str, ...]         # canonical answer symbols
    operation: str                  # op name, relation chain "r3>r7", or program "sort|take2"
    difficulty: int                 # e.g. number of hops / program length
    spec: dict = field(default_factory=dict, hash=False, compare=False)  # JSON-able, re-renders the task

    def ref(self) -> dict[str, Any]:
        """The task as the logging SDK records it."""
        return {
            "family": self.family, "task_id": self.task_id, "split": self.split,
            "operation": self.operation, "difficulty": self.difficulty,
            "spec": {**self.spec, "prompt": list(self.prompt), "answer": list(self.answer)},
        }


class Tokenizer:
    """A fixed symbol vocabulary. Special tokens first: [PAD]=0, [MASK]=1, [UNK]=2."""

    def __init__(self, symbols: Iterable[str], prompt_len: int, answer_len: int):
        specials = [PAD, MASK, UNK]
        rest = [s for s in dict.fromkeys(symbols) if s not in specials]
        self.vocab: list[str] = specials + rest
        self.index = {s: i for i, s in enumerate(self.vocab)}
        self.prompt_len = prompt_len
        self.answer_len = answer_len

    pad_id, mask_id, unk_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.answer_len

    def encode(self, symbols: Sequence[str], length: int | None = None) -> list[int]:
        ids = [self.index.get(s, self.unk_id) for s in symbols]
        if length is not None:
            if len(ids) > length:
                raise ValueError(f"{len(ids)} symbols do not fit in {length}: {list(symbols)}")
            ids += [self.pad_id] * (length - len(ids))
        return ids

    def decode_answer(self, ids: Iterable[int]) -> list[str]:
        """An answer's symbols: trailing padding dropped, padding inside kept as [PAD] (so the verifier
        rejects "[PAD] sort", which is not an answer the row layout allows)."""
        symbols = [self.vocab[i] if 0 <= i < len(self.vocab) else UNK for i in ids]
        while symbols and symbols[-1] == PAD:
            symbols.pop()
        return symbols

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols for ids, padding dropped (mask and unknown kept, so a bad sample stays visible)."""
        return [self.vocab[i] if 0 <= i < len(self.vocab) else UNK for i in ids if i != self.pad_id]

    def encode_pair(self, prompt: Sequence[str], answer: Sequence[str]) -> tuple[list[int], list[int]]:
        """(ids, answer_mask) of one row: prompt padded to prompt_len, answer to answer_len."""
        ids = self.encode(prompt, self.prompt_len) + self.encode(answer, self.answer_len)
        mask = [0] * self.prompt_len + [1] * self.answer_len
        return ids, mask


class Moves(Protocol):
    """How a family's `solve` acts: the policy passes one in and logs every move as a step."""

    def call(self, tool: str, **arguments: Any) -> Any:
        """Call one of the task's tools; its result, or None if the call failed."""

    def note(self, **fields: Any) -> None:
        """A step that is not a tool call (kind "message"), e.g. how long a search took."""


class TaskFamily:
    """Subclasses generate all tasks from `seed` and their size parameters in `__init__`."""

    name: str = ""
    # The kind of train row that must be memorised before it can be generalised (T_mem is measured on
    # it when a split mixes kinds, e.g. two_hop's inferred facts beside its atomic ones).
    memorized_kind: str | None = None

    def splits(self) -> dict[str, list[Task]]:
        """{"train": [...], "test_id": [...], "test_ood": [...]} — disjoint, deterministic per seed.
        A family without an OOD notion returns an empty test_ood list."""
        raise NotImplementedError

    def tokenizer(self) -> Tokenizer:
        raise NotImplementedError

    def verify(self, task: Task, answer: Sequence[str]) -> bool:
        """Reality test: is `answer` a correct solution of `task`? (Not just equal to the canonical one
        where several answers are correct, e.g. two programs with the same behaviour.)"""
        raise NotImplementedError

    def task_from_prompt(self, prompt: Sequence[str], answer: Sequence[str] = (), *, task_id: str = "",
                         split: str = "train") -> Task:
        """The task a rendered prompt states, enough for `verify` (a dataset row carries only its prompt
        and answer symbols). A prompt the family cannot have rendered -> ValueError naming the family."""
        raise NotImplementedError

    def kind_of(self, task: Task) -> str | None:
        """A sub-population of rows reported separately (two_hop: atomic | inferred); None if none."""
        return None

    def tools(self, task: Task) -> dict[str, Callable[..., Any]]:
        """The environment an agent acts in: tool name -> callable returning the observation."""
        raise NotImplementedError

    def solve(self, task: Task, moves: Moves) -> list[str] | None:
        """The moves that solve `task`, made through `moves.call(tool, ...)`; the answer, or None when a
        move failed. It reads only `task.prompt` (what an agent is shown), so a policy that corrupts
        the prompt gets the moves a mistaken agent would make."""
        raise NotImplementedError

    def answer_symbols(self, task: Task) -> list[str]:
        """The symbols an answer to `task` is made of (a policy's wrong answer stays well-formed: an
        entity for an entity). Default: the whole vocabulary but the special tokens."""
        return [s for s in self.tokenizer().vocab if s not in (PAD, MASK, UNK)]

    def task_from_ref(self, ref: dict) -> Task:
        """Rebuild a Task from what the SDK logged (its `ref()`)."""
        spec = dict(ref.get("spec") or {})
        prompt, answer = tuple(spec.pop("prompt", ())), tuple(spec.pop("answer", ()))
        return Task(family=ref["family"], task_id=ref["task_id"], split=ref.get("split") or "train",
                    prompt=prompt, answer=answer, operation=ref.get("operation") or "",
                    difficulty=int(ref.get("difficulty") or 0), spec=spec)
