"""Weighted ops (Conv, ConvTranspose, Gemm, MatMul), normalisations and pooling."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from onnxprune.torchexec.ops import Node, axes_of, axis_of, op, torch_pads

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial(n: Node, x: torch.Tensor) -> int:
    nd = x.dim() - 2
    if nd not in _CONV:
        raise n.error(f"{nd}-d spatial inputs are not supported (1, 2 or 3)")
    return nd


def _window_pads(n: Node, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(begins, ends) pads of a Conv / pool window from ``pads`` or ``auto_pad``."""
    nd = len(kernel)
    auto = n.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            b, e = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
            begins.append(b)
            ends.append(e)
        return begins, ends
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(n.attr("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def _conv_geometry(n: Node, nd: int) -> tuple[list[int], list[int]]:
    return list(n.attr("strides", [1] * nd)), list(n.attr("dilations", [1] * nd))


@op("Conv")
def conv(n: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    nd = _spatial(n, x)
    strides, dilations = _conv_geometry(n, nd)
    begins, ends = _window_pads(n, x.shape[2:], w.shape[2:], strides, dilations)
    if begins == ends:
        padding = begins
    else:
        x, padding = F.pad(x, torch_pads(begins, ends)), [0] * nd
    return _CONV[nd](x, w, b, strides, padding, dilations, n.attr("group", 1))


@op("ConvTranspose")
def conv_transpose(n: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    nd = _spatial(n, x)
    strides, dilations = _conv_geometry(n, nd)
    group = n.attr("group", 1)
    out_pad = list(n.attr("output_padding", [0] * nd))
    in_sizes, kernel = x.shape[2:], w.shape[2:]
    full = [s * (i - 1) + (k - 1) * d + 1 for i, k, s, d in zip(in_sizes, kernel, strides, dilations)]
    auto = n.attr("auto_pad", "NOTSET")
    output_shape = n.attr("output_shape")
    if output_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        # onnxruntime's distribution: SAME_UPPER pads more at the end, otherwise at the start.
        targets = list(output_shape)[-nd:] if output_shape else [i * s for i, s in zip(in_sizes, strides)]
        begins, ends = [], []
        for f, p, t in zip(full, out_pad, targets):
            total = f + p - t
            small = total // 2
            b_, e_ = (small, total - small) if auto == "SAME_UPPER" else (total - small, small)
            begins.append(b_)
            ends.append(e_)
    elif auto == "VALID":
        begins, ends = [0] * nd, [0] * nd
    else:
        pads = list(n.attr("pads", [0] * (2 * nd)))
        begins, ends = pads[:nd], pads[nd:]
    fn = _CONV_T[nd]
    if begins == ends and all(0 <= p < max(s, d) for p, s, d in zip(out_pad, strides, dilations)) \
            and min(begins) >= 0:
        return fn(x, w, b, strides, begins, out_pad, group, dilations)
    y = fn(x, w, None, strides, 0, 0, group, dilations)
    # crop the pads (a negative F.pad crops) and append output_padding
    y = F.pad(y, torch_pads([-v for v in begins], [p - e for p, e in zip(out_pad, ends)]))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * nd))
    return y


@op("Gemm")
def gemm(n: Node, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    if n.attr("transA", 0):
        a = a.transpose(0, 1)
    if n.attr("transB", 0):
        b = b.transpose(0, 1)
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta)
    return y


@op("MatMul")
def matmul(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


# -- normalisation -------------------------------------------------------------------

def _channel_view(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.reshape(1, -1, *([1] * (rank - 2)))


@op("BatchNormalization")
def batch_norm(n: Node, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
               var: torch.Tensor) -> torch.Tensor:
    if n.attr("training_mode", 0) or any(n.wants(i) for i in range(1, n.n_outputs)):
        raise n.error("only inference-mode BatchNormalization is supported")
    eps = n.attr("epsilon", 1e-5)
    if not (mean.requires_grad or var.requires_grad):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    r = x.dim()
    inv = torch.rsqrt(_channel_view(var, r) + eps)
    return (x - _channel_view(mean, r)) * inv * _channel_view(scale, r) + _channel_view(bias, r)


@op("InstanceNormalization")
def instance_norm(n: Node, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=n.attr("epsilon", 1e-5))


def _stash(n: Node, x: torch.Tensor) -> torch.Tensor:
    if n.attr("stash_type", 1) == 1 and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


@op("LayerNormalization")
def layer_norm(n: Node, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
    axis = axis_of(n.attr("axis", -1), x.dim())
    dims = list(range(axis, x.dim()))
    xs = _stash(n, x)
    mean = xs.mean(dim=dims, keepdim=True)
    centered = xs - mean
    inv_std = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + n.attr("epsilon", 1e-5))
    y = (centered * inv_std).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    if n.n_outputs > 1:
        return y, mean if n.wants(1) else None, inv_std if n.wants(2) else None
    return y


@op("GroupNormalization")
def group_norm(n: Node, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    groups = n.attr("num_groups")
    batch, channels = x.shape[0], x.shape[1]
    xs = _stash(n, x).reshape(batch, groups, -1)
    mean = xs.mean(dim=-1, keepdim=True)
    centered = xs - mean
    inv_std = torch.rsqrt((centered * centered).mean(dim=-1, keepdim=True) + n.attr("epsilon", 1e-5))
    y = (centered * inv_std).reshape(x.shape).to(x.dtype)
    if scale.numel() != channels:  # opset 18: one scale/bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return y * _channel_view(scale, x.dim()) + _channel_view(bias, x.dim())


@op("LpNormalization")
def lp_norm(n: Node, x: torch.Tensor) -> torch.Tensor:
    axis = axis_of(n.attr("axis", -1), x.dim())
    p = n.attr("p", 2)
    if p == 1:
        norm = x.abs().sum(dim=axis, keepdim=True)
    elif p == 2:
        norm = torch.sqrt((x * x).sum(dim=axis, keepdim=True))
    else:
        raise n.error(f"p={p} (only 1 and 2 are defined)")
    return x / torch.where(norm == 0, torch.ones_like(norm), norm)  # a zero vector stays zero


@op("MeanVarianceNormalization")
def mean_variance_norm(n: Node, x: torch.Tensor) -> torch.Tensor:
    dims = axes_of(n.attr("axes", [0, 2, 3]), x.dim())
    mean = x.mean(dim=dims, keepdim=True)
    var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
    return (x - mean) / (torch.sqrt(var) + 1e-9)


@op("LRN")
def lrn(n: Node, x: torch.Tensor) -> torch.Tensor:
    size = n.attr("size")
    alpha, beta, bias = n.attr("alpha", 1e-4), n.attr("beta", 0.75), n.attr("bias", 1.0)
    sq = (x * x).movedim(1, -1)
    sq = F.pad(sq, [(size - 1) // 2, size - 1 - (size - 1) // 2])
    window = sq.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    return x / (bias + alpha / size * window) ** beta


@op("PRelu")
def prelu(n: Node, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


# -- pooling ----------------------------------------------------------------------------

def _pool_layout(n: Node, x: torch.Tensor):
    """Kernel, strides, dilations, pads and output sizes of a pooling node (ONNX rules)."""
    nd = _spatial(n, x)
    kernel = list(n.attr("kernel_shape"))
    strides = list(n.attr("strides", [1] * nd))
    dilations = list(n.attr("dilations", [1] * nd))
    in_sizes = list(x.shape[2:])
    begins, ends = _window_pads(n, in_sizes, kernel, strides, dilations)
    ceil = bool(n.attr("ceil_mode", 0))
    outs = []
    for size, k, s, d, b, e in zip(in_sizes, kernel, strides, dilations, begins, ends):
        span = size + b + e - (k - 1) * d - 1
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + b:  # the last window may not start in the end padding
            out -= 1
        outs.append(out)
    return nd, kernel, strides, dilations, begins, ends, outs


def _pad_for_windows(x: torch.Tensor, kernel, strides, dilations, begins, ends, outs,
                     value: float):
    """x padded so that exactly ``outs`` windows fit; returns it and the extra end pads."""
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (i + b + e))
             for o, s, k, d, i, b, e in zip(outs, strides, kernel, dilations, x.shape[2:], begins, ends)]
    ends2 = [e + x_ for e, x_ in zip(ends, extra)]
    if any(begins) or any(ends2):
        x = F.pad(x, torch_pads(begins, ends2), value=value)
    return x, extra


def _crop(y: torch.Tensor, outs: Sequence[int]) -> torch.Tensor:
    for i, o in enumerate(outs):
        if y.shape[2 + i] != o:
            y = y.narrow(2 + i, 0, o)
    return y


def _fast_pool_ok(kernel, begins, ends) -> bool:
    return begins == ends and all(2 * p <= k for p, k in zip(begins, kernel))


def _onnx_indices(idx: torch.Tensor, x: torch.Tensor, padded: Sequence[int], begins: Sequence[int],
                  storage_order: int) -> torch.Tensor:
    """torch's per-plane flat indices over a padded plane -> ONNX's flat indices over all of x."""
    sizes = list(x.shape[2:])
    coords = []
    rest = idx
    for dim in reversed(padded):
        coords.append(rest % dim)
        rest = rest // dim
    coords = [c - b for c, b in zip(reversed(coords), begins)]
    flat = torch.zeros_like(idx)
    if storage_order:  # column major over the spatial axes
        for c, dim in reversed(list(zip(coords, sizes))):
            flat = flat * dim + c
    else:
        for c, dim in zip(coords, sizes):
            flat = flat * dim + c
    plane = math.prod(sizes)
    nc = torch.arange(x.shape[0] * x.shape[1], device=idx.device, dtype=idx.dtype)
    return flat + (nc * plane).reshape(x.shape[0], x.shape[1], *([1] * len(sizes)))


@op("MaxPool")
def max_pool(n: Node, x: torch.Tensor):
    nd, kernel, strides, dilations, begins, ends, outs = _pool_layout(n, x)
    want_idx = n.wants(1)
    fn = _MAX_POOL[nd]
    if _fast_pool_ok(kernel, begins, ends):
        y = fn(x, kernel, strides, begins, dilations, ceil_mode=bool(n.attr("ceil_mode", 0)),
               return_indices=want_idx)
        yv = y[0] if want_idx else y
        if list(yv.shape[2:]) == outs:
            if want_idx:
                return y[0], _onnx_indices(y[1], x, x.shape[2:], [0] * nd, n.attr("storage_order", 0))
            return y
    if x.dtype.is_floating_point:
        low = float("-inf")
    else:
        low = torch.iinfo(x.dtype).min
    xp, _ = _pad_for_windows(x, kernel, strides, dilations, begins, ends, outs, low)
    y = fn(xp, kernel, strides, 0, dilations, ceil_mode=False, return_indices=want_idx)
    if want_idx:
        idx = _onnx_indices(y[1], x, xp.shape[2:], begins, n.attr("storage_order", 0))
        return _crop(y[0], outs), _crop(idx, outs)
    return _crop(y, outs)


@op("AveragePool")
def average_pool(n: Node, x: torch.Tensor) -> torch.Tensor:
    nd, kernel, strides, dilations, begins, ends, outs = _pool_layout(n, x)
    include_pad = bool(n.attr("count_include_pad", 0))
    if _fast_pool_ok(kernel, begins, ends) and all(d == 1 for d in dilations):
        y = _AVG_POOL[nd](x, kernel, strides, begins, ceil_mode=bool(n.attr("ceil_mode", 0)),
                          count_include_pad=include_pad)
        if list(y.shape[2:]) == outs:
            return y
    # general case: window sums by a ones-kernel depthwise conv, divided by the counted taps
    channels = x.shape[1]
    xp, extra = _pad_for_windows(x, kernel, strides, dilations, begins, ends, outs, 0.0)
    ones = torch.ones(channels, 1, *kernel, dtype=x.dtype, device=x.device)
    sums = _crop(_CONV[nd](xp, ones, None, strides, 0, dilations, channels), outs)
    mask = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    if include_pad:
        mask = F.pad(mask, torch_pads(begins, ends), value=1.0)
        mask = F.pad(mask, torch_pads([0] * nd, extra), value=0.0)
    else:
        mask = F.pad(mask, torch_pads(begins, [e + x_ for e, x_ in zip(ends, extra)]), value=0.0)
    counts = _crop(_CONV[nd](mask, ones[:1], None, strides, 0, dilations), outs)
    return sums / counts


@op("GlobalAveragePool")
def global_average_pool(n: Node, x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(n: Node, x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=list(range(2, x.dim())), keepdim=True)


@op("GlobalLpPool")
def global_lp_pool(n: Node, x: torch.Tensor) -> torch.Tensor:
    p = n.attr("p", 2)
    return (x.abs() ** p).sum(dim=list(range(2, x.dim())), keepdim=True) ** (1.0 / p)


@op("LpPool")
def lp_pool(n: Node, x: torch.Tensor) -> torch.Tensor:
    nd, kernel, strides, dilations, begins, ends, outs = _pool_layout(n, x)
    p = n.attr("p", 2)
    channels = x.shape[1]
    xp, _ = _pad_for_windows(x.abs() ** p, kernel, strides, dilations, begins, ends, outs, 0.0)
    ones = torch.ones(channels, 1, *kernel, dtype=x.dtype, device=x.device)
    return _crop(_CONV[nd](xp, ones, None, strides, 0, dilations, channels), outs) ** (1.0 / p)
