"""Quantized graph forms: QDQ pairs, onnxruntime's 4-bit ``MatMulNBits``; QOperator forms blocked.

**QDQ** (``quantize_static`` with ``QuantFormat.QDQ``, or a fake-quant export). A weight
reaches its Conv / Gemm / MatMul / BatchNorm as ``DequantizeLinear(W_q, s, z)`` (optionally
after ``QuantizeLinear(W, s, z)``) of constants. The analysis reads such a chain as the
constant it dequantises to (:class:`QuantWeightIndex`), so every weighted rule applies
unchanged and records its slices on the dequantised weight (costs, scores and reports see
the Conv's weight); the rewrite moves each slice onto the constants
(:func:`expand_weight_refs`): ``W_q`` (and ``W``) along the same axis, and the scale and
zero point along their only axis when they are per-channel on that axis (``axis`` of the
Q/DQ node). Per-tensor scales and per-channel scales of another axis are untouched. As
dequantisation is elementwise, ``DQ(W_q[keep], s[keep], z[keep]) == DQ(W_q, s, z)[keep]``:
the pruned graph dequantises exactly the kept part of the original weight.

Activation ``QuantizeLinear`` / ``DequantizeLinear`` pass channels through (elementwise);
a per-channel activation scale (and zero point) along a live channel axis is a
per-channel parameter, sliced with it. Blocked quantization (``block_size``) is blocked.

**MatMulNBits** (com.microsoft; ``B [N, k_blocks, blob]``, ``scales [N, k_blocks]`` or
``[N * k_blocks]``, ``zero_points`` packed ``[N, ceil(k_blocks * bits / 8)]`` (uint8) or
float ``[N, k_blocks]``, ``bias [N]``). Output channel n -> ``B[n]``, ``scales[n]``,
``zero_points[n]``, ``bias[n]`` and attribute N. Input channels go only in whole
quantization blocks: the ``block_size`` channels of one block are one unit; block b ->
``B[:, b]``, ``scales[:, b]``, the b-th packed zero point of every row (unpacked,
dropped, repacked: :func:`slice_nbits_blocks`) and attribute K. Each kept block
dequantises exactly as before, so the result equals the masked model (up to float
summation order). ``g_idx`` (act-order) and a K that is not a multiple of ``block_size``
block the input side. Within :func:`requantize_nbits` (the recipe's ``requantize``,
``--requantize``) every input channel is a unit: the rewrite dequantises the weight, drops
the removed channels and quantizes it again with onnxruntime's own block quantizer
(``rewrite.slice_nbits``), which is within the quantization error of the dequantised
reference, no longer exact.

**QOperator** forms (``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``:
``registry.KNOWN_BLOCKERS``; onnxruntime's ``QLinearAdd``, ``QGemm``, ...: custom-domain ops)
are blocked with their reason: their activations are integer tensors with scales per op,
so channels cannot be followed without a rule for every QLinear op; quantize in the QDQ
format to prune.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.context import Fixup, ParamRef, RuleContext
from onnxprune.analysis.registry import Unsupported, register, register_in
from onnxprune.analysis.rules.common import norm_axis, passthrough, rank_of
from onnxprune.graph import GraphIndex, attr

MS = "com.microsoft"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_REQUANTIZE: ContextVar[bool] = ContextVar("onnxprune_requantize_nbits", default=False)


@contextmanager
def requantize_nbits(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``analyze`` lets MatMulNBits' input channels go one by one (its
    weight dequantised, sliced and quantized again by the rewrite), not in whole blocks."""
    token = _REQUANTIZE.set(enabled)
    try:
        yield
    finally:
        _REQUANTIZE.reset(token)


# -- quantized weights read as constants ------------------------------------------

def weight_chain(index: GraphIndex, name: str) -> list[onnx.NodeProto] | None:
    """The Q/DQ nodes turning constants into tensor ``name`` (the DequantizeLinear producing
    it first), or None when ``name`` is not a quantized constant read by one node only."""
    chain: list[onnx.NodeProto] = []
    while name not in index.initializers:
        node = index.producer.get(name)
        if node is None or node.op_type not in QDQ_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if len(index.uses.get(name, ())) != 1 or attr(node, "block_size", 0):
            return None
        if any(i and i not in index.initializers for i in node.input[1:]):
            return None
        chain.append(node)
        name = node.input[0]
    if not chain or chain[0].op_type != "DequantizeLinear":
        return None
    return chain


def dequantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear in numpy (float32; per-tensor or per-axis)."""
    shape = [1] * x.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    z = np.zeros(1, np.float32) if zero is None else zero.astype(np.float32).reshape(shape if zero.size > 1 else 1)
    return ((x.astype(np.float32) - z) * scale.astype(np.float32).reshape(shape if scale.size > 1 else 1))


def quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear in numpy (round half to even, saturate to the zero point's type)."""
    dtype = np.dtype(np.uint8) if zero is None else zero.dtype
    shape = [1] * x.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    s = scale.astype(np.float32).reshape(shape if scale.size > 1 else 1)
    z = 0 if zero is None else zero.astype(np.float32).reshape(shape if zero.size > 1 else 1)
    info = np.iinfo(dtype)
    return np.clip(np.rint(x.astype(np.float32) / s) + z, info.min, info.max).astype(dtype)


class QuantWeightIndex(GraphIndex):
    """A GraphIndex that reads a weight dequantised from constants (a QDQ weight chain) as
    a constant: its shape, and its dequantised value."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__(model)
        self.weight_chains: dict[str, list[onnx.NodeProto]] = {}
        self.nbits_weights: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            if (node.op_type == "MatMulNBits" and node.domain == MS and len(node.input) > 2
                    and node.input[1] in self.initializers and len(self.uses.get(node.input[1], ())) == 1):
                self.nbits_weights[node.input[1]] = node
            if node.op_type == "DequantizeLinear" and node.output and node.output[0]:
                chain = weight_chain(self, node.output[0])
                if chain is not None:
                    self.weight_chains[node.output[0]] = chain

    def is_const(self, name: str) -> bool:
        return name in self.initializers or name in self.weight_chains

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        chain = self.weight_chains.get(name)
        return super().const_shape(chain[-1].input[0] if chain else name)

    def shape(self, name: str):
        chain = self.weight_chains.get(name)
        return super().shape(chain[-1].input[0] if chain else name)

    def const(self, name: str, *, unaligned_ok: bool = False) -> np.ndarray | None:
        """The value of a constant; a QDQ weight dequantised; a MatMulNBits weight dequantised
        per block, ``[N, k_blocks, block_size]`` (its packed ``[N, k_blocks, blob]`` axes 0
        and 1 unchanged: what magnitude scores read)."""
        chain = self.weight_chains.get(name)
        if chain is None:
            nbits = self.nbits_weights.get(name)
            if nbits is not None:
                return _dequantized_blocks(self, nbits)
            return super().const(name, unaligned_ok=unaligned_ok)
        value = np.asarray(super().const(chain[-1].input[0], unaligned_ok=True))
        for node in reversed(chain):
            scale, zero = self._qparams(node)
            axis = norm_axis(int(attr(node, "axis", 1)), max(1, value.ndim))
            fn = dequantize if node.op_type == "DequantizeLinear" else quantize
            value = fn(value, scale, zero, axis)
        return value

    def _qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
        scale = np.asarray(super().const(node.input[1]))
        zero = super().const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return scale, None if zero is None else np.asarray(zero)


def _dequantized_blocks(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray:
    """A MatMulNBits weight as float32 ``[N, k_blocks, block_size]`` ((code - zero) * scale)."""
    bits, n = int(attr(node, "bits", 4)), int(attr(node, "N", 0))
    packed = np.asarray(GraphIndex.const(index, node.input[1], unaligned_ok=True))
    codes = _unpack(packed, bits).astype(np.float32)  # [N, kb, block_size]
    kb = codes.shape[1]
    scales = np.asarray(GraphIndex.const(index, node.input[2]), dtype=np.float32).reshape(n, kb)
    zero_name = node.input[3] if len(node.input) > 3 else ""
    if not zero_name:
        zeros = np.full((n, kb), float(1 << (bits - 1)), np.float32)
    else:
        z = np.asarray(GraphIndex.const(index, zero_name))
        zeros = (_unpack(z.reshape(n, -1), bits)[:, :kb] if z.dtype == np.uint8 else z.reshape(n, kb)).astype(np.float32)
    return (codes - zeros[..., None]) * scales[..., None]


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes [..., m] -> their 8 / bits values each, low bits first: [..., m * 8 / bits]."""
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)


