"""A differentiable torch execution of an ONNX graph (optional: needs torch).

``OnnxModule(model)`` runs a (prepared) ONNX model node by node with torch ops, with
its float initializers as ``nn.Parameter``s, hooks on node inputs (where onnxprune
inserts channel gates), capture of intermediate tensors and write-back of trained
values into the ONNX initializers.
"""

from __future__ import annotations

from onnxprune.errors import RuntimeUnavailableError

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised with torch hidden
    raise RuntimeUnavailableError(
        "onnxprune.torchexec needs torch, which is not installed: pip install 'onnxprune[torch]'"
    ) from exc

from onnxprune.torchexec.module import OnnxModule
from onnxprune.torchexec.ops import OPS, Node, op, supported_ops

__all__ = ["OPS", "Node", "OnnxModule", "op", "supported_ops"]
