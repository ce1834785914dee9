"""The Grokfast reference (Lee et al. 2024, github.com/ironjr/grokfast, `main.py`), re-created from its
published code: its decoder, its two filters, its data and its training loop, so that the published
setup can run side by side with our trainer (bench/grokking.py --ref) and be timed against our step
(bench/throughput.py). Nothing here is used by grokloop's own training.

    run = reference_run(seed=0, weight_decay=0.005, grokfast="ema", budget=3000)
    run.steps_to_95     # the first epoch end with validation accuracy >= 95%, in optimizer steps

What the reference does, and this does too: a sequence-first (T, B) decoder whose blocks replace the
residual stream with its LayerNorm; `a*b mod p` for 0 <= a < p, 0 < b < p (the model is built before
the data, so `torch.manual_seed(seed)` fixes both); a random half for training; Adam with L2 weight
decay, betas (0.9, 0.98) and a LambdaLR warmup whose first update has lr 0; each epoch the training
half reshuffled and cut into batches (the last one partial), then one pass over the validation half;
accuracy of the answer token, train accuracy averaged over the epoch's batches as they train.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


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

    def __init__(self, dim=128, num_layers=2, num_heads=4, num_tokens=99, seq_len=5):
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


# The reference's token ids, and grokloop's tokenizer's for the same rows: [PAD] [MASK] [UNK] first (so
# the numbers from id 3), then the op and '='; [MASK] (id 1) is out of the loss support there.
TOKEN_LAYOUTS = ("reference", "grokloop")
GROKLOOP_MASK_ID = 1


def multiplication_data(p: int, layout: str = "reference") -> torch.Tensor:
    """(5, p (p - 1)) rows a, op, b, =, a*b mod p; reference: tokens 0..p-1 the numbers, p '=', p + 1 the
    op; grokloop: 3..p+2 the numbers, p + 3 the op, p + 4 '='."""
    if layout not in TOKEN_LAYOUTS:
        raise ValueError(f"unknown token layout {layout!r}; known: {', '.join(TOKEN_LAYOUTS)}")
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    if layout == "grokloop":
        return torch.stack([a + 3, torch.full_like(a, p + 3), b + 3, torch.full_like(a, p + 4), a * b % p + 3])
    return torch.stack([a, torch.full_like(a, p + 1), b, torch.full_like(a, p), a * b % p])


@dataclass
class ReferenceRun:
    seed: int
    steps: int = 0
    t_mem: int | None = None         # first epoch end with train accuracy >= 99%
    steps_to_95: int | None = None   # first epoch end with validation accuracy >= 95%
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (steps, train acc, val acc)


def reference_run(*, seed: int, weight_decay: float, grokfast: str = "none", alpha: float = 0.98,
                  lamb: float = 2.0, window: int = 100, budget: int = 3000, p: int = 97, lr: float = 1e-3,
                  batch_size: int = 512, stop_at_95: bool = True, layout: str = "reference") -> ReferenceRun:
    """The reference's `main` for `budget` steps (whole epochs), stopping at the first epoch end
    with validation accuracy >= 95% when `stop_at_95`. `layout="grokloop"`: the same loop on our
    tokenizer's ids (p + 5 of them, [MASK] out of the support), to tell their effect from the trainer's."""
    data = multiplication_data(p, layout)  # no random draw: the model's init is still the first
    torch.manual_seed(seed)
    model = RefDecoder(num_tokens=p + (5 if layout == "grokloop" else 2))
    train_idx, valid_idx = torch.randperm(data.shape[1]).split(data.shape[1] // 2)
    train_data, valid_data = data[:, train_idx], data[:, valid_idx]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1 if update > 10 else update / 10)
    steps_per_epoch = math.ceil(train_data.shape[1] / batch_size)
    run, grads = ReferenceRun(seed=seed), None
    for _ in range(budget // steps_per_epoch):
        train_data = train_data[:, torch.randperm(train_data.shape[1])]
        accs = []
        for data_, is_train in ((train_data, True), (valid_data, False)):
            model.train(is_train)
            correct = 0
            for batch in torch.split(data_, batch_size, dim=1):
                with torch.set_grad_enabled(is_train):
                    logits = model(batch[:-1])
                    if layout == "grokloop":
                        logits = logits.index_fill(-1, torch.tensor([GROKLOOP_MASK_ID]), float("-inf"))
                    loss = F.cross_entropy(logits[-1], batch[-1])
                if is_train:
                    model.zero_grad()
                    loss.backward()
                    if grokfast == "ema":
                        grads = ref_gradfilter_ema(model, grads, alpha, lamb)
                    elif grokfast == "ma":
                        grads = ref_gradfilter_ma(model, grads, window, lamb)
                    optimizer.step()
                    scheduler.step()
                    run.steps += 1
                correct += (logits[-1].argmax(-1) == batch[-1]).sum().item()
            accs.append(correct / data_.shape[1])
        run.curve.append((run.steps, *accs))
        if run.t_mem is None and accs[0] >= 0.99:
            run.t_mem = run.steps
        if run.steps_to_95 is None and accs[1] >= 0.95:
            run.steps_to_95 = run.steps
            if stop_at_95:
                break
    return run
