"""Training a masked-diffusion denoiser (or its AR baseline) for long grokking runs.

    from diffusion.train import TrainConfig, train
    result = train(TrainConfig(family="modular", max_steps=3000))
    result = train(load_config(run_id, ["max_steps=6000"]), resume=True)   # continue it

One loop, read top to bottom: evaluate + record + checkpoint on their schedules, set the LR,
forward/backward, Grokfast filter, clip, step. The settings are `TrainConfig` (diffusion/config.py);
checkpoints and the run directory are diffusion/checkpoint.py; an evaluation is diffusion/evaluate.py's
`evaluation`; metrics leave the loop through one call, `record` (diffusion/records.py, with the console's
lines), into storage/runs.py. Everything
random draws from explicit generators saved with the checkpoint, so a run killed at any point
(SIGKILL included) resumes to exactly the numbers it would have produced uninterrupted (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from agents.progress import output_console
from agents.tasks import Tokenizer
from diffusion import distributed
from diffusion.checkpoint import (
    TrainState,
    has_checkpoint,
    imported_step,
    latest_checkpoint,
    load_model,
    load_training_checkpoint,
    new_accum,
    run_eval_rows,
    run_location,
    save_training_checkpoint,
    write_run_config,
)
from diffusion.config import (
    TrainConfig,
    check_config,
    config_from_dict,
    load_config,
    run_id_of,
    train_overrides,
)
from diffusion.data import BatchSampler, load_family, load_splits, read_snapshot_meta
from diffusion.evaluate import evaluation, held_since, update_diagnostics
from diffusion.grokfast import gradfilter_ema, gradfilter_ma
from diffusion.model import Denoiser, GrokfastRefDecoder
from diffusion.objective import objective_loss
from diffusion.records import (
    Pace,
    eval_line,
    metrics_board,
    pending_line,
    progress_display,
    record,
    run_of,
)
from storage.home import grokloop_home, runs_dir
from storage.runs import stored_metrics

# What a caller imports from here: the loop and its result, and the config and checkpoint helpers
# a caller needs with it (they live in diffusion/config.py and diffusion/checkpoint.py).
__all__ = ["RunResult", "TrainConfig", "train", "apply_overrides", "load_config", "config_from_dict",
           "has_checkpoint", "latest_checkpoint", "load_model"]

apply_overrides = train_overrides  # `key=value` settings, typed by TrainConfig's fields, then checked


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    checkpoint_dir: Path | str | None      # latest save_pretrained dir (a URL with shared_home)
    status: str                            # finished | stopped
    final_step: int
    t_mem: int | None
    t_grok: int | None
    grok_ratio: float | None
    metrics: dict[str, float]              # the last evaluation


# --- the loop ------------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, resume: bool = False) -> RunResult:
    cfg = check_config(dataclasses.replace(cfg))
    with distributed.processes(cfg.device) as procs:  # one process, or this one of torchrun's
        return train_loop(cfg, procs, resume)


def train_loop(cfg: TrainConfig, procs: distributed.Processes, resume: bool) -> RunResult:
    home = grokloop_home(cfg.home)
    cfg.home = str(home)
    snapshot = read_snapshot_meta(cfg.dataset) if cfg.dataset else None
    if snapshot:  # the snapshot says which family its rows are: the run's name and config.json say the same
        cfg.family, cfg.family_params = snapshot["family"], snapshot["family_params"]
    default_id = f"{cfg.objective}-{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cfg.run_id = procs.from_main(run_id_of(cfg) or default_id)
    run_dir = runs_dir(home) / cfg.run_id
    if procs.is_main and not resume and (run_dir / "config.json").exists():
        raise FileExistsError(f"run {cfg.run_id!r} already exists at {run_dir}; "
                              f"resume it (grokloop train --resume {cfg.run_id}) or pick another run_name")
    if procs.is_main and (stored := imported_step(cfg)) is not None:
        raise FileNotFoundError(f"run {cfg.run_id!r} is in the store to step {stored:,}, but its directory and "
                                f"checkpoints are not under {home} (it was trained elsewhere and imported): it "
                                "cannot be continued here; continue it where its checkpoints are, or pick "
                                "another run_name")
    # a log gets whole lines, a progress line every 10 s (no bar with progress=False); only rank 0 prints
    console = output_console(quiet=not procs.is_main)

    # data and model (bad data fails here, before anything is written)
    tokenizer, splits = load_splits(cfg)
    family = load_family(cfg)
    train_rows = splits["train"]
    if procs.world_size > min(cfg.batch_size, len(train_rows)):
        raise ValueError(f"a batch of {min(cfg.batch_size, len(train_rows))} rows cannot be split over "
                         f"{procs.world_size} processes")
    dataset_id = snapshot["dataset_id"] if snapshot else None
    model = initial_model(cfg, tokenizer).to(procs.device)
    forward = procs.wrap(model)  # DDP under torchrun; the same parameters: eval and saving use `model`
    forward = torch.compile(forward) if cfg.compile else forward
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sampler = BatchSampler(len(train_rows), cfg.batch_size, seed=cfg.seed, keep_last=cfg.reference_loop)
    noise = torch.Generator().manual_seed(cfg.seed + 1)  # masking noise, separate from data order
    with procs.main_first():  # rank 0 writes the run directory, the others read it
        if procs.is_main:
            write_run_config(run_dir, cfg)
        eval_splits = {name: splits[name].subset(idx) for name, idx in run_eval_rows(run_dir, cfg, splits).items()}

    # the loop's state: new, or all of it from the latest checkpoint
    state, repaired_rows = TrainState(), []
    resume_from = latest_checkpoint(run_location(cfg, run_dir)) if resume else None
    if resume_from is not None:
        state, repaired_rows = load_training_checkpoint(resume_from, model, optimizer, sampler, noise)
        console.print(f"resuming {cfg.run_id} from {resume_from}")
    # The checkpoint's evaluation rows again: a kill between it and the store leaves no gap (idempotent).
    record(cfg, state, dataset_id, "running", repaired_rows)

    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    metrics: dict[str, float] = {}
    board = None  # TensorBoard: rank 0's
    if procs.is_main:
        board = metrics_board(run_dir, purge_step=state.step if resume_from is not None else None)
    progress = progress_display(cfg, console)
    pace = Pace(state.step)
    saved_at = time.monotonic()
    model.train()
    try:
        with progress, stop_signals() as received:
            bar = progress.add_task(cfg.run_id, total=end_step(cfg, state.t_mem), completed=state.step, info="")
            while True:
                step = state.step  # every process stops, and checkpoints, at one step
                stopping, overdue = procs.any(bool(received), checkpoint_overdue(cfg, saved_at))
                done = run_over(cfg, step, state.t_mem, state.t_held)

                # evaluate on the schedule and at the end, each step once even across restarts
                rows = []
                if (is_eval_step(cfg, step) or done) and state.evaluated < step:
                    state.accum["loss"] = procs.mean(state.accum["loss"])  # each process's slice: the batch's
                    diagnostics = update_diagnostics(cfg, model, state.grokfast, state.clip_norm)
                    metrics, state.t_mem, state.t_grok = evaluation(
                        cfg, model, eval_splits, family, tokenizer, step, optimizer.param_groups[0]["lr"],
                        state.accum, diagnostics, state.t_mem, state.t_grok, board)
                    state.t_held = held_since(cfg, metrics, step, state.t_held)
                    state.accum, state.evaluated = new_accum(), step
                    rows = [(step, k, float(v)) for k, v in sorted(metrics.items())]
                    progress.console.print(eval_line(step, metrics, state.t_mem, state.t_grok, state.t_held, run_of(cfg))
                                           + pace.line(step, end_step(cfg, state.t_mem)))
                    progress.update(bar, total=end_step(cfg, state.t_mem),
                                    info=f"train {metrics.get('train/acc', 0):.3f} test {metrics.get('test_id/acc', 0):.3f}")
                    done = run_over(cfg, step, state.t_mem, state.t_held)

                # checkpoint on its schedule, by the clock, at the end and on SIGTERM; it carries this
                # evaluation's rows
                checkpoints = []
                if (step % ckpt_every == 0 or overdue or done or stopping) and state.saved < step:
                    state.accum["loss"] = procs.mean(state.accum["loss"])  # what every process resumes with
                    if procs.is_main:  # every process resumes from rank 0's checkpoint
                        path = save_training_checkpoint(run_dir, cfg, model, optimizer, sampler, noise, state, rows)
                        checkpoints = [(step, path)]
                    state.saved, saved_at = step, time.monotonic()

                status = "finished" if done else "stopped" if stopping else "running"
                wrote = rows or checkpoints or status != "running"
                if wrote and not record(cfg, state, dataset_id, status, rows, checkpoints):
                    progress.console.print(pending_line(cfg.run_id, run_dir, done))
                if status != "running":
                    break

                # one optimization step
                t0 = time.perf_counter()
                lr = learning_rate(cfg, step)
                if optimizer.param_groups[0]["lr"] != lr:  # warmup, or a resumed run given a new lr
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                idx = sampler.next()  # the global batch: every process draws the same rows and noise
                ids, answer_mask = (x.to(procs.device) for x in train_rows.batch(idx))
                mine = procs.rows(len(idx))  # and computes the loss of its own slice
                loss = procs.share(objective_loss(cfg.objective, forward, ids, answer_mask, tokenizer.mask_id,
                                                  full_sequence=cfg.full_sequence, estimator=cfg.mdm_estimator,
                                                  generator=noise, rows=mine), mine, len(idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP: the gradient averaged over processes, which Grokfast then filters
                if cfg.grokfast == "ema":
                    state.grokfast = gradfilter_ema(model, state.grokfast, cfg.grokfast_alpha, cfg.grokfast_lamb)
                elif cfg.grokfast == "ma":
                    state.grokfast = gradfilter_ma(model, state.grokfast, cfg.grokfast_window, cfg.grokfast_lamb,
                                                   cfg.grokfast_filter)
                if cfg.grad_clip:
                    state.clip_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                state.step += 1
                state.accum["loss"] += float(loss.detach())
                state.accum["n"] += 1
                progress.update(bar, completed=state.step)
                state.accum["time"] += time.perf_counter() - t0  # the whole step, bookkeeping included
    except BaseException as err:
        record(cfg, state, dataset_id, ended_status(err))
        raise
    finally:
        if board is not None:
            board.close()
    if status == "stopped":
        end_as_the_signal(received, f"saved step {state.step}; resume with --resume {cfg.run_id}", console)
    if not metrics:  # a complete run resumed: nothing left to do, its last evaluation is in the store
        metrics = stored_metrics(home, cfg.run_id, state.step)
    ratio = state.t_grok / state.t_mem if state.t_grok is not None and state.t_mem else None
    return RunResult(run_id=cfg.run_id, run_dir=run_dir, checkpoint_dir=latest_checkpoint(run_location(cfg, run_dir)),
                     status=status, final_step=state.step, t_mem=state.t_mem, t_grok=state.t_grok,
                     grok_ratio=ratio, metrics=metrics)


# --- the loop's parts ----------------------------------------------------------------------------

def initial_model(cfg: TrainConfig, tokenizer: Tokenizer) -> Denoiser | GrokfastRefDecoder:
    """The run's starting weights: seeded by cfg.seed, or its init_from checkpoint."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model = load_model(cfg.init_from)
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"init_from {cfg.init_from} has vocab {model.config.vocab_size}, "
                             f"the data's tokenizer {tokenizer.vocab_size}")
        return model
    if cfg.arch == "grokfast_ref":
        return GrokfastRefDecoder(vocab_size=tokenizer.vocab_size, max_seq_len=tokenizer.seq_len,
                                  hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                                  mlp_ratio=cfg.mlp_ratio, mask_token_id=tokenizer.mask_id)
    return Denoiser(vocab_size=tokenizer.vocab_size, max_seq_len=tokenizer.seq_len,
                    hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                    mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, mask_token_id=tokenizer.mask_id, init=cfg.init,
                    share_layers=cfg.share_layers)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant or (lr_decay=cosine) down to min_lr at decay_steps (default max_steps),
    as nanoGPT does.
    The reference's LambdaLR gives update u the factor u / warmup, so its first update has lr 0 (it only
    primes Adam's moments and the filter); ours starts at 1 / warmup."""
    warm = step if cfg.reference_loop else step + 1
    if cfg.warmup_steps and warm < cfg.warmup_steps:
        return cfg.lr * warm / cfg.warmup_steps
    decay_end = cfg.decay_steps or cfg.max_steps
    if cfg.lr_decay == "none" or decay_end <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / (decay_end - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * max(0.0, progress))) * (cfg.lr - cfg.min_lr)


