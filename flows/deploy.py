"""Deployments on cron schedules, served by this process (`grokloop serve`).

For a work pool instead of a long-running process, see `prefect.yaml` at the repository root.
"""

from __future__ import annotations

import dataclasses

from prefect import serve

from flows.config import LoopConfig
from flows.flows import collect_flow, curate_flow, loop_flow


def deployments(cfg: LoopConfig, *, collect_cron: str, train_cron: str) -> list:
    params = {"cfg": dataclasses.asdict(cfg)}
    # A scheduled collect draws with a seed of its own run (fresh_seed), so each run adds new
    # trajectories instead of repeating the last one's, which would change the snapshot fingerprint
    # and retrain on the same data.
    return [
        collect_flow.to_deployment("collect-hourly", cron=collect_cron, parameters={**params, "fresh_seed": True},
                                   description="agents -> spool -> store (fresh draws each run)"),
        curate_flow.to_deployment("curate-nightly", cron=train_cron, parameters=params,
                                  description="store -> snapshot per family"),
        loop_flow.to_deployment("loop-nightly", cron=train_cron, parameters={**params, "fresh_seed": True},
                                description="collect (fresh draws) -> curate -> train -> evaluate"),
    ]


def serve_deployments(cfg: LoopConfig, *, collect_cron: str, train_cron: str) -> None:
    serve(*deployments(cfg, collect_cron=collect_cron, train_cron=train_cron))
