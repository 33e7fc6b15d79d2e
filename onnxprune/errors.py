"""One error hierarchy for onnxprune: every message names the file, node, op or option at fault.

Every error onnxprune raises on purpose is an ``OnnxPruneError`` of exactly one category:

- ``UsageError``: what the caller asked for is invalid or inconsistent (options, a recipe,
  a plan, an output path, a feature whose optional package is not installed);
- ``ModelError``: the model is unusable (unreadable, invalid, outside what can be pruned,
  or it does not run);
- ``DataError``: a data file (inputs, calibration arrays, images) is unusable;
- ``InternalError``: a step failed where it should not (a bug in onnxprune or a plugin);
  the message names the step.

The command line maps them to exit codes (``exit_code``; documented in README and ``--help``):
the caller's errors (usage, model, data) exit with 1, command-line syntax errors with 2 (click),
internal failures, and any exception that is not an ``OnnxPruneError``, with 70.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose (use a category below)."""


# -- categories ------------------------------------------------------------------------
class UsageError(OnnxPruneError):
    """What the caller asked for is invalid or inconsistent: options, arguments, a recipe,
    a plan, an output path, or a feature whose optional package is not installed."""


class ModelError(OnnxPruneError):
    """The model is unusable: unreadable, invalid, outside what onnxprune can prune, or it
    does not run."""


class DataError(OnnxPruneError):
    """A data file (inputs, calibration arrays) is missing, unreadable or not plain arrays."""


class InternalError(OnnxPruneError):
    """A step failed where it should not (a bug in onnxprune or a plugin); the message names it."""


class Unsupported(Exception):  # noqa: N818 (a verdict, not an error that reaches the user)
    """A node a step cannot handle (an analysis rule, a recovery refit); the message is the
    reason, which the caller records (a blocked group, a skipped layer). Never reaches the user
    as an error, so it is not an ``OnnxPruneError``."""


CATEGORIES: tuple[type[OnnxPruneError], ...] = (UsageError, ModelError, DataError, InternalError)

# -- exit codes of the command line ----------------------------------------------------
EXIT_USER_ERROR = 1  # UsageError, ModelError, DataError (and a failed verify gate)
EXIT_COMMAND_LINE = 2  # command-line syntax: unknown option, missing argument (click)
EXIT_INTERNAL = 70  # InternalError, or any exception that is not an OnnxPruneError (EX_SOFTWARE)


def exit_code(exc: BaseException) -> int:
    """The command line's exit code for an error that reached it."""
    if isinstance(exc, OnnxPruneError) and not isinstance(exc, InternalError):
        return EXIT_USER_ERROR
    return EXIT_INTERNAL


# -- usage -----------------------------------------------------------------------------
class SelectionError(UsageError):
    """Options that choose what to remove (ratio, budgets, round-to, alignment, ignore patterns,
    limits) are invalid."""


class ScoringError(SelectionError):
    """A criterion or its options are unknown or invalid (or it needs calibration data)."""


class OptionError(UsageError):
    """Command-line or API options that do not fit together (outside scoring and selection)."""


class PlanError(UsageError):
    """A pruning plan is invalid or does not belong to the model it is applied to."""


class OutputPathError(UsageError):
    """The output path is unusable (for example, it is the input file)."""


class RuntimeUnavailableError(UsageError):
    """onnxruntime (or torch, for the optional features) is not installed."""


# -- model -----------------------------------------------------------------------------
class ModelLoadError(ModelError):
    """The model file is missing, unreadable, not ONNX, truncated, or fails the checker."""


class ModelMismatchError(ModelError):
    """Two models that must share an interface (an original and its pruned copy) do not."""


class ModelRunError(ModelError):
    """onnxruntime could not run a model on the inputs it was given."""


class ShapeInferenceError(ModelError):
    """Shapes needed for pruning could not be inferred."""


# -- internal --------------------------------------------------------------------------
class RewriteError(InternalError):
    """A rewrite pass failed; the message names the pass and the passes run before it."""


class PipelineError(InternalError):
    """A rewrite pipeline cannot be built (an analysis fix-up kind no pass handles)."""
