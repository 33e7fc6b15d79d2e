"""Errors of the training-time methods (all are ``OnnxPruneError``s)."""

from __future__ import annotations

from onnxprune.errors import OnnxPruneError


class TrainingError(OnnxPruneError):
    """Training options or data that cannot work (nothing to learn from, bad optimiser, ...)."""


class TeacherMismatchError(TrainingError):
    """The teacher model's inputs or outputs (names, ranks, static sizes, types) differ from the student's."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read or belongs to another model or configuration."""
