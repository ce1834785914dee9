"""Training and evaluation speed, measured side by side in one run (one thread, best of --repeat,
the contenders alternated so a busy moment on a shared machine hits them alike).

    python bench/throughput.py --steps 20 --repeat 3

a*b mod 97, 2 layers, width 128, 4 heads, batch 512. Prints:
  step       our training loop (`diffusion.train.train`, its per-step time) vs a bare PyTorch loop of
             the same model, objective and filter (goal >= 0.95), and vs the Grokfast reference loop
             re-created below from its published code (goal >= 1.0), with our masked-diffusion objective
             (5 tokens a row: the answer position is an input) and our AR baseline (4, as the
             reference's decoder); for Grokfast-EMA and -MA. The MA
             window starts full (100 gradients) in all three, as it is for all but a run's first 100 steps.
  eval       our evaluation of the full test split (loss, verified accuracy, exact match, clusters)
             vs one plain forward pass over the same rows (goal <= 1.5)
  seeds      N seeds as one batched model (diffusion/batched.py) vs one run alone: throughput of N
             runs against N sequential runs (goal >= 3x)
  compile    (--compile) the bare step under torch.compile vs eager
  FLOP/s     achieved by our step and by the batched seeds, next to a plain 1024^2 fp32 matmul's
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

P, WINDOW = 97, 100


# --- the Grokfast reference (Lee et al. 2024, github.com/ironjr/grokfast), re-created --------------

class RefBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x):
        attn_mask = torch.triu(torch.full((len(x), len(x)), -float("inf"), dtype=x.dtype), diagonal=1)
        x = self.ln_1(x)
        a, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class RefDecoder(nn.Module):
    """The reference's Decoder: sequence-first (T, B), learned positions, causal."""

    def __init__(self, dim=128, num_layers=2, num_heads=4, num_tokens=P + 2, seq_len=5):
        super().__init__()
        self.token_embeddings = nn.Embedding(num_tokens, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.layers = nn.ModuleList([RefBlock(dim, num_heads) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_tokens, bias=False)

    def forward(self, x):
        h = self.token_embeddings(x)
        positions = torch.arange(x.shape[0]).unsqueeze(-1)
        h = h + self.position_embeddings(positions).expand_as(h)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h))


def ref_gradfilter_ema(m, grads=None, alpha=0.98, lamb=2.0):
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in m.named_parameters() if p.requires_grad}
    for n, p in m.named_parameters():
        if p.requires_grad:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def ref_gradfilter_ma(m, grads=None, window_size=100, lamb=5.0):
    if grads is None:
        grads = {n: deque(maxlen=window_size) for n, p in m.named_parameters() if p.requires_grad}
    for n, p in m.named_parameters():
        if p.requires_grad:
            grads[n].append(p.grad.data.detach())
    for n, p in m.named_parameters():
        if p.requires_grad and len(grads[n]) == window_size:
            p.grad.data = p.grad.data + sum(grads[n]) / len(grads[n]) * lamb
    return grads


def reference_loop(cfg, steps: int) -> float:
    """Seconds per step of the reference's training loop (Adam, LambdaLR warmup, loss on the last position)."""
    grokfast, batch_size = cfg.grokfast, cfg.batch_size
    torch.manual_seed(0)
    x, y = torch.cartesian_prod(torch.arange(P), torch.arange(1, P)).T
    data = torch.stack([x, torch.full_like(x, P + 1), y, torch.full_like(x, P), x * y % P])  # (5, N)
    model = RefDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.005)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda update: min(update / 10, 1))
    grads = None
    if grokfast == "ma":  # the window full, as after the first 100 steps
        grads = {n: deque([torch.randn_like(p) for _ in range(WINDOW)], maxlen=WINDOW)
                 for n, p in model.named_parameters()}
    perm = torch.randperm(data.shape[1])
    t0 = time.perf_counter()
    for i in range(steps):
        batch = data[:, perm[(i * batch_size) % (data.shape[1] - batch_size):][:batch_size]]
        model.train()
        logits = model(batch[:-1])
        loss = F.cross_entropy(logits[-1], batch[-1])
        opt.zero_grad()
        loss.backward()
        if grokfast == "ema":
            grads = ref_gradfilter_ema(model, grads, 0.98, 2.0)
        else:
            grads = ref_gradfilter_ma(model, grads, WINDOW, 5.0)
        opt.step()
        scheduler.step()
    return (time.perf_counter() - t0) / steps


# --- ours ------------------------------------------------------------------------------------------

def full_ma_state(model: nn.Module) -> dict:
    from diffusion.grokfast import new_ma_state

    params = {n: p.detach() for n, p in model.named_parameters()}
    state = new_ma_state(params, WINDOW)
    for n in params:
        state["window"][n].normal_()
        state["sum"][n] = state["window"][n].sum(0)
    state["count"] = WINDOW
    return state


