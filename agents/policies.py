"""Agents: a policy observes a task, acts through the family's tools, proposes an answer;
the family's verifier decides the outcome.

    logger = TrajectoryLogger(agent="solver", kind="solver")
    ok = run_episode(SolverPolicy(), family, task, logger)

A policy's `attempt(family, task, trajectory)` returns the proposed answer (a list of
symbols) or None to give up, and records every tool call with `trajectory.step(...)`
(`call_tool` does both). Which moves solve a task is the family's to say (`family.solve`,
`family.answer_symbols`): nothing here knows a family, so a new one needs no change here.

`run_episode` buffers the steps, verifies the answer, and only then opens the logged
trajectory, so that its metadata can carry the outcome (`verified`, `outcome`) next to
family, operation, difficulty and split, which is what curation clusters on. The
trajectory is logged as starting when the episode started (before its first step) and
finishes after its last step; step start times are the real ones, end times are when
the step was logged.

Outcomes: "solved" (verified), "wrong" (an answer the verifier rejects), "gave_up"
(no answer), "error" (the policy raised; the trajectory gets status "error").
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

from agents.sdk import TrajectoryLogger, now_iso
from agents.tasks.base import Task, TaskFamily

Answer = list[str] | None


class StepRecorder:
    """Stands in for `agents.sdk.Trajectory` while the policy acts: same `step(...)` signature."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def step(self, **fields: Any) -> int:
        fields.setdefault("start_time", now_iso())
        self.steps.append(fields)
        return len(self.steps) - 1


def call_tool(trajectory: Any, tools: dict[str, Callable], name: str, **arguments: Any) -> Any:
    """Call one of the environment's tools and log the call; a failing call is logged as an
    error step and returns None (the agent sees the failure, the episode goes on)."""
    start = now_iso()
    try:
        result = tools[name](**arguments)
    except Exception as err:  # the environment's answer to a bad call is data too
        trajectory.step(tool_name=name, arguments=arguments, status="error",
                        error=f"{type(err).__name__}: {err}", start_time=start)
        return None
    trajectory.step(tool_name=name, arguments=arguments, result=result, start_time=start)
    return result


class OutOfMoves(Exception):
    """An `Environment` with `max_calls` was asked for one call more."""


class Environment:
    """A task's tools as a family's `solve` uses them (agents/tasks/base.py, `Moves`): every move is
    logged as a step of `trajectory`. `max_calls` stops an agent part way (`OutOfMoves`)."""

    def __init__(self, family: TaskFamily, task: Task, trajectory: Any, max_calls: int | None = None):
        self.tools, self.trajectory, self.max_calls = family.tools(task), trajectory, max_calls
        self.calls = 0
        self.last: Any = None  # the last call's result

    def call(self, tool: str, **arguments: Any) -> Any:
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise OutOfMoves(tool)
        self.calls += 1
        self.last = call_tool(self.trajectory, self.tools, tool, **arguments)
        return self.last

    def note(self, **fields: Any) -> None:
        self.trajectory.step(kind="message", **fields)


