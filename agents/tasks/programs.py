"""List programs composed from primitives: program synthesis from input/output examples.

    fam = ProgramsFamily(seed=0)
    task = fam.splits()["train"][0]
    # prompt: 3 1 4 -> 4 2 5 ; 0 9 -> 1 10 ; ...     answer: ("+1",)  or ("sort", "take2")

A program is a sequence of at most `max_len` primitives (map +k / *k, filter,
reverse, sort, take k, drop k), applied left to right to a list of small ints.
Programs that behave identically on a large probe set are one program; the
shortest (then first in primitive order) stands for them. Each task shows
`n_examples` input/output pairs and asks for the program; any program with the
right behaviour on the examples is correct.

Labels: by default a task's answer is the program that made its examples ("generating"); with two
short examples about half the tasks fit more than one program, so that label is partly arbitrary and a
model can only match it by memorising it (`label_ambiguity`). `labels="canonical"` answers each train and
test_id task with the first trained program, shortest first, that fits its examples: one label per
prompt, a function of the examples. The verifier accepts any fitting program either way.

Splits: a seeded share `ood_fraction` of the length-`max_len` compositions is held
out as `test_ood` (their primitives all occur in training, in other compositions);
the other programs give `train` tasks and `test_id` tasks on inputs never used in
that program's training tasks. A `test_ood` task's examples fit no trained program:
otherwise a program seen in training would answer it (15% of them at the default
size, 42% with two examples of 2-4 items) and OOD accuracy would not measure
composition.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from agents.tasks.base import Moves, Task, TaskFamily, Tokenizer

MAPS: dict[str, Callable[[int], int]] = {
    "+1": lambda v: v + 1, "+2": lambda v: v + 2, "+3": lambda v: v + 3, "*2": lambda v: v * 2,
}
FILTERS: dict[str, Callable[[int], bool]] = {
    "even": lambda v: v % 2 == 0, "odd": lambda v: v % 2 == 1, ">4": lambda v: v > 4,
}


def _primitives() -> dict[str, Callable[[list[int]], list[int]]]:
    prims: dict[str, Callable[[list[int]], list[int]]] = {}
    for name, f in MAPS.items():
        prims[name] = lambda xs, f=f: [f(v) for v in xs]
    for name, keep in FILTERS.items():
        prims[name] = lambda xs, keep=keep: [v for v in xs if keep(v)]
    prims["reverse"] = lambda xs: xs[::-1]
    prims["sort"] = sorted
    for k in (1, 2):
        prims[f"take{k + 1}"] = lambda xs, k=k: xs[: k + 1]
        prims[f"drop{k}"] = lambda xs, k=k: xs[k:]
    return prims


PRIMITIVES = _primitives()
ARROW, SEP = "->", ";"
LABELS = ("generating", "canonical")


def run_program(program: Sequence[str], xs: Sequence[int]) -> list[int]:
    """Apply the primitives left to right. Unknown primitive -> ValueError naming it."""
    out = list(xs)
    for p in program:
        if p not in PRIMITIVES:
            raise ValueError(f"unknown primitive {p!r}; known: {', '.join(PRIMITIVES)}")
        out = PRIMITIVES[p](out)
    return out


def fits(program: Sequence[str], inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> bool:
    """Whether `program` turns every input into its output."""
    return all(run_program(program, xs) == list(ys) for xs, ys in zip(inputs, outputs, strict=True))


def first_fit(programs: Sequence[tuple[str, ...]], task: Task) -> tuple[str, ...]:
    """The first of `programs` that fits the task's examples (StopIteration when none does)."""
    return next(p for p in programs if fits(p, task.spec["inputs"], task.spec["outputs"]))


def label_ambiguity(tasks: Sequence[Task], programs: Sequence[Sequence[str]]) -> tuple[float, float]:
    """(share of tasks whose examples more than one of `programs` fits, the exact-match ceiling). Inputs are
    drawn alike for every program, so each program that fits a task's examples is equally likely to have made
    them: the best any function of the prompt can do is to name the generating one with probability 1/k,
    k fitting programs. A model that matches more training labels than that has memorised them; the verifier
    (accuracy) counts every fitting program right."""
    counts = [sum(fits(p, t.spec["inputs"], t.spec["outputs"]) for p in programs) for t in tasks]
    if not counts or min(counts) < 1:
        raise ValueError("label_ambiguity needs tasks whose own program is among `programs`")
    return sum(k > 1 for k in counts) / len(counts), sum(1 / k for k in counts) / len(counts)


