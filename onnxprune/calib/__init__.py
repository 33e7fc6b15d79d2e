"""Calibration: data, channel gates in a torch execution of the graph, and data-driven
importance criteria (Taylor first/second order, Molchanov 2016, activation statistics,
the oracle)."""

from onnxprune.calib.data import CalibrationData, load_calibration
from onnxprune.calib.scores import DATA_DRIVEN, calibration_scores

__all__ = ["DATA_DRIVEN", "CalibrationData", "calibration_scores", "load_calibration"]
