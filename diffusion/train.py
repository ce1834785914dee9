"""Training a masked-diffusion denoiser (or its AR baseline) for long grokking runs.

    from diffusion.train import TrainConfig, train
    result = train(TrainConfig(family="modular", max_steps=3000))
    result = train(load_config(run_id, ["max_steps=6000"]), resume=True)   # continue it

One loop, read top to bottom: set the LR, evaluate + log + checkpoint on an interval,
forward/backward, Grokfast filter, clip, step. Everything random draws from explicit
generators that are saved with the checkpoint, so a run killed at any point (SIGKILL
included) resumes to exactly the numbers it would have produced uninterrupted (on CPU).

Layout under <home>/runs/<run_id>/:
    config.json                       the resolved TrainConfig
    eval_rows.json                    the rows each split is evaluated on, fixed for the run's life
    checkpoints/step_<N>/             save_pretrained (config.json + safetensors),
                                      state.pt (optimizer, Grokfast state, data position, RNGs),
                                      grokloop.json (what the checkpoint is: family, objective, step)
    latest                            "step_<N>", replaced atomically
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.tasks import TaskFamily, Tokenizer
from diffusion.config import apply_overrides as _apply_settings
from diffusion.data import (
    BatchSampler,
    EncodedSplit,
    eval_rows,
    load_family,
    load_splits,
    read_snapshot_meta,
)
from diffusion.evaluate import loss_and_prediction, split_accuracy
from diffusion.grokfast import gradfilter_ema, gradfilter_ma, slow_part
from diffusion.model import Denoiser, GrokfastRefDecoder, load_pretrained
from diffusion.objective import objective_loss
from storage.home import grokloop_home, runs_dir
from storage.runs import record_run, stored_metrics


def _modular_default() -> dict[str, Any]:
    return {"p": 97, "operations": ["x*y"], "train_fraction": 0.4, "seed": 0}


@dataclass
class TrainConfig:
    # what to learn
    objective: str = "mdm"                 # mdm (masked diffusion) | ar (same backbone, causal)
    family: str = "modular"                # task family; its tokenizer is always used
    family_params: dict = field(default_factory=_modular_default)  # incl. "seed" of the task world
    dataset: str | None = None             # snapshot directory; None trains from the family's generator
    full_sequence: bool = False            # mdm: also noise the prompt (unconditional) instead of answer only
    mdm_estimator: str = "count"           # count: t integrated out (less variance) | t: 1/t-weighted Bernoulli(t) masks
    # model (2-layer width-128 groks a*b mod 97 in ~2.5k steps with Grokfast-EMA)
    arch: str = "denoiser"                 # denoiser (ours: RoPE, pre-LN) | grokfast_ref (the Grokfast
                                           # reference code's decoder; PyTorch's init whatever `init` says)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    share_layers: bool = False             # denoiser: one block applied num_layers times (Wang et al. 2024)
    mlp_ratio: int = 4
    dropout: float = 0.0                   # grokking setups use none
    init: str = "small"                    # small: N(0, 0.02) | torch: PyTorch defaults (groks late)
    init_from: str | None = None           # checkpoint dir to start the weights from (next round)
    # optimization
    optimizer: str = "adamw"               # adamw (decoupled decay) | adam (L2 decay, the Grokfast paper's)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 1.0              # strong decay is what makes grokking happen at all
    warmup_steps: int = 10                 # linear LR warmup, as in the Grokfast code
    reference_loop: bool = False           # the Grokfast code's loop: each epoch's last, partial batch is a
                                           # step; warmup gives the first update lr 0
    grad_clip: float = 0.0                 # 0 = no clipping (grokking papers do not clip)
    batch_size: int = 512
    max_steps: int = 5000
    # Grokfast (Lee et al. 2024)
    grokfast: str = "ema"                  # none | ema | ma
    grokfast_alpha: float = 0.98           # ema momentum
    grokfast_lamb: float = 2.0             # amplification of the slow gradient (paper: 2 for ema, 5 for ma)
    grokfast_window: int = 100             # ma window
    grokfast_filter: str = "mean"          # ma: mean | sum
    # evaluation and stopping
    eval_every: int = 100                  # steps between metrics (and checkpoints by default)
    eval_schedule: str = "linear"          # linear: every eval_every | log: also ~10 per decade below it (log-axis plots)
    checkpoint_every: int = 0              # 0 = every eval
    keep_checkpoints: int = 3              # older ones are deleted (the latest always kept)
    eval_max_rows: int = 4096              # rows per split used for metrics (a seeded sample); 0 = all
    sampler_steps: int = 8                 # denoising steps when sampling answers (capped at answer length)
    sampler_threshold: float = 0.95        # commit anything this confident early
    mem_threshold: float = 0.99            # T_mem: first eval with train acc >= this (two_hop: inferred facts)
    grok_threshold: float = 0.95           # T_grok: first eval with test_id acc >= this
    patience: int = 0                      # stop this many steps after T_grok; 0 = run to max_steps
    mem_multiple: float = 0.0              # with patience: also run to at least this many times T_mem
    # bookkeeping
    seed: int = 0                          # init, data order, masking noise
    run_name: str | None = None            # also the run id when given (a retry resumes the same run)
    run_id: str | None = None              # set on creation; resume uses it
    home: str | None = None                # grokloop home; None = $GROKLOOP_HOME or ./.grokloop
    progress: bool = True                  # rich progress bar
    compile: bool = False                  # torch.compile the training forward (see bench/throughput.py --compile)


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    checkpoint_dir: Path | None            # latest save_pretrained dir
    status: str                            # finished | stopped
    final_step: int
    t_mem: int | None
    t_grok: int | None
    grok_ratio: float | None
    metrics: dict[str, float]              # the last evaluation


# --- config --------------------------------------------------------------------------------------

def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """`key=value` (or `--key=value`) pairs typed by TrainConfig's fields (diffusion/config.py), then checked."""
    return check_config(_apply_settings(cfg, overrides, what="training"))


