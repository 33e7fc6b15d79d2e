"""Transformer encoders written in plain torch (no torch.nn.MultiheadAttention, so the
export shows the real Q/K/V projections, head reshapes and attention MatMuls).

- "bert": token + position embeddings, post-LN encoder layers (attention, GELU FFN).
- "vit": patch embedding (strided conv), class token, pre-LN encoder layers, head.
- "bert_decomposed_ln": the same BERT with LayerNorm written out in primitive ops
  (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add), as Paddle exports it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import ch, seeded


class DecomposedLayerNorm(nn.Module):
    """LayerNorm over the last axis in primitive ops (Paddle's export of layer_norm)."""

    def __init__(self, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(hidden)), nn.Parameter(torch.zeros(hidden)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        var = centred.pow(2).mean(-1, keepdim=True)
        return centred / torch.sqrt(var + self.eps) * self.weight + self.bias


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        split = lambda t: t.view(b, s, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        ctx = scores.softmax(-1) @ v
        return self.out(ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, pre_norm: bool, norm: type = nn.LayerNorm) -> None:
        super().__init__()
        self.attn, self.pre_norm = SelfAttention(hidden, heads), pre_norm
        self.ln1, self.ln2 = norm(hidden), norm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), mask)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.attn(x, mask))
        return self.ln2(x + self.ffn(x))


class Bert(nn.Module):
    """BERT-style encoder on token ids [batch, seq] with an attention mask; returns the hidden states."""

    def __init__(self, width: float = 1.0, vocab: int = 1000, layers: int = 2, max_len: int = 64,
                 norm: type = nn.LayerNorm) -> None:
        super().__init__()
        heads = 4
        hidden = heads * ch(32, width, minimum=2)
        self.tok, self.pos = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        self.ln = norm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, 4 * hidden, pre_norm=False, norm=norm)
                                    for _ in range(layers))
        self.pool = nn.Linear(hidden, hidden)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.ln(self.tok(ids) + self.pos(pos))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return torch.tanh(self.pool(x[:, 0]))


class ViT(nn.Module):
    """ViT: 4x4 patches of a 32x32 image, class token, pre-LN layers, linear head."""

    def __init__(self, width: float = 1.0, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        heads = 4
        hidden = heads * ch(16, width, minimum=2)
        self.patch = nn.Conv2d(3, hidden, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 65, hidden) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, 2 * hidden, pre_norm=True) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x[:, 0]))


@seeded
def build_bert(width: float = 1.0, seed: int = 0) -> nn.Module:
    """BERT-style encoder, inputs ids/attention_mask [1, 16]."""
    return Bert(width).eval()


@seeded
def build_vit(width: float = 1.0, seed: int = 0) -> nn.Module:
    """ViT on 32x32 images."""
    return ViT(width).eval()


@seeded
def build_bert_decomposed_ln(width: float = 1.0, seed: int = 0) -> nn.Module:
    """The BERT-style encoder with LayerNorm written out in primitive ops (as Paddle exports it)."""
    model = Bert(width, norm=DecomposedLayerNorm)
    with torch.no_grad():  # non-trivial affine terms, so that slicing them is visible
        for m in model.modules():
            if isinstance(m, DecomposedLayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()
