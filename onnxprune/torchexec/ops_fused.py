"""onnxruntime's fused transformer ops (domain ``com.microsoft``) and the default-domain
``SimplifiedLayerNormalization`` onnxruntime runs, as torch ops, so that calibration
(gradients, captures) works on graphs the transformer optimizer wrote.

Semantics follow onnxruntime's contrib op definitions (CPU kernels): masked attention
positions get ``mask_filter_value`` (default -10000) added, as onnxruntime does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onnxprune.torchexec.ops import Node, axis_of, op, op_in
from onnxprune.torchexec.ops_nn import conv, gemm

MS = "com.microsoft"


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@op_in(MS, "Gelu")
def gelu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return _gelu(x)


@op_in(MS, "BiasGelu")
def bias_gelu(n: Node, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _gelu(x + bias)


@op_in(MS, "FastGelu")
def fast_gelu(n: Node, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


@op_in(MS, "QuickGelu")
def quick_gelu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(n.attr("alpha", 1.702) * x)


@op_in(MS, "BiasAdd")
def bias_add(n: Node, x: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    return x + bias + skip


def _norm(n: Node, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None, *, simplified: bool,
          dims: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, inv_std) of a LayerNorm (or RMSNorm when ``simplified``) over ``dims``, in float32."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    eps = n.attr("epsilon", 1e-5)
    if simplified:
        mean = torch.zeros_like(xs.narrow(dims[-1], 0, 1))
        inv_std = torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + eps)
        y = xs * inv_std
    else:
        mean = xs.mean(dim=dims, keepdim=True)
        centred = xs - mean
        inv_std = torch.rsqrt((centred * centred).mean(dim=dims, keepdim=True) + eps)
        y = centred * inv_std
    y = y.to(x.dtype) * gamma
    if beta is not None:
        y = y + beta
    return y, mean, inv_std


def _outputs(n: Node, y: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor | tuple:
    if n.n_outputs == 1:
        return y
    return (y, *[v if n.wants(i + 1) else None for i, v in enumerate(rest)])[: n.n_outputs]


@op_in(MS, "SkipLayerNormalization")
def skip_layer_norm(n: Node, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor,
                    beta: torch.Tensor | None = None, bias: torch.Tensor | None = None):
    s = x + skip if bias is None else x + skip + bias
    y, mean, inv_std = _norm(n, s, gamma, beta, simplified=False, dims=[s.dim() - 1])
    return _outputs(n, y, mean, inv_std, s)


@op_in(MS, "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_norm(n: Node, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor,
                               bias: torch.Tensor | None = None):
    s = x + skip if bias is None else x + skip + bias
    y, mean, inv_std = _norm(n, s, gamma, None, simplified=True, dims=[s.dim() - 1])
    return _outputs(n, y, mean, inv_std, s)


def simplified_layer_norm(n: Node, x: torch.Tensor, scale: torch.Tensor):
    axis = axis_of(n.attr("axis", -1), x.dim())
    y, _, inv_std = _norm(n, x, scale, None, simplified=True, dims=list(range(axis, x.dim())))
    return _outputs(n, y, inv_std)


op("SimplifiedLayerNormalization")(simplified_layer_norm)
op_in(MS, "SimplifiedLayerNormalization")(simplified_layer_norm)


@op_in(MS, "EmbedLayerNormalization")
def embed_layer_norm(n: Node, ids: torch.Tensor, segment_ids: torch.Tensor | None, word: torch.Tensor,
                     position: torch.Tensor, segment: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None):
    seq = ids.shape[1]
    if position_ids is None:
        position_ids = torch.arange(seq, device=ids.device).expand(ids.shape[0], seq)
    elif position_ids.shape[0] == 1:
        position_ids = position_ids.expand(ids.shape[0], seq)
    s = word[ids.long()] + position[position_ids.long()]
    if segment is not None and segment_ids is not None:
        s = s + segment[segment_ids.long()]
    y, _, _ = _norm(n, s, gamma, beta, simplified=False, dims=[s.dim() - 1])
    if mask is not None:
        mask_index = mask.to(torch.int32).sum(dim=1, dtype=torch.int32)
    else:
        mask_index = torch.full((ids.shape[0],), seq, dtype=torch.int32, device=ids.device)
    return _outputs(n, y, mask_index, s)


@op_in(MS, "FusedMatMul")
def fused_matmul(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if n.attr("transBatchA", 0) or n.attr("transBatchB", 0):
        raise n.error("transBatchA / transBatchB are not supported")
    if n.attr("transA", 0):
        a = a.transpose(-1, -2)
    if n.attr("transB", 0):
        b = b.transpose(-1, -2)
    return n.attr("alpha", 1.0) * torch.matmul(a, b)


# -- attention --------------------------------------------------------------------------

def _key_mask(n: Node, mask: torch.Tensor | None, batch: int, q_len: int, k_len: int,
              dtype: torch.dtype) -> torch.Tensor | None:
    """An additive [batch, 1, q_len, k_len] mask from onnxruntime's mask forms: 1-D [batch]
    valid lengths (or [2*batch] end and start positions), 2-D [batch, k_len] 0/1, 3-D
    [batch, q_len, k_len] 0/1; None when there is none."""
    if mask is None:
        return None
    fill = float(n.attr("mask_filter_value", -10000.0))
    keys = torch.arange(k_len, device=mask.device)
    if mask.dim() == 1:
        end = mask[:batch].long()[:, None]
        keep = keys[None, :] < end
        if mask.shape[0] == 2 * batch:
            keep = keep & (keys[None, :] >= mask[batch:].long()[:, None])
        keep = keep[:, None, None, :]
    elif mask.dim() == 2:
        keep = (mask > 0)[:, None, None, :]
    elif mask.dim() == 3:
        keep = (mask > 0)[:, None, :, :]
    else:
        raise n.error(f"a mask of rank {mask.dim()} is not supported")
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(keep, zero, torch.full((), fill, dtype=dtype, device=mask.device))


def _attend(n: Node, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
            causal: bool) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v on [batch, heads, seq, head_dim]; -> [batch, seq, heads*dv]."""
    scale = n.attr("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        s, t = scores.shape[-2:]
        future = torch.ones(s, t, dtype=torch.bool, device=scores.device).triu(t - s + 1)
        scores = scores.masked_fill(future, float(n.attr("mask_filter_value", -10000.0)))
    ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, s, d = ctx.shape
    return ctx.transpose(1, 2).reshape(b, s, h * d)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.reshape(b, s, heads, d // heads).transpose(1, 2)


@op_in(MS, "Attention")
def attention(n: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
              mask_index: torch.Tensor | None = None, past: torch.Tensor | None = None,
              attention_bias: torch.Tensor | None = None, past_sequence_length: torch.Tensor | None = None):
    if n.attr("past_present_share_buffer", 0) or n.attr("do_rotary", 0):
        raise n.error("past_present_share_buffer and do_rotary are not supported")
    heads = int(n.attr("num_heads"))
    qkv = torch.matmul(x, w)
    if b is not None:
        qkv = qkv + b
    sizes = list(n.attr("qkv_hidden_sizes", []) or [w.shape[1] // 3] * 3)
    q, k, v = (_split_heads(t, heads) for t in torch.split(qkv, sizes, dim=-1))
    if past is not None:  # [2, batch, heads, past, head_size]
        k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
    bias = _key_mask(n, mask_index, x.shape[0], x.shape[1], k.shape[2], x.dtype)
    if attention_bias is not None:
        bias = attention_bias if bias is None else bias + attention_bias
    out = _attend(n, q, k, v, bias, causal=bool(n.attr("unidirectional", 0)))
    return _outputs(n, out, torch.stack((k, v)))


@op_in(MS, "MultiHeadAttention")
def multi_head_attention(n: Node, query: torch.Tensor, key: torch.Tensor | None = None,
                         value: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                         key_padding_mask: torch.Tensor | None = None, attention_bias: torch.Tensor | None = None,
                         past_key: torch.Tensor | None = None, past_value: torch.Tensor | None = None, *rest):
    if key is None or value is None or key.dim() != 3 or value.dim() != 3:
        raise n.error("packed QKV / KV and per-head key or value layouts are not supported")
    heads = int(n.attr("num_heads"))
    if bias is not None:
        bq, bk, bv = torch.split(bias, [query.shape[-1], key.shape[-1], value.shape[-1]])
        query, key, value = query + bq, key + bk, value + bv
    q, k, v = _split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads)
    if past_key is not None and past_value is not None:  # [batch, heads, past, head_size]
        k, v = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
    add = _key_mask(n, key_padding_mask, query.shape[0], query.shape[1], k.shape[2], query.dtype)
    if attention_bias is not None:
        add = attention_bias if add is None else add + attention_bias
    out = _attend(n, q, k, v, add, causal=bool(n.attr("unidirectional", 0)))
    if n.n_outputs > 3 and n.wants(3):
        raise n.error("the attention score output is not supported")
    return _outputs(n, out, k, v)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first 2*cos.shape[-1] channels of the last axis of x by (cos, sin)."""
    rot = 2 * cos.shape[-1]
    head, tail = x[..., :rot], x[..., rot:]
    if interleaved:
        x1, x2 = head[..., 0::2], head[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = head.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((out, tail), dim=-1)


@op_in(MS, "RotaryEmbedding")
def rotary_embedding(n: Node, x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor,
                     sin_cache: torch.Tensor) -> torch.Tensor:
    """x [b, s, hidden] or [b, heads, s, head_dim]; position_ids [b, s] or [1] (an offset)."""
    rank4 = x.dim() == 4
    b, s = (x.shape[0], x.shape[2]) if rank4 else x.shape[:2]
    pos = position_ids.long()
    if pos.numel() == 1:
        pos = pos.reshape(1, 1) + torch.arange(s, device=x.device)[None, :]
    cos, sin = cos_cache[pos], sin_cache[pos]  # [b or 1, s, rot/2]
    if rank4:
        return _rotate(x, cos[:, None], sin[:, None], bool(n.attr("interleaved", 0)))
    heads = int(n.attr("num_heads", 0) or 0) or x.shape[-1] // (2 * cos_cache.shape[-1])
    xh = x.reshape(b, s, heads, x.shape[-1] // heads)
    out = _rotate(xh, cos[:, :, None], sin[:, :, None], bool(n.attr("interleaved", 0)))
    return out.reshape(x.shape)


@op_in(MS, "GroupQueryAttention")
def group_query_attention(n: Node, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None,
                          past_key: torch.Tensor | None = None, past_value: torch.Tensor | None = None,
                          seqlens_k: torch.Tensor | None = None, total_sequence_length: torch.Tensor | None = None,
                          cos_cache: torch.Tensor | None = None, sin_cache: torch.Tensor | None = None, *rest):
    """Grouped-query attention with a past cache [batch, kv_heads, past, head_size] (appended
    to, not a shared buffer); the present outputs are the past and new keys and values."""
    heads, kv = int(n.attr("num_heads")), int(n.attr("kv_num_heads"))
    if key is None or value is None:
        raise n.error("packed QKV is not supported")
    if n.attr("local_window_size", -1) not in (-1, None) or n.attr("softcap", 0.0):
        raise n.error("local_window_size and softcap are not supported")
    q, k, v = _split_heads(query, heads), _split_heads(key, kv), _split_heads(value, kv)
    past = 0 if past_key is None else past_key.shape[2]
    if n.attr("do_rotary", 0) and cos_cache is not None:
        pos = torch.arange(past, past + query.shape[1], device=query.device)
        cos, sin = cos_cache[pos][None, None], sin_cache[pos][None, None]
        inter = bool(n.attr("rotary_interleaved", 0))
        q, k = _rotate(q, cos, sin, inter), _rotate(k, cos, sin, inter)
    if past:
        k, v = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
    present_k, present_v = k, v
    k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
    mask = None
    if seqlens_k is not None:  # seqlens_k: the last valid key index per batch row
        keys = torch.arange(k.shape[2], device=query.device)
        keep = keys[None, :] <= seqlens_k.long()[:, None]
        mask = torch.where(keep, 0.0, torch.finfo(q.dtype).min)[:, None, None, :].to(q.dtype)
    out = _attend(n, q, k, v, mask, causal=True)
    return _outputs(n, out, present_k, present_v)


# -- onnxruntime's graph optimizer: Conv / Gemm with their activation fused ----------------------

def _fused_activation(n: Node, y: torch.Tensor, params: list[float]) -> torch.Tensor:
    """The activation fused into a FusedConv / FusedGemm (``activation`` and its parameters)."""
    act = n.attr("activation", "") or ""
    if act == "Relu":
        return F.relu(y)
    if act == "Tanh":
        return torch.tanh(y)
    if act == "Sigmoid":
        return torch.sigmoid(y)
    if act == "LeakyRelu":
        return F.leaky_relu(y, params[0] if params else 0.01)
    if act == "Clip":
        lo, hi = (params + [-math.inf, math.inf][len(params):])[:2]
        return torch.clamp(y, min=lo, max=hi)
    if act == "HardSigmoid":
        alpha, beta = (params + [0.2, 0.5][len(params):])[:2]
        return torch.clamp(y * alpha + beta, 0.0, 1.0)
    if act:
        raise NotImplementedError(f"{n.op_type} '{n.name}': activation {act} has no torch implementation")
    return y


@op_in(MS, "FusedConv")
def fused_conv(n: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
               z: torch.Tensor | None = None) -> torch.Tensor:
    """activation(Conv(x, w, b) + z), ``activation_params`` its parameters (Clip: min, max)."""
    y = conv(n, x, w, b)
    if z is not None:
        y = y + z
    return _fused_activation(n, y, [float(p) for p in n.attr("activation_params", []) or []])


@op_in(MS, "FusedGemm")
def fused_gemm(n: Node, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """activation(Gemm(a, b, c)), its parameters ``activation_alpha`` / ``activation_beta``."""
    params = [float(n.attr(k)) for k in ("activation_alpha", "activation_beta") if n.attr(k) is not None]
    return _fused_activation(n, gemm(n, a, b, c), params)