def check_config(cfg: TrainConfig) -> TrainConfig:
    choices = {"objective": ("mdm", "ar"), "grokfast": ("none", "ema", "ma"),
               "optimizer": ("adamw", "adam"), "grokfast_filter": ("mean", "sum"),
               "mdm_estimator": ("t", "count"), "init": ("small", "torch"),
               "eval_schedule": ("linear", "log"), "arch": ("denoiser", "grokfast_ref")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name in ("batch_size", "eval_every", "sampler_steps", "hidden_size", "num_layers", "num_heads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {cfg.max_steps}")
    if cfg.dataset is None and not cfg.family:
        raise ValueError("set family (train from its generator) or dataset (a snapshot directory)")
    return cfg


def config_to_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


def config_from_dict(data: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {k: v for k, v in data.items() if k in known}
    if "betas" in data:
        data["betas"] = tuple(data["betas"])
    return check_config(TrainConfig(**data))


def run_id_of(cfg: TrainConfig) -> str | None:
    return cfg.run_id or cfg.run_name


def load_config(run_id: str, overrides: list[str] = (), home: str | None = None) -> TrainConfig:
    """The saved config of a run (for resuming), with overrides applied."""
    path = runs_dir(home) / run_id / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run {run_id!r} under {runs_dir(home)} (no config.json)")
    cfg = config_from_dict(json.loads(path.read_text()))
    cfg.home = str(grokloop_home(home)) if home else cfg.home
    return apply_overrides(cfg, list(overrides))


def has_checkpoint(cfg: TrainConfig) -> bool:
    run_id = run_id_of(cfg)
    return bool(run_id) and (runs_dir(cfg.home) / run_id / "latest").is_file()


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


def run_record(cfg: TrainConfig, status: str, step: int, t_mem: int | None, t_grok: int | None,
               dataset_id: str | None) -> dict:
    """The run's row in the store's `runs` table."""
    ratio = t_grok / t_mem if t_grok is not None and t_mem else None
    delay = t_grok - t_mem if t_grok is not None and t_mem is not None else None
    parent = Path(cfg.init_from).parent.parent.name if cfg.init_from else None
    return {"run_id": cfg.run_id, "name": cfg.run_name, "objective": cfg.objective,
            "dataset_id": dataset_id, "config": config_to_json(cfg), "status": status,
            "parent_run_id": parent, "t_mem": t_mem, "t_grok": t_grok, "grok_ratio": ratio,
            "grok_delay": delay, "final_step": step}


def checkpoint_meta(cfg: TrainConfig, step: int) -> dict:
    """What a checkpoint is (grokloop.json); a snapshot names its family: checkpoints rebuild that tokenizer."""
    family, family_params, dataset_id = cfg.family, cfg.family_params, None
    if cfg.dataset:
        snap = read_snapshot_meta(cfg.dataset)
        dataset_id, family, family_params = snap["dataset_id"], snap["family"], snap["family_params"]
    return {"run_id": cfg.run_id, "step": step, "objective": cfg.objective, "family": family,
            "family_params": family_params, "dataset": cfg.dataset, "dataset_id": dataset_id,
            "sampler_steps": cfg.sampler_steps, "sampler_threshold": cfg.sampler_threshold}


# --- checkpoints ---------------------------------------------------------------------------------

def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, step: int, model: Denoiser, state: dict, meta: dict,
                    keep: int) -> Path:
    """Write to a temporary directory, rename it into place, then move the `latest` pointer."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    if not final.is_dir():
        tmp = root / f".tmp_step_{step}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        torch.save(state, tmp / "state.pt")
        (tmp / "grokloop.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        _fsync_dir_files(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)  # the rename itself survives a power cut only once its directory is synced
    pointer_tmp = run_dir / f".latest.{os.getpid()}"
    with open(pointer_tmp, "w") as fh:
        fh.write(final.name)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, run_dir / "latest")
    _fsync_dir(run_dir)
    steps = sorted(int(p.name.split("_")[1]) for p in root.glob("step_*"))
    for old in steps[:-keep] if keep > 0 else []:
        if old != step:
            shutil.rmtree(root / f"step_{old}", ignore_errors=True)
    return final


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_eval_rows(run_dir: Path, cfg: TrainConfig, splits: dict[str, EncodedSplit]) -> dict[str, list[int]]:
    """The run's evaluation rows: drawn once (seeded) and kept in the run directory, so a resumed or
    extended run is measured on the same rows whatever eval_max_rows says now."""
    path = run_dir / "eval_rows.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        for name, entry in stored.items():
            if name not in splits or len(splits[name]) != entry["n_rows"]:
                have = len(splits[name]) if name in splits else "no"
                raise ValueError(f"{path}: split {name!r} had {entry['n_rows']} rows, the data now has {have}; "
                                 "the run's evaluation rows no longer fit its data")
        return {name: entry["rows"] for name, entry in stored.items()}
    rows = eval_rows(splits, cfg.eval_max_rows, cfg.seed)
    tmp = run_dir / f".eval_rows.{os.getpid()}"
    tmp.write_text(json.dumps({name: {"n_rows": len(splits[name]), "rows": idx} for name, idx in rows.items()}))
    os.replace(tmp, path)
    return rows


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def load_model(checkpoint_dir: str | Path) -> Denoiser | GrokfastRefDecoder:
    return load_pretrained(checkpoint_dir)


# --- evaluation during training ------------------------------------------------------------------

def estimate(cfg: TrainConfig, model: Denoiser, splits: dict[str, EncodedSplit], family: TaskFamily,
             tokenizer: Tokenizer, step: int) -> dict[str, float]:
    """Loss and verified accuracy (plus exact match, kinds, clusters: `split_accuracy`) of each split's
    evaluation rows (`splits` holds only those), with fixed noise per step; one forward pass per
    split where the answer is one token (`loss_and_prediction`)."""
    out: dict[str, float] = {}
    for name, rows in splits.items():
        if len(rows) == 0:
            continue
        noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # same step, same noise
        out[f"{name}/loss"], pred = loss_and_prediction(
            cfg.objective, model, rows.ids, rows.answer_mask, tokenizer.mask_id, full_sequence=cfg.full_sequence,
            estimator=cfg.mdm_estimator, generator=noise, n_steps=cfg.sampler_steps,
            threshold=cfg.sampler_threshold)
        for group, (_, acc) in split_accuracy(family, tokenizer, name, rows, pred).items():
            out[group if group.endswith("/exact") else f"{group}/acc"] = acc
    with torch.no_grad():
        out["weight_norm"] = grad_norm([p.detach() for p in model.parameters()])
    return out


def update_diagnostics(cfg: TrainConfig, model: Denoiser, filter_state, clip_total: float | None) -> dict:
    """grad_norm (the raw gradient) and grokfast/filter_ratio (|added| / |raw|) of the last update, read
    at eval time off the gradients it left and the filter's state, so the step itself does no extra work."""
    params = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    if not params:
        return {}
    # p.grad is the filtered gradient, scaled by clipping when it clipped
    scale = min(1.0, cfg.grad_clip / (clip_total + 1e-6)) if cfg.grad_clip and clip_total is not None else 1.0
    added = slow_part(filter_state, cfg.grokfast, cfg.grokfast_lamb, cfg.grokfast_filter,
                      window_size=cfg.grokfast_window) if cfg.grokfast != "none" else {}
    with torch.no_grad():
        raw = [p.grad / scale - added[n] if n in added else p.grad / scale for n, p in params]
        raw_norm = grad_norm(raw)
        out = {"grad_norm": raw_norm}
        if added:
            out["grokfast/filter_ratio"] = grad_norm(list(added.values())) / max(raw_norm, 1e-12)
    return out


def evaluation(cfg: TrainConfig, model: Denoiser, eval_splits: dict[str, EncodedSplit], family: TaskFamily,
               tokenizer: Tokenizer, step: int, lr: float, accum: dict, diagnostics: dict,
               t_mem: int | None, t_grok: int | None, board) -> tuple[dict[str, float], int | None, int | None]:
    """One evaluation as every loop records it (`train`, and each run of `train_batched`): the
    estimate, lr, the mean batch loss and step time since the last one, the update's diagnostics;
    T_mem and T_grok set when first reached; mirrored to TensorBoard."""
    metrics = estimate(cfg, model, eval_splits, family, tokenizer, step)
    metrics["lr"] = lr
    if accum["n"]:
        metrics["train/batch_loss"] = accum["loss"] / accum["n"]
        metrics["step_time"] = accum["time"] / accum["n"]
    metrics.update(diagnostics)
    if t_mem is None and metrics.get(memorized_metric(family, metrics), 0.0) >= cfg.mem_threshold:
        t_mem = step
    if t_grok is None and metrics.get("test_id/acc", 0.0) >= cfg.grok_threshold:
        t_grok = step
    for name, value in sorted(metrics.items()):
        board.add_scalar(name, value, step)
    board.flush()
    return metrics, t_mem, t_grok


def memorized_metric(family: TaskFamily, metrics: dict[str, float]) -> str:
    """What T_mem is measured on: the rows that must be memorised (two_hop: inferred train facts)."""
    kind = f"train_{family.memorized_kind}/acc"
    return kind if kind in metrics else "train/acc"


def grad_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0


# --- the loop ------------------------------------------------------------------------------------

def train(cfg: TrainConfig, *, resume: bool = False) -> RunResult:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from agents.progress import output_console, progress_bar

    cfg = check_config(dataclasses.replace(cfg))
    home = grokloop_home(cfg.home)
    cfg.home = str(home)
    console = output_console(quiet=not cfg.progress)  # a log gets whole lines, a progress line every 10 s

    # run identity and directory
    cfg.run_id = run_id_of(cfg) or f"{cfg.objective}-{cfg.family}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = runs_dir(home) / cfg.run_id
    resume_from = latest_checkpoint(run_dir) if resume else None
    if not resume and (run_dir / "config.json").exists():
        raise FileExistsError(f"run {cfg.run_id!r} already exists at {run_dir}; "
                              f"resume it (grokloop train --resume {cfg.run_id}) or pick another run_name")

    # data and model (bad data fails here, before anything is written)
    tokenizer, splits = load_splits(cfg)
    task_family = load_family(cfg)
    mask_id = tokenizer.mask_id
    dataset_id = read_snapshot_meta(cfg.dataset)["dataset_id"] if cfg.dataset else None
    model = initial_model(cfg, tokenizer)
    forward = torch.compile(model) if cfg.compile else model  # same parameters; eval and saving use `model`
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config_to_json(cfg))
    eval_splits = {name: splits[name].subset(idx) for name, idx in run_eval_rows(run_dir, cfg, splits).items()}
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sampler = BatchSampler(len(splits["train"]), cfg.batch_size, seed=cfg.seed, keep_last=cfg.reference_loop)
    noise = torch.Generator().manual_seed(cfg.seed + 1)  # masking noise, separate from data order

    # loop state: everything that must survive a restart
    step, filter_state, t_mem, t_grok, evaluated, saved, pending_rows = 0, None, None, None, -1, -1, []
    accum = {"loss": 0.0, "n": 0, "time": 0.0}
    clip_total = None  # the last update's gradient norm before clipping (grad_clip only)
    if resume_from is not None:
        model.load_state_dict(load_model(resume_from).state_dict())
        st = torch.load(resume_from / "state.pt", weights_only=False)
        optimizer.load_state_dict(st["optimizer"])
        sampler.load_state_dict(st["sampler"])
        noise.set_state(st["noise"])
        set_rng_state(st["rng"])
        step, filter_state, t_mem, t_grok = st["step"], st["grokfast"], st["t_mem"], st["t_grok"]
        evaluated, accum, saved = st["evaluated"], st["accum"], st["step"]
        pending_rows = st.get("pending_rows", [])
        console.print(f"resuming {cfg.run_id} from {resume_from.name}")

    def run_row(status: str) -> dict:
        return run_record(cfg, status, step, t_mem, t_grok, dataset_id)

    def checkpoint(pending: list | None = None) -> Path:
        state = {"pending_rows": pending or [], "step": step, "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                 "noise": noise.get_state(), "rng": rng_state(), "grokfast": filter_state,
                 "t_mem": t_mem, "t_grok": t_grok, "evaluated": evaluated, "accum": dict(accum),
                 "config": dataclasses.asdict(cfg)}
        return save_checkpoint(run_dir, step, model, state, checkpoint_meta(cfg, step), cfg.keep_checkpoints)

    # SIGTERM: finish the current step, checkpoint, then exit the process (143, as SIGTERM would):
    # a caller looping over runs (an experiment, a flow) must stop too, not start the next run.
    stop_signal = threading.Event()
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop_signal.set())

    record_run(home, run_row("running"), pending_rows, [])
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    metrics: dict[str, float] = {}
    status = "finished"
    model.train()
    progress = progress_bar(TextColumn(f"[bold]{cfg.run_id}"), BarColumn(), MofNCompleteColumn(),
                            _steps_per_second_column(), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            console=console, disable=not cfg.progress)
    board = metrics_board(run_dir, purge_step=step if resume_from is not None else None)
    pace = Pace(step, cfg.max_steps)
    try:
        with progress:
            bar = progress.add_task(cfg.run_id, total=cfg.max_steps, completed=step, info="")
            while True:
                # evaluate, log and maybe stop (each step once, even across restarts)
                done = step >= cfg.max_steps or _patience_over(cfg, step, t_grok, t_mem)
                rows = []
                evaluate_now = (is_eval_step(cfg, step) or done) and evaluated < step
                if evaluate_now:
                    diagnostics = update_diagnostics(cfg, model, filter_state,
                                                     None if clip_total is None else float(clip_total))
                    metrics, t_mem, t_grok = evaluation(cfg, model, eval_splits, task_family, tokenizer, step,
                                                        optimizer.param_groups[0]["lr"], accum, diagnostics,
                                                        t_mem, t_grok, board)
                    accum, evaluated = {"loss": 0.0, "n": 0, "time": 0.0}, step
                    rows = [(step, k, float(v)) for k, v in sorted(metrics.items())]
                    progress.console.print(_eval_line(step, metrics, t_mem, t_grok) + pace.line(step))
                    progress.update(bar, info=f"train {metrics.get('train/acc', 0):.3f} "
                                              f"test {metrics.get('test_id/acc', 0):.3f}")
                    done = done or _patience_over(cfg, step, t_grok, t_mem)
                # Checkpoint on its own schedule (and at the end), once per step even across restarts.
                # It carries this eval's rows: a kill before the store write below is repaired on
                # resume (the write is idempotent), never a gap in the metrics.
                ckpts = []
                if (step % ckpt_every == 0 or done) and saved < step:
                    ckpts, saved = [(step, checkpoint(rows))], step
                # A busy store never fails the run: the rows wait in the run directory
                # (storage/runs.py); the last write waits longer so the final status lands.
                if evaluate_now or ckpts:
                    if not record_run(home, run_row("finished" if done else "running"), rows, ckpts, final=done):
                        progress.console.print(_pending_line(cfg.run_id, run_dir, done))
                elif done:  # already evaluated and saved (resuming a complete run): settle its status
                    record_run(home, run_row("finished"), [], [], final=True)
                    metrics = metrics or stored_metrics(home, cfg.run_id, step)
                if done:
                    break
                if stop_signal.is_set():
                    status = "stopped"
                    record_run(home, run_row("stopped"), [], [(step, checkpoint())])
                    console.print(f"SIGTERM: saved step {step}; resume with --resume {cfg.run_id}")
                    break

                # one optimization step
                t0 = time.perf_counter()
                # The reference's LambdaLR gives update u the factor u / warmup, so its first update has
                # lr 0 (it only primes Adam's moments and the filter); ours starts at 1 / warmup.
                warm = step if cfg.reference_loop else step + 1
                lr = cfg.lr * min(1.0, warm / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
                if optimizer.param_groups[0]["lr"] != lr:  # warmup, or a resumed run given a new lr
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                idx = sampler.next()
                ids, answer_mask = splits["train"].ids[idx], splits["train"].answer_mask[idx]
                loss = objective_loss(cfg.objective, forward, ids, answer_mask, mask_id,
                                      full_sequence=cfg.full_sequence, estimator=cfg.mdm_estimator, generator=noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grokfast == "ema":
                    filter_state = gradfilter_ema(model, filter_state, cfg.grokfast_alpha, cfg.grokfast_lamb)
                elif cfg.grokfast == "ma":
                    filter_state = gradfilter_ma(model, filter_state, cfg.grokfast_window,
                                                 cfg.grokfast_lamb, cfg.grokfast_filter)
                if cfg.grad_clip:
                    clip_total = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                step += 1
                accum["loss"] += float(loss.detach())
                accum["n"] += 1
                progress.update(bar, completed=step)
                accum["time"] += time.perf_counter() - t0  # the whole step, bookkeeping included
    except BaseException:
        record_run(home, run_row("failed"), [], [])
        raise
    finally:
        board.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if status == "stopped":
        raise SystemExit(128 + signal.SIGTERM)

    ratio = t_grok / t_mem if t_grok is not None and t_mem else None
    return RunResult(run_id=cfg.run_id, run_dir=run_dir, checkpoint_dir=latest_checkpoint(run_dir),
                     status=status, final_step=step, t_mem=t_mem, t_grok=t_grok, grok_ratio=ratio,
                     metrics=metrics)


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


class Pace:
    """Steps/s and ETA since this process started, for the log lines (the bar has its own)."""

    def __init__(self, step: int, max_steps: int):
        self.start_step, self.start, self.max_steps = step, time.perf_counter(), max_steps

    def line(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return ""
        rate = done / (time.perf_counter() - self.start)
        eta = (self.max_steps - step) / rate
        return f" | {rate:.1f} steps/s ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"


def metrics_board(run_dir: Path, purge_step: int | None = None):
    """Metrics mirrored to TensorBoard event files under <run>/tensorboard (`tensorboard --logdir
    <home>/runs` shows every run). A resumed run purges what a killed process wrote after the checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)


def _steps_per_second_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class StepsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} steps/s" if task.speed else "- steps/s")

    return StepsPerSecond()


def _pending_line(run_id: str, run_dir: Path, done: bool) -> str:
    if not done:
        return "store busy: this evaluation waits in the run directory and is written at the next one"
    return (f"store busy: run {run_id}'s last records wait in {run_dir / 'pending'}; "
            f"`grokloop ingest` writes them when the store is free")


def _patience_over(cfg: TrainConfig, step: int, t_grok: int | None, t_mem: int | None = None) -> bool:
    """Grokked `patience` steps ago, and (mem_multiple) past that multiple of T_mem: a grokking
    run shows its delay on a log axis only when it runs well past memorisation."""
    if not cfg.patience or t_grok is None or step - t_grok < cfg.patience:
        return False
    return not cfg.mem_multiple or (t_mem is not None and step >= cfg.mem_multiple * t_mem)


def _eval_line(step: int, m: dict[str, float], t_mem: int | None, t_grok: int | None) -> str:
    parts = [f"step {step:>6}"]
    for split in ("train", "test_id", "test_ood"):
        if f"{split}/acc" in m:
            parts.append(f"{split} loss {m[f'{split}/loss']:.4f} acc {m[f'{split}/acc']:.3f}")
    parts.append(f"|w| {m['weight_norm']:.1f}")
    if "grokfast/filter_ratio" in m:
        parts.append(f"filter {m['grokfast/filter_ratio']:.2f}")
    parts.append(f"T_mem {t_mem if t_mem is not None else '-'} T_grok {t_grok if t_grok is not None else '-'}")
    return " | ".join(parts)
