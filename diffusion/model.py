"""The denoiser: a small pre-norm transformer with RoPE, as a diffusers model.

One backbone, two ways of reading it (DESIGN decision 6): bidirectional attention
for masked diffusion, causal attention for the autoregressive baseline. Same
parameters, so the comparison is fair.

    model = Denoiser(vocab_size=102, max_seq_len=5, hidden_size=128, num_layers=2, num_heads=4)
    logits = model(input_ids)                 # (B, T, V), bidirectional
    logits = model(input_ids, causal=True)    # (B, T, V), position t sees only <= t
    model.save_pretrained(path); Denoiser.from_pretrained(path)
    Denoiser(..., num_layers=4, share_layers=True)   # one block applied 4 times (cross-layer sharing)

`GrokfastRefDecoder` is the Grokfast reference code's decoder (ironjr/grokfast, commit 93b2248) with
the same interface, for `TrainConfig(arch="grokfast_ref")`: the published setup, run by our trainer.
`load_pretrained(path)` reads either class back from the `_class_name` save_pretrained wrote.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def rope_rotation(seq_len: int, head_dim: int, base: float, device) -> torch.Tensor:
    """(T, D/2) unit complex numbers e^(i t f): position t's rotation of each pair of channels.
    Computed per call (T is tiny here): no buffers means nothing to restore in from_pretrained."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    # Channels (2j, 2j+1) as one complex number, rotated by one multiply: the same numbers as
    # x1 cos - x2 sin, x1 sin + x2 cos, in a third fewer kernels (6% of a width-128 step on a CPU).
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, H, T, D/2)
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rotation), apply_rope(k, rotation)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, dropout)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, rotation: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rotation, causal)
        return x + self.mlp(self.norm2(x))


