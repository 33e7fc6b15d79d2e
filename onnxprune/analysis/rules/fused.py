"""onnxruntime's fused transformer ops (domain ``com.microsoft``, as
``onnxruntime.transformers.optimizer`` and ``onnxscript.rewriter.ort_fusions`` write them),
and ``SimplifiedLayerNormalization``, which onnxruntime runs in the default domain.

Weight algebra of a removal (heads: the units of attention):

- ``Attention(x, W[Hin, Dq+Dk+Dv], b[Dq+Dk+Dv])``, ``num_heads`` n: head h owns columns
  h*dq..h*dq+dq-1 of each of the Q, K and V blocks of W and b (dq = Dq/n, dv = Dv/n) and
  output channels h*dv..h*dv+dv-1. Removing it drops those columns and channels;
  ``num_heads`` (and ``qkv_hidden_sizes``) become the kept counts. x's channels are
  consumed by W's rows. Heads do not mix, so the kept heads compute what they computed.
- ``MultiHeadAttention(q, k, v, bias)``: q / k / v come from projections elsewhere; head h
  of q, k and v is one unit, the bias's Q/K/V blocks are sliced with it, the output
  follows v's heads. ``GroupQueryAttention``: one unit is a key/value head with the
  num_heads/kv_num_heads query heads that share it.
- A KV cache (past inputs, present outputs) is part of the model's interface: its heads go
  with the KV heads only with --allow-interface-change (``onnxprune.interface``); without
  it they are blocked with that reason.
- ``RotaryEmbedding`` rotates pairs inside a head: a head's channels are tied and pass
  through; ``num_heads`` follows.
- ``SkipLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` /
  ``SimplifiedLayerNormalization`` / ``EmbedLayerNormalization``: statistics over the
  hidden axis, which is blocked unless ``--prune-hidden`` (then gamma / beta / bias and the
  embedding tables are sliced, approximately, as for LayerNormalization).
- ``BiasGelu``, ``FastGelu``, ``BiasAdd``: elementwise with a per-channel bias (sliced);
  ``Gelu``, ``QuickGelu``: unary. ``FusedMatMul``: MatMul with a scale and a transposed
  right operand.
- onnxruntime's graph optimizer (a session's ``optimized_model_filepath``, level EXTENDED):
  ``FusedConv`` (Conv + an optional sum input + an activation) and ``FusedGemm`` (Gemm +
  an activation) are their unfused op followed by a per-channel activation; the NCHWc
  layout ops (level ALL, ``com.microsoft.nchwc``) are blocked with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.analysis.context import Fixup, RuleContext
from onnxprune.analysis.registry import Unsupported, register, register_in
from onnxprune.analysis.rules.common import norm_axis, rank_of
from onnxprune.analysis.rules.elementwise import broadcast, couple_axis, unary
from onnxprune.analysis.rules.weighted import _dynamic_matmul, conv, gemm, matmul
from onnxprune.graph import attr
from onnxprune.interface import cache_input
from onnxprune.io.modelio import ORT_DEFAULT_DOMAIN_OPS

MS = "com.microsoft"
HIDDEN_REASON = "{op} takes its statistics over this channel axis (--prune-hidden prunes it approximately)"
KV_CACHE_REASON = "{op} '{node}': its KV cache '{name}'"


@dataclass(frozen=True, eq=False)
class HeadAttrs(Fixup):
    """A fused attention / rotary node's head-count attributes: attribute ``attrs[name]``
    becomes (kept units of ``elems``) x the multiplier, each entry of list attribute
    ``lists[name]`` (qkv_hidden_sizes) the kept units x its multiplier."""

    elems: np.ndarray
    attrs: dict[str, int] = field(default_factory=dict)
    lists: dict[str, tuple[int, ...]] = field(default_factory=dict)


register_in(MS, "BiasGelu", "FastGelu", "BiasAdd")(broadcast)
register_in(MS, "Gelu", "QuickGelu")(unary)


def _present(node: onnx.NodeProto, slot: int, outputs: bool = False) -> str:
    names = node.output if outputs else node.input
    return names[slot] if len(names) > slot else ""


def _check_kv_cache(node: onnx.NodeProto, ctx: RuleContext, heads: int, past: dict[int, int]) -> None:
    """Unsupported unless every past cache (input slot -> its heads axis) is a graph input with
    ``heads`` entries on that axis. Called before the rule records anything."""
    for slot, axis in past.items():
        name = _present(node, slot)
        if not name:
            continue
        what = KV_CACHE_REASON.format(op=node.op_type, node=node.name, name=name)
        if name not in ctx.index.graph_inputs:
            raise Unsupported(f"{what} is computed, not a graph input")
        if ctx.dim(name, axis) != heads:
            raise Unsupported(f"{what}: its axis {axis} is not the {heads} KV heads")


def _link_kv_cache(node: onnx.NodeProto, ctx: RuleContext, units: np.ndarray, past: dict[int, int],
                   present: dict[int, int]) -> None:
    """A KV cache's heads (``past``: input slot -> its heads axis; ``present``: output -> its
    heads axis) are the node's KV heads ``units``. The cache is the model's interface: its
    heads change only with --allow-interface-change (``onnxprune.interface``; blocked with
    that reason otherwise)."""
    for slot, axis in past.items():
        name = _present(node, slot)
        if name:
            elems = cache_input(ctx, name, axis, len(units))
            assert elems is not None  # a graph input: _check_kv_cache
            ctx.union(elems, units)
    for slot, axis in present.items():
        out = _present(node, slot, outputs=True)
        if out:
            ctx.set_space(out, axis, units)


def _heads(node: onnx.NodeProto, name: str = "num_heads") -> int:
    n = int(attr(node, name, 0) or 0)
    if n <= 0:
        raise Unsupported(f"{node.op_type} '{node.name}' has no positive {name} attribute")
    return n


def _divides(node: onnx.NodeProto, heads: int, sizes: dict[str, int], what: str = "num_heads") -> None:
    """The bad-input check: fused attributes must agree with the weights' sizes."""
    bad = {k: v for k, v in sizes.items() if v % heads}
    if bad:
        listed = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise Unsupported(f"{node.op_type} '{node.name}': {what}={heads} does not divide {listed}; "
                          "its attributes disagree with its weights, so its heads are left alone")


