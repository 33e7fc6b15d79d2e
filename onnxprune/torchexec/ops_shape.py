"""Ops that move, select or create data: layout, indexing, shapes, constants, Pad."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onnxprune.torchexec.ops import Node, axes_of, axis_of, op, torch_pads


@op("Concat")
def concat(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=axis_of(n.attr("axis"), xs[0].dim()))


@op("Split")
def split(n: Node, x: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    axis = axis_of(n.attr("axis", 0), x.dim())
    parts = n.attr("split") if n.opset < 13 else n.ints(1, sizes)
    if not parts:
        count = n.attr("num_outputs") or n.n_outputs
        dim = x.shape[axis]
        chunk = -(-dim // count)  # opset 18: the last chunk may be smaller
        parts = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
    return tuple(torch.split(x, list(parts), dim=axis))


@op("Slice")
def slice_(n: Node, x: torch.Tensor, starts=None, ends=None, axes=None, steps=None) -> torch.Tensor:
    if n.opset < 10:
        st, en, ax, sp = n.attr("starts"), n.attr("ends"), n.attr("axes"), None
    else:
        st, en, ax, sp = n.ints(1, starts), n.ints(2, ends), n.ints(3, axes), n.ints(4, steps)
    rank = x.dim()
    ax = axes_of(ax, rank) if ax else list(range(len(st)))
    sp = sp or [1] * len(st)
    index: list[slice] = [slice(None)] * rank
    flips = []
    for a, s, e, step in zip(ax, st, en, sp):
        dim = x.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if step > 0:
            index[a] = slice(min(max(s, 0), dim), min(max(e, 0), dim), step)
        elif step < 0:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            flips.append(a)  # index i of x is index dim-1-i of the flipped tensor
            index[a] = slice(dim - 1 - s, dim - 1 - e, -step)
        else:
            raise n.error("slice step 0")
    if flips:
        x = torch.flip(x, flips)
    return x[tuple(index)]


@op("Transpose")
def transpose(n: Node, x: torch.Tensor) -> torch.Tensor:
    perm = n.attr("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@op("Squeeze")
def squeeze(n: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = n.attr("axes") if n.opset < 13 else n.ints(1, axes)
    if not dims:
        return x.reshape([d for d in x.shape if d != 1])
    return torch.squeeze(x, tuple(axes_of(dims, x.dim())))


@op("Unsqueeze")
def unsqueeze(n: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = n.attr("axes") if n.opset < 13 else n.ints(1, axes)
    for a in sorted(axes_of(dims, x.dim() + len(dims))):
        x = x.unsqueeze(a)
    return x


@op("Flatten")
def flatten(n: Node, x: torch.Tensor) -> torch.Tensor:
    axis = axis_of(n.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Reshape")
def reshape(n: Node, x: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
    target = n.attr("shape") if n.opset < 5 else n.ints(1, shape)
    if not n.attr("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


@op("Expand")
def expand(n: Node, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(n.ints(1, shape))))


@op("Tile")
def tile(n: Node, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(n.ints(1, repeats))


def _positive(idx: torch.Tensor, dim: int) -> torch.Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + dim, idx)


@op("Gather")
def gather(n: Node, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = axis_of(n.attr("axis", 0), x.dim())
    idx = _positive(indices, x.shape[axis])
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@op("GatherElements")
def gather_elements(n: Node, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    axis = axis_of(n.attr("axis", 0), x.dim())
    return torch.gather(x, axis, _positive(indices, x.shape[axis]))


@op("GatherND")
def gather_nd(n: Node, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    b = n.attr("batch_dims", 0)
    k = indices.shape[-1]
    batch = math.prod(x.shape[:b])
    xf = x.reshape(batch, *x.shape[b:])
    idx = indices.long().reshape(batch, -1, k)
    rows = torch.arange(batch, device=x.device).reshape(batch, 1).expand(batch, idx.shape[1])
    cols = tuple(_positive(idx[..., i], xf.shape[1 + i]) for i in range(k))
    return xf[(rows, *cols)].reshape(*indices.shape[:-1], *x.shape[b + k:])


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@op("ScatterElements", "Scatter")
def scatter_elements(n: Node, x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    axis = axis_of(n.attr("axis", 0), x.dim())
    idx = _positive(indices, x.shape[axis])
    reduction = n.attr("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    return torch.scatter_reduce(x, axis, idx, updates, _SCATTER_REDUCE[reduction], include_self=True)


@op("ScatterND")
def scatter_nd(n: Node, x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    k = indices.shape[-1]
    cols = tuple(_positive(indices[..., i], x.shape[i]) for i in range(k))
    reduction = n.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise n.error(f"reduction '{reduction}' is not supported")
    return x.index_put(cols, updates, accumulate=reduction == "add")


@op("Shape")
def shape(n: Node, x: torch.Tensor) -> torch.Tensor:
    dims = list(x.shape)[n.attr("start", 0):n.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@op("Size")
def size(n: Node, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@op("ConstantOfShape")
def constant_of_shape(n: Node, shape_: torch.Tensor) -> torch.Tensor:
    value = n.attr("value")
    if value is None:
        return torch.zeros(n.ints(0, shape_), dtype=torch.float32, device=shape_.device)
    return torch.full(n.ints(0, shape_), value.reshape(-1)[0].item(), dtype=value.dtype, device=shape_.device)


@op("Constant")
def constant(n: Node) -> torch.Tensor:
    """The value of a Constant node (on CPU; OnnxModule turns it into a parameter or buffer)."""
    a = n.attrs
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return torch.tensor(a["value_float"], dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(a["value_floats"], dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(a["value_int"], dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(a["value_ints"], dtype=torch.int64)
    raise n.error(f"unsupported Constant attribute(s) {sorted(a)}")


@op("Range")
def range_(n: Node, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    s, lim, d = n.scalar(0, start), n.scalar(1, limit), n.scalar(2, delta)
    count = max(math.ceil((lim - s) / d), 0)
    steps = torch.arange(count, dtype=torch.float64 if start.dtype.is_floating_point else torch.int64,
                         device=start.device)
    return (steps * d + s).to(start.dtype)


@op("Pad")
def pad(n: Node, x: torch.Tensor, pads=None, value=None, axes=None) -> torch.Tensor:
    mode = n.attr("mode", "constant")
    if n.opset < 11:
        flat, fill, dims = n.attr("pads", n.attr("paddings")), n.attr("value", 0.0), None
    else:
        flat, fill, dims = n.ints(1, pads), n.scalar(2, value), n.ints(3, axes)
    rank = x.dim()
    dims = axes_of(dims, rank) if dims else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(dims):
        begins[a], ends[a] = flat[i], flat[len(dims) + i]
    if mode == "constant":
        return F.pad(x, torch_pads(begins, ends), value=fill if fill is not None else 0)
    for a in range(rank):
        if begins[a] == 0 and ends[a] == 0:
            continue
        dim = x.shape[a]
        idx = torch.arange(-begins[a], dim + ends[a], device=x.device)
        if mode == "reflect":
            period = max(2 * (dim - 1), 1)
            idx = idx.abs() % period
            idx = torch.where(idx >= dim, period - idx, idx)
        elif mode == "edge":
            idx = idx.clamp(0, dim - 1)
        elif mode == "wrap":
            idx = idx % dim
        else:
            raise n.error(f"unknown pad mode '{mode}'")
        x = x.index_select(a, idx)
    return x


@op("DepthToSpace")
def depth_to_space(n: Node, x: torch.Tensor) -> torch.Tensor:
    bs = n.attr("blocksize")
    b, c, h, w = x.shape
    if n.attr("mode", "DCR") == "DCR":
        y = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(b, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def space_to_depth(n: Node, x: torch.Tensor) -> torch.Tensor:
    bs = n.attr("blocksize")
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(b, c * bs * bs, h // bs, w // bs)


@op("NonZero")
def nonzero(n: Node, x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).t()


@op("Trilu")
def trilu(n: Node, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    diag = n.ints(1, k)[0] if k is not None else 0
    return torch.triu(x, diag) if n.attr("upper", 1) else torch.tril(x, diag)


@op("OneHot")
def one_hot(n: Node, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    d = int(n.scalar(1, depth))
    axis = axis_of(n.attr("axis", -1), indices.dim() + 1)
    idx = indices.long()
    idx = torch.where(idx < 0, idx + d, idx).unsqueeze(axis)
    shape = [1] * (indices.dim() + 1)
    shape[axis] = d
    hot = idx == torch.arange(d, device=indices.device).reshape(shape)
    return torch.where(hot, values[1], values[0])
