"""Resize and Upsample, separably per axis with onnxruntime's coordinate arithmetic.

For every resized axis the source coordinate of each output index is computed in
float32 exactly as onnxruntime does; nearest picks one source index, linear blends two
and cubic four (``index_select`` along the axis, weights broadcast along it), so the
result is differentiable and works for any rank.
"""

from __future__ import annotations

import numpy as np
import torch

from onnxprune.torchexec.ops import Node, axes_of, op

f32 = np.float32


def _coords(mode: str, out: int, size: int, scale: float, roi: tuple[float, float] | None) -> np.ndarray:
    """Source coordinate (float32) of every output index along one axis."""
    o = np.arange(out, dtype=f32)
    s = f32(scale)
    if mode == "half_pixel":
        return (o + f32(0.5)) / s - f32(0.5)
    if mode == "pytorch_half_pixel":
        return (o + f32(0.5)) / s - f32(0.5) if out > 1 else np.zeros(out, f32)
    if mode == "align_corners":
        return o * f32(size - 1) / f32(out - 1) if out > 1 else np.zeros(out, f32)
    if mode == "asymmetric":
        return o / s
    if mode == "tf_half_pixel_for_nn":
        return (o + f32(0.5)) / s
    if mode == "half_pixel_symmetric":
        adjustment = f32(out) / (s * f32(size))
        center = f32(size) / f32(2)
        offset = center * (f32(1) - adjustment)
        return offset + (o + f32(0.5)) / s - f32(0.5)
    if mode == "tf_crop_and_resize":
        start, end = f32(roi[0]), f32(roi[1])
        if out > 1:
            return start * f32(size - 1) + o * (end - start) * f32(size - 1) / f32(out - 1)
        return np.full(out, f32(0.5) * (start + end) * f32(size - 1), f32)
    raise NotImplementedError(f"coordinate_transformation_mode '{mode}'")


def _nearest(x: np.ndarray, mode: str, downsample: bool) -> np.ndarray:
    floor = np.floor(x)
    half = x == floor + f32(0.5)
    away = np.where(x >= 0, np.floor(x + f32(0.5)), np.ceil(x - f32(0.5)))  # std::round
    if mode == "round_prefer_floor":
        idx = np.where(half, floor, away)
    elif mode == "round_prefer_ceil":
        idx = np.where(half, np.ceil(x), away)
    elif mode == "floor":
        idx = floor
    elif mode == "ceil":
        idx = np.ceil(x)
    elif mode == "simple":  # Upsample / Resize-10
        idx = np.ceil(x) if downsample else np.trunc(x)
    else:
        raise NotImplementedError(f"nearest_mode '{mode}'")
    return idx.astype(np.int64)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    a = f32(a)
    t1, t2, t3 = t + f32(1), f32(1) - t, f32(2) - t
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * t2 - (a + 3)) * t2 * t2 + 1
    w3 = ((a * t3 - 5 * a) * t3 + 8 * a) * t3 - 4 * a
    return np.stack([w0, w1, w2, w3], axis=1).astype(f32)


def _axis_table(n: Node, mode: str, out: int, size: int, scale: float, roi,
                nearest_mode: str):
    """(indices [out, taps], weights [out, taps] or None, outside mask [out] or None)."""
    ctm = n.attr("coordinate_transformation_mode", "half_pixel") if n.opset >= 11 else "asymmetric"
    x = _coords(ctm, out, size, scale, roi)
    outside = None
    if ctm == "tf_crop_and_resize":
        outside = (x < 0) | (x > f32(size - 1))
        if not outside.any():
            outside = None
    if mode == "nearest":
        idx = np.clip(_nearest(x, nearest_mode, scale < 1), 0, size - 1)
        return idx[:, None], None, outside
    if mode == "linear":
        xc = np.clip(x, f32(0), f32(size - 1))
        lo = np.floor(xc).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        w = (xc - lo.astype(f32)).astype(f32)
        return np.stack([lo, hi], 1), np.stack([f32(1) - w, w], 1).astype(f32), outside
    if mode == "cubic":
        base = np.floor(x).astype(np.int64)
        t = (x - base.astype(f32)).astype(f32)
        w = _cubic_weights(t, n.attr("cubic_coeff_a", -0.75))
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if n.attr("exclude_outside", 0):
            w = np.where((taps < 0) | (taps >= size), f32(0), w)
            w = (w / w.sum(axis=1, keepdims=True)).astype(f32)
        return np.clip(taps, 0, size - 1), w, outside
    raise NotImplementedError(f"mode '{mode}'")


