"""Two-hop knowledge composition, after Wang et al. 2024 ("Grokked Transformers are
Implicit Reasoners", arXiv 2405.15071, §3.1).

    fam = TwoHopFamily(seed=0)                       # small default, trains on a CPU
    fam = TwoHopFamily(n_entities=2000, n_relations=200, relations_per_entity=20)  # published

A random knowledge graph: every entity h has `relations_per_entity` distinct
relations r, each pointing at a random tail t — the atomic facts (h, r) -> t.
The atomic facts (the edges) are split disjointly into ID and OOD
(`ood_fraction`). Inferred facts (h, r1, r2) -> t chain two atomic facts through
a bridge entity b: (h, r1) -> b, (b, r2) -> t.

- train:    every atomic fact (ID and OOD) + phi * |all atomic facts| inferred facts
            whose two hops are both ID (all of them if fewer exist); phi is Wang et al.'s
            inferred/atomic ratio, over all atomic facts as there.
- test_id:  held-out ID inferred facts whose two atomic facts each appear in some
            trained inferred fact (up to `test_size`).
- test_ood: inferred facts whose two hops are both OOD atomic facts, which by
            construction appear in no trained inferred fact (up to `test_size`).
Inferred facts mixing an ID and an OOD hop are in no split, as in the paper.

Layout: atomic prompt (h, r), inferred prompt (h, r1, r2), answer (t,); prompts are
padded to 3 symbols, so the atomic fact's missing second relation is [PAD].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agents.tasks.base import Moves, Task, TaskFamily, Tokenizer


class TwoHopFamily(TaskFamily):
    name = "two_hop"
    memorized_kind = "inferred"  # atomic facts are recall; the inferred ones are what grokking is about

    def __init__(self, seed: int = 0, n_entities: int = 200, n_relations: int = 20,
                 relations_per_entity: int = 12, ood_fraction: float = 0.05, phi: float = 7.2,
                 test_size: int = 3000):
        if n_entities < 2 or n_relations < 1:
            raise ValueError(f"need >= 2 entities and >= 1 relation, got {n_entities}, {n_relations}")
        if not 1 <= relations_per_entity <= n_relations:
            raise ValueError(f"relations_per_entity must be in [1, n_relations={n_relations}], "
                             f"got {relations_per_entity}")
        if not 0.0 <= ood_fraction < 1.0:
            raise ValueError(f"ood_fraction must be in [0, 1), got {ood_fraction}")
        if phi < 0 or test_size < 0:
            raise ValueError(f"phi and test_size must be >= 0, got {phi}, {test_size}")
        self.seed, self.n_entities, self.n_relations = int(seed), int(n_entities), int(n_relations)
        self.k, self.ood_fraction, self.phi = int(relations_per_entity), float(ood_fraction), float(phi)
        self.test_size = int(test_size)
        self.config_tag = (f"n{self.n_entities}-r{self.n_relations}-k{self.k}-o{self.ood_fraction:g}"
                           f"-phi{self.phi:g}-t{self.test_size}-s{self.seed}")
        self._build_graph()
        self._splits: dict[str, list[Task]] | None = None

    # --- the graph: atomic fact i = (head[i], rel[i]) -> tail[i]; facts of entity h are h*k .. h*k+k-1
    def _build_graph(self) -> None:
        rng = np.random.default_rng([self.seed, 2405_15071])
        n, k = self.n_entities, self.k
        # k distinct relations per entity: the first k columns of a random permutation of each row.
        rels = np.argsort(rng.random((n, self.n_relations)), axis=1)[:, :k]
        rels.sort(axis=1)
        self.head = np.repeat(np.arange(n), k)                              # (A,)
        self.rel = rels.reshape(-1)                                         # (A,)
        self.tail = rng.integers(0, n, size=n * k)                          # (A,)
        n_ood = round(self.ood_fraction * n * k)
        self.is_ood = np.zeros(n * k, dtype=bool)
        self.is_ood[rng.choice(n * k, size=n_ood, replace=False)] = True
        self.facts = {(int(h), int(r)): int(t) for h, r, t in zip(self.head, self.rel, self.tail, strict=True)}
        self._rng = rng

    def _inferred(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, second) atomic-fact indices of every two-hop chain."""
        a = self.n_entities * self.k
        first = np.repeat(np.arange(a), self.k)                             # (A*k,)
        second = self.tail[first] * self.k + np.tile(np.arange(self.k), a)  # facts of the bridge
        return first, second

    def splits(self) -> dict[str, list[Task]]:
        if self._splits is not None:
            return self._splits
        rng = self._rng
        first, second = self._inferred()
        ood1, ood2 = self.is_ood[first], self.is_ood[second]
        id_chains = np.flatnonzero(~ood1 & ~ood2)
        ood_chains = np.flatnonzero(ood1 & ood2)

        n_train = min(round(self.phi * len(self.is_ood)), len(id_chains))  # phi x |all atomic facts|
        order = rng.permutation(id_chains)
        train_ix, rest = order[:n_train], order[n_train:]
        # ID test: only chains whose two atomic facts each occur (as either hop) in a trained chain.
        covered = np.zeros(len(self.is_ood), dtype=bool)
        covered[first[train_ix]] = True
        covered[second[train_ix]] = True
        test_id_ix = rest[covered[first[rest]] & covered[second[rest]]][: self.test_size]
        if self.test_size and not len(test_id_ix):
            # Grokking is judged on test_id: a world without one is a configuration error, not a result.
            raise ValueError(
                f"two_hop {self.config_tag}: phi={self.phi:g} trains {n_train} of the {len(id_chains)} ID "
                f"inferred facts, leaving no ID test; each atomic fact starts only relations_per_entity="
                f"{self.k} chains, so raise relations_per_entity well above phi (e.g. 2*phi) or lower phi")
        test_ood_ix = rng.permutation(ood_chains)[: self.test_size]

        atomic = [self._atomic_task(i) for i in range(len(self.head))]
        self._splits = {
            "train": atomic + [self._inferred_task(first[c], second[c], "train") for c in train_ix],
            "test_id": [self._inferred_task(first[c], second[c], "test_id") for c in test_id_ix],
            "test_ood": [self._inferred_task(first[c], second[c], "test_ood") for c in test_ood_ix],
        }
        return self._splits

    def _atomic_task(self, i: int) -> Task:
        h, r, t = f"e{self.head[i]}", f"r{self.rel[i]}", f"e{self.tail[i]}"
        return Task(family=self.name, task_id=f"two_hop/{self.config_tag}/{h}/{r}", split="train",
                    prompt=(h, r), answer=(t,), operation=r, difficulty=1,
                    spec={"kind": "atomic", "ood": bool(self.is_ood[i])})

    def _inferred_task(self, i: int, j: int, split: str) -> Task:
        h, r1, r2, t = f"e{self.head[i]}", f"r{self.rel[i]}", f"r{self.rel[j]}", f"e{self.tail[j]}"
        return Task(family=self.name, task_id=f"two_hop/{self.config_tag}/{h}/{r1}>{r2}", split=split,
                    prompt=(h, r1, r2), answer=(t,), operation=f"{r1}>{r2}", difficulty=2,
                    spec={"kind": "inferred", "ood_hops": int(self.is_ood[i]) + int(self.is_ood[j])})

    def tokenizer(self) -> Tokenizer:
        symbols = [f"e{i}" for i in range(self.n_entities)] + [f"r{i}" for i in range(self.n_relations)]
        return Tokenizer(symbols, prompt_len=3, answer_len=1)

    def lookup(self, h: str, r: str) -> str | None:
        """The tail of atomic fact (h, r), or None if the graph has no such fact."""
        try:
            return f"e{self.facts[_index(h, 'e'), _index(r, 'r')]}"
        except (KeyError, ValueError):
            return None

    def follow(self, prompt: Sequence[str]) -> str | None:
        """Chain lookups along the prompt's relations: the true answer of any prompt."""
        entity: str | None = prompt[0]
        for r in prompt[1:]:
            entity = self.lookup(entity, r) if entity else None
        return entity

    def task_from_prompt(self, prompt: Sequence[str], answer: Sequence[str] = (), *, task_id: str = "",
                         split: str = "train") -> Task:
        prompt = tuple(prompt)
        if (len(prompt) not in (2, 3) or not _is(prompt[0], "e", self.n_entities)
                or not all(_is(r, "r", self.n_relations) for r in prompt[1:])):
            raise ValueError(f"two_hop: {list(prompt)} is not (entity, relation[, relation]) of this graph")
        kind = "atomic" if len(prompt) == 2 else "inferred"
        return Task(family=self.name, task_id=task_id, split=split, prompt=prompt, answer=tuple(answer),
                    operation=">".join(prompt[1:]), difficulty=len(prompt) - 1, spec={"kind": kind})

    def kind_of(self, task: Task) -> str | None:
        return "atomic" if task.difficulty == 1 else "inferred"

    def verify(self, task: Task, answer: Sequence[str]) -> bool:
        if answer is None or isinstance(answer, str):
            return False
        truth = self.follow(task.prompt)
        return truth is not None and list(answer) == [truth]

    def tools(self, task: Task) -> dict[str, Callable]:
        """`lookup(h, r) -> t | None`: query one atomic fact of the knowledge graph."""
        return {"lookup": self.lookup}

    def solve(self, task: Task, moves: Moves) -> list[str] | None:
        """Chain the lookups: h -r1-> bridge -r2-> tail."""
        entity = task.prompt[0]
        for r in task.prompt[1:]:
            entity = moves.call("lookup", h=entity, r=r)
            if entity is None:
                return None
        return [entity]

    def answer_symbols(self, task: Task) -> list[str]:
        return [f"e{i}" for i in range(self.n_entities)]


def _is(symbol: str, prefix: str, n: int) -> bool:
    try:
        return 0 <= _index(symbol, prefix) < n
    except ValueError:
        return False


def _index(symbol: str, prefix: str) -> int:
    if not isinstance(symbol, str) or not symbol.startswith(prefix):
        raise ValueError(f"{symbol!r} is not a {prefix}-symbol")
    return int(symbol[len(prefix):])
