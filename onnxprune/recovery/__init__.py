"""Post-training recovery of pruned models, without retraining: bias compensation (FLAP),
least-squares reconstruction of consumers (He et al. 2017, ThiNet) and BatchNorm
re-estimation, on calibration data. See docs/recovery.md.
"""

from onnxprune.recovery.pipeline import RecoveryError, recover
from onnxprune.recovery.report import METHODS

__all__ = ["METHODS", "RecoveryError", "recover"]
