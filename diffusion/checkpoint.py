"""A run's directory and checkpoints: written atomically, with everything a restart needs.

Layout under <home>/runs/<run_id>/:
    config.json                       the resolved TrainConfig
    eval_rows.json                    the rows each split is evaluated on, fixed for the run's life
    checkpoints/step_<N>/             save_pretrained (config.json + safetensors),
                                      state.pt (optimizer, Grokfast state, data position, RNGs, TrainState),
                                      grokloop.json (what the checkpoint is: family, objective, step)
    latest                            "step_<N>", replaced atomically

A checkpoint is written to a temporary directory, fsynced, renamed into place, and only then does
`latest` move: a process killed at any moment (SIGKILL included) leaves the previous checkpoint
whole, and a resumed run continues to exactly the numbers it would have produced (on CPU).

With `shared_home` (a URL, storage/shared.py) the checkpoints, `latest` and eval_rows.json live at
<shared_home>/runs/<run_id>/ instead, in the same layout: each file one object written whole,
grokloop.json last, then `latest`; so a run resumes on any machine. Such a checkpoint is read
through a local copy (`local_checkpoint`); the rest of the run directory (config.json, TensorBoard,
pending records) stays local.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion.config import TrainConfig, config_to_json, run_id_of
from diffusion.data import BatchSampler, EncodedSplit, eval_rows, read_snapshot_meta
from diffusion.model import Denoiser, GrokfastRefDecoder, load_pretrained
from storage import shared
from storage.home import is_url, runs_dir
from storage.runs import last_stored_step


def new_accum() -> dict:
    return {"loss": 0.0, "n": 0, "time": 0.0}


@dataclass
class TrainState:
    """The loop's own state. With the weights, optimizer, data position and RNGs (saved beside it),
    everything a restart needs."""
    step: int = 0
    t_mem: int | None = None               # first evaluation that memorised the train rows
    t_grok: int | None = None              # first evaluation that generalised
    t_held: int | None = None              # test ID at the threshold at every evaluation since (patience)
    evaluated: int = -1                    # last step evaluated: each step once, even across restarts
    saved: int = -1                        # last step checkpointed
    grokfast: Any = None                   # the Grokfast filter's state (None before the first step)
    accum: dict = field(default_factory=new_accum)  # batch loss and step time since the last evaluation
    clip_norm: torch.Tensor | None = None  # the last update's gradient norm before clipping (grad_clip only;
                                           # a diagnostic read at eval time, not saved)


# --- writing and reading checkpoints -------------------------------------------------------------

def save_training_checkpoint(run_dir: Path, cfg: TrainConfig, model: torch.nn.Module, optimizer, sampler: BatchSampler,
                             noise: torch.Generator, state: TrainState, rows: list) -> Path:
    """The run at `state.step`. `rows` are the metric rows of this step's evaluation: written again on
    resume, in case the process died between this checkpoint and the store."""
    blob = {"step": state.step, "t_mem": state.t_mem, "t_grok": state.t_grok, "t_held": state.t_held,
            "evaluated": state.evaluated,
            "grokfast": state.grokfast, "accum": dict(state.accum), "pending_rows": rows,
            "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(), "noise": noise.get_state(),
            "rng": rng_state(), "config": dataclasses.asdict(cfg)}
    return save_checkpoint(run_location(cfg, run_dir), state.step, model, blob, checkpoint_info(cfg, state.step),
                           cfg.keep_checkpoints)


def run_location(cfg: TrainConfig, run_dir: Path) -> Path | str:
    """Where the run's checkpoints, `latest` and evaluation rows live: its directory, or
    <shared_home>/runs/<run_id> so that the run moves between machines."""
    return shared.join(cfg.shared_home, "runs", run_id_of(cfg)) if cfg.shared_home else run_dir


def write_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    """config.json in the run directory and, with shared_home, beside the run's checkpoints there:
    what `grokloop train --resume ID shared_home=URL` reads on a machine without the directory."""
    text = config_to_json(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(text)
    if cfg.shared_home:
        shared.write_bytes(shared.join(run_location(cfg, run_dir), "config.json"), text.encode())


def load_training_checkpoint(path: Path | str, model: torch.nn.Module, optimizer, sampler: BatchSampler,
                             noise: torch.Generator) -> tuple[TrainState, list]:
    """Restore weights, optimizer, data position and every RNG from a checkpoint; its TrainState and
    the metric rows it carries (see save_training_checkpoint)."""
    path = local_checkpoint(path)
    model.load_state_dict(load_model(path).state_dict())
    blob = torch.load(path / "state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    sampler.load_state_dict(blob["sampler"])
    noise.set_state(blob["noise"])
    set_rng_state(blob["rng"])
    # A checkpoint written before patience counted from t_held has none: its run's rule counted from
    # T_grok, which it keeps until its next evaluation says whether test ID is still at the threshold.
    state = TrainState(step=blob["step"], t_mem=blob["t_mem"], t_grok=blob["t_grok"],
                       t_held=blob.get("t_held", blob["t_grok"]), evaluated=blob["evaluated"],
                       saved=blob["step"], grokfast=blob["grokfast"], accum=blob["accum"])
    return state, blob.get("pending_rows", [])


def checkpoint_info(cfg: TrainConfig, step: int) -> dict:
    """What a checkpoint is (grokloop.json); a snapshot names its family: checkpoints rebuild that tokenizer.
    `saved_at` also makes each writing of a step a new version of the file: a machine's local copy of a
    shared checkpoint is keyed on it (storage/shared.py `local_copy`), and a step written again by a
    rerun, or by other code, must not be read from the copy of the earlier one."""
    family, family_params, dataset_id = cfg.family, cfg.family_params, None
    if cfg.dataset:
        snap = read_snapshot_meta(cfg.dataset)
        dataset_id, family, family_params = snap["dataset_id"], snap["family"], snap["family_params"]
    return {"run_id": cfg.run_id, "step": step, "objective": cfg.objective, "family": family,
            "family_params": family_params, "dataset": cfg.dataset, "dataset_id": dataset_id,
            "sampler_steps": cfg.sampler_steps, "sampler_threshold": cfg.sampler_threshold,
            "saved_at": datetime.now(UTC).isoformat()}


def save_checkpoint(run_dir: Path | str, step: int, model: torch.nn.Module, state: dict, meta: dict,
                    keep: int) -> Path | str:
    """Write to a temporary directory, rename it into place, then move the `latest` pointer; keep the
    newest `keep` checkpoints (0: all). `run_dir` a URL: `publish_checkpoint`."""
    if is_url(run_dir):
        return publish_checkpoint(str(run_dir), step, model, state, meta, keep)
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    if not final.is_dir():
        tmp = root / f".tmp_step_{step}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint_files(tmp, model, state, meta)
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


def write_checkpoint_files(directory: Path, model: torch.nn.Module, state: dict, meta: dict) -> None:
    model.save_pretrained(directory)
    torch.save(state, directory / "state.pt")
    (directory / "grokloop.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def publish_checkpoint(run_url: str, step: int, model: torch.nn.Module, state: dict, meta: dict, keep: int) -> str:
    """save_checkpoint on a URL: the files written here, uploaded one whole object each (grokloop.json
    last: a step without it is incomplete and written again), then `latest`; the newest `keep` kept."""
    final = shared.join(run_url, "checkpoints", f"step_{step}")
    if not shared.exists(shared.join(final, "grokloop.json")):
        with tempfile.TemporaryDirectory(prefix="grokloop-checkpoint-") as tmp:
            write_checkpoint_files(Path(tmp), model, state, meta)
            shared.publish_dir(Path(tmp), final, last="grokloop.json")
    shared.write_bytes(shared.join(run_url, "latest"), f"step_{step}".encode())
    steps = sorted(int(name.split("_")[1]) for name in shared.children(shared.join(run_url, "checkpoints"))
                   if name.startswith("step_"))
    for old in steps[:-keep] if keep > 0 else []:
        if old != step:
            shared.remove(shared.join(run_url, "checkpoints", f"step_{old}"))
    return final


def local_checkpoint(ref: str | Path) -> Path:
    """A checkpoint as a local directory: itself, or a URL's local copy (storage/shared.py)."""
    if not is_url(ref):
        return Path(ref)
    try:
        return shared.local_copy(str(ref), "grokloop.json")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{ref} is not a grokloop checkpoint (no grokloop.json)") from err


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


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def load_model(checkpoint_dir: str | Path) -> Denoiser | GrokfastRefDecoder:
    return load_pretrained(local_checkpoint(checkpoint_dir))


