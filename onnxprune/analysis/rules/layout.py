"""Ops that move channels without mixing them: Concat, Split, Slice, Transpose,
Squeeze/Unsqueeze, Flatten, Reshape (dense layers, channel shuffle), Gather, Expand, Tile,
DepthToSpace (pixel shuffle) and SpaceToDepth.

Index maps, written as element arrays:
- Concat along the channel axis: the output's elements are the inputs' concatenated.
- Split / Slice (step 1) on it: each output holds a contiguous range; the pass rewrites
  sizes and bounds to the kept counts.
- Flatten / Reshape merging a C x H x W block: channel c owns every flat index whose
  block coordinate on the channel axis is c (blocks of H*W for NCHW, strided for NHWC).
- Reshape splitting a channel axis of size A*B into (A, B) (channel shuffle, heads):
  the b-th channel of every a-block is tied into one unit, so every block keeps the
  same local channels and the split shape becomes (A, B_kept).
- DepthToSpace with block b: the b*b input channels that become one output channel are
  one unit (contiguous in CRD mode, C apart in DCR mode). SpaceToDepth: the b*b output
  channels that one input channel becomes (C apart) follow it.
"""

from __future__ import annotations

import re

import numpy as np
import onnx

from onnxprune.analysis.context import RuleContext, ShapeEntry, SliceBounds, SplitSizes
from onnxprune.analysis.query_heads import RepeatKV
from onnxprune.analysis.registry import Unsupported, register
from onnxprune.analysis.rules.shape_expr import Entry, effective_shape, resolve
from onnxprune.analysis.rules.common import int_list, norm_axis, passthrough, rank_of, static_dim
from onnxprune.graph import Dim, attr
from onnxprune.interface import cache_input


@register("Concat")
def concat(node: onnx.NodeProto, ctx: RuleContext) -> None:
    out = node.output[0]
    rank = rank_of(ctx, out)
    axis = norm_axis(int(attr(node, "axis")), rank)
    inputs = [n for n in node.input if n]
    live = set().union(*(set(ctx.spaces_of(n)) for n in inputs))
    for a in sorted(live):
        if a == axis:
            parts = []
            for name in inputs:
                elems = ctx.spaces_of(name).get(axis)
                if elems is None:
                    size = static_dim(ctx, name, axis)
                    reason = f"'{name}' is concatenated but not produced by a prunable op"
                    elems = ctx.opaque(name, axis, size, reason)
                parts.append(elems)
            ctx.set_space(out, axis, np.concatenate(parts))
        else:
            base = next(ctx.spaces_of(n)[a] for n in inputs if a in ctx.spaces_of(n))
            for name in inputs:
                elems = ctx.spaces_of(name).get(a)
                if elems is None:
                    source = _constant_source(ctx, name, a, len(base))
                    if source is not None:  # a learned token (ViT's class token): sliced with the rest
                        at, slot, axis = source
                        ctx.param(slot, axis, base, "param", at=at)
                        continue
                    cached = cache_input(ctx, name, a, len(base))  # a KV cache's past heads: an interface dim
                    if cached is not None:
                        ctx.union(base, cached)
                        continue
                    size = static_dim(ctx, name, a)
                    elems = ctx.opaque(name, a, size, f"'{name}' is not produced by a prunable op")
                ctx.union(base, elems)
            ctx.set_space(out, a, base)


