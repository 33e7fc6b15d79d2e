"""Post-training recovery of pruned models, without retraining: bias compensation (FLAP),
least-squares reconstruction of consumers (He et al. 2017, ThiNet), output-scale tuning
(Kwon et al. 2022) and BatchNorm re-estimation, on calibration data, every step checked
on held-out samples. See docs/recovery.md.
"""

from onnxprune.recovery.errors import RecoveryError
from onnxprune.recovery.pipeline import recover
from onnxprune.recovery.methods import register_recovery_method
from onnxprune.recovery.report import summary_line

__all__ = ["METHODS", "RecoveryError", "recover", "register_recovery_method", "summary_line"]


def __getattr__(name: str) -> object:
    if name == "METHODS":  # the registered recovery methods (a live view of recovery.methods)
        from onnxprune.recovery.methods import names

        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
