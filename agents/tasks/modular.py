"""Binary operations mod p, the original grokking tasks (Power et al. 2022).

    fam = ModularFamily(p=97, operations=("x*y",), train_fraction=0.5)
    task = fam.splits()["train"][0]       # prompt ("3", "*", "5", "="), answer ("15",)

Every equation `x ∘ y = z` of each operation's table is one task. Each table is
shuffled with its own seed-derived RNG and cut at `train_fraction`: the first part
is `train`, the rest `test_id`. There is no OOD notion here, so `test_ood` is empty.
`nonzero_y=True` leaves out every equation with y = 0, as the Grokfast reference code does
(a*b mod 97: 97 * 96 = 9,312 equations instead of 9,409).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from agents.tasks.base import Moves, Task, TaskFamily, Tokenizer


def _div(x: int, y: int, p: int) -> int | None:
    # x / y = x * y^-1; undefined where y has no inverse (y = 0, or a divisor of a composite p).
    try:
        return x * pow(y, -1, p) % p
    except ValueError:
        return None


# name -> (prompt symbol, z(x, y, p) or None where the equation is undefined)
OPERATIONS: dict[str, tuple[str, Callable[[int, int, int], int | None]]] = {
    "x+y": ("+", lambda x, y, p: (x + y) % p),
    "x-y": ("-", lambda x, y, p: (x - y) % p),
    "x*y": ("*", lambda x, y, p: x * y % p),
    "x/y": ("/", _div),
    # Non-commutative and polynomial ones from Power et al. 2022, Table 1.
    "x^2+y^2": ("x^2+y^2", lambda x, y, p: (x * x + y * y) % p),
    "x^2+x*y+y^2": ("x^2+x*y+y^2", lambda x, y, p: (x * x + x * y + y * y) % p),
    "x^2+x*y+y^2+x": ("x^2+x*y+y^2+x", lambda x, y, p: (x * x + x * y + y * y + x) % p),
    "x^3+x*y": ("x^3+x*y", lambda x, y, p: (x ** 3 + x * y) % p),
    "x^3+x*y^2+y": ("x^3+x*y^2+y", lambda x, y, p: (x ** 3 + x * y * y + y) % p),
}

OPERATION_OF_SYMBOL = {symbol: op for op, (symbol, _) in OPERATIONS.items()}


class ModularFamily(TaskFamily):
    name = "modular"

    def __init__(self, seed: int = 0, p: int = 97, operations: Sequence[str] = ("x*y",),
                 train_fraction: float = 0.5, nonzero_y: bool = False):
        if isinstance(operations, str):
            operations = (operations,)
        unknown = [op for op in operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown modular operation(s) {unknown}; known: {', '.join(OPERATIONS)}")
        if not operations:
            raise ValueError("modular needs at least one operation")
        if int(p) < 2:
            raise ValueError(f"modulus p must be >= 2, got {p}")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.seed, self.p, self.train_fraction = int(seed), int(p), float(train_fraction)
        if not isinstance(nonzero_y, bool):
            raise ValueError(f"nonzero_y must be true or false, got {nonzero_y!r}")
        self.operations = tuple(dict.fromkeys(operations))
        self.nonzero_y = nonzero_y
        # The split depends on (seed, p, train_fraction, nonzero_y), so the id names them: one id, one split.
        self.config_tag = f"p{self.p}-s{self.seed}-f{self.train_fraction:g}" + ("-y1" if nonzero_y else "")
        self._splits: dict[str, list[Task]] | None = None

    def table(self, op: str) -> dict[tuple[int, int], int]:
        """{(x, y): z} for every defined equation of `op`."""
        fn = OPERATIONS[op][1]
        table = {}
        for x in range(self.p):
            for y in range(1 if self.nonzero_y else 0, self.p):
                z = fn(x, y, self.p)
                if z is not None:
                    table[x, y] = z
        return table

    def task(self, op: str, x: int, y: int, split: str) -> Task:
        z = OPERATIONS[op][1](x, y, self.p)
        if z is None:
            raise ValueError(f"{x} {op} {y} is undefined mod {self.p}")
        return Task(
            family=self.name, task_id=f"modular/{self.config_tag}/{op}/{x}/{y}", split=split,
            prompt=(str(x), OPERATIONS[op][0], str(y), "="), answer=(str(z),),
            operation=op, difficulty=1, spec={"p": self.p, "op": op, "x": x, "y": y},
        )

    def splits(self) -> dict[str, list[Task]]:
        if self._splits is None:
            out: dict[str, list[Task]] = {"train": [], "test_id": [], "test_ood": []}
            for op in self.operations:
                pairs = sorted(self.table(op))
                # One RNG per operation: adding an operation does not reshuffle the others.
                random.Random(f"modular/{self.seed}/{self.p}/{op}").shuffle(pairs)
                n_train = round(len(pairs) * self.train_fraction)
                out["train"] += [self.task(op, x, y, "train") for x, y in pairs[:n_train]]
                out["test_id"] += [self.task(op, x, y, "test_id") for x, y in pairs[n_train:]]
            self._splits = out
        return self._splits

    def task_from_prompt(self, prompt: Sequence[str], answer: Sequence[str] = (), *, task_id: str = "",
                         split: str = "train") -> Task:
        by_symbol = {OPERATIONS[op][0]: op for op in self.operations}
        prompt = tuple(prompt)
        if (len(prompt) != 4 or prompt[1] not in by_symbol or prompt[3] != "="
                or not all(s.isdigit() and int(s) < self.p for s in (prompt[0], prompt[2]))):
            raise ValueError(f"modular: {list(prompt)} is not 'x op y =' with x, y < {self.p} and op one of "
                             f"{', '.join(by_symbol)}")
        op, x, y = by_symbol[prompt[1]], int(prompt[0]), int(prompt[2])
        return Task(family=self.name, task_id=task_id, split=split, prompt=prompt, answer=tuple(answer),
                    operation=op, difficulty=1, spec={"p": self.p, "op": op, "x": x, "y": y})

    def tokenizer(self) -> Tokenizer:
        symbols = [str(i) for i in range(self.p)] + [OPERATIONS[op][0] for op in self.operations] + ["="]
        return Tokenizer(symbols, prompt_len=4, answer_len=1)

    def verify(self, task: Task, answer: Sequence[str]) -> bool:
        if answer is None or isinstance(answer, str):
            return False  # an answer is a symbol sequence; a bare string "15" is malformed
        op, x, y = task.spec["op"], task.spec["x"], task.spec["y"]
        return list(answer) == [str(OPERATIONS[op][1](x, y, self.p))]

    def tools(self, task: Task) -> dict[str, Callable]:
        """`compute(op, x, y)`: the environment's calculator (what the solver uses)."""
        def compute(op: str, x: int | str, y: int | str) -> str | None:
            if op not in OPERATIONS:
                raise ValueError(f"unknown operation {op!r}")
            z = OPERATIONS[op][1](int(x) % self.p, int(y) % self.p, self.p)
            return None if z is None else str(z)
        return {"compute": compute}

    def solve(self, task: Task, moves: Moves) -> list[str] | None:
        """One call of the calculator on what the prompt `x op y =` says."""
        x, symbol, y = task.prompt[:3]
        z = moves.call("compute", op=OPERATION_OF_SYMBOL.get(symbol, symbol), x=x, y=y)
        return None if z is None else [z]

    def answer_symbols(self, task: Task) -> list[str]:
        return [str(i) for i in range(self.p)]
