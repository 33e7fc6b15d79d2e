"""Errors of the training-time methods (usage errors: ``onnxprune.errors.UsageError``)."""

from __future__ import annotations

from onnxprune.errors import UsageError


class TrainingError(UsageError):
    """Training options or data that cannot work (nothing to learn from, bad optimiser, ...)."""


class TeacherMismatchError(TrainingError):
    """The teacher model's inputs or outputs (names, ranks, static sizes, types) differ from the student's."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be read or belongs to another model or configuration."""