class Denoiser(ModelMixin, ConfigMixin):
    """Token ids in, logits over the vocabulary out, at every position."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        rope_base: float = 10000.0,
        mask_token_id: int = 1,
        init: str = "small",
        share_layers: bool = False,
    ):
        super().__init__()
        if hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(
                f"hidden_size {hidden_size} must split into {num_heads} heads of even size (RoPE pairs)"
            )
        self.embed = nn.Embedding(vocab_size, hidden_size)
        # share_layers: one block's weights applied num_layers times, the cross-layer sharing Wang et al.
        # 2024 point at for out-of-distribution composition (the second hop can reuse the first hop's lookup).
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, mlp_ratio, dropout) for _ in range(1 if share_layers else num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)
        # The initial weight scale decides whether a model groks late or generalizes at once
        # (Liu et al. 2023, Omnigrok): "small" is GPT-2's N(0, 0.02); "torch" keeps PyTorch's module
        # defaults (embeddings N(0, 1)), the init of the Grokfast reference code and its slow baseline.
        if init == "small":
            self.apply(self._init_weights)
        elif init != "torch":
            raise ValueError(f"init must be 'small' or 'torch', got {init!r}")

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> Denoiser:
        # These models are small and load on CPU: plainly. Without `accelerate` diffusers would
        # otherwise print seven lines asking for it on every load.
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(*args, **kwargs)

    def forward(self, input_ids: torch.LongTensor, causal: bool = False) -> torch.Tensor:
        B, T = input_ids.shape
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        head_dim = self.config.hidden_size // self.config.num_heads
        rotation = rope_rotation(T, head_dim, self.config.rope_base, input_ids.device)
        x = self.embed(input_ids)  # (B, T, C)
        for layer in range(self.config.num_layers):
            x = self.blocks[layer % len(self.blocks)](x, rotation, causal)
        return self.head(self.norm(x))  # (B, T, V)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward ~ 6 N plus attention), for throughput figures.
        A shared block costs its FLOPs at every layer it is applied."""
        L = self.config.num_layers
        n = sum(p.numel() * (L // len(self.blocks) if any(p is q for q in self.blocks.parameters()) else 1)
                for p in self.parameters() if p.dim() > 1 and p is not self.embed.weight)
        T, C = self.config.max_seq_len, self.config.hidden_size
        return 6 * n + 12 * L * T * C


def parameter_count(**config) -> int:
    """Trainable parameters of a Denoiser with these arguments (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Denoiser(**config).parameters())


def shared_width(*, vocab_size: int, max_seq_len: int, hidden_size: int, num_layers: int, num_heads: int,
                 mlp_ratio: int = 4) -> int:
    """The width at which a `share_layers` Denoiser has as many parameters as the unshared one of
    `hidden_size`: the shared arm of a comparison at equal parameters (one wider block, applied
    num_layers times). The nearest width that splits into num_heads heads of even size."""
    shape = {"vocab_size": vocab_size, "max_seq_len": max_seq_len, "num_layers": num_layers,
             "num_heads": num_heads, "mlp_ratio": mlp_ratio}
    target = parameter_count(hidden_size=hidden_size, **shape)
    step = 2 * num_heads
    lo, hi = 1, num_layers * hidden_size // step + 1   # in units of `step`; the count grows with width
    while lo < hi:                                      # the first width at or above the target
        mid = (lo + hi) // 2
        if parameter_count(hidden_size=mid * step, share_layers=True, **shape) < target:
            lo = mid + 1
        else:
            hi = mid
    below, above = max(lo - 1, 1) * step, lo * step
    return min((below, above), key=lambda w: abs(parameter_count(hidden_size=w, share_layers=True, **shape) - target))


class RefBlock(nn.Module):
    """The reference's block. Its first LayerNorm replaces the residual stream instead of feeding a
    branch (`x = ln_1(x)`, then `x = x + attn(x)`), so the stream is re-normalised in every block."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)  # biases, as there
        self.ln_2 = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
        )

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        T = x.shape[1]
        # bool mask: True = may not attend (the future, when causal)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1) if causal else None
        x = self.ln_1(x)
        a, _ = self.attn(x, x, x, attn_mask=future, need_weights=False)
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GrokfastRefDecoder(ModelMixin, ConfigMixin):
    """The Grokfast reference decoder: learned absolute positions, the block above, biases everywhere
    but the head, PyTorch's default init. Same call as Denoiser: (B, T) ids -> (B, T, V) logits."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        mask_token_id: int = 1,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must split into {num_heads} heads")
        self.token_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_seq_len, hidden_size)
        self.layers = nn.ModuleList(RefBlock(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids: torch.LongTensor, causal: bool = False) -> torch.Tensor:
        B, T = input_ids.shape
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.token_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, causal)
        return self.head(self.ln_f(x))  # (B, T, V)

    def flops_per_token(self) -> float:
        skip = (self.token_embeddings.weight, self.position_embeddings.weight)
        n = sum(p.numel() for p in self.parameters() if p.dim() > 1 and all(p is not s for s in skip))
        T, C, L = self.config.max_seq_len, self.config.hidden_size, self.config.num_layers
        return 6 * n + 12 * L * T * C


MODEL_CLASSES = {"Denoiser": Denoiser, "GrokfastRefDecoder": GrokfastRefDecoder}


def load_pretrained(directory) -> Denoiser | GrokfastRefDecoder:
    """Either model from a save_pretrained directory, by the class name diffusers wrote in config.json."""
    import json
    from pathlib import Path

    name = json.loads((Path(directory) / "config.json").read_text()).get("_class_name", "Denoiser")
    if name not in MODEL_CLASSES:
        raise ValueError(f"{directory} holds a {name!r}, not one of {', '.join(MODEL_CLASSES)}")
    # No accelerate here: load plainly (and quietly) on CPU.
    return MODEL_CLASSES[name].from_pretrained(str(directory), low_cpu_mem_usage=False)


__all__ = ["Denoiser", "GrokfastRefDecoder", "MODEL_CLASSES", "apply_rope", "load_pretrained", "parameter_count",
           "rope_rotation", "shared_width"]