def is_eval_step(cfg: TrainConfig, step: int) -> bool:
    """Every `eval_every` steps; with the log schedule also at 1, 2, 3, 4, 5, 6, 7, 9, 12, 15, ... (ratio
    1.25, ten per decade) below `eval_every`, so a log-step axis has points where it is widest."""
    if step % cfg.eval_every == 0:
        return True
    return cfg.eval_schedule == "log" and step < cfg.eval_every and step in _log_steps(cfg.eval_every)


def _log_steps(below: int) -> set[int]:
    steps, x = set(), 1.0
    while x < below:
        steps.add(round(x))
        x *= 1.25
    return steps


def checkpoint_overdue(cfg: TrainConfig, saved_at: float) -> bool:
    """`checkpoint_minutes` of wall time since the last checkpoint. The schedule counts steps; this
    bounds what any kill costs (SIGKILL, a machine or session going away, a Dask cluster closing its
    workers, where SIGTERM cannot reach a run's thread) whatever a step takes."""
    return bool(cfg.checkpoint_minutes) and time.monotonic() - saved_at >= 60 * cfg.checkpoint_minutes


def end_step(cfg: TrainConfig, t_mem: int | None) -> int:
    """Where a run ends unless its stopping rule ends it sooner: `max_steps`, or, with `mem_multiple`,
    that multiple of T_mem when it is later (a run memorising late still goes on long enough for a
    delay to show; T_mem <= max_steps, so never past mem_multiple x max_steps)."""
    if cfg.mem_multiple and t_mem is not None:
        return max(cfg.max_steps, math.ceil(cfg.mem_multiple * t_mem))
    return cfg.max_steps


