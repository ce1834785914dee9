"""Training and evaluation speed, measured side by side in one run (one thread, best of --repeat,
the contenders alternated so a busy moment on a shared machine hits them alike).

    python bench/throughput.py --steps 20 --repeat 3
    python bench/throughput.py --profile          # the ops of our step against the bare loop's

Times are the process's CPU seconds (time.process_time), not the wall clock: on a shared machine
the wall clock measures the neighbours (2 cores, 7 engineers: a load of 10 makes wall figures
swing 2x between rounds). `train` reads its step time on that clock too (`cpu_clock`). Only the
thread comparison of the batched seeds uses the wall clock (CPU time adds up both threads).

a*b mod 97, 2 layers, width 128, 4 heads, batch 512. Prints:
  step       our training loop (`diffusion.train.train`, its per-step time) vs a bare PyTorch loop of
             the same model, objective and filter (goal >= 0.95), and vs the Grokfast reference loop
             re-created below from its published code (goal >= 1.0), with our masked-diffusion objective
             (5 tokens a row: the answer position is an input) and our AR baseline (4, as the
             reference's decoder), and our AR loop driving the reference's own decoder
             (`arch="grokfast_ref"`: like for like, so what is left is the trainer, not the architecture);
             for Grokfast-EMA and -MA. The MA window starts full (100 gradients) in all three, as it is for all but a run's first 100 steps.
             Also per token: a masked-diffusion row is 5 tokens, a reference (and AR) row 4.
  eval       our evaluation of the full test split (loss, verified accuracy, exact match, clusters)
             vs one plain forward pass over the same rows (goal <= 1.5)
  seeds      N seeds as one batched model (diffusion/batched.py, grouped weights) vs one run alone:
             per-run steps/s of N batched runs against N sequential runs (goal >= 3x), with the FLOP/s
             of each; again at every --threads count (wall clock)
  compile    (--compile) the bare step under torch.compile vs eager
  FLOP/s     achieved by our step and by the batched seeds, next to a plain 1024^2 fp32 matmul's:
             the single run's share of the matmul's bounds what batching can gain on a CPU
  profile    (--profile) torch.profiler over our step and the bare loop's: the ops one step runs
             (a run of 2k steps less a run of k, so start-up and the final eval cancel) and their time
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time
from collections import Counter, deque
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.grokfast_reference import (
    RefDecoder,
    multiplication_data,
    ref_gradfilter_ema,
    ref_gradfilter_ma,
)

P, WINDOW = 97, 100
clock = time.process_time  # see the module docstring


@contextlib.contextmanager
def cpu_clock(*modules):
    """`train`'s and `train_batched`'s step_time read on the CPU clock: their `time.perf_counter`
    is `clock` while this is open."""
    saved = [m.time for m in modules]
    for m in modules:
        m.time = SimpleNamespace(**{**vars(time), "perf_counter": clock})
    try:
        yield
    finally:
        for m, t in zip(modules, saved, strict=True):
            m.time = t


# --- the Grokfast reference (diffusion/grokfast_reference.py): its training step, timed ---------------

def reference_loop(cfg, steps: int) -> float:
    """Seconds per step of the reference's training loop (Adam, LambdaLR warmup, loss on the last position)."""
    grokfast, batch_size = cfg.grokfast, cfg.batch_size
    torch.manual_seed(0)
    data = multiplication_data(P)  # (5, N)
    model = RefDecoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.005)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda update: min(update / 10, 1))
    grads = None
    if grokfast == "ma":  # the window full, as after the first 100 steps
        grads = {n: deque([torch.randn_like(p) for _ in range(WINDOW)], maxlen=WINDOW)
                 for n, p in model.named_parameters()}
    perm = torch.randperm(data.shape[1])
    t0 = clock()
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
    return (clock() - t0) / steps


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
            t0 = clock()
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
    return (clock() - t0) / steps


