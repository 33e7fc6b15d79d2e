"""The per-op rule registry: one entry per op type, no if-chains.

A rule reads the live channel spaces of a node's inputs from the RuleContext and
writes its outputs' spaces and the edits pruning will need. A rule that does not
apply raises ``Unsupported(reason)``: the node's input channels are then blocked
with that reason (never guessed at).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxprune.analysis.context import RuleContext

Rule = Callable[[onnx.NodeProto, RuleContext], None]

_RULES: dict[str, Rule] = {}

# Ops with no rule on purpose, and why their channels are left alone.
KNOWN_BLOCKERS: dict[str, str] = {
    "If": "control flow (If): subgraphs are not analysed",
    "Loop": "control flow (Loop): subgraphs are not analysed",
    "Scan": "control flow (Scan): subgraphs are not analysed",
    "LSTM": "recurrent op (LSTM): its gates mix input channels in a fixed layout",
    "GRU": "recurrent op (GRU): its gates mix input channels in a fixed layout",
    "RNN": "recurrent op (RNN): its gates mix input channels in a fixed layout",
    "Einsum": "Einsum: index equations are not analysed",
    "QuantizeLinear": "quantized graph (QuantizeLinear): quantization parameters are not pruned",
    "DequantizeLinear": "quantized graph (DequantizeLinear): quantization parameters are not pruned",
    "QLinearConv": "quantized op (QLinearConv) is not supported",
    "QLinearMatMul": "quantized op (QLinearMatMul) is not supported",
    "ConvInteger": "quantized op (ConvInteger) is not supported",
    "MatMulInteger": "quantized op (MatMulInteger) is not supported",
    "Size": "Size reads the channel count into the computation",
    "NonZero": "data-dependent op (NonZero)",
}


class Unsupported(Exception):
    """Raised by a rule that cannot handle this node; the message is the user-facing reason."""


def register(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a rule for one or more op types of the default ONNX domain."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"rule for {op} registered twice")
            _RULES[op] = fn
        return fn

    return deco


def rule_for(node: onnx.NodeProto) -> tuple[Rule | None, str]:
    """The rule for a node, or None and the reason its channels are blocked."""
    if node.domain not in ("", "ai.onnx"):
        return None, f"custom-domain op {node.domain}::{node.op_type} is not supported"
    rule = _RULES.get(node.op_type)
    if rule is not None:
        return rule, ""
    return None, KNOWN_BLOCKERS.get(node.op_type, f"op {node.op_type} has no pruning rule")


def supported_ops() -> list[str]:
    return sorted(_RULES)