def run_over(cfg: TrainConfig, step: int, t_mem: int | None, t_held: int | None) -> bool:
    return step >= end_step(cfg, t_mem) or patience_over(cfg, step, t_held, t_mem)


def patience_over(cfg: TrainConfig, step: int, t_held: int | None, t_mem: int | None = None) -> bool:
    """Test ID at the grok threshold at every evaluation for `patience` steps (since `t_held`, see
    evaluate.held_since), and (mem_multiple) past that multiple of T_mem: a grokking run shows its
    delay on a log axis only when it runs well past memorisation."""
    if not cfg.patience or t_held is None or step - t_held < cfg.patience:
        return False
    return not cfg.mem_multiple or (t_mem is not None and step >= cfg.mem_multiple * t_mem)


def end_as_the_signal(received: list[int], saved: str, console) -> NoReturn:
    """End as the signal would, once the runs are saved: a caller looping over runs (an experiment, a
    flow) must stop too. Ctrl-C as KeyboardInterrupt (a notebook's cell stops as usual), SIGTERM as
    exit 143."""
    by = "SIGTERM" if signal.SIGTERM in received else "Ctrl-C"
    console.print(f"{by}: {saved}")
    if by == "Ctrl-C":
        raise KeyboardInterrupt
    raise SystemExit(128 + signal.SIGTERM)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGTERM or Ctrl-C (SIGINT) asks the loop to stop (the signals received, in order): it finishes
    its step, checkpoints, records the run as stopped and ends as the signal would. A second Ctrl-C
    stops at once (KeyboardInterrupt; the run keeps its last checkpoint). Only the main thread can
    catch signals; elsewhere none is caught. A SIGINT the process ignores (a background job of a
    script) stays ignored."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum: int, frame) -> None:
        received.append(signum)
        if signum == signal.SIGINT:  # the next Ctrl-C interrupts as Python's default does
            signal.signal(signal.SIGINT, signal.default_int_handler)

    caught = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {signum: signal.signal(signum, stop) for signum in caught}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ended_status(err: BaseException) -> str:
    """A run's status when `err` ended its loop: stopped by a person or a signal (Ctrl-C, SIGTERM
    turned into SystemExit by the CLI), which the same command continues; anything else failed."""
    return "stopped" if isinstance(err, KeyboardInterrupt | SystemExit) else "failed"
