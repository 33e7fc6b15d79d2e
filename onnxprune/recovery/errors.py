"""The error recovery raises for what a user can get wrong."""

from __future__ import annotations

from onnxprune.errors import UsageError


class RecoveryError(UsageError):
    """Recovery cannot run: unknown method, empty calibration set, a pruned model that does
    not belong to the original, inputs that ``augment`` cannot flip."""
