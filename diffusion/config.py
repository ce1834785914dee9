"""`key=value` settings, typed and checked before any work starts: one parser for every command.

    cfg = apply_overrides(TrainConfig(), ["max_steps=3000", "betas=[0.9,0.98]"], what="training")
    params = parse_settings(ModularFamily, ["p=23", 'operations=["x+y"]'], what="modular")

The settings of a dataclass are its fields; of a class or function, its keyword parameters. A value
is read as its annotated type: text as written (`run_name=123` is "123"), everything else as JSON
(`max_steps=3000`, `family_params='{"p": 97}'`, `betas=[0.9,0.98]`), `none`/`null` for an optional
setting. A bad key or value raises ValueError in one line naming the setting, the value and what it
accepts. No exec/eval. This module imports neither flows nor prefect: diffusion and agents use it too.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from typing import Any

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
