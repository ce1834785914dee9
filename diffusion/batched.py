"""Many seeds as one batched model: N runs of one architecture trained in one process.

    from diffusion.batched import train_batched
    results = train_batched([dataclasses.replace(cfg, seed=s, run_name=f"x-s{s}") for s in range(8)])

The N models' weights are stacked with a leading run dim and one grouped forward/backward
(diffusion/grouped.py: a batched matmul per layer, one attention call) computes every run's loss at once. Everything else stays per run: its data (the family's split for
its family seed), data order, masking noise (drawn from its own generators, as `train` draws them),
metrics, checkpoints and store rows. AdamW and the Grokfast filters are elementwise, so one optimizer
and one filter over the stacked tensors are exactly N independent ones. Each run is written as
`train` writes it (same checkpoint format), so any one of them resumes alone with
`train(cfg, resume=True)`; a run that stops early (patience) is recorded at its own step, and
its slice of the stack is simply no longer read. SIGTERM or Ctrl-C stops them as `train` stops:
every run checkpointed at the step, recorded `stopped`, then exit 143 (KeyboardInterrupt).

Not batched (use `train`): gradient clipping (a per-run norm), dropout (one global RNG),
init_from, resuming, the Grokfast reference decoder. Where it pays: on a GPU (`batching_pays`);
on a CPU, N batched seeds run no faster than N runs one by one, and experiments train them so.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from agents.progress import output_console
from diffusion import distributed
from diffusion.checkpoint import (
    checkpoint_info,
    latest_checkpoint,
    rng_state,
    run_eval_rows,
    run_location,
    save_checkpoint,
)
from diffusion.config import TrainConfig, check_config, config_to_json, run_id_of
from diffusion.data import BatchSampler, load_family, load_splits, read_snapshot_meta
from diffusion.evaluate import evaluation, held_since, update_diagnostics
from diffusion.grokfast import ema_filter_, ma_filter_
from diffusion.grouped import grouped_forward, stack_params
from diffusion.objective import ar_loss, mdm_loss_given, mdm_noise
from diffusion.records import eval_line, metrics_board, run_record
from diffusion.train import (
    RunResult,
    end_as_the_signal,
    ended_status,
    initial_model,
    is_eval_step,
    learning_rate,
    run_over,
    stop_signals,
)
from storage.home import grokloop_home, runs_dir
from storage.runs import record_run

# What may differ between batched runs: everything else is one architecture and one schedule.
PER_RUN = {"seed", "run_name", "run_id", "family_params", "dataset", "progress"}


def batchable(cfgs: list[TrainConfig]) -> str | None:
    """None when these runs can train as one batched model, else why not."""
    first = dataclasses.asdict(cfgs[0])
    for cfg in cfgs:
        if cfg.grad_clip or cfg.dropout or cfg.init_from:
            return "grad_clip, dropout and init_from are per-run state the batched step does not have"
        if cfg.arch != "denoiser" or cfg.reference_loop or cfg.share_layers:
            return "the Grokfast reference decoder and loop (arch, reference_loop) and shared layers train one by one"
        diff = {k for k, v in dataclasses.asdict(cfg).items() if k not in PER_RUN and v != first[k]}
        if diff:
            return f"runs differ in {', '.join(sorted(diff))}"
    return None


class Run:
    """One run's own state inside the batch: data, generators, bookkeeping."""

    def __init__(self, cfg: TrainConfig, index: int):
        self.cfg, self.index = cfg, index
        self.home = grokloop_home(cfg.home)
        cfg.home = str(self.home)
        cfg.run_id = run_id_of(cfg) or f"{cfg.objective}-{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}"
        self.dir = runs_dir(self.home) / cfg.run_id
        if (self.dir / "config.json").exists():
            raise FileExistsError(f"run {cfg.run_id!r} already exists at {self.dir}; resume it with "
                                  f"grokloop train --resume {cfg.run_id}, or pick another run_name")
        self.tokenizer, self.splits = load_splits(cfg)
        self.family = load_family(cfg)
        self.dataset_id = read_snapshot_meta(cfg.dataset)["dataset_id"] if cfg.dataset else None
        self.model = initial_model(cfg, self.tokenizer)  # seeded as `train` seeds it
        self.sampler = BatchSampler(len(self.splits["train"]), cfg.batch_size, seed=cfg.seed)
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.t_mem = self.t_grok = self.t_held = None
        self.done, self.stopped, self.step, self.evaluated, self.metrics = False, False, 0, -1, {}
        self.accum = {"loss": 0.0, "n": 0, "time": 0.0}

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(config_to_json(self.cfg))
        rows = run_eval_rows(self.dir, self.cfg, self.splits)
        self.eval_splits = {name: self.splits[name].subset(idx) for name, idx in rows.items()}
        record_run(self.home, self.row("running"), [], [])
        self.board = metrics_board(self.dir)

    def row(self, status: str) -> dict:
        return run_record(self.cfg, status, self.step, self.t_mem, self.t_grok, self.dataset_id)