def _apply(n: Node, x: torch.Tensor, mode: str, out_sizes: list[int], scales: list[float], rois, nearest_mode: str,
           extrapolation: float) -> torch.Tensor:
    key = (tuple(x.shape), x.device, x.dtype, tuple(out_sizes), tuple(scales), str(rois))
    tables = n.cache.get(key)
    if tables is None:
        tables = []
        for axis, (out, size, scale, roi) in enumerate(zip(out_sizes, x.shape, scales, rois)):
            if out == size and scale == 1.0 and roi is None:
                continue
            idx, w, outside = _axis_table(n, mode, out, size, scale, roi, nearest_mode)
            shape = [1] * x.dim()
            shape[axis] = out
            tables.append((
                axis,
                torch.from_numpy(idx).to(x.device),
                None if w is None else torch.from_numpy(w).to(device=x.device, dtype=x.dtype),
                None if outside is None else torch.from_numpy(outside).to(x.device).reshape(shape),
                shape,
            ))
        n.cache.clear()  # keep one entry: shapes rarely change between calls
        n.cache[key] = tables
    for axis, idx, w, outside, shape in tables:
        if w is None:
            y = x.index_select(axis, idx[:, 0])
        else:
            y = x.index_select(axis, idx[:, 0]) * w[:, 0].reshape(shape)
            for t in range(1, idx.shape[1]):
                y = y + x.index_select(axis, idx[:, t]) * w[:, t].reshape(shape)
        if outside is not None:
            y = torch.where(outside, torch.full_like(y, extrapolation), y)
        x = y
    return x


def _mode(n: Node) -> str:
    mode = n.attr("mode", "nearest")
    return "linear" if mode in ("linear", "bilinear", "trilinear") else mode


@op("Resize")
def resize(n: Node, x: torch.Tensor, roi=None, scales=None, sizes=None) -> torch.Tensor:
    if n.opset < 11:  # Resize-10: (X, scales), asymmetric, simple nearest
        scales, roi = roi, None
    rank = x.dim()
    axes = axes_of(n.attr("axes"), rank) if n.attr("axes") else list(range(rank))
    in_sizes = list(x.shape)
    full_scales = [1.0] * rank
    out_sizes = list(in_sizes)
    sz = n.ints(3, sizes) if sizes is not None and sizes.numel() else None
    if sz:
        policy = n.attr("keep_aspect_ratio_policy", "stretch")
        ratios = [f32(s) / f32(in_sizes[a]) for a, s in zip(axes, sz)]
        if policy == "stretch":
            for a, s, r in zip(axes, sz, ratios):
                out_sizes[a], full_scales[a] = s, float(r)
        else:
            r = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                full_scales[a] = float(r)
                out_sizes[a] = int(np.floor(float(r) * in_sizes[a] + 0.5))
    elif scales is not None and scales.numel():
        for a, s in zip(axes, n.values(2 if n.opset >= 11 else 1, scales).reshape(-1).tolist()):
            full_scales[a] = float(f32(s))
            out_sizes[a] = int(f32(s) * f32(in_sizes[a]))
    else:
        raise n.error("Resize needs scales or sizes")
    if n.attr("antialias", 0) and any(s < 1 for s in full_scales):
        raise n.error("antialiased downsampling is not supported")
    rois: list = [None] * rank
    if n.opset >= 11 and n.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        values = n.values(1, roi).reshape(-1).tolist()
        k = len(axes)
        for i, a in enumerate(axes):
            rois[a] = (values[i], values[k + i])
    nearest_mode = n.attr("nearest_mode", "round_prefer_floor") if n.opset >= 11 else "simple"
    return _apply(n, x, _mode(n), out_sizes, full_scales, rois, nearest_mode,
                  n.attr("extrapolation_value", 0.0))


@op("Upsample")
def upsample(n: Node, x: torch.Tensor, scales=None) -> torch.Tensor:
    values = n.attr("scales") if scales is None else n.values(1, scales).reshape(-1).tolist()
    full_scales = [float(f32(s)) for s in values]
    out_sizes = [int(f32(s) * f32(d)) for s, d in zip(values, x.shape)]
    return _apply(n, x, _mode(n), out_sizes, full_scales, [None] * x.dim(), "simple", 0.0)