def _head_broadcast(node: onnx.NodeProto, ctx: RuleContext, slot: int) -> None:
    """An attention_bias [batch, heads, q, k] must broadcast over the heads (size 1 there)."""
    name = _present(node, slot)
    if name and (len(ctx.shape(name) or ()) != 4 or ctx.dim(name, 1) != 1):
        raise Unsupported(f"{node.op_type} '{node.name}' adds an attention_bias '{name}' with per-head values")


def tie_heads(ctx: RuleContext, elems: np.ndarray, heads: int) -> np.ndarray:
    """Tie the head_dim channels of each head into one unit; returns one element per head."""
    blocks = elems.reshape(heads, -1)
    for col in range(1, blocks.shape[1]):
        ctx.union(blocks[:, 0], blocks[:, col])
    return blocks[:, 0].copy()


def _block_other_axes(ctx: RuleContext, name: str, keep: set[int], op: str) -> None:
    for axis, elems in ctx.spaces_of(name).items():
        if axis not in keep:
            ctx.block(elems, f"{op} mixes the channels of axis {axis} of '{name}'")


def _const_shape(node: onnx.NodeProto, ctx: RuleContext, slot: int, what: str) -> tuple[int, ...] | None:
    name = _present(node, slot)
    if not name:
        return None
    if not ctx.is_const(name):
        raise Unsupported(f"{what} '{name}' of {node.op_type} is computed, not a constant")
    return ctx.index.const_shape(name)