class Policy:
    name: str = "policy"
    version: str = "1"
    kind: str = "external"  # solver | explorer | model | external (the agents table's `kind`)

    def prepare(self, tasks: Sequence[Task]) -> None:
        """Called with a batch of tasks before their episodes (a model samples them in one batch)."""

    def attempt(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        raise NotImplementedError


class SolverPolicy(Policy):
    """Makes the family's moves (`family.solve`) with its tools and always succeeds."""

    name, kind = "solver", "solver"

    def attempt(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        return family.solve(task, Environment(family, task, trajectory))


class ExplorerPolicy(SolverPolicy):
    """Like the solver, but with probability `error_rate` an episode goes wrong: a wrong tool
    call, a wrong or partial answer, or giving up. Negative data is data."""

    name, kind = "explorer", "explorer"
    MISTAKES = ("wrong_call", "partial", "wrong_answer", "give_up")

    def __init__(self, error_rate: float = 0.3, seed: int = 0):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.error_rate = float(error_rate)
        self.rng = random.Random(seed)

    def attempt(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        if self.rng.random() >= self.error_rate:
            return super().attempt(family, task, trajectory)
        mistake = self.rng.choice(self.MISTAKES)
        trajectory.step(kind="message", observation={"mistake": mistake})
        if mistake == "give_up":
            return None
        if mistake == "wrong_call":
            return self._wrong_call(family, task, trajectory)
        if mistake == "partial":
            return self._partial(family, task, trajectory)
        answer = super().attempt(family, task, StepRecorder()) or []  # think, without acting
        return self._perturb(family, task, answer)

    def _wrong_call(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        """Act on a misread prompt: one symbol swapped for another of the family's vocabulary."""
        vocab = family.tokenizer().vocab[3:]  # past [PAD] [MASK] [UNK]
        prompt = list(task.prompt)
        i = self.rng.randrange(len(prompt))
        prompt[i] = self.rng.choice(vocab)
        misread = dataclasses.replace(task, prompt=tuple(prompt))
        return family.solve(misread, Environment(family, task, trajectory))

    def _partial(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        """Stop one move short and answer what the last move made returned (two_hop: the bridge
        entity); where that is not an answer, or one move solves the task, the answer cut short."""
        thought = Environment(family, task, StepRecorder())  # think, without acting
        answer = family.solve(task, thought) or []
        if thought.calls > 1:
            acted = Environment(family, task, trajectory, max_calls=thought.calls - 1)
            with contextlib.suppress(OutOfMoves):
                family.solve(task, acted)
            early = _as_answer(acted.last, family.answer_symbols(task))
            if early is not None:
                return early
        return answer[:-1] if len(answer) > 1 else self._perturb(family, task, answer)

    def _perturb(self, family: TaskFamily, task: Task, answer: list[str]) -> list[str]:
        """The answer with one symbol replaced by another the family's answers are made of."""
        if not answer:
            return []
        i = self.rng.randrange(len(answer))
        symbols = family.answer_symbols(task)
        others = [s for s in symbols if s != answer[i]]
        return answer[:i] + [self.rng.choice(others or symbols)] + answer[i + 1:]


def _as_answer(observation: Any, symbols: Sequence[str]) -> Answer:
    """A tool's result read as an answer (a symbol or a list of symbols of the family's answers),
    or None if it is not one."""
    candidate = [observation] if isinstance(observation, str) else observation
    if isinstance(candidate, list) and candidate and all(isinstance(s, str) and s in symbols for s in candidate):
        return list(candidate)
    return None


ProposeFn = Callable[[Sequence[Task], int], list[list[list[str]]]]


class ModelPolicy(Policy):
    """The seam for a trained model.

    `propose(tasks, n_samples)` returns, for each task, `n_samples` candidate answers
    (each a list of symbols, padding removed). The policy verifies every sample, logs
    each as a step (kind "sample", result {"verified": ...}) and answers with the first
    verified sample, or the first sample if none verifies (so the failure is recorded).
    Call `prepare(tasks)` with a batch first to sample it in one `propose` call;
    otherwise `attempt` proposes for its single task.
    """

    kind = "model"

    def __init__(self, propose: ProposeFn, n_samples: int = 1, *, name: str = "model",
                 version: str = "1", checkpoint: str | None = None):
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.propose, self.n_samples = propose, int(n_samples)
        self.name, self.version, self.checkpoint = name, str(version), checkpoint
        self._cache: dict[str, list[list[str]]] = {}

    def prepare(self, tasks: Sequence[Task]) -> None:
        samples = self.propose(list(tasks), self.n_samples)
        if len(samples) != len(tasks):
            raise ValueError(f"propose returned {len(samples)} sample lists for {len(tasks)} tasks")
        self._cache.update({t.task_id: list(s) for t, s in zip(tasks, samples, strict=True)})

    def attempt(self, family: TaskFamily, task: Task, trajectory: Any) -> Answer:
        samples = self._cache.pop(task.task_id, None)
        if samples is None:
            samples = list(self.propose([task], self.n_samples)[0])
        chosen: Answer = None
        for i, sample in enumerate(samples):
            sample = [str(s) for s in sample]
            ok = family.verify(task, sample)
            trajectory.step(kind="sample", arguments={"sample": i}, result={"answer": sample, "verified": ok})
            if ok:
                return sample
            if chosen is None:
                chosen = sample
        return chosen


def outcome_of(answer: Answer, verified: bool) -> str:
    if verified:
        return "solved"
    return "gave_up" if answer is None else "wrong"


def run_episode(policy: Policy, family: TaskFamily, task: Task, logger: TrajectoryLogger,
                tags: Sequence[str] = ()) -> bool:
    """One attempt of `policy` at `task`, verified and logged as one trajectory. Returns verified."""
    return log_episode(policy, family, task, logger, tags) == "solved"


def log_episode(policy: Policy, family: TaskFamily, task: Task, logger: TrajectoryLogger,
                tags: Sequence[str] = ()) -> str:
    """`run_episode`, returning the outcome: solved | wrong | gave_up | error."""
    recorder = StepRecorder()
    started = now_iso()  # the trajectory starts before the policy's first step (agents/sdk.py: Times)
    error: str | None = None
    answer: Answer = None
    try:
        answer = policy.attempt(family, task, recorder)
    except Exception as err:  # a crashing policy is a recorded failure, not a lost episode
        error = f"{type(err).__name__}: {err}"
    verified = error is None and answer is not None and family.verify(task, answer)
    outcome = "error" if error else outcome_of(answer, verified)
    metadata = {"family": task.family, "operation": task.operation, "difficulty": task.difficulty,
                "split": task.split, "policy": policy.name, "verified": verified, "outcome": outcome}
    with logger.trajectory(task, tags=[policy.kind, task.family, task.split, outcome, *tags],
                           metadata=metadata, start_time=started) as t:
        for step in recorder.steps:
            t.step(**step)
        if answer is not None or error is None:
            t.step(kind="answer", arguments={"answer": answer}, result={"verified": verified})
        t.finish(answer=answer, verified=verified, reward=1.0 if verified else 0.0,
                 status="error" if error else "ok", error=error)
    return outcome
