"""String operations, composed: apply one or two operations to a short word.

    fam = StringsFamily(seed=0, n_letters=4, word_len=4)
    task = fam.splits()["test_ood"][0]   # prompt ("b", "a", "d", "c", "sort", "rotl"), answer ("b", "c", "d", "a")

A word is `word_len` letters of an alphabet of `n_letters`; an operation maps a word to a word
of the same length (reverse, rotate left or right, swap the first two letters, sort, shift every
letter to the next one of the alphabet). A task is a word and one operation (single) or two
applied left to right (composed); the answer is the resulting word.

Splits, in the spirit of two_hop (the single operations are the atomic facts):
- train:    every single operation on every word, and the ID compositions on the train words;
- test_id:  ID compositions on the held-out words (`test_words` of them): each operation and
            each composition seen in training, never on these words;
- test_ood: the held-out compositions (`ood_fraction` of the ordered pairs) on the held-out
            words: both operations trained, alone and in other compositions, never together.
Test splits are seeded samples of at most `test_size` tasks.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable, Sequence

from agents.tasks.base import Moves, Task, TaskFamily, Tokenizer

Word = list[str]


def _operations(letters: str) -> dict[str, Callable[[Word], Word]]:
    following = {a: letters[(i + 1) % len(letters)] for i, a in enumerate(letters)}
    return {
        "reverse": lambda w: w[::-1],
        "rotl": lambda w: w[1:] + w[:1],
        "rotr": lambda w: w[-1:] + w[:-1],
        "swap": lambda w: w[1:2] + w[:1] + w[2:],
        "sort": sorted,
        "shift": lambda w: [following[a] for a in w],
    }


class StringsFamily(TaskFamily):
    name = "strings"
    memorized_kind = "composed"  # single operations are recall; compositions are what grokking is about

    def __init__(self, seed: int = 0, n_letters: int = 4, word_len: int = 4, ood_fraction: float = 0.25,
                 test_words: float = 0.5, test_size: int = 500):
        if not 2 <= n_letters <= 26:
            raise ValueError(f"n_letters must be in [2, 26], got {n_letters}")
        if word_len < 2:
            raise ValueError(f"word_len must be >= 2, got {word_len}")
        if not 0.0 < ood_fraction < 1.0 or not 0.0 < test_words < 1.0:
            raise ValueError(f"ood_fraction and test_words must be in (0, 1), got {ood_fraction}, {test_words}")
        if test_size < 1:
            raise ValueError(f"test_size must be >= 1, got {test_size}")
        self.seed, self.n_letters, self.word_len = int(seed), int(n_letters), int(word_len)
        self.ood_fraction, self.test_words, self.test_size = float(ood_fraction), float(test_words), int(test_size)
        self.letters = string.ascii_lowercase[: self.n_letters]
        self.operations = _operations(self.letters)
        self.config_tag = (f"a{self.n_letters}-w{self.word_len}-o{self.ood_fraction:g}-t{self.test_words:g}"
                           f"-n{self.test_size}-s{self.seed}")
        self._splits: dict[str, list[Task]] | None = None

    def run(self, ops: Sequence[str], word: Sequence[str]) -> Word:
        """The word after the operations, left to right; an unknown operation or letter -> ValueError."""
        bad = [a for a in word if a not in self.letters]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a letter of {self.letters!r}")
        out = list(word)
        for op in ops:
            if op not in self.operations:
                raise ValueError(f"unknown operation {op!r}; known: {', '.join(self.operations)}")
            out = self.operations[op](out)
        return out

    def splits(self) -> dict[str, list[Task]]:
        if self._splits is not None:
            return self._splits
        rng = random.Random(f"strings/{self.seed}")
        words = [list(w) for w in itertools.product(self.letters, repeat=self.word_len)]
        rng.shuffle(words)
        n_test_words = max(1, round(self.test_words * len(words)))
        train_words, test_words = words[n_test_words:], words[:n_test_words]
        pairs = list(itertools.product(self.operations, repeat=2))
        rng.shuffle(pairs)
        n_ood = max(1, round(self.ood_fraction * len(pairs)))
        ood_pairs, id_pairs = pairs[:n_ood], pairs[n_ood:]
        train = [self._task(w, (op,), "train") for w in words for op in self.operations]
        train += [self._task(w, pair, "train") for w in train_words for pair in id_pairs]
        test_id = [self._task(w, pair, "test_id") for w in test_words for pair in id_pairs]
        test_ood = [self._task(w, pair, "test_ood") for w in test_words for pair in ood_pairs]
        self._splits = {"train": train,
                        "test_id": rng.sample(test_id, min(self.test_size, len(test_id))),
                        "test_ood": rng.sample(test_ood, min(self.test_size, len(test_ood)))}
        return self._splits

    def _task(self, word: Word, ops: Sequence[str], split: str) -> Task:
        operation = ">".join(ops)
        return Task(family=self.name, task_id=f"strings/{self.config_tag}/{''.join(word)}/{operation}",
                    split=split, prompt=(*word, *ops), answer=tuple(self.run(ops, word)), operation=operation,
                    difficulty=len(ops), spec={"kind": "single" if len(ops) == 1 else "composed"})

    def task_from_prompt(self, prompt: Sequence[str], answer: Sequence[str] = (), *, task_id: str = "",
                         split: str = "train") -> Task:
        prompt = tuple(prompt)
        word, ops = prompt[: self.word_len], prompt[self.word_len:]
        if (len(word) != self.word_len or not all(a in self.letters for a in word) or len(ops) not in (1, 2)
                or not all(op in self.operations for op in ops)):
            raise ValueError(f"strings: {list(prompt)} is not {self.word_len} letters of {self.letters!r} and one "
                             f"or two of {', '.join(self.operations)}")
        return Task(family=self.name, task_id=task_id, split=split, prompt=prompt, answer=tuple(answer),
                    operation=">".join(ops), difficulty=len(ops),
                    spec={"kind": "single" if len(ops) == 1 else "composed"})

    def kind_of(self, task: Task) -> str | None:
        return "single" if task.difficulty == 1 else "composed"

    def tokenizer(self) -> Tokenizer:
        return Tokenizer([*self.letters, *self.operations], prompt_len=self.word_len + 2, answer_len=self.word_len)

    def verify(self, task: Task, answer: Sequence[str]) -> bool:
        if answer is None or isinstance(answer, str):
            return False
        word, ops = task.prompt[: self.word_len], task.prompt[self.word_len:]
        try:
            return list(answer) == self.run(ops, word)
        except ValueError:
            return False  # a prompt this family cannot have made has no correct answer

    def tools(self, task: Task) -> dict[str, Callable]:
        """`apply(op, word)`: one operation on a word (a list of letters)."""
        return {"apply": lambda op, word: self.run([op], word)}

    def solve(self, task: Task, moves: Moves) -> list[str] | None:
        """Apply the prompt's operations to its word, one call each."""
        word: list[str] | None = list(task.prompt[: self.word_len])
        for op in task.prompt[self.word_len:]:
            word = moves.call("apply", op=op, word=word)
            if word is None:
                return None
        return word

    def answer_symbols(self, task: Task) -> list[str]:
        return list(self.letters)
