"""`grokloop experiment self_improve`: rounds of the model agent's verified answers against a control
given as many agent-labelled prompts; the model's hit rate beside chance."""

from __future__ import annotations

import dataclasses
import random

from flows import steps
from flows.cli_output import markdown_table
from flows.config import LoopConfig
from flows.experiments.common import (
    LOCAL,
    Size,
    checkpoint_of,
    console,
    mean_std,
    query,
    train_rows,
)
from flows.flows import self_improve_flow
from flows.runners import Runner

SELF_IMPROVE_SIZES = {
    "quick": Size(seeds=1, max_steps=150, eval_every=50,
                  params={"p": 13, "operations": ["x+y", "x*y"], "train_fraction": 0.8, "rounds": 2,
                          "episodes": 40, "proposals": 150}),
    "full": Size(seeds=3, max_steps=300, eval_every=100,
                 params={"p": 31, "operations": ["x+y", "x*y"], "train_fraction": 0.8, "rounds": 3,
                         "episodes": 150, "proposals": 600}),
}


def self_improve(size: Size, home: str | None, runner: Runner = LOCAL) -> tuple[list[dict], list[str], str]:
    """Per seed (its own task world): the self-improvement loop, then a control that differs only in
    who labels the new prompts. Round 0 is shared. In round r >= 1 the model proposes answers to
    `proposals` training tasks drawn afresh for the round and its verified answers join the data; the
    control instead gets as many prompts labelled by the solver agent (drawn afresh too), and trains
    on for the same steps from its own previous round. Beside the model's hit rate: the rate at which
    random guesses (best-of-n_samples, uniform over the family's answers) pass the verifier.
    Started again, it goes on from the store: its data collected once, its rounds as recorded."""
    p = dict(size.params)
    rounds, episodes, proposals = p.pop("rounds"), p.pop("episodes"), p.pop("proposals")
    table, runs = [], []
    for seed in range(size.seeds):
        cfg = LoopConfig(home=home, seed=seed, **runner.loop_settings(), families=["modular"],
                         family_params={"modular": p}, n_agents=2,
                         episodes=episodes, policy="solver",
                         train_overrides={"max_steps": size.max_steps, "eval_every": size.eval_every,
                                          "mdm_estimator": "count", "progress": False, **size.train})
        loop_id = f"self-improve-p{p['p']}-{size.max_steps}-s{seed}"
        steps.collect_once(cfg, "modular")  # started again: the same data, the loop goes on from the store
        solver_ids = [r[0] for r in query("SELECT agent_id FROM agents WHERE kind = 'solver'", [], home)]
        history = self_improve_flow(cfg=cfg, family="modular", rounds=rounds, episodes=proposals, loop_id=loop_id)
        control = _control_rounds(cfg, history, solver_ids, loop_id)
        chance = chance_hit_rate(cfg, proposals, seed)
        for arm, arm_rows in (("model", history), ("control", control)):
            for row in arm_rows:
                table.append({"seed": seed, "arm": arm, "round": row["round"], "run_id": row["run_id"],
                              "labelled": row["n_proposed"] if arm == "control" else row["n_verified"],
                              "proposed": row["n_proposed"] if arm == "model" else None,
                              "hit_rate": row["n_verified"] / row["n_proposed"]
                              if arm == "model" and row["n_proposed"] else None,
                              "chance_rate": chance if arm == "model" and row["round"] else None,
                              "train_rows": train_rows(row["dataset_id"], home),
                              "steps": size.max_steps * (row["round"] + 1), "test_id_acc": row["test_id_acc"]})
            if seed == 0:
                runs += [row["run_id"] for row in arm_rows if arm == "model" or row["round"]]
        console.print(f"[self_improve] seed {seed}: model {history[-1]['test_id_acc']:.3f}, "
                      f"control {control[-1]['test_id_acc']:.3f}, chance hit rate {chance:.3f}")
    per_seed = markdown_table(table, ["seed", "arm", "round", "proposed", "labelled", "hit_rate", "chance_rate",
                                       "train_rows", "steps", "test_id_acc"])
    summary = markdown_table(_mean_std_by_round(table), ["arm", "round", "n", "labelled", "hit_rate",
                                                          "chance_rate", "test_id_acc"])
    notes = (f"modular p={p['p']} {p['operations']}, train fraction {p['train_fraction']}; {size.seeds} seed(s) "
             f"(each its own task world), {rounds} rounds of {size.max_steps} steps, masked diffusion with the "
             f"`count` estimator. Round 0: 2 solver agents x {episodes} episodes on training tasks. Model arm, "
             f"round r: the model samples {LoopConfig().n_samples} answers (temperature 1) for each of {proposals} "
             "training tasks drawn afresh for the round; a task counts as labelled when a sample passes the "
             "verifier. Control arm, round r: the solver agent labels as many freshly drawn training tasks as "
             "the model got verified that round; same steps, continuing from its own previous round. "
             "`chance_rate`: how often best-of-n uniform random guesses over the family's answers pass the "
             "verifier on the same kind of tasks (measured). Both arms de-duplicate, so `train_rows` counts "
             "distinct labelled tasks. test_id accuracy is on held-out tasks only.")
    body = "\n".join(["Mean ± std over seeds:", "", *summary, "", "Per seed:", "", *per_seed])
    return table, runs, notes + "\n\n" + body


