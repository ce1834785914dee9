"""Task families by name. `get_family("two_hop", seed=0, n_entities=200)`.

A new family is a `TaskFamily` subclass (agents/tasks/base.py) added to `FAMILIES`; the agents'
policies, the runner, curation, training and the CLI take it from there.
"""

from __future__ import annotations

from agents.tasks.base import SPLITS, Task, TaskFamily, Tokenizer
from agents.tasks.modular import ModularFamily
from agents.tasks.programs import ProgramsFamily
from agents.tasks.strings import StringsFamily
from agents.tasks.two_hop import TwoHopFamily

FAMILIES: dict[str, type[TaskFamily]] = {
    "modular": ModularFamily, "two_hop": TwoHopFamily, "programs": ProgramsFamily, "strings": StringsFamily,
}
FAMILY_NAMES = tuple(FAMILIES)


def family_class(name: str) -> type[TaskFamily]:
    """The class whose keyword parameters are a family's settings (without building its task world)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]


def get_family(name: str, seed: int = 0, **params) -> TaskFamily:
    return family_class(name)(seed=seed, **params)


__all__ = ["FAMILIES", "FAMILY_NAMES", "SPLITS", "Task", "TaskFamily", "Tokenizer", "family_class", "get_family"]
