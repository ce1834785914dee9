"""A training run's settings (`TrainConfig`), and `key=value` settings typed and checked before any
work starts: one parser for every command (the loop's `LoopConfig` in flows/config.py uses it too).

    cfg = apply_overrides(TrainConfig(), ["max_steps=3000", "betas=[0.9,0.98]"], what="training")
    cfg = train_overrides(TrainConfig(), ["max_steps=3000"])   # the same, then the choices checked
    params = parse_settings(ModularFamily, ["p=23", 'operations=["x+y"]'], what="modular")

The settings of a dataclass are its fields; of a class or function, its keyword parameters. A value
is read as its annotated type: text as written (`run_name=123` is "123"), everything else as JSON
(`max_steps=3000`, `family_params='{"p": 97}'`, `betas=[0.9,0.98]`), `none`/`null` for an optional
setting. A bad key or value raises ValueError in one line naming the setting, the value and what it
accepts. No exec/eval. This module imports neither flows nor prefect, nor torch.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storage import shared
from storage.home import grokloop_home, runs_dir
from storage.shared import check_shared_home

_NONE = ("none", "None", "null")


def setting_types(target: Any) -> dict[str, Any]:
    """{name: type} of a dataclass's fields, or of a class's (function's) keyword parameters."""
    cls = target if isinstance(target, type) else type(target)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
    fn = target.__init__ if isinstance(target, type) else target
    hints = typing.get_type_hints(fn)
    params = inspect.signature(fn).parameters.values()
    return {p.name: hints.get(p.name, Any) for p in params
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def describe(type_: Any) -> str:
    """What a type accepts, for an error message: "an integer", "a JSON list of text", ..."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if _is_union(origin):
        rest = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in rest) + (" or none" if len(rest) < len(args) else "")
    if type_ is Any:
        return "any value"
    if type_ is bool:
        return "true or false"
    if type_ is int:
        return "an integer"
    if type_ is float:
        return "a number"
    if type_ is str:
        return "text"
    if type_ in (dict, Mapping) or origin in (dict, collections.abc.Mapping):
        return "a JSON object"
    if origin is tuple and args and args[-1] is not Ellipsis:
        nouns = [_noun(a) for a in args]
        return f"a JSON list of {len(args)} " + (nouns[0] if len(set(nouns)) == 1 else f"({', '.join(nouns)})")
    if origin in (list, tuple, collections.abc.Sequence) or type_ in (list, tuple):
        return f"a JSON list of {_noun(args[0]) if args else 'values'}"
    return str(type_)


def _noun(type_: Any) -> str:
    return {int: "integers", float: "numbers", str: "text", bool: "true/false"}.get(type_, describe(type_))


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def coerce(name: str, type_: Any, value: Any, shown: str | None = None) -> Any:
    """`value` (already a Python value, e.g. decoded JSON) as `type_`, or a ValueError naming `name`."""
    shown = repr(value) if shown is None else shown

    def bad() -> ValueError:
        return ValueError(f"{name} must be {describe(type_)}, got {shown}")

    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if _is_union(origin):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return coerce(name, arm, value, shown)
            except ValueError:
                pass
        raise bad()
    if type_ is Any:
        return value
    if type_ is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if type_ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if type_ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if type_ is str:
        if isinstance(value, str):
            return value
        raise bad()
    if type_ in (dict, Mapping) or origin in (dict, collections.abc.Mapping):
        if isinstance(value, dict):
            return value
        raise bad()
    try:  # an item of the wrong type: the message names the whole setting's type
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length: (lo, hi), betas
            if isinstance(value, (list, tuple)) and len(value) == len(args):
                return tuple(coerce(name, a, v) for a, v in zip(args, value, strict=True))
            raise bad()
        if origin in (list, tuple, collections.abc.Sequence) or type_ in (list, tuple):
            if isinstance(value, (list, tuple)):
                items = [coerce(name, args[0], v) for v in value] if args else list(value)
                return tuple(items) if tuple in (origin, type_) else items
            raise bad()
    except ValueError:
        raise bad() from None
    raise ValueError(f"{name}: cannot read {shown} as {type_}")


def parse_value(name: str, type_: Any, raw: str) -> Any:
    """The text of `key=value` as the setting's type."""
    optional = _is_union(typing.get_origin(type_)) and type(None) in typing.get_args(type_)
    if optional and raw in _NONE:
        return None
    if type_ is str or (optional and str in typing.get_args(type_)):
        return raw  # text is taken as written: run_name=123 is "123"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # not JSON: the type check below says what was expected
    return coerce(name, type_, value, repr(raw))


def parse_settings(target: Any, items: Iterable[str], *, what: str = "") -> dict[str, Any]:
    """`key=value` (or `--key=value`, `--key-name=value`) items as {name: typed value}."""
    types_ = setting_types(target)
    label = f"{what} setting" if what else "setting"
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{label} {item!r} is not key=value")
        if key not in types_:
            raise ValueError(f"unknown {label} {key!r}; settings: {', '.join(types_)}")
        out[key] = parse_value(key, types_[key], raw)
    return out


def check_values(target: Any, values: Mapping[str, Any], *, what: str = "") -> dict[str, Any]:
    """Python values (a JSON object of settings, e.g. a loop's train_overrides) checked the same way."""
    types_ = setting_types(target)
    label = f"{what} setting" if what else "setting"
    unknown = [k for k in values if k not in types_]
    if unknown:
        raise ValueError(f"unknown {label} {unknown[0]!r}; settings: {', '.join(types_)}")
    return {k: coerce(k, types_[k], v) for k, v in values.items()}


def apply_overrides(cfg: Any, items: Iterable[str], *, what: str = "") -> Any:
    """A copy of the dataclass `cfg` with `key=value` items applied."""
    return dataclasses.replace(cfg, **parse_settings(cfg, items, what=what))


def check_choices(cfg: Any, choices: Mapping[str, Collection]) -> None:
    """Each named setting (or each item of a list setting) is one of its allowed values."""
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item not in allowed:
                must = "may only list" if isinstance(value, (list, tuple)) else "must be one of"
                raise ValueError(f"{name} {must} {', '.join(map(str, allowed))}, got {item!r}")


def check_at_least(cfg: Any, minimums: Mapping[str, float]) -> None:
    for name, low in minimums.items():
        if getattr(cfg, name) is not None and getattr(cfg, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)!r}")


# --- a training run's settings -------------------------------------------------------------------

def _modular_default() -> dict[str, Any]:
    return {"p": 97, "operations": ["x*y"], "train_fraction": 0.4, "seed": 0}


@dataclass
class TrainConfig:
    # what to learn
    objective: str = "mdm"                 # mdm (masked diffusion) | ar (same backbone, causal)
    family: str = "modular"                # task family; its tokenizer is always used
    family_params: dict = field(default_factory=_modular_default)  # incl. "seed" of the task world
    dataset: str | None = None             # snapshot directory; None trains from the family's generator
    stream: bool = False                   # read the snapshot's rows memory-mapped from its HF `datasets`
                                           # export (hf/), a batch at a time: for data larger than memory
    full_sequence: bool = False            # the loss on every position, not the answer only: mdm also noises
                                           # the prompt (unconditional); ar predicts every token
    mdm_estimator: str = "count"           # count: t integrated out (less variance) | t: 1/t-weighted Bernoulli(t) masks
    # model (2-layer width-128 groks a*b mod 97 in ~2.5k steps with Grokfast-EMA)
    arch: str = "denoiser"                 # denoiser (ours: RoPE, pre-LN) | grokfast_ref (the Grokfast
                                           # reference code's decoder; PyTorch's init whatever `init` says)
    size: str | None = None                # a preset shape for the three below: small (these defaults) |
                                           # base (768 x 12 layers, 12 heads: BERT/GPT-2 base) | large
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
    betas: tuple[float, float] = (0.9, 0.98)  # the Grokfast code's; beta2 0.95 keeps the clusters runs'
                                              # grokking, 0.999 collapses it (docs/results/clusters_beta2/)
    weight_decay: float = 1.0              # strong decay is what makes grokking happen at all
    warmup_steps: int = 10                 # linear LR warmup, as in the Grokfast code
    lr_decay: str = "none"                 # none | cosine: from lr after warmup to min_lr at decay_steps
    decay_steps: int = 0                   # 0 = max_steps (a run resumed with a larger max_steps then moves to
                                           # the longer curve); set it to extend a run on the curve it had
    min_lr: float = 0.0                    # where cosine decay ends (and stays after decay_steps)
    reference_loop: bool = False           # the Grokfast code's loop: each epoch's last, partial batch is a
                                           # step; warmup gives the first update lr 0
    grad_clip: float = 0.0                 # 0 = no clipping (grokking papers do not clip); 1.0 stops the late
                                           # loss spikes of long runs (docs/results/clusters.md, stop 30)
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
    checkpoint_minutes: float = 10.0       # also this often by the clock (0: off): a kill loses no more than this
    keep_checkpoints: int = 3              # older ones are deleted (the latest always kept)
    eval_max_rows: int = 4096              # rows per split used for metrics (a seeded sample); 0 = all
    sampler_steps: int = 8                 # denoising steps when sampling answers (capped at answer length)
    sampler_threshold: float = 0.95        # commit anything this confident early
    mem_threshold: float = 0.99            # T_mem: first eval with train acc >= this (two_hop: inferred facts)
    grok_threshold: float = 0.95           # T_grok: first eval with test_id acc >= this
    patience: int = 0                      # stop once test ID has been at grok_threshold this many steps
                                           # (at every evaluation: a fall starts it over); 0 = to max_steps
    mem_multiple: float = 0.0              # a run that memorises goes on to this many times T_mem, past
                                           # max_steps if it must (and patience waits for it); 0 = off
    # bookkeeping
    seed: int = 0                          # init, data order, masking noise
    run_name: str | None = None            # also the run id when given (a retry resumes the same run)
    run_id: str | None = None              # set on creation; resume uses it
    home: str | None = None                # grokloop home; None = $GROKLOOP_HOME or ./.grokloop
    shared_home: str | None = None         # a URL (s3://bucket/prefix): checkpoints go there, so the run
                                           # resumes on any machine (storage/shared.py); None: the run dir
    progress: bool = True                  # rich progress bar; False: none, and each eval line names
                                           # its run (an experiment's runs share one log)
    compile: bool = False                  # torch.compile the training forward (see bench/throughput.py --compile)
    device: str = "cpu"                    # cpu | cuda | auto (cuda when there is one); under torchrun each
                                           # process takes its LOCAL_RANK's GPU (diffusion/distributed.py)


# size -> (hidden_size, num_layers, num_heads); mlp_ratio stays 4
SIZES = {"small": (128, 2, 4), "base": (768, 12, 12), "large": (1024, 24, 16)}
SIZED = ("hidden_size", "num_layers", "num_heads")

TRAIN_CHOICES = {"device": ("cpu", "cuda", "auto"), "objective": ("mdm", "ar"), "grokfast": ("none", "ema", "ma"), "optimizer": ("adamw", "adam"),
                 "grokfast_filter": ("mean", "sum"), "mdm_estimator": ("t", "count"), "init": ("small", "torch"),
                 "eval_schedule": ("linear", "log"), "lr_decay": ("none", "cosine"), "arch": ("denoiser", "grokfast_ref")}
TRAIN_MINIMUMS = {"batch_size": 1, "eval_every": 1, "sampler_steps": 1, "hidden_size": 1, "num_layers": 1,
                  "num_heads": 1, "max_steps": 0, "decay_steps": 0, "patience": 0, "mem_multiple": 0,
                  "checkpoint_minutes": 0}


def check_config(cfg: TrainConfig) -> TrainConfig:
    check_choices(cfg, TRAIN_CHOICES)
    check_at_least(cfg, TRAIN_MINIMUMS)
    if cfg.dataset is None and not cfg.family:
        raise ValueError("set family (train from its generator) or dataset (a snapshot directory)")
    if cfg.stream and not cfg.dataset:
        raise ValueError("stream=true reads a snapshot: set dataset (a snapshot directory) too")
    if cfg.size is not None and cfg.size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {cfg.size!r}")
    if cfg.size and (cfg.hidden_size, cfg.num_layers, cfg.num_heads) != SIZES[cfg.size]:
        raise ValueError(f"size={cfg.size} is hidden_size, num_layers, num_heads = {SIZES[cfg.size]}; "
                         f"got {(cfg.hidden_size, cfg.num_layers, cfg.num_heads)} (set either size or those)")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_heads {cfg.num_heads}")
    if not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError(f"min_lr must be in [0, lr = {cfg.lr:g}] (where lr_decay=cosine ends), got {cfg.min_lr:g}")
    check_shared_home(cfg.shared_home)
    return cfg


def train_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """`key=value` (or `--key=value`) pairs typed by TrainConfig's fields, then checked. `size=<preset>`
    sets hidden_size, num_layers and num_heads (naming one of them as well is refused)."""
    settings = parse_settings(cfg, overrides, what="training")
    if settings.get("size"):
        given = [k for k in SIZED if k in settings]
        if given:
            raise ValueError(f"size={settings['size']} sets {', '.join(SIZED)}; drop {', '.join(given)} "
                             "or drop size")
        if settings["size"] not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {settings['size']!r}")
        settings.update(zip(SIZED, SIZES[settings["size"]], strict=True))
    elif any(k in settings for k in SIZED):
        settings.setdefault("size", None)  # a shape of its own is no longer the preset
    return check_config(dataclasses.replace(cfg, **settings))


def config_to_json(cfg: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


def config_from_dict(data: dict) -> TrainConfig:
    """A saved config (config.json, a checkpoint's state); settings this version no longer has are dropped."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {k: v for k, v in data.items() if k in known}
    if "betas" in data:
        data["betas"] = tuple(data["betas"])
    return check_config(TrainConfig(**data))


def run_id_of(cfg: TrainConfig) -> str | None:
    return cfg.run_id or cfg.run_name


def load_config(run_id: str, overrides: Iterable[str] = (), home: str | None = None) -> TrainConfig:
    """The saved config of a run (for resuming), with overrides applied: the run directory's
    config.json, or, where this machine has no such directory, the copy on the shared home that
    `shared_home=URL` among the overrides names (the run moves between machines)."""
    overrides = list(overrides)
    path = runs_dir(home) / run_id / "config.json"
    if path.is_file():
        saved = path.read_text()
    else:
        url = parse_settings(TrainConfig(), overrides, what="training").get("shared_home")
        found = shared.join(url, "runs", run_id, "config.json") if url else None
        saved = (shared.read_bytes(found) or b"").decode() if found else ""
        if not saved:
            elsewhere = f" nor at {found}" if found else "; a run on a shared home: add shared_home=URL"
            raise FileNotFoundError(f"no run {run_id!r}: no config.json under {runs_dir(home)}{elsewhere}")
    cfg = config_from_dict(json.loads(saved))
    cfg.home = str(grokloop_home(home)) if home else cfg.home
    return train_overrides(cfg, overrides)


def config_like(run_id: str, overrides: Iterable[str] = (), home: str | None = None) -> TrainConfig:
    """A new run's settings: those of `run_id` (an ablation of it), the overrides applied; its own name
    (run_name=... among the overrides, or a fresh one), so the run it was copied from is never touched."""
    overrides = list(overrides)
    cfg = load_config(run_id, overrides, home)
    named = "run_name" in parse_settings(TrainConfig(), overrides, what="training")
    return dataclasses.replace(cfg, run_id=None, run_name=cfg.run_name if named else None)
