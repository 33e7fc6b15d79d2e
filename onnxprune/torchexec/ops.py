"""The op-implementation registry: one small function per ONNX op, ``@op("Conv")``.

An implementation is called as ``fn(node, *inputs)``: ``node`` is the :class:`Node`
(attributes, opset, constant inputs known in advance), ``inputs`` the node's input
tensors in slot order (``None`` for an omitted optional input). It returns one tensor
or a tuple with one entry per declared output (``None`` for an output nobody reads).

The implementations live in the ``ops_*`` modules, which register themselves on import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch

from onnxprune.extend import DuplicateRegistrationError
from onnxprune.torchexec.convert import attributes

OpFn = Callable[..., "torch.Tensor | tuple[torch.Tensor | None, ...]"]
OPS: dict[str, OpFn] = {}


def op(*op_types: str) -> Callable[[OpFn], OpFn]:
    """Register ``fn`` as the implementation of the given ONNX op types (default domain); an op
    type registered twice is refused (a second implementation never silently replaces the first)."""

    def register(fn: OpFn) -> OpFn:
        for name in op_types:
            if name in OPS:
                raise DuplicateRegistrationError(f"torch implementation of {name} registered twice")
            OPS[name] = fn
        return fn

    return register


# implementations of ops in other domains (onnxruntime's com.microsoft): (domain, op) -> fn
DOMAIN_OPS: dict[tuple[str, str], OpFn] = {}


def op_in(domain: str, *op_types: str) -> Callable[[OpFn], OpFn]:
    """Register ``fn`` as the implementation of the given op types of ``domain``."""

    def register(fn: OpFn) -> OpFn:
        for name in op_types:
            if (domain, name) in DOMAIN_OPS:
                raise DuplicateRegistrationError(f"torch implementation of {domain}::{name} registered twice")
            DOMAIN_OPS[(domain, name)] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    _load_families()
    return sorted(OPS)


def implementation(node: onnx.NodeProto, opset: int) -> OpFn:
    """The function executing ``node``, or a NotImplementedError naming the node and op."""
    _load_families()
    fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else DOMAIN_OPS.get((node.domain, node.op_type))
    if fn is None:
        domain = f" (domain '{node.domain}')" if node.domain not in ("", "ai.onnx") else ""
        raise NotImplementedError(
            f"node '{node.name}': op {node.op_type}{domain} has no torch implementation in "
            f"onnxprune.torchexec (opset {opset})")
    return fn


def _load_families() -> None:
    from onnxprune.torchexec import (  # noqa: F401
        ops_fused,
        ops_math,
        ops_nn,
        ops_quant,
        ops_resize,
        ops_rnn,
        ops_shape,
    )


class Node:
    """What an implementation knows about its node besides the input tensors."""

    __slots__ = ("attrs", "cache", "inputs", "name", "op_type", "opset", "outputs", "static")

    def __init__(self, proto: onnx.NodeProto, opset: int, static: dict[int, np.ndarray]) -> None:
        self.name = proto.name
        self.op_type = proto.op_type
        self.opset = opset
        self.attrs = attributes(proto)
        self.static = static  # slot -> value of a constant integer input, decoded once
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.cache: dict = {}  # per-node memo (e.g. Resize index tables per input shape and device)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op_type})"

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def wants(self, index: int) -> bool:
        """Whether output ``index`` is declared (optional outputs may be left out)."""
        return index < len(self.outputs) and bool(self.outputs[index])

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    def values(self, slot: int, value: torch.Tensor | None) -> np.ndarray | None:
        """The value of input ``slot`` as numpy (constants come from the cache, no device sync)."""
        if value is None:
            return None
        cached = self.static.get(slot)
        if cached is not None:
            return cached
        return value.detach().cpu().numpy()

    def ints(self, slot: int, value: torch.Tensor | None) -> list[int] | None:
        v = self.values(slot, value)
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]

    def scalar(self, slot: int, value: torch.Tensor | None):
        v = self.values(slot, value)
        return None if v is None else np.asarray(v).reshape(-1)[0].item()

    def error(self, message: str) -> NotImplementedError:
        return NotImplementedError(f"node '{self.name}' ({self.op_type}, opset {self.opset}): {message}")


# -- small helpers shared by the op families ---------------------------------------

def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def axes_of(axes: Sequence[int], rank: int) -> list[int]:
    return [axis_of(int(a), rank) for a in axes]


def torch_pads(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) pads of the trailing axes as ``F.pad``'s list (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(list(begins)), reversed(list(ends))):
        out += [int(b), int(e)]
    return out
