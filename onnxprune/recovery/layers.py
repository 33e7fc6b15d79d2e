"""A uniform linear view of the mixing ops recovery refits: y = x W^T + b per row.

- Conv (group 1, 1-D or 2-D for rows, any rank for bias): rows are im2col patches, one
  per output position, gathered from the zero-padded input (asymmetric ``pads``,
  ``auto_pad``, strides and dilations), features ordered (input channel, kernel position)
  like ``W.reshape(Cout, -1)``: the rows ``torch.nn.functional.unfold`` gives (the tests
  check this), but only for the sampled positions.
- Gemm (transA/transB, alpha, beta): rows are A (or A^T); W_eff = alpha * B' ^T; b = beta * C.
- MatMul with a constant [K, N] weight: rows are the input's last axis; W_eff = W^T; the
  bias is whatever a following Add holds, so the MatMul's own bias is 0 here.

``Unsupported`` carries the reason a node cannot be refitted (reported, never guessed at).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.analysis.weighted_ops import refitted_ops, weighted_op
from onnxprune.errors import Unsupported
from onnxprune.graph import GraphIndex, attr


@dataclass
class Layer:
    node: onnx.NodeProto
    kind: str  # conv | gemm | matmul
    weight: np.ndarray  # the initializer as stored
    bias_value: np.ndarray | None  # Conv B / Gemm C as stored (None if absent)
    in_axis: int  # channel (feature) axis of the input tensor

    # -- construction -----------------------------------------------------
    @classmethod
    def of(cls, index: GraphIndex, node: onnx.NodeProto) -> Layer:
        op = node.op_type
        spec = weighted_op(node)
        if spec is None or spec.refit is None:
            *others, last = refitted_ops()
            raise Unsupported(f"{op} is not refitted ({', '.join(others)} and {last} are)")
        slot = spec.weight_slot if spec.weight_slot is not None else 1
        w = index.const(node.input[slot])
        if w is None:
            raise Unsupported(f"weight '{node.input[slot]}' of {op} is not a constant")
        bias = None
        if spec.refit in ("conv", "gemm") and len(node.input) > 2 and node.input[2]:
            bias = index.const(node.input[2])
            if bias is None:
                raise Unsupported(f"bias '{node.input[2]}' of {op} is not a constant")
        if spec.refit == "conv":
            if int(attr(node, "group", 1)) != 1:
                raise Unsupported(f"grouped convolution (group={attr(node, 'group')})")
            return cls(node, "conv", w, bias, 1)
        if spec.refit == "gemm":
            n = w.shape[0] if int(attr(node, "transB", 0)) else w.shape[1]
            if bias is not None and bias.size not in (1, n):
                raise Unsupported(f"Gemm bias C has shape {list(bias.shape)}, not one value per output")
            return cls(node, "gemm", w, bias, 0 if int(attr(node, "transA", 0)) else 1)
        if w.ndim != 2:
            raise Unsupported(f"MatMul weight of rank {w.ndim}")
        rank = index.rank(node.input[0])
        if rank is None:
            raise Unsupported(f"rank of MatMul input '{node.input[0]}' is unknown")
        return cls(node, "matmul", w, None, rank - 1)

    # -- weights ------------------------------------------------------------
    @property
    def outputs(self) -> int:
        return self.effective_weight().shape[0]

    def effective_weight(self) -> np.ndarray:
        """W_eff, shape [N, D] for Gemm/MatMul and [N, C, *kernel] for Conv, float64."""
        w = self.weight.astype(np.float64)
        if self.kind == "conv":
            return w
        if self.kind == "gemm":
            alpha = float(attr(self.node, "alpha", 1.0))
            return alpha * (w if int(attr(self.node, "transB", 0)) else w.T)
        return w.T

    def per_input(self) -> np.ndarray:
        """[N, C]: the weight of each input channel summed over the kernel (for mean shifts)."""
        w = self.effective_weight()
        return w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) if self.kind == "conv" else w

    def effective_bias(self) -> np.ndarray:
        n = self.outputs
        if self.bias_value is None or self.kind == "matmul":
            return np.zeros(n)
        b = np.broadcast_to(self.bias_value.astype(np.float64).reshape(-1), (n,)) if self.bias_value.size == 1 \
            else self.bias_value.astype(np.float64).reshape(-1)
        if self.kind == "gemm":
            b = float(attr(self.node, "beta", 1.0)) * b
        return np.array(b)

    def stored_weight(self, w_eff: np.ndarray) -> np.ndarray:
        """The initializer holding ``w_eff`` (inverse of ``effective_weight``), in the stored dtype."""
        if self.kind == "conv":
            w = w_eff.reshape(w_eff.shape[0], -1, *self.weight.shape[2:])
        elif self.kind == "gemm":
            w = w_eff / float(attr(self.node, "alpha", 1.0))
            w = w if int(attr(self.node, "transB", 0)) else w.T
        else:
            w = w_eff.T
        return np.ascontiguousarray(w).astype(self.weight.dtype)

    # -- rows -------------------------------------------------------------
    def rows_per_sample(self, x_shape: tuple[int, ...]) -> int:
        """Rows one sample of an input of shape ``x_shape`` gives (output positions for Conv)."""
        if self.kind == "conv":
            return int(np.prod(self._out_spatial(x_shape), dtype=np.int64))
        if self.kind == "gemm":
            return 1
        return int(np.prod(x_shape[1:-1], dtype=np.int64))

    def rows(self, x: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Rows [R, D] of the input batch ``x`` (sample-major), only those at ``index`` if given."""
        if self.kind == "conv":
            return self._patches(x, index)
        if self.kind == "gemm":
            a = x.T if self.in_axis == 0 else x
        else:
            a = x.reshape(-1, x.shape[-1])
        return a if index is None else a[index]

    def out_rows(self, y: np.ndarray) -> np.ndarray:
        """Rows [R, N] of the node's output ``y`` (a batch), aligned with ``rows``."""
        if self.kind == "conv":
            return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        return y.reshape(-1, y.shape[-1])

    def _geometry(self, x_shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
        spatial = len(x_shape) - 2
        if spatial not in (1, 2):
            raise Unsupported(f"{spatial}-D convolution (rows are built for 1-D and 2-D only)")
        kernel = [int(k) for k in self.weight.shape[2:]]
        strides = [int(v) for v in attr(self.node, "strides", [1] * spatial)]
        dilations = [int(v) for v in attr(self.node, "dilations", [1] * spatial)]
        begin, end = conv_pads(self.node, [int(v) for v in x_shape[2:]], kernel, strides, dilations)
        return kernel, strides, dilations, begin, end

    def _out_spatial(self, x_shape: tuple[int, ...]) -> list[int]:
        kernel, strides, dilations, begin, end = self._geometry(x_shape)
        return [(size + b + e - d * (k - 1) - 1) // s + 1
                for size, k, s, d, b, e in zip(x_shape[2:], kernel, strides, dilations, begin, end)]

    def _patches(self, x: np.ndarray, index: np.ndarray | None) -> np.ndarray:
        """im2col by gathering: row r = (sample, output position) holds the zero-padded input
        window, features ordered (channel, kernel position) like ``W.reshape(Cout, -1)``
        (the rows ``torch.nn.functional.unfold`` gives, for the selected positions only)."""
        kernel, strides, dilations, begin, end = self._geometry(x.shape)
        out = self._out_spatial(x.shape)
        if x.ndim == 3:  # 1-D: a 2-D convolution over a height of 1
            x = x[:, :, None, :]
            kernel, strides, dilations = [1, *kernel], [1, *strides], [1, *dilations]
            begin, end, out = [0, *begin], [0, *end], [1, *out]
        xp = np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
        per = out[0] * out[1]
        index = np.arange(len(x) * per) if index is None else np.asarray(index)
        sample, pos = np.divmod(index, per)
        oh, ow = np.divmod(pos, out[1])
        hh = oh[:, None] * strides[0] + np.arange(kernel[0])[None, :] * dilations[0]  # [R, KH]
        ww = ow[:, None] * strides[1] + np.arange(kernel[1])[None, :] * dilations[1]  # [R, KW]
        patches = xp[sample[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                     hh[:, None, :, None], ww[:, None, None, :]]  # [R, C, KH, KW]
        return patches.reshape(len(index), -1)


def conv_pads(node: onnx.NodeProto, size: list[int], kernel: list[int], strides: list[int],
              dilations: list[int]) -> tuple[list[int], list[int]]:
    """Explicit (begin, end) zero padding per spatial axis, ``auto_pad`` resolved."""
    n = len(size)
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for s, k, st, d in zip(size, kernel, strides, dilations):
            out = -(-s // st)
            total = max(0, (out - 1) * st + (k - 1) * d + 1 - s)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(attr(node, "pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


def pooled_source(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """The tensor [N, C, *spatial] whose mean over its spatial axes is the row a dense
    consumer (Gemm without transA, MatMul) reads, through GlobalAveragePool or ReduceMean
    and an optional Flatten / Reshape / Squeeze to [N, C]; None for any other input.

    The consumer is affine, so its output is the spatial mean of the same layer applied at
    every position: each position gives a row of the same problem (HW rows per sample)."""
    if node.op_type not in ("Gemm", "MatMul") or (node.op_type == "Gemm" and int(attr(node, "transA", 0))):
        return None
    tensor = node.input[0]
    if index.rank(tensor) != 2:
        return None
    producer = index.producer.get(tensor)
    keepdims = 0
    if producer is not None and producer.op_type in ("Flatten", "Reshape", "Squeeze"):
        if producer.op_type == "Flatten" and int(attr(producer, "axis", 1)) != 1:
            return None
        producer = index.producer.get(producer.input[0])
        keepdims = 1
    if producer is None:
        return None
    source = producer.input[0]
    rank = index.rank(source)
    if rank is None or rank < 3:
        return None
    if producer.op_type == "GlobalAveragePool":
        return source if keepdims else None
    if producer.op_type != "ReduceMean" or int(attr(producer, "keepdims", 1)) != keepdims:
        return None
    axes = attr(producer, "axes", None)
    if axes is None and len(producer.input) > 1 and producer.input[1]:
        value = index.const(producer.input[1])
        axes = None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    if axes is None or sorted(int(a) % rank for a in axes) != list(range(2, rank)):
        return None
    return source
