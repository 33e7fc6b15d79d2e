"""MatMulNBits edits ``slice_params`` cannot make by plain index selection: the kept
blocks of packed zero points (and of flat ``[N * k_blocks]`` scales), and the K / N
attributes. Runs after ``slice_params`` (rows already cut); idempotent.

Input channels removed one by one (the analysis ran within ``requantize_nbits``): the
weight (rows already cut) is dequantised, the removed channels are dropped, and the rest
is quantized again in blocks of ``block_size`` by onnxruntime's own quantizer (the C++
kernel ``MatMulNBitsQuantizer`` calls), symmetric when the node has no zero points.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnxprune.analysis.removal import Removal
from onnxprune.analysis.rules.quant import MatMulNBitsCut, dequantize_nbits, slice_nbits_blocks
from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.rewrite.constants import apply_constant_edits


def apply_nbits_fixup(model: onnx.ModelProto, index: GraphIndex, fix: MatMulNBitsCut, removal: Removal) -> bool:
    """Cut one MatMulNBits' packed zero points / flat scales to its kept blocks; set K and N."""
    node = index.nodes[fix.node]
    n_kept = removal.kept_count(fix.elems_n)
    if fix.channels is not None:
        return _requantize(model, index, node, fix, removal, n_kept)
    blocks = fix.blocks
    keep_blocks = removal.kept(blocks) if blocks is not None else np.ones(fix.k_blocks, dtype=bool)
    modified = False
    # K tells whether the blocks were cut already (a packed row may keep its byte count: not a sign)
    if not keep_blocks.all() and int(attr(node, "K", 0)) != int(keep_blocks.sum()) * fix.block_size:
        edits = {}
        for slot in (2, 3):
            name = node.input[slot] if len(node.input) > slot else ""
            if not name:
                continue
            packed = index.elem_type(name) == onnx.TensorProto.UINT8
            if not packed and len(index.const_shape(name) or ()) == 2:
                continue  # sliced by slice_params along its block axis
            key = ("nbits_blocks", np.flatnonzero(keep_blocks).tobytes(), len(keep_blocks), n_kept)
            edits[(node.name, slot)] = (key, _cut(n_kept, keep_blocks, fix.bits, packed))
        modified = apply_constant_edits(model, index, edits)
    wanted = {"N": n_kept}
    if blocks is not None:  # the input side is pruned (K a multiple of block_size)
        wanted["K"] = int(keep_blocks.sum()) * fix.block_size
    for name, value in wanted.items():
        if int(attr(node, name, 0)) != value:
            set_attr(node, name, value)
            modified = True
    return modified


def _cut(rows: int, keep_blocks: np.ndarray, bits: int, packed: bool):
    return lambda arr: slice_nbits_blocks(arr, rows, keep_blocks, bits, packed)


def _requantize(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, fix: MatMulNBitsCut,
                removal: Removal, n_kept: int) -> bool:
    """Drop the removed input channels of a MatMulNBits by requantizing its weight; set K and N."""
    keep = removal.kept(fix.channels)
    k_old, k_new = len(keep), int(keep.sum())
    modified = False
    if int(attr(node, "K", 0)) != k_new:  # else done already (idempotent)
        inputs = list(node.input) + [""] * (4 - len(node.input))
        packed, scales = index.const(inputs[1], unaligned_ok=True), index.const(inputs[2])
        zeros = index.const(inputs[3]) if inputs[3] else None
        weight = dequantize_nbits(packed, scales, zeros, fix.bits, n_kept).reshape(n_kept, -1)[:, :k_old]
        q_packed, q_scales, q_zeros = quantize_nbits(np.ascontiguousarray(weight[:, keep].T), fix.bits,
                                                     fix.block_size, symmetric=zeros is None)
        new = {1: q_packed, 2: q_scales.astype(scales.dtype).reshape(-1 if scales.ndim == 1 else q_scales.shape)}
        if zeros is not None:
            new[3] = q_zeros.reshape(-1) if zeros.ndim == 1 else q_zeros
        key = ("nbits_requantized", keep.tobytes(), n_kept)
        edits = {(node.name, slot): (key, _replaced_by(value)) for slot, value in new.items()}
        modified = apply_constant_edits(model, index, edits)
        set_attr(node, "K", k_new)
        modified = True
    if int(attr(node, "N", 0)) != n_kept:
        set_attr(node, "N", n_kept)
        modified = True
    return modified


def _replaced_by(value: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda _old: value


def quantize_nbits(weight_kn: np.ndarray, bits: int, block_size: int, *, symmetric: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A float weight ``[K, N]`` as MatMulNBits' (packed ``[N, k_blocks, blob]``, scales
    ``[N, k_blocks]``, packed zero points ``[N, ceil(k_blocks * bits / 8)]``), quantized by
    onnxruntime's C++ block quantizer (what ``MatMulNBitsQuantizer`` runs)."""
    from onnxruntime.capi import _pybind_state

    fn = getattr(_pybind_state, f"quantize_matmul_{bits}bits", None)
    if fn is None:
        raise NotImplementedError(f"this onnxruntime has no {bits}-bit block quantizer")
    k, n = weight_kn.shape
    k_blocks, per = -(-k // block_size), 8 // bits
    packed = np.zeros((n, k_blocks, block_size // per), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zeros = np.zeros((n, -(-k_blocks // per)), dtype=np.uint8)
    fn(packed, np.ascontiguousarray(weight_kn, dtype=np.float32), scales, zeros, block_size, n, k, symmetric)
    return packed, scales, zeros