def _control_rounds(cfg: LoopConfig, history: list[dict], solver_ids: list[str], loop_id: str) -> list[dict]:
    """The control arm: round 0 is the loop's own; round r adds as many solver-labelled prompts as the
    model got verified in round r, curated from the solver agent's trajectories only. A round whose
    run exists (the experiment started again) keeps its snapshot: it collects nothing more."""
    rows, checkpoint = [history[0]], checkpoint_of(history[0]["run_id"], cfg.home)
    for model_row in history[1:]:
        r, n = model_row["round"], model_row["n_verified"]
        run_name = f"{loop_id}-control-r{r}"
        stored = query("SELECT dataset_id, config->>'$.dataset' FROM runs WHERE run_id = ?", [run_name], cfg.home)
        if stored:
            (dataset_id, path), = stored
        else:
            # +500: a draw seed of the control's own, used by neither round 0's agents nor any model round
            steps.collect(dataclasses.replace(cfg, n_agents=1), "modular", seed=steps.round_seed(cfg.seed, r) + 500,
                          episodes=n)
            steps.ingest(cfg)
            snap = steps.curate(cfg, "modular", agents=solver_ids, name=run_name)
            dataset_id, path = snap["dataset_id"], snap["path"]
        run = steps.train(steps.train_config(cfg, "modular", path, run_name=run_name, init_from=checkpoint))
        evaluation = steps.evaluate(cfg, run["checkpoint_dir"])
        checkpoint = run["checkpoint_dir"]
        rows.append({"round": r, "run_id": run["run_id"], "dataset_id": dataset_id, "n_proposed": n,
                     "n_verified": n, "test_id_acc": evaluation.get("test_id")})
    return rows


def chance_hit_rate(cfg: LoopConfig, n_tasks: int, seed: int) -> float:
    """Share of `n_tasks` training tasks (drawn like the model agent's) on which at least one of
    `cfg.n_samples` answers drawn uniformly from the family's distinct answers passes the verifier."""
    family = steps.task_family(cfg, "modular")
    pool = family.splits()["train"]
    answers = sorted({tuple(t.answer) for split in family.splits().values() for t in split})
    rng = random.Random(f"chance/{seed}")
    hits = 0
    for _ in range(n_tasks):
        task = pool[rng.randrange(len(pool))]
        hits += any(family.verify(task, list(rng.choice(answers))) for _ in range(cfg.n_samples))
    return hits / n_tasks


def _mean_std_by_round(table: list[dict]) -> list[dict]:
    out = []
    for arm in ("model", "control"):
        for r in sorted({row["round"] for row in table}):
            group = [row for row in table if row["arm"] == arm and row["round"] == r]
            if not group:
                continue
            out.append({"arm": arm, "round": r, "n": len(group),
                        **{k: mean_std([row[k] for row in group]) for k in
                           ("labelled", "hit_rate", "chance_rate", "test_id_acc")}})
    return out