def parse_program(program: str | Sequence[str]) -> list[str]:
    """"sort|take2" or ["sort", "take2"] -> ["sort", "take2"]."""
    return [p for p in program.split("|") if p] if isinstance(program, str) else list(program)


class ProgramsFamily(TaskFamily):
    name = "programs"

    def __init__(self, seed: int = 0, max_len: int = 2, n_examples: int = 3,
                 list_len: tuple[int, int] = (3, 5), max_value: int = 9, ood_fraction: float = 0.2,
                 train_per_program: int = 40, test_per_program: int = 10, labels: str = "generating"):
        lo, hi = list_len
        if not 1 <= lo <= hi:
            raise ValueError(f"list_len must be (lo, hi) with 1 <= lo <= hi, got {list_len}")
        if max_len < 1 or n_examples < 1 or max_value < 1:
            raise ValueError("max_len, n_examples and max_value must be >= 1")
        if not 0.0 <= ood_fraction < 1.0:
            raise ValueError(f"ood_fraction must be in [0, 1), got {ood_fraction}")
        if labels not in LABELS:
            raise ValueError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
        self.seed, self.max_len, self.n_examples = int(seed), int(max_len), int(n_examples)
        self.list_len, self.max_value, self.ood_fraction = (int(lo), int(hi)), int(max_value), float(ood_fraction)
        self.train_per_program, self.test_per_program = int(train_per_program), int(test_per_program)
        self.labels = labels
        # "-u": test_ood examples fit no trained program (task ids of the earlier splits differ)
        self.config_tag = (f"L{self.max_len}-x{self.n_examples}-n{lo}_{hi}-v{self.max_value}"
                           f"-o{self.ood_fraction:g}-u{'-c' * (labels == 'canonical')}-s{self.seed}")
        self.programs = self._distinct_programs()
        self._splits: dict[str, list[Task]] | None = None

    def _random_list(self, rng: random.Random) -> list[int]:
        return [rng.randint(0, self.max_value) for _ in range(rng.randint(*self.list_len))]

    def _distinct_programs(self) -> list[tuple[str, ...]]:
        """One program per behaviour (on a fixed probe set), shortest first; never the identity
        or one whose output is always empty."""
        probe_rng = random.Random(1234)  # the probe set is part of the definition, not of the seed
        probes = [self._random_list(probe_rng) for _ in range(200)]
        seen = {tuple(map(tuple, probes))}  # the identity's behaviour
        out = []
        for n in range(1, self.max_len + 1):
            for program in itertools.product(PRIMITIVES, repeat=n):
                behaviour = tuple(tuple(run_program(program, xs)) for xs in probes)
                if behaviour in seen or not any(behaviour):
                    continue
                seen.add(behaviour)
                out.append(program)
        return out

    def splits(self) -> dict[str, list[Task]]:
        if self._splits is not None:
            return self._splits
        rng = random.Random(f"programs/{self.seed}")
        longest = [p for p in self.programs if len(p) == self.max_len]
        held_out = set(rng.sample(longest, round(self.ood_fraction * len(longest)))) if self.max_len > 1 else set()
        trained = [p for p in self.programs if p not in held_out]
        out: dict[str, list[Task]] = {"train": [], "test_id": [], "test_ood": []}
        for program in self.programs:
            used: set[tuple[int, ...]] = set()
            if program in held_out:
                out["test_ood"] += self._tasks(program, "test_ood", self.test_per_program, rng, used, trained)
            else:
                out["train"] += self._tasks(program, "train", self.train_per_program, rng, used)
                # `used` now holds every training input of this program: test_id inputs avoid them.
                out["test_id"] += self._tasks(program, "test_id", self.test_per_program, rng, used)
        if self.labels == "canonical":  # the generating program fits, so there is always one; a held-out
            for split in ("train", "test_id"):  # program is never a label, as with generating labels
                out[split] = [replace(t, answer=first_fit(trained, t)) for t in out[split]]
        self._splits = out
        return out

    def _tasks(self, program: tuple[str, ...], split: str, n: int, rng: random.Random,
               used: set[tuple[int, ...]], excluded: Sequence[tuple[str, ...]] = ()) -> list[Task]:
        """Up to n tasks of `program` on fresh inputs; none whose examples one of `excluded` also fits."""
        tasks: list[Task] = []
        for _ in range(n * 20):  # bounded retries: a program may have few informative inputs
            if len(tasks) == n:
                break
            inputs = [self._random_list(rng) for _ in range(self.n_examples)]
            keys = [tuple(xs) for xs in inputs]
            if any(key in used for key in keys) or len(set(keys)) < len(keys):
                continue
            outputs = [run_program(program, xs) for xs in inputs]
            if not any(outputs):
                continue  # all-empty outputs say nothing about the program
            if any(fits(other, inputs, outputs) for other in excluded):
                continue
            used.update(keys)
            tasks.append(self._task(program, inputs, outputs, split, len(tasks)))
        return tasks

    def _task(self, program: tuple[str, ...], inputs: list[list[int]], outputs: list[list[int]],
              split: str, i: int) -> Task:
        prompt: list[str] = []
        for xs, ys in zip(inputs, outputs, strict=True):
            prompt += [str(v) for v in xs] + [ARROW] + [str(v) for v in ys] + [SEP]
        op = "|".join(program)
        return Task(family=self.name, task_id=f"programs/{self.config_tag}/{op}/{split}/{i}", split=split,
                    prompt=tuple(prompt), answer=program, operation=op, difficulty=len(program),
                    spec={"inputs": inputs, "outputs": outputs})

    def task_from_prompt(self, prompt: Sequence[str], answer: Sequence[str] = (), *, task_id: str = "",
                         split: str = "train") -> Task:
        """Parse "xs -> ys ; xs -> ys ; ..." back into the examples the verifier checks."""
        inputs, outputs = read_examples(prompt)
        return Task(family=self.name, task_id=task_id, split=split, prompt=tuple(prompt),
                    answer=tuple(answer), operation="|".join(answer), difficulty=len(answer),
                    spec={"inputs": inputs, "outputs": outputs})

    def tokenizer(self) -> Tokenizer:
        top = self.max_value
        for _ in range(self.max_len):
            top = max(f(top) for f in MAPS.values())
        symbols = [str(v) for v in range(top + 1)] + [ARROW, SEP] + list(PRIMITIVES)
        prompt_len = self.n_examples * (2 * self.list_len[1] + 2)
        return Tokenizer(symbols, prompt_len=prompt_len, answer_len=self.max_len)

    def verify(self, task: Task, answer: Sequence[str]) -> bool:
        if answer is None or isinstance(answer, str):
            return False
        program = list(answer)
        if not program or any(p not in PRIMITIVES for p in program):
            return False  # a sample with [MASK]/[UNK] or a number where a primitive belongs
        return fits(program, task.spec["inputs"], task.spec["outputs"])

    def tools(self, task: Task) -> dict[str, Callable]:
        """`apply(primitive, xs)` one primitive; `run(program, xs)` a whole program ("a|b" or list)."""
        return {
            "apply": lambda primitive, xs: run_program([primitive], xs),
            "run": lambda program, xs: run_program(parse_program(program), xs),
        }

    def solve(self, task: Task, moves: Moves) -> list[str] | None:
        """Enumerate compositions, shortest first; check candidates in the head, then run the one that
        fits every example through the environment."""
        try:
            inputs, outputs = read_examples(task.prompt)
        except ValueError as err:
            moves.note(observation={"unreadable": str(err)})
            return None
        for tried, program in enumerate(compositions(self.max_len), start=1):
            if fits(program, inputs, outputs):
                moves.note(observation={"searched": tried}, result={"program": list(program)})
                for xs in inputs:
                    moves.call("run", program="|".join(program), xs=xs)
                return list(program)
        return None

    def answer_symbols(self, task: Task) -> list[str]:
        return list(PRIMITIVES)


def compositions(max_len: int):
    """Every program of 1 .. max_len primitives, shortest first."""
    for n in range(1, max_len + 1):
        yield from itertools.product(PRIMITIVES, repeat=n)


def read_examples(prompt: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(inputs, outputs) of a prompt "xs -> ys ; xs -> ys ; ..."; anything else -> ValueError."""
    inputs: list[list[int]] = []
    outputs: list[list[int]] = []
    current: list[int] = []
    for symbol in prompt:
        if symbol == ARROW and len(inputs) == len(outputs):
            inputs.append(current)
            current = []
        elif symbol == SEP and len(inputs) == len(outputs) + 1:
            outputs.append(current)
            current = []
        elif symbol.isdigit():
            current.append(int(symbol))
        else:
            break
    else:
        if inputs and not current and len(inputs) == len(outputs):
            return inputs, outputs
    raise ValueError(f"programs: {list(prompt)} is not 'xs -> ys ;' examples")