def training_device(cfg: TrainConfig) -> torch.device:
    """Where cfg's runs train (`device`: cpu, cuda, or auto: cuda when there is one)."""
    return torch.device("cuda" if distributed.uses_cuda(cfg.device) else "cpu")


def batching_pays(cfg: TrainConfig) -> bool:
    """Whether N seeds as one batched model beat N runs one by one: on a GPU, yes (one kernel
    launch serves N runs); on a CPU, no. A run's step is compute-bound there: bench/throughput.py
    measured 8 batched seeds at 0.92x the throughput of 8 sequential runs (one thread, CPU clock),
    one run already at half a plain matmul's FLOP/s, which bounds any gain at 2x."""
    return training_device(cfg).type == "cuda"


def train_batched(cfgs: list[TrainConfig]) -> list[RunResult]:
    """Train these runs (one architecture) as one stacked model; one RunResult each, as `train` returns.
    The stacked model trains on the runs' `device`, and each run's own model, evaluated and
    checkpointed there, lives there too (as `train` keeps it): on a GPU nothing goes back to the CPU
    but the metrics."""
    cfgs = [check_config(dataclasses.replace(c)) for c in cfgs]
    if why := batchable(cfgs):
        raise ValueError(f"these runs cannot train as one batched model: {why}")
    cfg = cfgs[0]
    runs = [Run(c, i) for i, c in enumerate(cfgs)]
    if len({r.cfg.run_id for r in runs}) < len(runs):
        raise ValueError("batched runs need distinct run names")
    device = training_device(cfg)
    for run in runs:
        run.model.to(device)
    params = stack_params([r.model for r in runs], device)  # {name: (N, ...)} leaf tensors
    names = list(params)
    for run in runs:  # refused (above) before anything is written
        run.start()
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls([params[n] for n in names], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    mask_id = runs[0].tokenizer.mask_id

    def batched_loss(ids, answer_mask, maskable, t, masked):  # each (N, B, ...) -> (N,) losses
        def model(x, causal=False):
            return grouped_forward(params, runs[0].model.config, x, causal)
        if cfg.objective == "ar":
            return ar_loss(model, ids, answer_mask, mask_id, full_sequence=cfg.full_sequence)
        return mdm_loss_given(model, ids, maskable, t, masked, mask_id)

    try:
        with stop_signals() as received:
            _loop(runs, cfg, params, names, optimizer, batched_loss, mask_id, device, received)
    except BaseException as err:
        for run in runs:
            if not run.done:
                record_run(run.home, run.row(ended_status(err)), [], [])
                run.board.close()
        raise
    if stopped := [r for r in runs if r.stopped]:  # each checkpointed at the step the signal came
        end_as_the_signal(received, f"saved step {stopped[0].step} of {', '.join(r.cfg.run_id for r in stopped)}; "
                                    "each resumes with grokloop train --resume RUN", output_console())
    return [RunResult(run_id=r.cfg.run_id, run_dir=r.dir, checkpoint_dir=latest_checkpoint(run_location(r.cfg, r.dir)),
                      status="finished", final_step=r.step, t_mem=r.t_mem, t_grok=r.t_grok,
                      grok_ratio=r.t_grok / r.t_mem if r.t_grok is not None and r.t_mem else None,
                      metrics=r.metrics) for r in runs]


def _loop(runs: list[Run], cfg: TrainConfig, params: dict, names: list[str], optimizer, batched_loss,
          mask_id: int, device: torch.device, received: list[int]) -> None:
    filter_state, step = None, 0
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    while True:
        stopping = bool(received)  # one step for every run: a signal between runs waits for the next
        for run in runs:
            if not run.done:
                run.step = step
                _evaluate_and_record(run, step, params, optimizer, filter_state, ckpt_every, stopping)
        if all(r.done for r in runs):
            break
        # one step of every run
        t0 = time.perf_counter()
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = []
        for run in runs:  # each run's rows and noise from its own generators, in `train`'s order
            idx = run.sampler.next()
            ids, answer_mask = run.splits["train"].ids[idx], run.splits["train"].answer_mask[idx]
            noise = (mdm_noise(ids, answer_mask, mask_id, full_sequence=cfg.full_sequence, estimator=cfg.mdm_estimator,
                               generator=run.noise) if cfg.objective == "mdm" else (answer_mask, answer_mask[:, 0], answer_mask))
            batch.append((ids, answer_mask, *noise))
        losses = batched_loss(*(torch.stack(x).to(device) for x in zip(*batch, strict=True)))  # (N,)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # the runs share no weights: each slice gets its own run's gradient
        grads = {n: params[n].grad for n in names}
        if cfg.grokfast == "ema":
            filter_state = ema_filter_(grads, filter_state, cfg.grokfast_alpha, cfg.grokfast_lamb)
        elif cfg.grokfast == "ma":
            filter_state = ma_filter_(grads, filter_state, cfg.grokfast_window, cfg.grokfast_lamb, cfg.grokfast_filter)
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - t0
        for run, loss in zip(runs, losses.tolist(), strict=True):
            run.accum["loss"] += loss
            run.accum["n"] += 1
            run.accum["time"] += elapsed  # the batched step's time: every run's step, not a share of it


def _run_slice(run: Run, params: dict, optimizer, filter_state) -> tuple[dict, object]:
    """Copy run's slice of the stack into its own Denoiser (weights and last gradients); its filter
    state as `train` keeps it."""
    i, cfg = run.index, run.cfg
    with torch.no_grad():
        for n, p in run.model.named_parameters():
            p.copy_(params[n][i])
            p.grad = None if params[n].grad is None else _own(params[n].grad[i])
    if filter_state is None:
        return None
    if cfg.grokfast == "ema":
        return {n: _own(e[i]) for n, e in filter_state.items()}
    return {"window": {n: _own(w[:, i]) for n, w in filter_state["window"].items()},
            "sum": {n: _own(s[i]) for n, s in filter_state["sum"].items()},
            "count": filter_state["count"], "next": filter_state["next"]}


def _own(t: torch.Tensor) -> torch.Tensor:
    """A run's own copy of its slice (not a view into the stack), on the device of the stack, where
    the run's model is and `train` keeps its state."""
    return t.clone()


def _optimizer_slice(optimizer, i: int) -> dict:
    """Run i's optimizer state in the layout of `train`'s optimizer (one tensor per parameter)."""
    full = optimizer.state_dict()
    state = {k: {name: (_own(v[i]) if torch.is_tensor(v) and v.dim() > 0 else v) for name, v in st.items()}
             for k, st in full["state"].items()}
    return {"state": state, "param_groups": full["param_groups"]}


def _evaluate_and_record(run: Run, step: int, params: dict, optimizer, filter_state, ckpt_every: int,
                         stopping: bool) -> None:
    """`train`'s loop top for one run: evaluate, T_mem / T_grok, checkpoint, store, stop (`stopping`:
    a signal asked every run to stop here)."""
    cfg = run.cfg
    done = run_over(cfg, step, run.t_mem, run.t_held)
    evaluate_now = is_eval_step(cfg, step) or done  # the schedule `train` keeps (log included)
    checkpoint_now = step % ckpt_every == 0 or done or stopping
    if not (evaluate_now or checkpoint_now):
        return
    grokfast_state = _run_slice(run, params, optimizer, filter_state)
    rows = []
    if evaluate_now:
        diagnostics = update_diagnostics(cfg, run.model, grokfast_state, None)
        m, run.t_mem, run.t_grok = evaluation(cfg, run.model, run.eval_splits, run.family, run.tokenizer, step,
                                              optimizer.param_groups[0]["lr"], run.accum, diagnostics,
                                              run.t_mem, run.t_grok, run.board)
        run.t_held = held_since(cfg, m, step, run.t_held)
        run.accum = {"loss": 0.0, "n": 0, "time": 0.0}
        rows = [(step, k, float(v)) for k, v in sorted(m.items())]
        run.metrics, run.evaluated = m, step
        print(eval_line(step, m, run.t_mem, run.t_grok, run.t_held, cfg.run_id), flush=True)  # seeds share the log
        done = run_over(cfg, step, run.t_mem, run.t_held)
    ckpts = []
    if checkpoint_now or done:
        state = {"pending_rows": rows, "step": step, "optimizer": _optimizer_slice(optimizer, run.index),
                 "sampler": run.sampler.state_dict(), "noise": run.noise.get_state(), "rng": rng_state(),
                 "grokfast": grokfast_state, "t_mem": run.t_mem, "t_grok": run.t_grok, "t_held": run.t_held,
                 "evaluated": run.evaluated,
                 "accum": dict(run.accum), "config": dataclasses.asdict(cfg)}
        ckpts = [(step, save_checkpoint(run_location(cfg, run.dir), step, run.model, state, checkpoint_info(cfg, step),
                                        cfg.keep_checkpoints))]
    status = "finished" if done else "stopped" if stopping else "running"
    record_run(run.home, run.row(status), rows, ckpts, final=done)
    run.done, run.stopped = status != "running", status == "stopped"
    if run.done:
        run.board.close()