def bare_loop(cfg, steps: int, compiled: bool = False, warmup: int = 0) -> float:
    """nanoGPT-minimal: sample a batch, loss, backward, Grokfast, step. Returns seconds per step
    (after `warmup` untimed steps; `compiled`: the model through torch.compile)."""
    from diffusion.data import BatchSampler, load_splits
    from diffusion.grokfast import gradfilter_ema, gradfilter_ma
    from diffusion.model import Denoiser
    from diffusion.objective import objective_loss

    tok, splits = load_splits(cfg)
    torch.manual_seed(cfg.seed)
    model = Denoiser(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len, hidden_size=cfg.hidden_size,
                     num_layers=cfg.num_layers, num_heads=cfg.num_heads, mask_token_id=tok.mask_id)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sampler, noise = BatchSampler(len(splits["train"]), cfg.batch_size, cfg.seed), torch.Generator()
    state = full_ma_state(model) if cfg.grokfast == "ma" else None
    forward = torch.compile(model) if compiled else model
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = sampler.next()
        loss = objective_loss(cfg.objective, forward, splits["train"].ids[idx], splits["train"].answer_mask[idx],
                              tok.mask_id, generator=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grokfast == "ema":
            state = gradfilter_ema(model, state, cfg.grokfast_alpha, cfg.grokfast_lamb)
        elif cfg.grokfast == "ma":
            state = gradfilter_ma(model, state, cfg.grokfast_window, cfg.grokfast_lamb)
        opt.step()
    return (time.perf_counter() - t0) / steps


def our_loop(cfg, steps: int) -> float:
    """Seconds per step of `train` (its own step_time metric: the steps, not the evaluations). One step
    first, then, for MA, its checkpoint's window filled (the state is plain tensors), then resumed."""
    from diffusion.train import load_config, load_model, train

    first = train(cfg.__class__(**{**cfg.__dict__, "max_steps": 1}))
    if cfg.grokfast == "ma":
        path = first.checkpoint_dir / "state.pt"
        state = torch.load(path, weights_only=False)
        state["grokfast"] = full_ma_state(load_model(first.checkpoint_dir))
        torch.save(state, path)
    result = train(load_config(first.run_id, [f"max_steps={1 + steps}"], home=cfg.home), resume=True)
    return result.metrics["step_time"]


def batched_loop(cfg, n: int, steps: int) -> float:
    """Seconds per step of `train_batched` over n seeds (every run advances one step)."""
    from diffusion.batched import train_batched

    cfgs = [dataclasses.replace(cfg, seed=s, run_name=f"{cfg.run_name}-s{s}", max_steps=steps) for s in range(n)]
    return train_batched(cfgs)[0].metrics["step_time"]


def evaluation(cfg, repeat: int) -> tuple[float, float]:
    """(our evaluation, one plain forward pass) of the full test split, seconds, best of `repeat`."""
    from diffusion.data import load_family, load_splits
    from diffusion.model import Denoiser
    from diffusion.train import estimate

    tok, splits = load_splits(cfg)
    family = load_family(cfg)
    test = {"test_id": splits["test_id"]}
    model = Denoiser(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len, mask_token_id=tok.mask_id)
    ours, plain = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(test["test_id"].ids)
        plain = min(plain, time.perf_counter() - t0)
        t0 = time.perf_counter()
        estimate(cfg, model, test, family, tok, step=0)
        ours = min(ours, time.perf_counter() - t0)
    return ours, plain


def flops_per_step(batch_size: int) -> float:
    """Training FLOPs of one step of the default model on a*b mod 97 (Denoiser.flops_per_token)."""
    from diffusion.data import load_splits
    from diffusion.model import Denoiser
    from diffusion.train import TrainConfig

    tok, _ = load_splits(TrainConfig())
    model = Denoiser(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len)
    return model.flops_per_token() * tok.seq_len * batch_size


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--repeat", type=int, default=3, help="alternated rounds; each figure is the best")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--filters", default="ema,ma")
    parser.add_argument("--seeds", type=int, default=8, help="batched seeds against as many sequential runs")
    parser.add_argument("--batched-steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffusion.train import TrainConfig, train

    home = tempfile.mkdtemp(prefix="grokloop-bench-")
    figures: dict[str, float] = {}
    print(f"threads {torch.get_num_threads()}, a*b mod {P}, batch {args.batch_size}, {args.steps} timed steps, "
          f"best of {args.repeat}")
    for grokfast in args.filters.split(","):
        best = {"bare": float("inf"), "ours": float("inf"), "ours_ar": float("inf"), "reference": float("inf")}
        for r in range(args.repeat):
            cfg = TrainConfig(batch_size=args.batch_size, grokfast=grokfast, home=home, progress=False,
                              eval_every=10 ** 9, run_name=f"bench-{grokfast}-{r}",
                              **({"grokfast_lamb": 5.0, "grokfast_window": WINDOW} if grokfast == "ma" else {}))
            ar = dataclasses.replace(cfg, objective="ar", run_name=f"{cfg.run_name}-ar")
            order = [("bare", bare_loop, cfg), ("ours", our_loop, cfg), ("ours_ar", our_loop, ar),
                     ("reference", reference_loop, cfg)]
            for name, loop, c in order[r % 4:] + order[:r % 4]:  # each goes first in turn
                best[name] = min(best[name], loop(c, args.steps))
        for name, s in best.items():
            figures[f"{grokfast}/{name}_steps_per_s"] = 1 / s
        figures[f"{grokfast}/ours_vs_bare"] = best["bare"] / best["ours"]
        figures[f"{grokfast}/ours_vs_reference"] = best["reference"] / best["ours"]
        figures[f"{grokfast}/ours_ar_vs_reference"] = best["reference"] / best["ours_ar"]
        print(f"grokfast-{grokfast}: bare {1 / best['bare']:.2f} steps/s, ours {1 / best['ours']:.2f}, "
              f"ours-ar {1 / best['ours_ar']:.2f}, reference {1 / best['reference']:.2f}\n"
              f"  ours/bare {figures[f'{grokfast}/ours_vs_bare']:.3f} (goal >= 0.95); vs reference (goal >= 1.0): "
              f"mdm {figures[f'{grokfast}/ours_vs_reference']:.3f} (5 tokens a row against its 4), "
              f"ar {figures[f'{grokfast}/ours_ar_vs_reference']:.3f} (4 tokens, as the reference)")

    if args.seeds > 1:
        best = {"single": float("inf"), "batched": float("inf")}
        for r in range(args.repeat):
            cfg = TrainConfig(batch_size=args.batch_size, home=home, progress=False, eval_every=10 ** 9,
                              max_steps=args.batched_steps, run_name=f"seeds-{r}")
            for name in (["single", "batched"] if r % 2 == 0 else ["batched", "single"]):
                if name == "single":
                    best[name] = min(best[name], train(dataclasses.replace(
                        cfg, run_name=f"{cfg.run_name}-single")).metrics["step_time"])
                else:
                    best[name] = min(best[name], batched_loop(cfg, args.seeds, args.batched_steps))
        speedup = args.seeds * best["single"] / best["batched"]
        figures.update(single_steps_per_s=1 / best["single"], batched_run_steps_per_s=1 / best["batched"],
                       batched_speedup=speedup)
        print(f"{args.seeds} seeds batched: {1 / best['batched']:.2f} steps/s per run "
              f"({args.seeds / best['batched']:.2f} run-steps/s), one run alone {1 / best['single']:.2f} steps/s: "
              f"{speedup:.2f}x the throughput of {args.seeds} sequential runs (goal >= 3x)")
        figures["batched_flops"] = flops_per_step(args.batch_size) * args.seeds / best["batched"]

    if args.compile:
        cfg = TrainConfig(batch_size=args.batch_size, grokfast="ema", home=home)
        best = {"eager": float("inf"), "compiled": float("inf")}
        for r in range(args.repeat):
            for name in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
                best[name] = min(best[name], bare_loop(cfg, args.steps, compiled=name == "compiled", warmup=3))
        figures.update(eager_steps_per_s=1 / best["eager"], compiled_steps_per_s=1 / best["compiled"])
        print(f"torch.compile: eager {1 / best['eager']:.2f} steps/s, compiled {1 / best['compiled']:.2f} steps/s, "
              f"ratio {best['eager'] / best['compiled']:.3f} (3 warm-up steps untimed)")

    cfg = TrainConfig(eval_max_rows=0, home=home)
    ours_eval, plain = evaluation(cfg, args.repeat)
    figures.update(eval_s=ours_eval, forward_s=plain, eval_vs_forward=ours_eval / plain)
    print(f"evaluation of the full test split: {ours_eval:.3f} s, one forward pass {plain:.3f} s, "
          f"ratio {ours_eval / plain:.2f} (goal <= 1.5)")

    step_s = 1 / max(v for k, v in figures.items() if k.endswith("ours_steps_per_s"))
    achieved = flops_per_step(args.batch_size) / step_s
    mm = matmul_flops()
    figures.update(model_flops=achieved, matmul_flops=mm)
    print(f"FLOP/s: our step {achieved / 1e9:.2f} GFLOP/s, plain 1024^2 matmul {mm / 1e9:.2f} GFLOP/s, "
          f"ratio {achieved / mm:.3f}")
    if "batched_flops" in figures:
        print(f"FLOP/s: {args.seeds} batched seeds {figures['batched_flops'] / 1e9:.2f} GFLOP/s, "
              f"ratio to matmul {figures['batched_flops'] / mm:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
