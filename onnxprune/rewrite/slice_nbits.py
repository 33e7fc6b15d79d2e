"""MatMulNBits edits ``slice_params`` cannot make by plain index selection: the kept
blocks of packed zero points (and of flat ``[N * k_blocks]`` scales), and the K / N
attributes. Runs after ``slice_params`` (rows already cut); idempotent.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis.removal import Removal
from onnxprune.analysis.rules.quant import MatMulNBitsCut, slice_nbits_blocks
from onnxprune.graph import GraphIndex, attr, set_attr
from onnxprune.rewrite.constants import apply_constant_edits


def apply_nbits_fixup(model: onnx.ModelProto, index: GraphIndex, fix: MatMulNBitsCut, removal: Removal) -> bool:
    """Cut one MatMulNBits' packed zero points / flat scales to its kept blocks; set K and N."""
    node = index.nodes[fix.node]
    n_kept = removal.kept_count(fix.elems_n)
    blocks = fix.blocks
    keep_blocks = removal.kept(blocks) if blocks is not None else np.ones(fix.k_blocks, dtype=bool)
    modified = False
    if not keep_blocks.all():
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