def analysis_index(model: onnx.ModelProto, plain: GraphIndex | None = None) -> GraphIndex:
    """The index the analysis walks: quantized weights read as constants when there are
    any; else ``plain`` (or a new GraphIndex)."""
    if any(n.op_type in ("DequantizeLinear", "MatMulNBits") for n in model.graph.node):
        return QuantWeightIndex(model)
    return plain if plain is not None else GraphIndex(model)


def expand_weight_refs(params: list[ParamRef], index: GraphIndex) -> list[ParamRef]:
    """Move each slice of a dequantised weight onto the constants it is computed from: the
    quantized values along the same axis, per-channel scales / zero points of that axis."""
    chains = getattr(index, "weight_chains", None)
    if not chains:
        return params
    out: list[ParamRef] = []
    for ref in params:
        chain = chains.get(index.nodes[ref.node].input[ref.slot])
        if chain is None:
            out.append(ref)
            continue
        base = chain[-1]
        rank = len(index.const_shape(base.input[0]) or ())
        out.append(ParamRef(base.name, 0, ref.axis, ref.elems, ref.role, ref.is_weight))
        for node in chain:
            axis = norm_axis(int(attr(node, "axis", 1)), max(1, rank))
            for slot in (1, 2):
                name = node.input[slot] if len(node.input) > slot else ""
                shape = index.const_shape(name) if name else None
                if shape and math.prod(shape) > 1 and axis == ref.axis % max(1, rank):
                    out.append(ParamRef(node.name, slot, 0, ref.elems, "param", False))
    return out


# -- activation Q / DQ ---------------------------------------------------------------

@register(*QDQ_OPS)
def quantize_linear(node: onnx.NodeProto, ctx: RuleContext) -> None:
    """Elementwise on the channels: pass them through; slice per-channel parameters of a live axis."""
    x, y = node.input[0], node.output[0]
    if ctx.is_const(x):
        return  # a weight's own chain: its consumer's rule slices it
    if attr(node, "block_size", 0):
        raise Unsupported(f"{node.op_type} with block_size (blocked quantization) is not supported")
    scale = node.input[1]
    shape = ctx.index.const_shape(scale) if ctx.is_const(scale) else None
    if shape is None:
        raise Unsupported(f"scale '{scale}' of {node.op_type} is computed, not a constant")
    if math.prod(shape) > 1 and ctx.spaces_of(x):
        axis = norm_axis(int(attr(node, "axis", 1)), rank_of(ctx, x))
        elems = ctx.spaces_of(x).get(axis)
        if elems is not None:
            for slot in (1, 2):
                if len(node.input) > slot and node.input[slot]:
                    if not ctx.is_const(node.input[slot]):
                        raise Unsupported(f"zero point '{node.input[slot]}' of {node.op_type} is computed")
                    ctx.param(slot, 0, elems, "param")
    passthrough(ctx, x, y)


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """The quantized ops of ``model`` the analysis understands -> how many nodes use each:
    QDQ pairs on weights and on activations, MatMulNBits (for ``analyze`` to list)."""
    index = analysis_index(model)
    chains = getattr(index, "weight_chains", {})
    in_chains = {n.name for chain in chains.values() for n in chain}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            key = f"{node.op_type} ({'weight' if node.name in in_chains else 'activation'})"
        elif node.op_type == "MatMulNBits" and node.domain == MS:
            key = f"{MS}::MatMulNBits"
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- MatMulNBits ---------------------------------------------------------------------

