"""Quantized ops in torch: QuantizeLinear / DequantizeLinear (fake quantization) and
onnxruntime's MatMulNBits (a matmul with the dequantised weight).

``QuantizeLinear`` returns the integer tensor ONNX defines when no gradient is wanted; when
its input requires grad (calibration scores, training) it returns the same integer values
in the input's float type with a straight-through gradient (d round(x) / dx := 1 inside
the range, 0 where it saturates), so scores can flow through QDQ pairs.
``DequantizeLinear`` takes either. Blocked quantization (``block_size``) is refused.
"""

from __future__ import annotations

import torch

from onnxprune.torchexec.convert import torch_dtype
from onnxprune.torchexec.ops import Node, axis_of, op, op_in

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767), torch.int32: (-2**31, 2**31 - 1)}
if hasattr(torch, "uint16"):
    _RANGES[torch.uint16] = (0, 65535)


def _per_axis(n: Node, t: torch.Tensor | None, rank: int) -> torch.Tensor | None:
    """A scale or zero point shaped to broadcast against a rank-``rank`` input along ``axis``."""
    if t is None or t.numel() <= 1:
        return t.reshape(()) if t is not None else None
    if n.attr("block_size", 0):
        raise n.error("blocked quantization (block_size) is not supported")
    shape = [1] * rank
    shape[axis_of(int(n.attr("axis", 1)), rank)] = t.numel()
    return t.reshape(shape)


@op("QuantizeLinear")
def quantize_linear(n: Node, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None):
    out_type = zero.dtype if zero is not None else (
        torch_dtype(n.attr("output_dtype")) if n.attr("output_dtype", 0) else torch.uint8)
    if out_type not in _RANGES:
        raise n.error(f"quantization to {out_type} is not supported")
    lo, hi = _RANGES[out_type]
    s = _per_axis(n, scale, x.dim()).to(x.dtype)
    z = _per_axis(n, zero, x.dim())
    q = x / s + (0 if z is None else z.to(x.dtype))
    if x.requires_grad and torch.is_grad_enabled():  # straight-through: integer values, float type
        rounded = torch.clamp(torch.round(q), lo, hi)
        return q + (rounded - q).detach() if rounded.dtype == q.dtype else rounded
    return torch.clamp(torch.round(q.float()), lo, hi).to(out_type)


@op("DequantizeLinear")
def dequantize_linear(n: Node, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None):
    dtype = scale.dtype
    s = _per_axis(n, scale, x.dim())
    z = _per_axis(n, zero, x.dim())
    centred = x.to(torch.float32) - (0 if z is None else z.to(torch.float32))
    return (centred * s.to(torch.float32)).to(dtype)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 bytes [..., m] -> their ``8 / bits`` values each, low bits first: [..., m * 8 / bits]."""
    per = 8 // bits
    mask = (1 << bits) - 1
    x = packed.to(torch.int32)
    parts = [(x >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)


def nbits_weight(n: Node, b: torch.Tensor, scales: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """The dequantised weight [N, K] of a MatMulNBits (float32)."""
    k, nn_, bits, bs = int(n.attr("K")), int(n.attr("N")), int(n.attr("bits", 4)), int(n.attr("block_size"))
    kb = -(-k // bs)
    q = _unpack(b.reshape(nn_, kb, -1), bits).to(torch.float32)  # [N, kb, bs]
    s = scales.reshape(nn_, kb).to(torch.float32)
    if zero is None:
        z = torch.full((nn_, kb), float(1 << (bits - 1)), device=q.device)
    elif zero.dtype == torch.uint8:
        z = _unpack(zero.reshape(nn_, -1), bits)[:, :kb].to(torch.float32)
    else:
        z = zero.reshape(nn_, kb).to(torch.float32)
    w = (q - z[..., None]) * s[..., None]
    return w.reshape(nn_, kb * bs)[:, :k]


@op_in("com.microsoft", "MatMulNBits")
def matmul_nbits(n: Node, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zero=None, g_idx=None,
                 bias=None):
    if g_idx is not None and g_idx.numel():
        raise n.error("g_idx (act-order) is not supported")
    key = (b.data_ptr(), scales.data_ptr(), scales._version, str(b.device))
    w = n.cache.get(key) if not scales.requires_grad else None
    if w is None:
        w = nbits_weight(n, b, scales, zero)
        if not scales.requires_grad:
            n.cache.clear()
            n.cache[key] = w
    y = torch.matmul(a.to(torch.float32), w.t())
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(a.dtype)