# --- finding checkpoints ---------------------------------------------------------------------------

def latest_checkpoint(run_dir: Path | str) -> Path | str | None:
    """The checkpoint `latest` points to in a run directory (or run URL, see run_location)."""
    if is_url(run_dir):
        pointer = shared.read_bytes(shared.join(str(run_dir), "latest"))
        return shared.join(str(run_dir), "checkpoints", pointer.decode().strip()) if pointer else None
    pointer = run_dir / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def has_checkpoint(cfg: TrainConfig) -> bool:
    run_id = run_id_of(cfg)
    if run_id and cfg.shared_home:
        return shared.exists(shared.join(run_location(cfg, Path()), "latest"))
    return bool(run_id) and (runs_dir(cfg.home) / run_id / "latest").is_file()


def imported_step(cfg: TrainConfig) -> int | None:
    """The step the store has the run's evaluations to, when the run has no directory here (nor at
    shared_home): it was trained elsewhere and only its numbers came (`grokloop import-runs`). Such a
    run cannot be continued here, and training it would start again from step 0 over its stored
    curve. None for a run this machine can train or continue."""
    run_id = run_id_of(cfg)
    if not run_id or (runs_dir(cfg.home) / run_id / "config.json").is_file():
        return None
    if cfg.shared_home and shared.exists(shared.join(run_location(cfg, Path()), "config.json")):
        return None
    return last_stored_step(cfg.home, run_id)


