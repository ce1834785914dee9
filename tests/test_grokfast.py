import pytest
import torch

from diffusion.grokfast import (
    ema_filter_,
    gradfilter_ema,
    gradfilter_ma,
    ma_filter_,
    ma_state_from_list,
    slow_part,
)


def grad_stream(n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)} for _ in range(n_steps)]


def test_ema_matches_naive_reference():
    alpha, lamb = 0.9, 2.0
    state, ref_ema = None, {}
    for grads in grad_stream(6):
        raw = {n: g.flatten().tolist() for n, g in grads.items()}
        state = ema_filter_(grads, state, alpha, lamb)  # grads now hold the filtered gradients
        for name, flat in raw.items():
            prev = ref_ema.get(name, flat)  # the EMA starts at the first gradient
            new = [alpha * p + (1 - alpha) * x for p, x in zip(prev, flat, strict=True)]
            expected = [x + lamb * e for x, e in zip(flat, new, strict=True)]
            assert grads[name].flatten().tolist() == pytest.approx(expected, abs=1e-6)
            ref_ema[name] = new


@pytest.mark.parametrize("filter_type", ["mean", "sum"])
def test_ma_matches_naive_reference_with_warmup(filter_type):
    # 3 laps of the window: the running sum (and its exact re-sum each lap) against a plain sum.
    window, lamb = 3, 5.0
    history, state = [], None
    for step, grads in enumerate(grad_stream(10, seed=1)):
        raw = {n: g.clone() for n, g in grads.items()}
        history.append(raw)
        state = ma_filter_(grads, state, window, lamb, filter_type)
        for name, g in raw.items():
            if step + 1 < window:
                expected = g.flatten().tolist()  # warmup: untouched until the window is full
            else:
                recent = [h[name].flatten().tolist() for h in history[-window:]]
                total = [sum(col) for col in zip(*recent, strict=True)]
                avg = [v / window for v in total] if filter_type == "mean" else total
                expected = [x + lamb * a for x, a in zip(g.flatten().tolist(), avg, strict=True)]
            assert grads[name].flatten().tolist() == pytest.approx(expected, abs=1e-5)
        assert state["count"] == min(step + 1, window)


def test_ma_state_is_preallocated_and_updated_in_place():
    stream = grad_stream(5, seed=2)
    state = ma_filter_(stream[0], None, 3, 1.0)
    buffers = {n: (state["window"][n].data_ptr(), state["sum"][n].data_ptr()) for n in state["sum"]}
    for grads in stream[1:]:
        assert ma_filter_(grads, state, 3, 1.0) is state
    assert buffers == {n: (state["window"][n].data_ptr(), state["sum"][n].data_ptr()) for n in state["sum"]}


def test_an_old_list_window_checkpoint_continues_as_the_ring_buffer():
    stream = grad_stream(6, seed=3)
    ring, window = None, {"w": [], "b": []}
    for grads in stream[:2]:
        ring = ma_filter_({n: g.clone() for n, g in grads.items()}, ring, 3, 5.0)
        for n, g in grads.items():
            window[n].append(g.clone())
    converted = ma_state_from_list(window, 3)
    for grads in stream[2:]:
        a, b = {n: g.clone() for n, g in grads.items()}, {n: g.clone() for n, g in grads.items()}
        ring, converted = ma_filter_(a, ring, 3, 5.0), ma_filter_(b, converted, 3, 5.0)
        assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_gradfilter_on_a_model_rewrites_grads_and_reports_the_slow_part():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    raw = {n: p.grad.clone() for n, p in model.named_parameters()}
    state = gradfilter_ema(model, None, alpha=0.5, lamb=2.0)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, raw[n] * 3.0)  # first step: ema = g, so g + 2 g
        assert torch.allclose(state[n], raw[n])
        assert torch.allclose(slow_part(state, "ema", 2.0)[n], p.grad - raw[n])
    state = gradfilter_ma(model, None, window_size=1, lamb=5.0)
    assert all(torch.allclose(slow_part(state, "ma", 5.0, window_size=1)[n], 5 * raw[n] * 3.0)
               for n in raw)


def test_ma_refuses_unknown_filter():
    model = torch.nn.Linear(2, 1)
    model(torch.randn(1, 2)).sum().backward()
    with pytest.raises(ValueError, match="filter_type"):
        gradfilter_ma(model, None, window_size=2, lamb=1.0, filter_type="median")
