"""onnxprune: a structured-pruning compiler for ONNX models."""

from onnxprune.analysis import Analysis, Group, analyze
from onnxprune.api import PruneResult, apply_plan, load, plan_by_ratio, prune
from onnxprune.errors import OnnxPruneError
from onnxprune.io.modelio import save_model
from onnxprune.plan import Plan

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Group", "OnnxPruneError", "Plan", "PruneResult", "analyze", "apply_plan", "load",
    "plan_by_ratio", "prune", "save_model",
]