def nbits_layout(node: onnx.NodeProto, shapes: list[tuple[int, ...] | None]) -> dict[str, int]:
    """K, N, bits, block_size, k_blocks, blob and zero-point bytes per row of a MatMulNBits,
    checked against its constant inputs' shapes (``shapes``: by slot); Unsupported otherwise."""
    k, n = int(attr(node, "K", 0)), int(attr(node, "N", 0))
    bits, bs = int(attr(node, "bits", 4)), int(attr(node, "block_size", 0))
    if k <= 0 or n <= 0 or bits not in (2, 4, 8) or bs < 16 or bs & (bs - 1):
        raise Unsupported(f"MatMulNBits attributes K={k}, N={n}, bits={bits}, block_size={bs} are invalid")
    kb, blob = -(-k // bs), bs * bits // 8
    zb = -(-kb * bits // 8)
    b_shape = shapes[1]
    if b_shape is None or tuple(b_shape) != (n, kb, blob):
        raise Unsupported(f"MatMulNBits weight shape {list(b_shape or ())} disagrees with its attributes K={k}, "
                          f"N={n}, bits={bits}, block_size={bs} (expected {[n, kb, blob]})")
    s_shape = shapes[2]
    if s_shape is None or math.prod(s_shape) != n * kb:
        raise Unsupported(f"MatMulNBits scales shape {list(s_shape or ())} disagrees with N={n} and "
                          f"{kb} blocks per row")
    return {"K": k, "N": n, "bits": bits, "block_size": bs, "k_blocks": kb, "blob": blob, "zp_bytes": zb}


@dataclass(frozen=True, eq=False)
class MatMulNBitsCut(Fixup):
    """A MatMulNBits: N becomes the kept count of ``elems_n``; K the kept ``blocks`` (one
    element per quantization block, None: input side not pruned) times ``block_size``; packed
    zero points (and flat scales) keep only the kept blocks of each row."""

    elems_n: np.ndarray
    blocks: np.ndarray | None
    bits: int
    block_size: int
    k_blocks: int
    channels: np.ndarray | None = None  # per input channel (requantized), or None


@register_in(MS, "MatMulNBits")
def matmul_nbits(node: onnx.NodeProto, ctx: RuleContext) -> None:
    a, y = node.input[0], node.output[0]
    inputs = list(node.input) + [""] * (6 - len(node.input))
    for slot in (1, 2, 3, 5):
        if inputs[slot] and not ctx.is_const(inputs[slot]):
            raise Unsupported(f"input {slot} '{inputs[slot]}' of MatMulNBits is computed, not a constant")
    shapes = [ctx.index.const_shape(name) if name else None for name in inputs]
    lay = nbits_layout(node, shapes)
    n, kb = lay["N"], lay["k_blocks"]
    ra = rank_of(ctx, a)
    zp_shape, zp_packed = shapes[3], bool(inputs[3]) and ctx.index.elem_type(inputs[3]) == onnx.TensorProto.UINT8
    if zp_shape is not None and math.prod(zp_shape) != n * (lay["zp_bytes"] if zp_packed else kb):
        raise Unsupported(f"MatMulNBits zero points shape {list(zp_shape)} disagrees with N={n} and {kb} blocks")
    out = ctx.new_elements(n)
    ctx.param(1, 0, out, "producer", is_weight=True)
    per_row = {2: kb, 3: lay["zp_bytes"] if zp_packed else kb}
    for slot in (2, 3):
        shape = shapes[slot]
        if shape is not None:
            ctx.param(slot, 0, out if len(shape) == 2 else np.repeat(out, per_row[slot]), "producer")
    if inputs[5]:
        ctx.param(5, 0, out, "producer")
    blocks = channels = None
    if _REQUANTIZE.get():
        channels = _nbits_requantized_input(node, ctx, lay, inputs, shapes, ra)
    else:
        blocks = _nbits_input_side(node, ctx, lay, inputs, shapes, ra)
    ctx.fixup(MatMulNBitsCut, elems_n=out, blocks=blocks, bits=lay["bits"], block_size=lay["block_size"],
              k_blocks=kb, channels=channels)
    for axis, elems in ctx.spaces_of(a).items():
        if axis != ra - 1:
            ctx.set_space(y, axis, elems)
    ctx.set_space(y, ra - 1, out)


def _nbits_input_side(node: onnx.NodeProto, ctx: RuleContext, lay: dict[str, int], inputs: list[str],
                      shapes: list[tuple[int, ...] | None], ra: int) -> np.ndarray | None:
    """Couple each quantization block's input channels into one unit; the block elements
    (one per block), or None when the input side is not pruned."""
    xs = ctx.spaces_of(node.input[0]).get(ra - 1)
    if xs is None:
        return None
    k, bs = lay["K"], lay["block_size"]
    reason = ""
    if len(xs) != k:
        reason = f"MatMulNBits K={k} disagrees with its input's {len(xs)} channels"
    elif k % bs:
        reason = f"MatMulNBits K={k} is not a multiple of block_size {bs} (a partial last block)"
    elif inputs[4] and math.prod(shapes[4] or (0,)) > 0:
        reason = "MatMulNBits with g_idx (act-order): input channels are permuted across blocks"
    if reason:
        ctx.block(xs, reason)
        return None
    for j in range(1, bs):
        ctx.union(xs[0::bs], xs[j::bs])
    blocks = xs[0::bs]
    ctx.param(1, 1, blocks, "consumer", is_weight=True)
    if len(shapes[2] or ()) == 2:
        ctx.param(2, 1, blocks, "consumer")
    if inputs[3] and ctx.index.elem_type(inputs[3]) != onnx.TensorProto.UINT8 and len(shapes[3] or ()) == 2:
        ctx.param(3, 1, blocks, "consumer")
    ctx.consumer(0, ra - 1, xs)
    return blocks


def _nbits_requantized_input(node: onnx.NodeProto, ctx: RuleContext, lay: dict[str, int], inputs: list[str],
                             shapes: list[tuple[int, ...] | None], ra: int) -> np.ndarray | None:
    """Each input channel its own unit (the rewrite requantizes the kept ones); its
    elements, or None when the input side is not pruned."""
    xs = ctx.spaces_of(node.input[0]).get(ra - 1)
    if xs is None:
        return None
    k = lay["K"]
    reason = ""
    if len(xs) != k:
        reason = f"MatMulNBits K={k} disagrees with its input's {len(xs)} channels"
    elif inputs[4] and math.prod(shapes[4] or (0,)) > 0:
        reason = "MatMulNBits with g_idx (act-order): input channels are permuted across blocks"
    elif inputs[3] and ctx.index.elem_type(inputs[3]) != onnx.TensorProto.UINT8:
        reason = "MatMulNBits with float zero points: onnxruntime's quantizer writes packed ones (not requantized)"
    if reason:
        ctx.block(xs, reason)
        return None
    ctx.consumer(0, ra - 1, xs)
    ctx.mac_axes[node.name] = [xs]  # its MACs scale with the kept input channels (the weight's refs: N)
    return xs


def dequantize_nbits(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int,
                     rows: int) -> np.ndarray:
    """A MatMulNBits weight ``[rows, k_blocks, blob]`` (scales ``[rows, k_blocks]`` or flat,
    packed uint8 zero points or None: the default ``2**(bits-1)``) as float32
    ``[rows, k_blocks, block_size]``: ``(code - zero) * scale``."""
    codes = _unpack(np.asarray(packed), bits).astype(np.float32)
    kb = codes.shape[1]
    s = np.asarray(scales, dtype=np.float32).reshape(rows, kb)
    if zeros is None:
        z = np.full((rows, kb), float(1 << (bits - 1)), np.float32)
    else:
        z = _unpack(np.asarray(zeros).reshape(rows, -1), bits)[:, :kb].astype(np.float32)
    return (codes - z[..., None]) * s[..., None]


def slice_nbits_blocks(arr: np.ndarray, keep_rows: int, keep_blocks: np.ndarray, bits: int,
                       packed: bool) -> np.ndarray:
    """Scales (``packed`` False) or packed zero points of a MatMulNBits, already cut to
    ``keep_rows`` rows, with only the kept blocks of each row (scales: unchanged when
    already cut; packed zero points: the caller cuts them once, as a row of 2 blocks and
    one of 1 both take one byte)."""
    kb, kept = len(keep_blocks), int(keep_blocks.sum())
    flat = arr.ndim == 1
    rows = arr.reshape(keep_rows, -1)
    if not packed:
        if rows.shape[1] == kept:
            return arr
        out = rows[:, keep_blocks]
        return out.reshape(-1) if flat else out
    per = 8 // bits
    vals = _unpack(rows, bits)[:, :kb]
    vals = vals[:, keep_blocks]
    pad = -vals.shape[1] % per
    # onnxruntime pads a row's last byte with the default zero point
    vals = np.concatenate([vals, np.full((keep_rows, pad), 1 << (bits - 1), vals.dtype)], axis=1)
    vals = vals.reshape(keep_rows, -1, per)
    out = np.zeros(vals.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= (vals[..., i].astype(np.uint8) << (bits * i)).astype(np.uint8)
    return out.reshape(-1) if flat else out
