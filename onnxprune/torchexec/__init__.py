"""A differentiable torch execution of an ONNX graph (optional: needs torch).

``OnnxModule(model)`` runs a (prepared) ONNX model node by node with torch ops, with
its float initializers as ``nn.Parameter``s, hooks on node inputs (where onnxprune
inserts channel gates), capture of intermediate tensors and write-back of trained
values into the ONNX initializers.
"""

from __future__ import annotations

from onnxprune._optional import require_torch

require_torch("the torch execution of a graph (calibration, Fisher-weighted recovery, training)")

from onnxprune.torchexec.module import OnnxModule
from onnxprune.torchexec.ops import OPS, Node, op, supported_ops

__all__ = ["OPS", "Node", "OnnxModule", "op", "supported_ops"]
