"""Post-training recovery of pruned models, without retraining: bias compensation (FLAP),
least-squares reconstruction of consumers (He et al. 2017, ThiNet), output-scale tuning
(Kwon et al. 2022) and BatchNorm re-estimation, on calibration data, every step checked
on held-out samples. See docs/recovery.md.
"""

from onnxprune.recovery.errors import RecoveryError
from onnxprune.recovery.pipeline import recover
from onnxprune.recovery.report import METHODS, summary_line

__all__ = ["METHODS", "RecoveryError", "recover", "summary_line"]