def _constant_source(ctx: RuleContext, name: str, axis: int, size: int) -> tuple[str, int, int] | None:
    """(node, input slot, axis) of the constant that ``name``'s ``axis`` (of ``size`` entries)
    comes from: ``name`` itself when it is a constant (the Concat's own input), or the
    constant data of an Expand that keeps that axis (torch's ``cls.expand(b, -1, -1)``)."""
    shape = ctx.index.const_shape(name)
    if shape is not None:
        return None if axis >= len(shape) or shape[axis] != size else (ctx.node.name, list(ctx.node.input).index(name), axis)
    node = ctx.index.producer.get(name)
    if node is None or node.op_type != "Expand" or not ctx.is_const(node.input[0]):
        return None
    data = ctx.index.const_shape(node.input[0]) or ()
    rank_out = rank_of(ctx, name)
    inner = axis - (rank_out - len(data))
    if inner < 0 or data[inner] != size:
        return None
    entries = resolve(ctx, node.input[1], (node.name, 1))
    pos = axis - (rank_out - len(entries)) if entries is not None else -1
    if entries is None or (0 <= pos < len(entries) and (entries[pos].ref is not None or entries[pos].value not in (1, -1))):
        return None  # the target may set this axis to the full size: it would not follow the kept count
    return node.name, 0, inner


