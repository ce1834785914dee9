"""The trained model as an agent: it proposes answers, the family's verifier decides, the SDK logs.

It lives in flows/, above both things it uses: it samples a model (diffusion/) and logs through
the SDK (agents/), and agents/ may not import diffusion/ (docs/ARCHITECTURE.md, the layers).

    propose = load_proposer("runs/<run>/checkpoints/step_3000", n_steps=4, temperature=1.0)
    propose(tasks, 4)      # -> per task, 4 sampled answers (lists of symbols)
    policy = model_policy("runs/<run>/checkpoints/step_3000", n_samples=4)
    report = run_model_agent(checkpoint, family="modular", episodes=200)   # attempts -> spool

Trajectories are logged with kind "model" and the checkpoint path, so the store can
tell self-generated data from the agents' and trace it to the model that made it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from agents.policies import ModelPolicy, ProposeFn, log_episode
from agents.sdk import TrajectoryLogger
from agents.tasks import Task, get_family
from diffusion.checkpoint import checkpoint_meta, load_model, resolve_checkpoint
from diffusion.sample import answer_columns, predict


def family_of(meta: dict, family: str | None = None, family_params: dict | None = None):
    name = family or meta["family"]
    params = dict(family_params if family_params is not None else meta["family_params"])
    return get_family(name, seed=int(params.pop("seed", 0)), **params)


def load_proposer(
    checkpoint_dir: str | Path, *, n_steps: int | None = None, temperature: float = 1.0, seed: int = 0,
    batch_size: int = 4096,
) -> ProposeFn:
    """`propose(tasks, n_samples)` sampling answers from the checkpoint (diffusion or AR)."""
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    meta = checkpoint_meta(checkpoint_dir)
    tokenizer = family_of(meta).tokenizer()
    model = load_model(checkpoint_dir)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"checkpoint vocab {model.config.vocab_size} != family tokenizer {tokenizer.vocab_size}")
    steps = n_steps or meta.get("sampler_steps", 8)
    generator = torch.Generator().manual_seed(seed)

    def propose(tasks: Sequence[Task], n_samples: int) -> list[list[list[str]]]:
        if not tasks:
            return []
        rows = [tokenizer.encode_pair(list(t.prompt), []) for t in tasks for _ in range(n_samples)]
        ids = torch.tensor([r for r, _ in rows], dtype=torch.long)  # (N * n_samples, T)
        mask = torch.tensor([m for _, m in rows], dtype=torch.bool)
        filled = predict(meta["objective"], model, ids, mask, mask_id=tokenizer.mask_id, n_steps=steps,
                         temperature=temperature, generator=generator, batch_size=batch_size)
        # Decoded as every accuracy in grokloop decodes answers (trailing padding off); the family's
        # verifier then judges them in `log_episode`.
        answers = [tokenizer.decode_answer(row) for row in filled[:, answer_columns(mask)].tolist()]
        return [answers[i * n_samples:(i + 1) * n_samples] for i in range(len(tasks))]

    return propose


def model_policy(
    checkpoint_dir: str | Path, *, n_samples: int = 4, n_steps: int | None = None,
    temperature: float = 1.0, seed: int = 0, name: str = "model",
) -> ModelPolicy:
    """A ModelPolicy (kind "model") that samples from the checkpoint and remembers its path."""
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    meta = checkpoint_meta(checkpoint_dir)
    propose = load_proposer(checkpoint_dir, n_steps=n_steps, temperature=temperature, seed=seed)
    return ModelPolicy(propose, n_samples, name=name, version=model_version(meta), checkpoint=str(checkpoint_dir))


def model_version(meta: dict) -> str:
    """A model agent's version: the run and step of the checkpoint it samples from."""
    return f"{meta['run_id']}@{meta['step']}"


@dataclass
class ModelAgentReport:
    checkpoint: str
    family: str
    attempts: int = 0
    verified: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    segments: int = 0


def run_model_agent(
    checkpoint_dir: str | Path, *, family: str | None = None, family_params: dict | None = None,
    episodes: int = 100, n_samples: int = 4, n_steps: int | None = None, temperature: float = 1.0,
    seed: int = 0, split: str = "train", spool: str | Path | None = None,
) -> ModelAgentReport:
    """The model attempts `episodes` tasks of `split` (drawn with `seed`); each attempt is verified
    and logged to the spool like any agent's."""
    checkpoint_dir = resolve_checkpoint(checkpoint_dir)
    meta = checkpoint_meta(checkpoint_dir)
    fam = family_of(meta, family, family_params)
    pool = fam.splits()[split]
    if not pool:
        raise ValueError(f"family {fam.name!r} has no {split} tasks")
    rng = random.Random(seed)
    tasks = [pool[rng.randrange(len(pool))] for _ in range(episodes)]
    policy = model_policy(checkpoint_dir, n_samples=n_samples, n_steps=n_steps, temperature=temperature,
                          seed=seed)
    report = ModelAgentReport(checkpoint=str(checkpoint_dir), family=fam.name)
    with TrajectoryLogger(agent=policy.name, version=policy.version, spool=spool, kind="model",
                          checkpoint=policy.checkpoint) as logger:
        for start in range(0, len(tasks), 512):
            batch = tasks[start:start + 512]
            policy.prepare(batch)  # one batched sampling call per 512 tasks
            for task in batch:
                outcome = log_episode(policy, fam, task, logger, tags=["self-generated"])
                report.attempts += 1
                report.verified += outcome == "solved"
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
        logger.flush()
        report.segments = logger.segments_written
    return report
