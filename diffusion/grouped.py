"""N runs of one Denoiser as one model with grouped weights.

    params = stack_params([model_0, ..., model_7])        # {Denoiser name: (N, ...) leaf tensor}
    logits = grouped_forward(params, model_0.config, ids)  # ids (N, B, T) -> (N, B, T, V)

Every weight carries a leading run dim N, and the forward pass is `Denoiser.forward` written over
it: each linear layer is one `torch.bmm` / `torch.baddbmm` over the N runs, attention is ONE
`scaled_dot_product_attention` call with the runs folded into the batch dim, the embedding one
lookup into the N tables laid end to end. So N runs cost one op where one run costs one op, instead
of `vmap`, which has no batching rule for SDPA and loops over the runs there. The parameter names
are the Denoiser's, so run i's slice `{name: p[i]}` is an ordinary Denoiser state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion.model import Denoiser, apply_rope, rope_rotation


def stack_params(models: list[Denoiser], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The models' parameters stacked along a new leading dim: one trainable leaf per name."""
    names = [n for n, _ in models[0].named_parameters()]
    if set(names) != set(grouped_param_names(models[0].config)):
        raise ValueError(f"grouped weights know the Denoiser's own layers, not these: {sorted(names)}")
    return {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).to(device).requires_grad_()
            for n in names}


def grouped_param_names(config) -> list[str]:
    """The parameter names `grouped_forward` reads: the Denoiser's."""
    per_block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "norm2.weight", "norm2.bias",
                 "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    return (["embed.weight"] + [f"blocks.{i}.{n}" for i in range(config.num_layers) for n in per_block]
            + ["norm.weight", "norm.bias", "head.weight"])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, M, in) @ weight (N, out, in)^T + bias (N, out): nn.Linear for N runs, one batched matmul."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """nn.LayerNorm for N runs: x (N, M, C) normalised, then each run's own scale and shift."""
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=eps), weight.unsqueeze(1))


def grouped_forward(params: dict[str, torch.Tensor], config, input_ids: torch.Tensor,
                    causal: bool = False) -> torch.Tensor:
    """Denoiser.forward for N runs at once: input_ids (N, B, T) -> logits (N, B, T, V), run i's
    logits from run i's weights and ids only."""
    N, B, T = input_ids.shape
    C, H = config.hidden_size, config.num_heads
    if input_ids.shape[-1] > config.max_seq_len:
        raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {config.max_seq_len}")
    rotation = rope_rotation(T, C // H, config.rope_base, input_ids.device)
    table = params["embed.weight"]  # (N, V, C): the N tables end to end, run i's ids offset by i*V
    offsets = torch.arange(N, device=input_ids.device).view(N, 1) * table.shape[1]
    x = F.embedding(input_ids.reshape(N, B * T) + offsets, table.reshape(-1, C))  # (N, B*T, C)
    for i in range(config.num_layers):
        p = {n.removeprefix(f"blocks.{i}."): w for n, w in params.items() if n.startswith(f"blocks.{i}.")}
        h = layer_norm(x, p["norm1.weight"], p["norm1.bias"])
        # the runs folded into the batch: one attention call for all of them
        q, k, v = linear(h, p["attn.qkv.weight"]).view(N * B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rotation), apply_rope(k, rotation)  # (N*B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + linear(y.transpose(1, 2).reshape(N, B * T, C), p["attn.proj.weight"])
        h = layer_norm(x, p["norm2.weight"], p["norm2.bias"])
        h = F.gelu(linear(h, p["mlp.0.weight"], p["mlp.0.bias"]))
        x = x + linear(h, p["mlp.2.weight"], p["mlp.2.bias"])
    x = layer_norm(x, params["norm.weight"], params["norm.bias"])
    return linear(x, params["head.weight"]).view(N, B, T, -1)