@register_in(MS, "Attention")
def attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Packed-QKV self-attention: heads are units; W's columns and b are sliced per head."""
    x, y = node.input[0], node.output[0]
    heads = _heads(node)
    w_shape = _const_shape(node, ctx, 1, "weight")
    if w_shape is None or len(w_shape) != 2:
        raise Unsupported(f"Attention '{node.name}' needs a constant rank-2 weight")
    sizes = attr(node, "qkv_hidden_sizes")
    if sizes:
        dq, dk, dv = (int(s) for s in sizes)
    elif w_shape[1] % 3:
        raise Unsupported(f"Attention '{node.name}': weight width {w_shape[1]} is not three equal Q/K/V blocks")
    else:
        dq = dk = dv = int(w_shape[1]) // 3
    if dq + dk + dv != w_shape[1] or dq != dk:
        raise Unsupported(f"Attention '{node.name}': qkv_hidden_sizes {[dq, dk, dv]} disagree with its weight "
                          f"{list(w_shape)}")
    _divides(node, heads, {"the Q/K hidden size": dq, "the V hidden size": dv})
    b_shape = _const_shape(node, ctx, 2, "bias")
    if b_shape is not None and tuple(b_shape) != (w_shape[1],):
        raise Unsupported(f"Attention '{node.name}': bias shape {list(b_shape)} disagrees with its weight")
    _head_broadcast(node, ctx, 5)
    _check_kv_cache(node, ctx, heads, past={4: 2})
    if rank_of(ctx, x) != 3:
        raise Unsupported(f"Attention '{node.name}': input '{x}' is not [batch, sequence, hidden]")
    _block_other_axes(ctx, x, {2}, "Attention")
    xs = ctx.spaces_of(x).get(2)
    if xs is not None:
        ctx.param(1, 0, xs, "consumer", is_weight=True)
        ctx.consumer(0, 2, xs)
    out = ctx.new_elements(dv)
    per_head = tie_heads(ctx, out, heads)
    cols = np.concatenate([np.repeat(per_head, dq // heads), np.repeat(per_head, dk // heads), out])
    ctx.param(1, 1, cols, "producer", is_weight=True)
    if b_shape is not None:
        ctx.param(2, 0, cols, "producer")
    ctx.set_space(y, 2, out)
    _link_kv_cache(node, ctx, per_head, past={4: 2}, present={1: 2})  # [2, batch, heads, length, head_size]
    lists = {"qkv_hidden_sizes": (dq // heads, dk // heads, dv // heads)} if sizes else {}
    ctx.fixup(HeadAttrs, elems=per_head, attrs={"num_heads": 1}, lists=lists)


def _projection(ctx: RuleContext, node: onnx.NodeProto, slot: int, heads: int) -> np.ndarray:
    """The per-head units of a 3-D [batch, sequence, hidden] Q/K/V input (opaque, so
    blocked, when no prunable op produced its channels)."""
    name = node.input[slot]
    if rank_of(ctx, name) != 3:
        raise Unsupported(f"{node.op_type} '{node.name}': input '{name}' is not [batch, sequence, hidden] "
                          "(packed or per-head layouts are left alone)")
    size = ctx.dim(name, 2)
    if not isinstance(size, int):
        raise Unsupported(f"hidden size of '{name}' is unknown (shape inference could not resolve it)")
    _divides(node, heads, {f"the hidden size of '{name}'": size})
    _block_other_axes(ctx, name, {2}, node.op_type)
    elems = ctx.spaces_of(name).get(2)
    if elems is None:
        elems = ctx.opaque(name, 2, size, f"'{name}' is not produced by a prunable op")
    return elems


@register_in(MS, "MultiHeadAttention")
def multi_head_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Separate Q, K, V inputs: head h of each is one unit; the output follows V's heads."""
    heads = _heads(node)
    if not (_present(node, 1) and _present(node, 2)):
        raise Unsupported(f"MultiHeadAttention '{node.name}' with packed QKV or KV in its query is left alone")
    _head_broadcast(node, ctx, 5)
    _check_kv_cache(node, ctx, heads, past={6: 1, 7: 1})
    if len(node.output) > 3 and node.output[3]:
        raise Unsupported(f"MultiHeadAttention '{node.name}' outputs its per-head attention scores")
    q, k, v = (_projection(ctx, node, s, heads) for s in (0, 1, 2))
    if len(q) != len(k):
        raise Unsupported(f"MultiHeadAttention '{node.name}': query and key hidden sizes differ")
    uq, uk, uv = (tie_heads(ctx, e, heads) for e in (q, k, v))
    ctx.union(uq, uk)
    ctx.union(uq, uv)
    b_shape = _const_shape(node, ctx, 3, "bias")
    if b_shape is not None:
        if tuple(b_shape) != (len(q) + len(k) + len(v),):
            raise Unsupported(f"MultiHeadAttention '{node.name}': bias shape {list(b_shape)} disagrees with "
                              "its Q/K/V sizes")
        ctx.param(3, 0, np.concatenate([q, k, v]), "param")
    ctx.set_space(node.output[0], 2, v)
    _link_kv_cache(node, ctx, uv, past={6: 1, 7: 1}, present={1: 1, 2: 1})  # [batch, heads, length, head_size]
    ctx.fixup(HeadAttrs, elems=uv, attrs={"num_heads": 1}, lists={})


@register_in(MS, "GroupQueryAttention")
def group_query_attention(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """A unit is one key/value head with the query heads that share it."""
    heads, kv = _heads(node), _heads(node, "kv_num_heads")
    if heads % kv:
        raise Unsupported(f"GroupQueryAttention '{node.name}': kv_num_heads={kv} does not divide num_heads={heads}")
    if not (_present(node, 1) and _present(node, 2)):
        raise Unsupported(f"GroupQueryAttention '{node.name}' with packed QKV is left alone")
    _head_broadcast(node, ctx, 10)
    _check_kv_cache(node, ctx, kv, past={3: 1, 4: 1})
    q = _projection(ctx, node, 0, heads)
    k, v = (_projection(ctx, node, s, kv) for s in (1, 2))
    uq = tie_heads(ctx, q, heads).reshape(kv, heads // kv)
    for j in range(1, heads // kv):
        ctx.union(uq[:, 0], uq[:, j])
    uk, uv = tie_heads(ctx, k, kv), tie_heads(ctx, v, kv)
    ctx.union(uq[:, 0].copy(), uk)
    ctx.union(uk, uv)
    ctx.set_space(node.output[0], 2, q)
    _link_kv_cache(node, ctx, uk, past={3: 1, 4: 1}, present={1: 1, 2: 1})  # [batch, kv_heads, length, head_size]
    ctx.fixup(HeadAttrs, elems=uk, attrs={"num_heads": heads // kv, "kv_num_heads": 1}, lists={})


@register_in(MS, "RotaryEmbedding")
def rotary_embedding(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Rotation inside each head: the head's channels are tied and pass through."""
    x, y = node.input[0], node.output[0]
    rank = rank_of(ctx, x)
    spaces = ctx.spaces_of(x)
    if rank == 4:  # [batch, heads, sequence, head_dim]
        _block_other_axes(ctx, x, {0, 1}, "RotaryEmbedding")
        for axis in (0, 1):
            if axis in spaces:
                ctx.set_space(y, axis, spaces[axis])
        return
    if rank != 3:
        raise Unsupported(f"RotaryEmbedding '{node.name}': input '{x}' of rank {rank}")
    _block_other_axes(ctx, x, {0, 2}, "RotaryEmbedding")
    if 0 in spaces:
        ctx.set_space(y, 0, spaces[0])
    elems = spaces.get(2)
    if elems is None:
        return
    heads = int(attr(node, "num_heads", 0) or 0)
    if heads <= 0:  # head size from the cache: 2 * cos_cache's last axis
        cos = ctx.index.const_shape(_present(node, 2)) or ctx.shape(_present(node, 2)) or ()
        half = cos[-1] if cos else None
        if not isinstance(half, int) or half <= 0 or len(elems) % (2 * half):
            raise Unsupported(f"RotaryEmbedding '{node.name}' without num_heads: its head size is unknown")
        heads = len(elems) // (2 * half)
    _divides(node, heads, {f"the hidden size of '{x}'": len(elems)})
    per_head = tie_heads(ctx, elems, heads)
    ctx.set_space(y, 2, elems)
    if int(attr(node, "num_heads", 0) or 0) > 0:
        ctx.fixup(HeadAttrs, elems=per_head, attrs={"num_heads": 1}, lists={})


def _normalised(node: onnx.NodeProto, ctx: RuleContext, data: tuple[int, ...], outputs: tuple[int, ...]) -> None:
    """Add the ``data`` inputs (and per-channel constants), normalise over the last axis:
    the hidden axis couples every input and passes, blocked unless --prune-hidden (the
    constants, gamma / beta / bias, are sliced with it)."""
    names = [node.input[s] for s in data if _present(node, s)]
    out_rank = max(rank_of(ctx, n) for n in names)
    axes: set[int] = set()
    for name in names:
        axes.update(a + out_rank - rank_of(ctx, name) for a in ctx.spaces_of(name))
    for out_axis in sorted(axes):
        elems = couple_axis(node, ctx, out_axis, out_rank)
        if out_axis == out_rank - 1 and not ctx.prune_hidden:
            ctx.block(elems, HIDDEN_REASON.format(op=node.op_type))
        for o in outputs:
            if _present(node, o, outputs=True):
                ctx.set_space(node.output[o], out_axis, elems)


@register_in(MS, "SkipLayerNormalization")
def skip_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    _check_params(node, ctx, (2, 3, 4))
    _normalised(node, ctx, data=(0, 1), outputs=(0, 3))


@register_in(MS, "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    _check_params(node, ctx, (2, 3))
    _normalised(node, ctx, data=(0, 1), outputs=(0, 3))


def _check_params(node: onnx.NodeProto, ctx: RuleContext, slots: tuple[int, ...]) -> None:
    for slot in slots:
        shape = _const_shape(node, ctx, slot, "parameter")
        if shape is not None and len(shape) != 1:
            raise Unsupported(f"parameter '{node.input[slot]}' of {node.op_type} is not one value per channel")


@register("SimplifiedLayerNormalization")
@register_in(MS, "SimplifiedLayerNormalization")
def simplified_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """RMSNorm over the trailing axes from ``axis``; onnxruntime runs it in the default domain."""
    x = node.input[0]
    rank = rank_of(ctx, x)
    if norm_axis(int(attr(node, "axis", -1)), rank) != rank - 1:
        for axis, elems in ctx.spaces_of(x).items():
            if axis >= norm_axis(int(attr(node, "axis", -1)), rank):
                ctx.block(elems, f"{node.op_type} normalises over several axes")
    _check_params(node, ctx, (1,))
    _normalised(node, ctx, data=(0,), outputs=(0,))


@register_in(MS, "EmbedLayerNormalization")
def embed_layer_norm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Embedding tables summed and normalised: the hidden channels are produced here."""
    tables = [s for s in (2, 3, 4) if _present(node, s)]
    shapes = [_const_shape(node, ctx, s, "embedding table") for s in tables]
    hidden = {int(s[1]) for s in shapes if s is not None and len(s) == 2}
    if len(hidden) != 1 or any(s is None or len(s) != 2 for s in shapes):
        raise Unsupported(f"EmbedLayerNormalization '{node.name}': its embedding tables disagree on the hidden size")
    _check_params(node, ctx, (5, 6))
    out = ctx.new_elements(hidden.pop())
    if ctx.prune_hidden:
        for slot in tables:
            ctx.param(slot, 1, out, "producer", is_weight=True)
        for slot in (5, 6):
            if _present(node, slot):
                ctx.param(slot, 0, out, "param", is_weight=(slot == 5))
    else:
        ctx.block(out, HIDDEN_REASON.format(op=node.op_type))
    for o in (0, 2):
        if _present(node, o, outputs=True):
            ctx.set_space(node.output[o], 2, out)


@register_in(MS, "FusedMatMul")
def fused_matmul(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """alpha * A @ op(B): as MatMul (a constant B is a weight, rows and columns swapped by transB)."""
    if any(int(attr(node, a, 0) or 0) for a in ("transA", "transBatchA", "transBatchB")):
        raise Unsupported(f"FusedMatMul '{node.name}' with transA / transBatchA / transBatchB")
    trans_b = int(attr(node, "transB", 0) or 0)
    b = node.input[1]
    if not trans_b:
        (matmul if ctx.is_const(b) else _dynamic_matmul)(node, ctx)
        return
    if not ctx.is_const(b):
        _dynamic_matmul(node, ctx, transpose_b=True)
        return
    shape = ctx.index.const_shape(b) or ()
    if len(shape) != 2:
        raise Unsupported(f"FusedMatMul weight '{b}' has rank {len(shape)}; only rank-2 weights are supported")
    a, y = node.input[0], node.output[0]
    ra = rank_of(ctx, a)
    if ra < 2:
        raise Unsupported("FusedMatMul with a rank-1 left operand")
    for axis, elems in ctx.spaces_of(a).items():
        if axis == ra - 1:
            ctx.param(1, 1, elems, "consumer", is_weight=True)
            ctx.consumer(0, axis, elems)
        else:
            ctx.set_space(y, axis, elems)
    out = ctx.new_elements(int(shape[0]))
    ctx.param(1, 0, out, "producer", is_weight=True)
    ctx.set_space(y, ra - 1, out)


# -- onnxruntime's graph optimizer (SessionOptions.optimized_model_filepath) -------------------

#: activations onnxruntime fuses into FusedConv / FusedGemm that the torch execution runs
FUSED_ACTIVATIONS = ("", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")
NCHWC = "com.microsoft.nchwc"
NCHWC_REASON = ("NCHWc layout op {op} (onnxruntime's ORT_ENABLE_ALL layout transformer): channels are in this "
                "machine's blocked layout (weights reordered, channels padded to the block); save the optimized "
                "model at ORT_ENABLE_EXTENDED to prune it")


def _fused_activation(node: onnx.NodeProto) -> None:
    act = attr(node, "activation", "") or ""
    act = act.decode() if isinstance(act, bytes) else act
    if act not in FUSED_ACTIVATIONS:
        raise Unsupported(f"{node.op_type} '{node.name}' with activation {act} is not supported")


@register_in(MS, "FusedConv")
def fused_conv(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Conv (+ an optional sum input Z added before the activation) + a per-channel activation:
    as Conv, Z's channels coupled with the output's."""
    _fused_activation(node)
    conv(node, ctx)
    z = _present(node, 3)
    if not z:
        return
    y = node.output[0]
    for axis, elems in ctx.spaces_of(z).items():
        mine = ctx.spaces_of(y).get(axis)
        if mine is not None and len(mine) == len(elems):
            ctx.union(mine, elems)
        else:
            ctx.block(elems, f"axis {axis} of FusedConv's sum input '{z}' is not the output's")
    if 1 not in ctx.spaces_of(z):
        ctx.block(ctx.spaces_of(y)[1], f"FusedConv's sum input '{z}' is not produced by a prunable op")


@register_in(MS, "FusedGemm")
def fused_gemm(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Gemm + a per-channel activation: as Gemm."""
    _fused_activation(node)
    gemm(node, ctx)


@register_in(NCHWC, "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReorderInput",
             "ReorderOutput", "Upsample")
def nchwc_op(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Blocked with the reason (see NCHWC_REASON)."""
    raise Unsupported(NCHWC_REASON.format(op=f"{NCHWC}::{node.op_type}"))


def understood(model: onnx.ModelProto) -> dict[str, int]:
    """Fused ops of ``model`` that have a rule here, as ``domain::op`` (default domain: the op)
    -> how many nodes use it."""
    from onnxprune.analysis.registry import rule_for

    counts: dict[str, int] = {}
    for node in model.graph.node:
        fused = node.domain not in ("", "ai.onnx", NCHWC) or node.op_type in ORT_DEFAULT_DOMAIN_OPS
        if fused and rule_for(node)[0] is not None:
            key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            counts[key] = counts.get(key, 0) + 1
    return counts

