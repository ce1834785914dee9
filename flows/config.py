"""The loop's knobs as one plain dataclass. The defaults are the README's small main job."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from agents import POLICIES
from agents.tasks import FAMILY_NAMES, family_class
from diffusion.config import (
    TrainConfig,
    apply_overrides,
    check_at_least,
    check_choices,
    check_config,
    check_values,
)
from flows.runners import Runner
from storage.shared import check_shared_home


def _small_families() -> dict[str, dict[str, Any]]:
    # modular: a*b mod 97 with half the table for training, the size at which this model memorises
    # first and generalises hundreds of steps later (README, "What the main job does"). two_hop and
    # programs: small enough to train in minutes when chosen, but at this budget they do not
    # generalise, so they are not in the default `families`.
    return {
        "modular": {"p": 97, "operations": ["x*y"], "train_fraction": 0.5},
        "two_hop": {"n_entities": 60, "n_relations": 10, "relations_per_entity": 8, "phi": 4.0,
                    "ood_fraction": 0.2, "test_size": 500},
        "programs": {},
    }


@dataclass
class LoopConfig:
    home: str | None = None                 # None: $GROKLOOP_HOME or ./.grokloop
    spool: str | None = None                # a path or URL (s3://bucket/prefix/spool); None: <home>/spool
    # a URL (s3://bucket/prefix): runs' checkpoints and dataset exports go there, for workers on
    # other machines (storage/shared.py); the store stays in `home`. None: all in `home`
    shared_home: str | None = None
    # where agent shards and training runs go (flows/runners.py): local | dask | ray
    runner: str = "local"
    dask_address: str | None = None         # an existing Dask scheduler; None: runner=dask starts one
    dask_workers: int = 2                   # worker processes of the Dask cluster (CPUs of the Ray) started here
    ray_address: str | None = None          # an existing Ray cluster (ray://host:10001, auto); None: runner=ray starts one
    families: list[str] = field(default_factory=lambda: ["modular"])   # also: two_hop, programs
    family_params: dict[str, dict[str, Any]] = field(default_factory=_small_families)
    seed: int = 0                           # task worlds, agents, sampling and training
    # collect
    n_agents: int = 2                       # agent processes per family
    episodes: int = 8000                    # per agent process and family (covers ~95% of a*b mod 97's train half)
    policy: str = "mixed"                   # solver | explorer | mixed
    error_rate: float = 0.2                 # explorer's share of wrong moves
    # curate
    cluster_method: str = "column"          # column | kmeans | hkmeans
    cluster_column: str = "operation"
    n_clusters: int = 8
    balance_cap: int | None = None          # max rows per cluster (None: temperature only)
    temperature: float = 1.0                # 1 natural, 0 uniform over clusters
    # train
    objective: str = "mdm"                  # mdm (masked diffusion) | ar
    # Grokking, not instant generalisation: PyTorch's default init (init=torch; GPT-2's small init
    # generalises with no delay here), Adam with L2 weight decay 0.005 and no Grokfast filter (the
    # Grokfast paper's weight-decay setting), the low-variance `count` estimator. Stops once test
    # accuracy has stayed at 95% for `patience` steps, so the plot shows it staying up; a short run:
    # linear step axis.
    train_overrides: dict[str, Any] = field(default_factory=lambda: {
        "max_steps": 1500, "eval_every": 50, "eval_schedule": "linear", "patience": 300, "batch_size": 512,
        "eval_max_rows": 1024, "init": "torch", "optimizer": "adam", "weight_decay": 0.005, "grokfast": "none",
        "mdm_estimator": "count"})
    # evaluate / self-improve
    sampler_steps: int = 4                  # denoising steps when sampling answers
    n_samples: int = 4                      # model agent samples per task

    def runner_settings(self) -> Runner:
        """Where fanned-out tasks run (`flows.runners.Runner`); a bad setting fails here."""
        for engine, address in (("dask", self.dask_address), ("ray", self.ray_address)):
            if address and self.runner != engine:
                raise ValueError(f"{engine}_address is set but the runner is {self.runner}; set runner={engine}")
        address = self.ray_address if self.runner == "ray" else self.dask_address
        return Runner(self.runner, address, self.dask_workers)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> LoopConfig:
        """`key=value` pairs typed by the fields (diffusion/config.py), then checked: bad settings
        fail here, in one line, before any agent starts."""
        return check_loop_config(apply_overrides(cls(), overrides, what="loop"))


LOOP_CHOICES = {"families": FAMILY_NAMES, "policy": POLICIES, "cluster_method": ("column", "kmeans", "hkmeans"),
                "objective": ("mdm", "ar")}
LOOP_MINIMUMS = {"n_agents": 1, "episodes": 0, "error_rate": 0.0, "n_clusters": 1, "balance_cap": 1,
                 "temperature": 0.0, "sampler_steps": 1, "n_samples": 1}


def check_loop_config(cfg: LoopConfig) -> LoopConfig:
    """Every setting of the loop, including the family parameters and training overrides it passes on."""
    check_choices(cfg, LOOP_CHOICES)
    check_at_least(cfg, LOOP_MINIMUMS)
    cfg.runner_settings()  # runner, dask_address, dask_workers
    check_shared_home(cfg.shared_home)
    if cfg.error_rate > 1:
        raise ValueError(f"error_rate must be <= 1, got {cfg.error_rate!r}")
    if not cfg.families:
        raise ValueError("families must name at least one of " + ", ".join(FAMILY_NAMES))
    for family, params in cfg.family_params.items():
        try:
            if not isinstance(params, dict):
                raise ValueError(f"must be a JSON object, got {params!r}")
            check_values(family_class(family), params, what=f"{family} family")
        except ValueError as err:
            raise ValueError(f"family_params.{family}: {err}") from err
    try:
        check_config(TrainConfig(**check_values(TrainConfig, cfg.train_overrides, what="training")))
    except ValueError as err:
        raise ValueError(f"train_overrides: {err}") from err
    return cfg
