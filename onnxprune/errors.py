"""One error hierarchy for onnxprune: every message names the file, node or op at fault."""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""


class ModelLoadError(OnnxPruneError):
    """The model file is missing, unreadable, not ONNX, truncated, or fails the checker."""


class ModelMismatchError(OnnxPruneError):
    """Two models that must share an interface (an original and its pruned copy) do not."""


class ModelRunError(OnnxPruneError):
    """onnxruntime could not run a model on the inputs it was given."""


class ShapeInferenceError(OnnxPruneError):
    """Shapes needed for pruning could not be inferred."""


class PlanError(OnnxPruneError):
    """A pruning plan is invalid or does not belong to the model it is applied to."""


class SelectionError(OnnxPruneError):
    """Pruning options (ratio, round-to, ignore patterns, ...) are invalid."""


class RewriteError(OnnxPruneError):
    """A rewrite pass failed; the message names the pass and the passes run before it."""


class OutputPathError(OnnxPruneError):
    """The output path is unusable (for example, it is the input file)."""


class RuntimeUnavailableError(OnnxPruneError):
    """onnxruntime (or torch, for the optional features) is not installed."""


class DataError(OnnxPruneError):
    """A data file (inputs, calibration arrays) is missing, unreadable or not plain arrays."""