def our_loop(cfg, steps: int) -> float:
    """Seconds per step of `train` (its own step_time metric: the steps, not the evaluations). One step
    first, then, for MA, its checkpoint's window filled (the state is plain tensors), then resumed."""
    import diffusion.train
    from diffusion.train import load_config, load_model, train

    first = train(cfg.__class__(**{**cfg.__dict__, "max_steps": 1}))
    if cfg.grokfast == "ma":
        path = first.checkpoint_dir / "state.pt"
        state = torch.load(path, weights_only=False)
        state["grokfast"] = full_ma_state(load_model(first.checkpoint_dir))
        torch.save(state, path)
    with cpu_clock(diffusion.train):
        result = train(load_config(first.run_id, [f"max_steps={1 + steps}"], home=cfg.home), resume=True)
    return result.metrics["step_time"]


def batched_loop(cfg, n: int, steps: int) -> float:
    """Seconds per step of `train_batched` over n seeds (every run advances one step)."""
    import diffusion.batched
    from diffusion.batched import train_batched

    cfgs = [dataclasses.replace(cfg, seed=s, run_name=f"{cfg.run_name}-s{s}", max_steps=steps) for s in range(n)]
    with cpu_clock(diffusion.batched):
        return train_batched(cfgs)[0].metrics["step_time"]


def single_loop(cfg, steps: int) -> float:
    """Seconds per step of one run of `train` from its start."""
    import diffusion.train
    from diffusion.train import train

    with cpu_clock(diffusion.train):
        return train(dataclasses.replace(cfg, max_steps=steps)).metrics["step_time"]


def evaluation(cfg, repeat: int) -> tuple[float, float]:
    """(our evaluation, one plain forward pass) of the full test split, seconds, best of `repeat`."""
    from diffusion.data import load_family, load_splits
    from diffusion.evaluate import estimate
    from diffusion.model import Denoiser

    tok, splits = load_splits(cfg)
    family = load_family(cfg)
    test = {"test_id": splits["test_id"]}
    model = Denoiser(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len, mask_token_id=tok.mask_id)
    ours, plain = float("inf"), float("inf")
    for _ in range(repeat):
        t0 = clock()
        with torch.inference_mode():
            model(test["test_id"].ids)
        plain = min(plain, clock() - t0)
        t0 = clock()
        estimate(cfg, model, test, family, tok, step=0)
        ours = min(ours, clock() - t0)
    return ours, plain


def flops_per_step(batch_size: int) -> float:
    """Training FLOPs of one step of the default model on a*b mod 97 (Denoiser.flops_per_token)."""
    from diffusion.data import load_splits
    from diffusion.model import Denoiser
    from diffusion.train import TrainConfig

    tok, _ = load_splits(TrainConfig())
    model = Denoiser(vocab_size=tok.vocab_size, max_seq_len=tok.seq_len)
    return model.flops_per_token() * tok.seq_len * batch_size


def matmul_flops(n: int = 1024, reps: int = 20, timer=clock) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = timer()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (timer() - t0)


