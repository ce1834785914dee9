"""Grokfast (Lee et al. 2024): amplify the slow component of the gradient to speed up grokking.

One line between `backward()` and `step()`:

    state = gradfilter_ema(model, state, alpha=0.98, lamb=2.0)

The filters work in place over named gradients ({name: tensor}): the gradients get the slow
part added and the state (preallocated buffers) is updated, with no allocation per step. The
MA filter keeps a ring buffer of the last `window_size` gradients and their running sum (add
the newest, subtract the oldest), re-summed exactly once per lap so float error cannot build up
over a long run. State is plain tensors, so a checkpoint can save it with `torch.save`.
"""

from __future__ import annotations

import torch

Grads = dict[str, torch.Tensor]


def ema_filter_(grads: Grads, ema: Grads | None, alpha: float, lamb: float) -> Grads:
    """grads += lamb * EMA (after the EMA takes in grads), in place; returns the EMA.
    The EMA starts at the first gradient, as in the paper."""
    if ema is None:
        ema = {n: g.clone() for n, g in grads.items()}
    names = list(grads)
    g, e = [grads[n] for n in names], [ema[n] for n in names]
    # _foreach_*: one call over every tensor, as torch.optim does; ema = alpha*ema + (1-alpha)*g
    torch._foreach_lerp_(e, g, 1 - alpha)
    torch._foreach_add_(g, e, alpha=lamb)
    return ema


def new_ma_state(grads: Grads, window_size: int) -> dict:
    return {"window": {n: g.new_zeros((window_size, *g.shape)) for n, g in grads.items()},
            "sum": {n: torch.zeros_like(g) for n, g in grads.items()}, "count": 0, "next": 0}


def ma_filter_(grads: Grads, state: dict | None, window_size: int, lamb: float,
               filter_type: str = "mean", warmup: bool = True) -> dict:
    """grads += lamb * (mean or sum of the last `window_size` gradients), in place; returns the
    state {window: {name: (W, ...)}, sum, count, next}. With `warmup`, nothing is added until the
    window is full."""
    if filter_type not in ("mean", "sum"):
        raise ValueError(f"filter_type must be 'mean' or 'sum', got {filter_type!r}")
    state = new_ma_state(grads, window_size) if state is None else state
    names, slot = list(grads), state["next"]
    g, total = [grads[n] for n in names], [state["sum"][n] for n in names]
    oldest = [state["window"][n][slot] for n in names]
    if state["count"] == window_size:
        torch._foreach_sub_(total, oldest)
    torch._foreach_copy_(oldest, g)
    torch._foreach_add_(total, g)
    state["count"] = min(state["count"] + 1, window_size)
    state["next"] = (slot + 1) % window_size
    if state["next"] == 0:  # a full lap: re-sum exactly, so add/subtract error stays bounded
        for n in names:
            torch.sum(state["window"][n][:state["count"]], dim=0, out=state["sum"][n])
    if warmup and state["count"] < window_size:
        return state
    scale = lamb / state["count"] if filter_type == "mean" else lamb
    torch._foreach_add_(g, total, alpha=scale)
    return state


def ma_state_from_list(window: dict[str, list[torch.Tensor]], window_size: int) -> dict:
    """A checkpoint's MA state from before the ring buffer ({name: [oldest .. newest]})."""
    first = {n: past[0] for n, past in window.items()}
    state = new_ma_state(first, window_size)
    for n, past in window.items():
        past = past[-window_size:]
        state["window"][n][:len(past)] = torch.stack(past)
        state["sum"][n] = torch.stack(past).sum(0)
        state["count"], state["next"] = len(past), len(past) % window_size
    return state


def slow_part(state, grokfast: str, lamb: float, filter_type: str = "mean", warmup: bool = True,
              window_size: int = 100) -> Grads:
    """What the filter added to the last gradients ({name: tensor}); for diagnostics at eval time."""
    if state is None:
        return {}
    if grokfast == "ema":
        return {n: lamb * e for n, e in state.items()}
    if warmup and state["count"] < window_size:
        return {n: torch.zeros_like(s) for n, s in state["sum"].items()}
    scale = lamb / state["count"] if filter_type == "mean" else lamb
    return {n: scale * s for n, s in state["sum"].items()}


def named_grads(model: torch.nn.Module) -> Grads:
    return {n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None}


def gradfilter_ema(model: torch.nn.Module, grads: Grads | None = None, alpha: float = 0.98,
                   lamb: float = 2.0) -> Grads:
    return ema_filter_(named_grads(model), grads, alpha, lamb)


def gradfilter_ma(model: torch.nn.Module, grads: dict | None = None, window_size: int = 100,
                  lamb: float = 5.0, filter_type: str = "mean", warmup: bool = True) -> dict:
    if grads is not None and "window" not in grads:  # the list-of-gradients state of older checkpoints
        grads = ma_state_from_list(grads, window_size)
    return ma_filter_(named_grads(model), grads, window_size, lamb, filter_type, warmup)