@register("Split")
def split(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    axis = norm_axis(int(attr(node, "axis", 0)), rank)
    outputs = list(node.output)
    for out in outputs:
        for a, elems in ctx.spaces_of(x).items():
            if a != axis and out:
                ctx.set_space(out, a, elems)
    elems = ctx.spaces_of(x).get(axis)
    if elems is None:
        return
    sizes = int_list(ctx, node, "split", 1)
    total = len(elems)
    if sizes is None:
        n = len(outputs)
        chunk = -(-total // n)
        sizes = [min(chunk, total - i * chunk) for i in range(n)]
    if sum(sizes) != total:
        raise Unsupported(f"Split sizes {sizes} do not add up to {total}")
    parts, offset = [], 0
    for out, size in zip(outputs, sizes):
        part = elems[offset:offset + size]
        offset += size
        parts.append(part)
        if out:
            ctx.set_space(out, axis, part)
    ctx.fixup(SplitSizes, parts=tuple(parts))


@register("Slice")
def slice_(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    rank = rank_of(ctx, x)
    starts = int_list(ctx, node, "starts", 1)
    ends = int_list(ctx, node, "ends", 2)
    axes = int_list(ctx, node, "axes", 3) or list(range(len(starts or [])))
    steps = int_list(ctx, node, "steps", 4) or [1] * len(axes)
    assert starts is not None and ends is not None
    axes = [norm_axis(a, rank) for a in axes]
    for axis, elems in ctx.spaces_of(x).items():
        if axis not in axes:
            ctx.set_space(y, axis, elems)
            continue
        i = axes.index(axis)
        if steps[i] != 1:
            raise Unsupported(f"Slice with step {steps[i]} on a channel axis")
        start, stop, _ = slice(starts[i], ends[i]).indices(len(elems))
        ctx.set_space(y, axis, elems[start:max(start, stop)])
        ctx.fixup(SliceBounds, position=i, elems=elems, start=start, stop=max(start, stop))


@register("Transpose")
def transpose(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    rank = rank_of(ctx, x)
    perm = attr(node, "perm") or list(reversed(range(rank)))
    passthrough(ctx, x, node.output[0], {int(src): dst for dst, src in enumerate(perm)})


@register("Squeeze")
def squeeze(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    shape = ctx.shape(x) or ()
    rank = len(shape)
    axes = int_list(ctx, node, "axes", 1)
    if axes is None and ctx.spaces_of(x):
        raise Unsupported("Squeeze without axes would also squeeze a channel axis pruned down to one")
    dropped = {norm_axis(a, rank) for a in axes} if axes is not None else set()
    kept = [a for a in range(rank) if a not in dropped]
    passthrough(ctx, x, node.output[0], {a: i for i, a in enumerate(kept)})


@register("Unsqueeze")
def unsqueeze(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    axes = int_list(ctx, node, "axes", 1) or []
    out_rank = rank_of(ctx, x) + len(axes)
    inserted = {norm_axis(a, out_rank) for a in axes}
    remaining = [a for a in range(out_rank) if a not in inserted]
    passthrough(ctx, x, y, {i: a for i, a in enumerate(remaining)})


@register("Flatten")
def flatten(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    shape = ctx.shape(x)
    if shape is None:
        raise Unsupported(f"shape of '{x}' is unknown")
    axis = norm_axis(int(attr(node, "axis", 1)), len(shape))
    for a, elems in ctx.spaces_of(x).items():
        lo, hi, out_axis = (0, axis, 0) if a < axis else (axis, len(shape), 1)
        ctx.set_space(y, out_axis, _merged(elems, shape[lo:hi], a - lo))


@register("Reshape")
def reshape(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, y = node.input[0], node.output[0]
    if not ctx.spaces_of(x):
        return
    in_shape = ctx.shape(x)
    if in_shape is None:
        raise Unsupported("Reshape whose input shape is unknown")
    source = ctx.index.producer.get(x)
    if source is not None and source.op_type == "Expand":  # repeat_kv over a KV cache's past + seq
        entries = _target_entries(ctx, node)
    else:
        entries = resolve(ctx, node.input[1], (node.name, 1))
    if entries is None:
        raise Unsupported("Reshape with a computed (data-dependent) shape")
    # an entry may copy the run-time size of a channel axis holding the same units as one of
    # the input's (x.view(-1, x.size(-1)), LeViT's bn(y.flatten(0, 1)).reshape_as(y)): it
    # follows the kept count by itself where that input axis stays whole
    copies: dict[int, int] = {}
    for i, e in enumerate(entries):
        if e.ref is None or e.ref[1] not in ctx.spaces_of(e.ref[0]):
            continue
        copied = ctx.spaces_of(e.ref[0])[e.ref[1]]
        same = [a for a, elems in ctx.spaces_of(x).items() if ctx.uf.same(elems, copied)]
        if not same:
            raise Unsupported("Reshape target copies a channel count from another tensor's Shape")
        copies[i] = same[0]
    out_shape = effective_shape(in_shape, entries)
    if out_shape is None:  # a -1 over dynamic axes (x.view(-1, C)): the inferred / probed shape, if it fits
        known = ctx.shape(y)
        if known is not None and len(known) == len(entries) and all(
                e.ref is not None or e.value in (0, -1) or e.value == d for e, d in zip(entries, known)):
            out_shape = list(known)
    if out_shape is None:
        raise Unsupported("Reshape whose output shape cannot be determined")
    ctx.derive_shape(y, tuple(out_shape))
    blocks = _match_blocks(in_shape, tuple(out_shape))
    whole = {a: outs[0] for ins, outs, _ in blocks for a in ins if len(ins) == 1 and len(outs) == 1}
    if any(whole.get(a) != i for i, a in copies.items()):
        raise Unsupported("Reshape target copies a channel count to another position")
    for a, elems in ctx.spaces_of(x).items():
        k = next(k for k, (i, _, _) in enumerate(blocks) if a in i)
        ins, outs, _ = blocks[k]
        # the channel axis keeps its stride when everything in front of it or everything behind
        # it matches block by block (the volumes are equal); regrouped dynamic runs on both
        # sides cannot be checked
        if not all(v for _, _, v in blocks[:k]) and not all(v for _, _, v in blocks[k + 1:]):
            raise Unsupported("Reshape regroups dynamic axes on both sides of a channel axis")
        if len(ins) > 1 and sum(1 for b in ins if b in ctx.spaces_of(x)) > 1:
            raise Unsupported("Reshape merges two channel axes")
        if len(outs) == 1 and _repeats_kv(ctx, node, ins, a, in_shape):
            _repeat_kv(ctx, node, elems, int(in_shape[ins[1]]), ins, outs[0], entries[outs[0]])  # type: ignore[arg-type]
            continue
        if len(outs) == 1:
            target = _merged(elems, tuple(in_shape[b] for b in ins), ins.index(a))
        elif len(ins) == 1 and len(outs) == 2 and _feeds_attention(ctx, y):
            target = _split_heads(ctx, elems, int(out_shape[outs[0]]), int(out_shape[outs[1]]))  # type: ignore[arg-type]
            ctx.set_space(y, outs[0], target)
            _fix_target_entry(ctx, entries[outs[0]], target)
            continue
        elif len(ins) == 1:
            target = _split_axis(ctx, elems, [int(out_shape[o]) for o in outs])  # type: ignore[arg-type]
        else:
            raise Unsupported("Reshape regroups a channel axis together with other axes")
        ctx.set_space(y, outs[-1], target)
        _fix_target_entry(ctx, entries[outs[-1]], target)


def _repeats_kv(ctx: RuleContext, node: onnx.NodeProto, ins: list[int], axis: int, in_shape: tuple[Dim, ...]) -> bool:
    """Whether the Reshape merges KV heads with their repeats for attention (grouped-query
    attention's ``repeat_kv``: Expand [b, kv, rep, s, d] -> Reshape [b, kv * rep, s, d])."""
    if len(ins) != 2 or ins[0] != axis or ins[1] in ctx.spaces_of(node.input[0]):
        return False
    rep = in_shape[ins[1]]
    producer = ctx.index.producer.get(node.input[0])
    return (isinstance(rep, int) and rep > 1 and producer is not None and producer.op_type == "Expand"
            and _feeds_attention(ctx, node.output[0]))


def _repeat_kv(ctx: RuleContext, node: onnx.NodeProto, parents: np.ndarray, rep: int, ins: list[int], out: int,
               entry: Entry) -> None:
    """Every repeated copy of a KV head is a unit of its own (tied, at the attention MatMuls, with
    the query head that reads it), depending on its KV head (``analysis.query_heads``): a query
    head can go alone. The rewrite sets the repeat count (every kept KV head keeps as many query
    heads) or gathers the kept copies (``rewrite.repeat_kv``). On the value side, zeroing a KV
    head's values zeroes its query heads' outputs: that is where its removal is masked."""
    if entry.ref is not None:
        raise Unsupported("Reshape target of repeated key / value heads is copied from another tensor's shape")
    if entry.value not in (0, -1) and entry.const_at is None:
        raise Unsupported("Reshape target of repeated key / value heads is computed")
    expand = ctx.index.producer[node.input[0]]
    targets = _target_entries(ctx, expand)
    expand_at = None
    if targets is not None:
        pos = ins[1] - (rank_of(ctx, node.input[0]) - len(targets))
        if 0 <= pos < len(targets) and targets[pos].ref is None and targets[pos].value == rep:
            expand_at = targets[pos].const_at
    children = ctx.new_elements(len(parents) * rep)
    ctx.set_space(node.output[0], out, children)
    ctx.fixup(RepeatKV, parents=parents, children=children, rep=rep, axis=out, expand_at=expand_at,
              reshape_at=entry.const_at if entry.value not in (0, -1) else None)
    if any(user.op_type == "MatMul" and slot == 1 for user, slot in ctx.index.users(node.output[0])):
        ctx.consumer(0, ins[0], parents)


def _fix_target_entry(ctx: RuleContext, entry: Entry, elems: np.ndarray) -> None:
    """The target entry of a channel axis must follow the kept count: -1, 0 and a copy of the
    run-time size of an axis holding the same units do by themselves."""
    if entry.ref is not None:
        copied = ctx.spaces_of(entry.ref[0]).get(entry.ref[1])
        if copied is not None and ctx.uf.same(copied, elems):
            return
        raise Unsupported("Reshape target of a channel axis is copied from another tensor's shape")
    if entry.value in (0, -1):
        return
    if entry.const_at is None:  # computed at run time (``_target_entries``)
        raise Unsupported("Reshape target of a channel axis is computed")
    node, slot, index = entry.const_at
    ctx.fixup(ShapeEntry, at=node, slot=slot, index=index, elems=elems)


# ops between a head-splitting Reshape and the attention MatMuls: layout, scaling, a KV cache
# (Concat), rotary embeddings (Slice / Neg / Concat / Mul / Add over head_dim), grouped-query
# key / value heads repeated for their query heads (Unsqueeze / Expand / Reshape)
ATTENTION_PATH = ("Transpose", "Mul", "Div", "Cast", "Identity", "Add", "Sqrt", "Concat", "Slice", "Neg",
                  "Unsqueeze", "Expand", "Reshape")
ATTENTION_DEPTH = 10


def _feeds_attention(ctx: RuleContext, name: str, depth: int = 0) -> bool:
    """Whether a tensor reaches a MatMul of two computed tensors through layout/scaling ops."""
    if depth > ATTENTION_DEPTH:
        return False
    for user, _ in ctx.index.users(name):
        if user.op_type == "MatMul" and not any(ctx.is_const(x) for x in user.input):
            return True
        if user.op_type in ATTENTION_PATH and user.output and _feeds_attention(ctx, user.output[0], depth + 1):
            return True
    return False


def _split_heads(ctx: RuleContext, elems: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """hidden -> (heads, head_dim) feeding attention: each head is one unit (all its dims tied)."""
    blocks = elems.reshape(heads, head_dim)
    for col in range(1, head_dim):
        ctx.union(blocks[:, 0], blocks[:, col])
    return blocks[:, 0].copy()


def _split_axis(ctx: RuleContext, elems: np.ndarray, dims: list[int]) -> np.ndarray:
    """Channel axis of size A*B*...*Z reshaped to (A, ..., Z): tie across all but the last."""
    inner = dims[-1]
    if inner == 1:
        raise Unsupported("Reshape splits a channel axis into blocks of one")
    blocks = elems.reshape(-1, inner)
    for row in blocks[1:]:
        ctx.union(blocks[0], row)
    return blocks[0]


def _merged(elems: np.ndarray, dims: tuple[Dim, ...], pos: int) -> np.ndarray:
    """Element ids of a block of axes flattened into one, channel axis at position pos."""
    if len(dims) == 1:
        return elems
    if not all(isinstance(d, int) for d in dims):
        raise Unsupported("a channel axis is flattened together with a dynamic axis")
    shape = [1] * len(dims)
    shape[pos] = len(elems)
    return np.broadcast_to(elems.reshape(shape), tuple(int(d) for d in dims)).reshape(-1).copy()


def _match_blocks(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[tuple[list[int], list[int], bool]]:
    """``_match_symbolic``, or where it fails, the blocks both shape probes agree on."""
    try:
        return _match_symbolic(a, b)
    except Unsupported:
        probed = _match_probed(a, b)
        if probed is None:
            raise
        return probed


def _probe_sizes(shape: tuple[Dim, ...], run: int) -> tuple[int, ...] | None:
    """The concrete shape of one of the two shape-probe runs (``onnxprune.prepare.shape_probe`` names a
    dynamic dim ``d<run 0 size>_<run 1 size>``); None when a dim is of another kind."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str) and re.fullmatch(r"d\d+_\d+", d):
            out.append(int(d[1:].split("_")[run]))
        else:
            return None
    return tuple(out)


def _match_probed(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[tuple[list[int], list[int], bool]] | None:
    """Blocks of a Reshape matched on the concrete sizes of both probe runs ([b*16, C] ->
    [b, 16, C]: 48 -> 3 x 16 and 32 -> 2 x 16): used when both runs give the same blocks."""
    found = []
    for run in (0, 1):
        sa, sb = _probe_sizes(a, run), _probe_sizes(b, run)
        if sa is None or sb is None:
            return None
        try:
            found.append(_match_symbolic(sa, sb))
        except Unsupported:
            return None
    return found[0] if found[0] == found[1] else None


def _match_symbolic(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[tuple[list[int], list[int], bool]]:
    """Group axes of two shapes of equal volume into blocks with equal products:
    (input axes, output axes, verified). Runs of dynamic axes are matched run to run
    ([b, s, C] <-> [b*s, C]); such a block is unverified (its two sides have equal volumes
    only if the rest does): a channel axis may have such blocks on one side, not on both."""
    blocks: list[tuple[list[int], list[int], bool]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        if not isinstance(a[i], int) or not isinstance(b[j], int):
            if isinstance(a[i], int) or isinstance(b[j], int):
                raise Unsupported("Reshape moves a dynamic axis")
            ins, outs = [i], [j]
            i, j = i + 1, j + 1
            while i < len(a) and not isinstance(a[i], int):
                ins.append(i)
                i += 1
            while j < len(b) and not isinstance(b[j], int):
                outs.append(j)
                j += 1
            blocks.append((ins, outs, len(ins) == 1 and len(outs) == 1))
            continue
        ins, outs = [i], [j]
        pa, pb = a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a) and isinstance(a[i], int):
                pa *= a[i]
                ins.append(i)
                i += 1
            elif pb < pa and j < len(b) and isinstance(b[j], int):
                pb *= b[j]
                outs.append(j)
                j += 1
            else:
                raise Unsupported("Reshape shapes could not be matched axis by axis")
        blocks.append((ins, outs, True))
    rest_a, rest_b = list(range(i, len(a))), list(range(j, len(b)))
    if any(a[k] != 1 for k in rest_a) or any(b[k] != 1 for k in rest_b):
        raise Unsupported("Reshape shapes could not be matched axis by axis")
    if blocks and (rest_a or rest_b):
        blocks[-1] = (blocks[-1][0] + rest_a, blocks[-1][1] + rest_b, blocks[-1][2])
    return blocks


@register("Gather")
def gather(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x, idx, y = node.input[0], node.input[1], node.output[0]
    axis = norm_axis(int(attr(node, "axis", 0)), rank_of(ctx, x))
    table = ctx.index.const_shape(x) if ctx.is_const(x) else None
    if table is not None and len(table) == 2 and axis == 0 and table[1] > 1 and ctx.spaces_of(idx) == {}:
        # an embedding lookup produces the hidden channels (one per table column)
        out = ctx.new_elements(int(table[1]))
        ctx.param(0, 1, out, "producer", is_weight=True)
        ctx.set_space(y, rank_of(ctx, idx), out)
        return
    if axis in ctx.spaces_of(x):
        raise Unsupported("Gather selects along a channel axis")
    if ctx.spaces_of(idx):
        raise Unsupported("Gather indices carry channels")
    extra = rank_of(ctx, idx) - 1
    passthrough(ctx, x, y, {a: (a if a < axis else a + extra) for a in ctx.spaces_of(x)})


@register("Expand")
def expand(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Broadcast to a target shape. A channel axis needs a target entry of 1 (keep), a copy
    of its own run-time size, or a constant the rewrite sets to the kept count; the target may
    be built at run time (torch's ``t.expand(b, -1, n, ...)``, as in grouped-query attention)."""
    x, y = node.input[0], node.output[0]
    if not ctx.spaces_of(x):
        return
    entries = _target_entries(ctx, node)
    if entries is None:
        raise Unsupported(f"input '{node.input[1]}' (shape) is computed, not constant")
    shift = rank_of(ctx, y) - rank_of(ctx, x)
    for a, elems in ctx.spaces_of(x).items():
        pos = a + shift - (rank_of(ctx, y) - len(entries))
        if 0 <= pos < len(entries):
            e = entries[pos]
            if e.ref is not None:
                copied = ctx.spaces_of(e.ref[0]).get(e.ref[1])
                if copied is None or not ctx.uf.same(copied, elems):
                    raise Unsupported("Expand target of a channel axis is copied from another tensor's shape")
            elif e.value not in (1, -1):
                if e.const_at is None:
                    raise Unsupported("Expand target of a channel axis is computed")
                at, slot, index = e.const_at
                ctx.fixup(ShapeEntry, at=at, slot=slot, index=index, elems=elems)
        ctx.set_space(y, a + shift, elems)


def _target_entries(ctx: RuleContext, node: onnx.NodeProto) -> list[Entry] | None:
    """The entries of an Expand's target (or of the Reshape after one: a KV repeat); a Concat of
    parts is read part by part, and a part that cannot be followed (the total length past + seq
    of a KV cache: an Add of two Shapes) gives entries that are neither editable nor copies,
    valued as the inferred output dim there (or an unknown symbol): only an axis without
    channels may have one."""
    entries = resolve(ctx, node.input[1], (node.name, 1))
    concat = ctx.index.producer.get(node.input[1])
    if entries is not None or concat is None or concat.op_type != "Concat":
        return entries
    entries = []
    out_shape = ctx.shape(node.output[0])
    for slot, part in enumerate(concat.input):
        got = resolve(ctx, part, (concat.name, slot))
        shape = ctx.shape(part)
        if got is None and (shape is None or len(shape) != 1 or not isinstance(shape[0], int)):
            return None
        if got is None:
            got = []
            for i in range(int(shape[0])):  # type: ignore[index]
                pos = len(entries) + i
                dim = out_shape[pos] if out_shape is not None and pos < len(out_shape) else None
                got.append(Entry(dim if isinstance(dim, str) else f"{part}[{i}]"))
        entries.extend(got)
    return entries


@register("Tile")
def tile(node: onnx.NodeProto, ctx: RuleContext) -> None:
    x = node.input[0]
    repeats = int_list(ctx, node, "repeats", 1) or []
    for a in ctx.spaces_of(x):
        if a < len(repeats) and repeats[a] != 1:
            raise Unsupported("Tile repeats a channel axis")
    passthrough(ctx, x, node.output[0])


def _space_axes_only_channels(ctx: RuleContext, name: str, op: str) -> np.ndarray | None:
    """The elements of ``name``'s axis 1 (None when it holds no channels), the only axis a
    depth / space rearrangement may carry channels on."""
    spaces = ctx.spaces_of(name)
    if set(spaces) - {1}:
        raise Unsupported(f"{op} moves channel axes other than axis 1")
    return spaces.get(1)


@register("DepthToSpace")
def depth_to_space(node: onnx.NodeProto, ctx: RuleContext) -> None:
    elems = _space_axes_only_channels(ctx, node.input[0], "DepthToSpace")
    if elems is None:
        return
    block = int(attr(node, "blocksize")) ** 2
    if len(elems) % block:
        raise Unsupported(f"DepthToSpace of {len(elems)} channels in blocks of {block}")
    channels = len(elems) // block
    if attr(node, "mode", b"DCR") in (b"CRD", "CRD") or channels == 1:  # c <- inputs c*b*b .. c*b*b + b*b - 1
        out = _split_heads(ctx, elems, channels, block)
    else:  # DCR: output channel c <- inputs c, c + C, c + 2C, ...
        out = _split_axis(ctx, elems, [block, channels])
    ctx.set_space(node.output[0], 1, out)


@register("SpaceToDepth")
def space_to_depth(node: onnx.NodeProto, ctx: RuleContext) -> None:
    elems = _space_axes_only_channels(ctx, node.input[0], "SpaceToDepth")
    if elems is None:
        return
    copies = [elems]  # output channel k*C + c <- input channel c
    for _ in range(int(attr(node, "blocksize")) ** 2 - 1):
        copy = ctx.new_elements(len(elems))
        ctx.union(copy, elems)
        copies.append(copy)
    ctx.set_space(node.output[0], 1, np.concatenate(copies))
