"""What a training run writes besides its checkpoints: its row and metrics in the store
(storage/runs.py), TensorBoard event files, and the console (the progress bar, one line per
evaluation). The loop (diffusion/train.py) and the batched loop (diffusion/batched.py) both use these."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from agents.progress import progress_bar
from diffusion import distributed
from diffusion.checkpoint import TrainState
from diffusion.config import TrainConfig
from storage.runs import record_run


def record(cfg: TrainConfig, state: TrainState, dataset_id: str | None, status: str,
           rows: Sequence = (), checkpoints: Sequence = ()) -> bool:
    """The loop's one way to the store (storage/runs.py): the run row at this step, with these metric
    rows and checkpoints. A busy store never fails the run: the records wait in the run directory; the
    last write (finished) waits longer so the final status lands. True if it reached the store. Under
    torchrun only rank 0 writes."""
    if not distributed.is_main():
        return True
    row = run_record(cfg, status, state.step, state.t_mem, state.t_grok, dataset_id)
    return record_run(cfg.home, row, rows, checkpoints, final=status == "finished")


def run_record(cfg: TrainConfig, status: str, step: int, t_mem: int | None, t_grok: int | None,
               dataset_id: str | None) -> dict:
    """The run's row in the store's `runs` table."""
    ratio = t_grok / t_mem if t_grok is not None and t_mem else None
    delay = t_grok - t_mem if t_grok is not None and t_mem is not None else None
    parent = Path(cfg.init_from).parent.parent.name if cfg.init_from else None
    return {"run_id": cfg.run_id, "name": cfg.run_name, "objective": cfg.objective,
            "dataset_id": dataset_id, "status": status, "parent_run_id": parent,
            "config": json.dumps({**dataclasses.asdict(cfg), "trained_on": trained_on(cfg)}, sort_keys=True),
            "t_mem": t_mem, "t_grok": t_grok, "grok_ratio": ratio, "grok_delay": delay, "final_step": step}


def trained_on(cfg: TrainConfig) -> dict:
    """What a run's exact numbers depend on besides its config and seed: the thread count, the
    kernels (torch's version) and the device order the floating-point sums, so the same seed on two
    threads instead of one reaches T_mem at other steps. Each run row write carries this process's."""
    gpu = distributed.uses_cuda(cfg.device)
    return {"torch": torch.__version__, "device": torch.cuda.get_device_name() if gpu else "cpu",
            "threads": torch.get_num_threads(), **({"matmul": "tf32"} if gpu else {})}


def metrics_board(run_dir: Path, purge_step: int | None = None):
    """Metrics mirrored to TensorBoard event files under <run>/tensorboard (`tensorboard --logdir
    <home>/runs` shows every run). A resumed run purges what a killed process wrote after the checkpoint."""
    # imported here: torch.utils.tensorboard loads tensorboard (~0.3 s), which only a training run needs
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


class StepsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} steps/s" if task.speed else "- steps/s")


def progress_display(cfg: TrainConfig, console):
    return progress_bar(TextColumn(f"[bold]{cfg.run_id}"), BarColumn(), MofNCompleteColumn(), StepsPerSecond(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=console.quiet or not cfg.progress)


def run_of(cfg: TrainConfig) -> str | None:
    """Without the bar (an experiment's runs, several to a log) each eval line names its run."""
    return None if cfg.progress else cfg.run_id


class Pace:
    """Steps/s over the interval since the previous log line, evaluations included, and the ETA at
    that rate. Not an average since start: evaluations come densely early on a log schedule, so an
    average understates the training rate for thousands of steps (the bar has its own rate)."""

    def __init__(self, step: int, clock=time.perf_counter):
        self.clock = clock
        self.step, self.time = step, clock()

    def line(self, step: int, end: int) -> str:
        now = self.clock()
        done, elapsed = step - self.step, now - self.time
        if done <= 0 or elapsed <= 0:
            return ""
        self.step, self.time = step, now
        rate = done / elapsed
        eta = (end - step) / rate
        return f" | {rate:.1f} steps/s ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"


def pending_line(run_id: str, run_dir: Path, done: bool) -> str:
    if not done:
        return "store busy: this evaluation waits in the run directory and is written at the next one"
    return (f"store busy: run {run_id}'s last records wait in {run_dir / 'pending'}; "
            f"`grokloop ingest` writes them when the store is free")


def eval_line(step: int, m: dict[str, float], t_mem: int | None, t_grok: int | None, t_held: int | None,
              run_id: str | None = None) -> str:
    """One evaluation, a line: accuracies, the weight norm, T_mem, T_grok and, once T_grok is set, whether
    test ID is still at the threshold (what patience counts from: "(held from N)", "(not held)")."""
    parts = [f"{run_id + ' ' if run_id else ''}step {step:>6}"]
    for split in ("train", "test_id", "test_ood"):
        if f"{split}/acc" in m:
            parts.append(f"{split} loss {m[f'{split}/loss']:.4f} acc {m[f'{split}/acc']:.3f}")
    parts.append(f"|w| {m['weight_norm']:.1f}")
    if "grokfast/filter_ratio" in m:
        parts.append(f"filter {m['grokfast/filter_ratio']:.2f}")
    held = "" if t_grok is None or t_held == t_grok else " (not held)" if t_held is None else f" (held from {t_held})"
    parts.append(f"T_mem {t_mem if t_mem is not None else '-'} T_grok {t_grok if t_grok is not None else '-'}{held}")
    return " | ".join(parts)