def op_profile(loop, cfg, steps: int) -> tuple[Counter, Counter]:
    """(calls, self CPU microseconds) per op of ONE step of `loop`: a run of 2*steps less a run of
    `steps`, so what both runs do once (start-up, first step, final evaluation) cancels."""
    from torch.profiler import ProfilerActivity, profile

    runs = []
    for k in (steps, 2 * steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loop(dataclasses.replace(cfg, run_name=f"{cfg.run_name}-{k}"), k)
        runs.append({e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()})
    calls, micros = Counter(), Counter()
    for op in set(runs[0]) | set(runs[1]):
        (c1, t1), (c2, t2) = runs[0].get(op, (0, 0.0)), runs[1].get(op, (0, 0.0))
        calls[op], micros[op] = (c2 - c1) / steps, (t2 - t1) / steps
    return calls, micros


def profile_report(cfg, steps: int) -> None:
    for grokfast in ("ema", "ma"):
        c = dataclasses.replace(cfg, grokfast=grokfast, run_name=f"profile-{grokfast}",
                                **({"grokfast_lamb": 5.0, "grokfast_window": WINDOW} if grokfast == "ma" else {}))
        (ours_calls, ours_us), (bare_calls, bare_us) = op_profile(our_loop, c, steps), op_profile(bare_loop, c, steps)
        differ = sorted(op for op in set(ours_calls) | set(bare_calls)
                        if abs(ours_calls[op] - bare_calls[op]) >= 0.5)
        print(f"grokfast-{grokfast}: ops per step, ours {sum(ours_calls.values()):.0f} ({sum(ours_us.values()) / 1e3:.1f}"
              f" ms self CPU), bare {sum(bare_calls.values()):.0f} ({sum(bare_us.values()) / 1e3:.1f} ms)")
        for op in differ:
            print(f"  {op:40s} ours {ours_calls[op]:6.1f} calls {ours_us[op] / 1e3:7.2f} ms | "
                  f"bare {bare_calls[op]:6.1f} calls {bare_us[op] / 1e3:7.2f} ms")
        if not differ:
            print("  the same ops, the same number of times")
        print("  the most expensive ops (ms per step, ours | bare): " + ", ".join(
            f"{op} {ours_us[op] / 1e3:.1f} | {bare_us[op] / 1e3:.1f}" for op, _ in ours_us.most_common(8)))


def step_section(args, home: str, figures: dict) -> None:
    from diffusion.train import TrainConfig

    for grokfast in args.filters.split(","):
        best = dict.fromkeys(("bare", "ours", "ours_ar", "ours_refarch", "reference"), float("inf"))
        for r in range(args.repeat):
            cfg = TrainConfig(batch_size=args.batch_size, grokfast=grokfast, home=home, progress=False,
                              eval_every=10 ** 9, run_name=f"bench-{grokfast}-{r}",
                              **({"grokfast_lamb": 5.0, "grokfast_window": WINDOW} if grokfast == "ma" else {}))
            ar = dataclasses.replace(cfg, objective="ar", run_name=f"{cfg.run_name}-ar")
            # like for like: our trainer driving the reference's own decoder (learned positions, no RoPE)
            refarch = dataclasses.replace(ar, arch="grokfast_ref", run_name=f"{cfg.run_name}-refarch")
            order = [("bare", bare_loop, cfg), ("ours", our_loop, cfg), ("ours_ar", our_loop, ar),
                     ("ours_refarch", our_loop, refarch), ("reference", reference_loop, cfg)]
            for name, loop, c in order[r % 5:] + order[:r % 5]:  # each goes first in turn
                best[name] = min(best[name], loop(c, args.steps))
        for name, s in best.items():
            figures[f"{grokfast}/{name}_steps_per_s"] = 1 / s
        # tokens a row: masked diffusion reads all 5 (the masked answer is an input), AR and the reference 4
        per_token = (best["reference"] * 5) / (best["ours"] * 4)
        figures[f"{grokfast}/ours_vs_bare"] = best["bare"] / best["ours"]
        figures[f"{grokfast}/ours_vs_reference"] = best["reference"] / best["ours"]
        figures[f"{grokfast}/ours_vs_reference_per_token"] = per_token
        figures[f"{grokfast}/ours_ar_vs_reference"] = best["reference"] / best["ours_ar"]
        figures[f"{grokfast}/ours_refarch_vs_reference"] = best["reference"] / best["ours_refarch"]
        print(f"grokfast-{grokfast}: bare {1 / best['bare']:.2f} steps/s, ours {1 / best['ours']:.2f}, "
              f"ours-ar {1 / best['ours_ar']:.2f}, reference {1 / best['reference']:.2f}\n"
              f"  ours/bare {figures[f'{grokfast}/ours_vs_bare']:.3f} (goal >= 0.95)\n"
              f"  vs reference (goal >= 1.0): mdm {figures[f'{grokfast}/ours_vs_reference']:.3f} per step, "
              f"{per_token:.3f} per token ({args.batch_size * 5 / best['ours']:.0f} against "
              f"{args.batch_size * 4 / best['reference']:.0f} tokens/s: 5 tokens a row against its 4); "
              f"ar {figures[f'{grokfast}/ours_ar_vs_reference']:.3f} (4 tokens, as the reference); "
              f"ar on the reference's decoder {figures[f'{grokfast}/ours_refarch_vs_reference']:.3f} (like for like)")


def seeds_section(args, home: str, figures: dict) -> None:
    """N batched seeds against N sequential runs: on the CPU clock at one thread, then on the wall
    clock at each --threads count."""
    from diffusion.train import TrainConfig

    global clock
    flops = flops_per_step(args.batch_size)
    settings = [("cpu", 1)] + [("wall", int(t)) for t in args.threads.split(",")]
    for clock_name, threads in settings:
        torch.set_num_threads(threads)
        clock = time.process_time if clock_name == "cpu" else time.perf_counter
        best = {"single": float("inf"), "batched": float("inf")}
        for r in range(args.repeat):
            cfg = TrainConfig(batch_size=args.batch_size, home=home, progress=False, eval_every=10 ** 9,
                              eval_max_rows=64, run_name=f"seeds-{clock_name}{threads}-{r}")
            for name in (["single", "batched"] if r % 2 == 0 else ["batched", "single"]):
                if name == "single":
                    best[name] = min(best[name], single_loop(dataclasses.replace(
                        cfg, run_name=f"{cfg.run_name}-single"), args.batched_steps))
                else:
                    best[name] = min(best[name], batched_loop(cfg, args.seeds, args.batched_steps))
        mm = matmul_flops(timer=clock)
        key = f"seeds/{clock_name}{threads}"
        speedup = args.seeds * best["single"] / best["batched"]
        figures.update({f"{key}/single_steps_per_s": 1 / best["single"],
                        f"{key}/batched_run_steps_per_s": 1 / best["batched"], f"{key}/batched_speedup": speedup,
                        f"{key}/single_flops": flops / best["single"],
                        f"{key}/batched_flops": args.seeds * flops / best["batched"], f"{key}/matmul_flops": mm})
        print(f"{args.seeds} seeds batched ({threads} thread(s), {clock_name} clock): "
              f"{1 / best['batched']:.2f} steps/s per run, one run alone {1 / best['single']:.2f} steps/s: "
              f"{speedup:.2f}x the throughput of {args.seeds} sequential runs (goal >= 3x)\n"
              f"  FLOP/s: one run {flops / best['single'] / 1e9:.2f} G, {args.seeds} batched "
              f"{args.seeds * flops / best['batched'] / 1e9:.2f} G, plain 1024^2 matmul {mm / 1e9:.2f} G: "
              f"one run is at {flops / best['single'] / mm:.2f} of the matmul, so batching can gain at most "
              f"{mm * best['single'] / flops:.1f}x on this CPU")
    torch.set_num_threads(1)
    clock = time.process_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--repeat", type=int, default=3, help="alternated rounds; each figure is the best")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--filters", default="ema,ma", help="the step section's filters ('' skips it)")
    parser.add_argument("--seeds", type=int, default=8, help="batched seeds against as many sequential runs")
    parser.add_argument("--batched-steps", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="thread counts of the seeds section (wall clock)")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--profile", action="store_true", help="only: the ops of our step and the bare loop's")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffusion.train import TrainConfig

    home = tempfile.mkdtemp(prefix="grokloop-bench-")
    figures: dict[str, float] = {}
    print(f"threads {torch.get_num_threads()}, a*b mod {P}, batch {args.batch_size}, {args.steps} timed steps, "
          f"best of {args.repeat}, CPU seconds")
    if args.profile:
        return profile_report(TrainConfig(batch_size=args.batch_size, home=home, progress=False,
                                           eval_every=10 ** 9, eval_max_rows=64), args.steps)
    if args.filters:
        step_section(args, home, figures)
    if args.seeds > 1:
        seeds_section(args, home, figures)

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

    if args.filters:
        step_s = 1 / max(v for k, v in figures.items() if k.endswith("ours_steps_per_s"))
        achieved, mm = flops_per_step(args.batch_size) / step_s, matmul_flops()
        figures.update(model_flops=achieved, matmul_flops=mm)
        print(f"FLOP/s: our step {achieved / 1e9:.2f} GFLOP/s, plain 1024^2 matmul {mm / 1e9:.2f} GFLOP/s, "
              f"ratio {achieved / mm:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
