"""Scoring: per-unit importance of every prunable group (data-free magnitude and similarity; calibrated Taylor/Fisher through gates in a torch execution). Every criterion is one entry of ``scoring.criteria``."""

from onnxprune.scoring.criteria import register_criterion

__all__ = ["register_criterion"]
