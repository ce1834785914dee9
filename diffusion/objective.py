"""The training objectives: masked diffusion (MDLM / LLaDA) and the autoregressive baseline.

Masked diffusion's negative ELBO, per sequence (Sahoo et al. 2024, Shi et al. 2024):

    NELBO(x) = E_{t ~ U(0,1)} [ (1/t) * sum_{j masked at t} -log p(x_j | x_t) ]

where each maskable token is replaced by [MASK] independently with probability t.
We report it per maskable token (divided by L), the scale of a cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_t(n: int, *, eps: float = 1e-3, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stratified (low-discrepancy) t in [eps, 1]: one draw per 1/n slice, so a batch covers U(0,1)
    evenly and the loss has much lower variance than n independent draws."""
    u = torch.rand(1, generator=generator)
    t = (u + torch.arange(n) / n) % 1.0  # (n,)
    return eps + (1.0 - eps) * t


def mask_tokens(
    ids: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, mask_id: int,
    *, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process: each maskable token becomes [MASK] with probability t (per row)."""
    masked = (torch.rand(ids.shape, generator=generator) < t[:, None]) & maskable.bool()  # (B, T)
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked


def mask_count(
    maskable: torch.Tensor, *, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ELBO with t integrated out: mask k ~ U{1..L} positions chosen uniformly, weight L/k.
    (Summing the Beta(k, L-k+1) weights of the 1/t form over t gives exactly this.) No row is
    ever left unmasked and no weight exceeds L, so the variance is far lower for short answers
    (L = 1: plain cross-entropy). Returns (masked (B, T), k/L (B,)) — k/L plays the role of t.
    A row with no maskable position (L = 0) masks nothing and gets t = 1, not 0/0."""
    L = maskable.sum(dim=1)  # (B,)
    u = sample_t(maskable.shape[0], eps=0.0, generator=generator)  # stratified in [0, 1)
    k = (u * L).floor().long().clamp(max=L - 1) + 1  # (B,) in 1..L (0 where L = 0)
    scores = torch.rand(maskable.shape, generator=generator).masked_fill(~maskable.bool(), 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # random order of the maskable positions first
    return rank < k[:, None], k.clamp(min=1) / L.clamp(min=1)


def never_predict_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    # [MASK] is an input state, never a clean token: give it zero probability.
    logits = logits.clone()
    logits[..., mask_id] = float("-inf")
    return logits


def mdm_loss_given(
    model, ids: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, masked: torch.Tensor,
    mask_id: int,
) -> torch.Tensor:
    """The NELBO estimate for given noise levels `t` (B,) and mask pattern `masked` (B, T), averaged
    over the rows that have something to mask (a row with none has no ELBO term). Leading dims
    before (B, T) are independent runs (diffusion/grouped.py): one loss each, shape (N,)."""
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = never_predict_mask(model(noisy), mask_id)  # (B, T, V)
    nll = F.cross_entropy(logits.movedim(-1, 1), ids, reduction="none")  # (B, T)
    per_row = (nll * masked).sum(dim=-1) / t  # (B,): 1/t weighting
    L = maskable.sum(dim=-1)  # (B,)
    return (per_row / L.clamp(min=1)).sum(dim=-1) / (L > 0).sum(dim=-1).clamp(min=1)


def mdm_loss(
    model, ids: torch.Tensor, answer_mask: torch.Tensor, mask_id: int, *,
    full_sequence: bool = False, estimator: str = "count", generator: torch.Generator | None = None,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Masked-diffusion loss. Prompt-conditional by default: the prompt is always visible and only
    answer positions are noised (p(answer | prompt)); `full_sequence` noises every position.
    `estimator` "t": stratified t, Bernoulli(t) masks, 1/t weights (MDLM / LLaDA);
    "count": the same expectation with t integrated out (see `mask_count`)."""
    maskable, t, masked = mdm_noise(ids, answer_mask, mask_id, full_sequence=full_sequence, estimator=estimator,
                                    generator=generator, eps=eps)
    return mdm_loss_given(model, ids, maskable, t, masked, mask_id)


def mdm_noise(
    ids: torch.Tensor, answer_mask: torch.Tensor, mask_id: int, *, full_sequence: bool = False,
    estimator: str = "count", generator: torch.Generator | None = None, eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maskable, t, masked) for a batch: the forward process's draw, apart from the model (batched
    seeds draw each run's noise from its own generator, then run every model at once)."""
    maskable = torch.ones_like(answer_mask, dtype=torch.bool) if full_sequence else answer_mask.bool()
    if estimator == "t":
        t = sample_t(ids.shape[0], eps=eps, generator=generator)
        _, masked = mask_tokens(ids, maskable, t, mask_id, generator=generator)
    elif estimator == "count":
        masked, t = mask_count(maskable, generator=generator)
    else:
        raise ValueError(f"unknown estimator {estimator!r}; expected 't' or 'count'")
    return maskable, t, masked


def ar_loss(model, ids: torch.Tensor, answer_mask: torch.Tensor, mask_id: int, *,
            full_sequence: bool = False) -> torch.Tensor:
    """Autoregressive baseline: the causal model predicts each answer token from everything before it
    (`full_sequence`: every token after the first, a language model's loss, as masked diffusion's
    `full_sequence` denoises every position). [MASK] is out of its support too (the AR sampler never
    emits it), so the two losses compare. Leading dims before (B, T) are independent runs, as in
    `mdm_loss_given`."""
    logits = never_predict_mask(model(ids[..., :-1], causal=True), mask_id)  # (B, T-1, V): j predicts j+1
    targets = ids[..., 1:]
    weight = torch.ones_like(targets, dtype=torch.float) if full_sequence else answer_mask[..., 1:].float()
    nll = F.cross_entropy(logits.movedim(-1, 1), targets, reduction="none")
    return (nll * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp(min=1)


def objective_loss(
    objective: str, model, ids: torch.Tensor, answer_mask: torch.Tensor, mask_id: int, *,
    full_sequence: bool = False, estimator: str = "count", generator: torch.Generator | None = None,
    rows: slice = slice(None),
) -> torch.Tensor:
    """The loss of `rows` of the batch (data parallel: each process takes its slice). The masking noise
    is drawn for the whole batch, on the CPU from `generator`, so N processes together take the step
    one process would, on any device: the rows go to the device of `ids` after the draw."""
    if objective == "mdm":
        maskable, t, masked = mdm_noise(ids.cpu(), answer_mask.cpu(), mask_id, full_sequence=full_sequence,
                                        estimator=estimator, generator=generator)
        maskable, t, masked = (x[rows].to(ids.device) for x in (maskable, t, masked))
        return mdm_loss_given(model, ids[rows], maskable, t, masked, mask_id)
    if objective == "ar":
        return ar_loss(model, ids[rows], answer_mask[rows], mask_id, full_sequence=full_sequence)
    raise ValueError(f"unknown objective {objective!r}; expected 'mdm' or 'ar'")
