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
from onnxprune.errors import Unsupported  # noqa: F401 (re-exported: the rules raise it)

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
    # QuantizeLinear / DequantizeLinear (QDQ) have rules: analysis/rules/quant.py
    **{op: f"QOperator form ({op}): integer activations with scales per op are not followed; "
           "quantize with QuantFormat.QDQ to prune" for op in
       ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")},
    "Size": "Size reads the channel count into the computation",
    "NonZero": "data-dependent op (NonZero)",
}


def register(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a rule for one or more op types of the default ONNX domain."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"rule for {op} registered twice")
            _RULES[op] = fn
        return fn

    return deco


# rules for ops of other domains (onnxruntime's com.microsoft fused ops): (domain, op) -> rule
_DOMAIN_RULES: dict[tuple[str, str], Rule] = {}


def register_in(domain: str, *op_types: str) -> Callable[[Rule], Rule]:
    """Register a rule for op types of ``domain`` (``com.microsoft``: onnxruntime's fused ops)."""

    def deco(fn: Rule) -> Rule:
        for op in op_types:
            if (domain, op) in _DOMAIN_RULES:
                raise ValueError(f"rule for {domain}::{op} registered twice")
            _DOMAIN_RULES[(domain, op)] = fn
        return fn

    return deco


def rule_for(node: onnx.NodeProto) -> tuple[Rule | None, str]:
    """The rule for a node, or None and the reason its channels are blocked."""
    if node.domain not in ("", "ai.onnx"):
        rule = _DOMAIN_RULES.get((node.domain, node.op_type))
        if rule is not None:
            return rule, ""
        return None, f"custom-domain op {node.domain}::{node.op_type} is not supported"
    rule = _RULES.get(node.op_type)
    if rule is not None:
        return rule, ""
    return None, KNOWN_BLOCKERS.get(node.op_type, f"op {node.op_type} has no pruning rule")


def supported_ops() -> list[str]:
    return sorted(_RULES)


def supported_domain_ops() -> list[str]:
    """Ops of other domains with a rule, as ``domain::op``."""
    return sorted(f"{d}::{op}" for d, op in _DOMAIN_RULES)