def resolve_checkpoint(ref: str | Path, home: str | Path | None = None) -> Path | str:
    """A checkpoint directory from a step directory, a run directory or a run id (its latest); a URL
    of a checkpoint or of a run (<shared_home>/runs/<run_id>) stays a URL."""
    if is_url(ref):
        found = ref if shared.exists(shared.join(str(ref), "grokloop.json")) else latest_checkpoint(str(ref))
        if found is None:
            raise FileNotFoundError(f"{ref!r} is neither a checkpoint nor a run with a checkpoint")
        return str(found)
    path = Path(ref)
    if (path / "grokloop.json").is_file():
        return path
    for run_dir in (path, runs_dir(home) / str(ref)):
        if (run_dir / "latest").is_file():
            found = latest_checkpoint(run_dir)
            if found is not None:
                return found
    raise FileNotFoundError(f"{ref!r} is neither a checkpoint directory nor a run with a checkpoint "
                            f"(looked under {runs_dir(home)})")


def checkpoint_meta(checkpoint_dir: str | Path) -> dict:
    """What a checkpoint is: run_id, step, objective, family, family_params, dataset, sampler_steps."""
    path = local_checkpoint(checkpoint_dir) / "grokloop.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a grokloop checkpoint (no grokloop.json)")
    return json.loads(path.read_text())


# --- the run's evaluation rows ---------------------------------------------------------------------

def run_eval_rows(run_dir: Path, cfg: TrainConfig, splits: dict[str, EncodedSplit]) -> dict[str, list[int]]:
    """The run's evaluation rows: drawn once (seeded) and kept in the run directory, so a resumed or
    extended run is measured on the same rows whatever eval_max_rows says now. With shared_home they
    are kept there, beside the checkpoints, for the machine the run resumes on."""
    where = run_location(cfg, run_dir)
    path = shared.join(where, "eval_rows.json") if is_url(where) else run_dir / "eval_rows.json"
    text = shared.read_bytes(path) if is_url(where) else path.read_text() if path.is_file() else None
    if text is not None:
        stored = json.loads(text)
        for name, entry in stored.items():
            if name not in splits or len(splits[name]) != entry["n_rows"]:
                have = len(splits[name]) if name in splits else "no"
                raise ValueError(f"{path}: split {name!r} had {entry['n_rows']} rows, the data now has {have}; "
                                 "the run's evaluation rows no longer fit its data")
        return {name: entry["rows"] for name, entry in stored.items()}
    rows = eval_rows(splits, cfg.eval_max_rows, cfg.seed)
    text = json.dumps({name: {"n_rows": len(splits[name]), "rows": idx} for name, idx in rows.items()})
    if is_url(where):
        shared.write_bytes(path, text.encode())
        return rows
    tmp = run_dir / f".eval_rows.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return rows
