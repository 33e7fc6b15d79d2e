"""BatchNormalization statistics for the pruned model.

``reestimate`` (the default; adaptive BN as in EagleEye, Li et al. 2020): the running mean and
variance become the calibration mean and variance of the BN's input in the current pruned
model. ``match``: they are set so that the BN's output keeps, per channel, the mean and
variance it had in the original model on the same data (an affine correction of the drift
that leaves a BN whose input did not change exactly as it was).
"""

from __future__ import annotations

import numpy as np


def reestimate(cur_mean: np.ndarray, cur_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cur_mean.copy(), cur_var.copy()


def match(mean: np.ndarray, var: np.ndarray, eps: float, orig_mean: np.ndarray, orig_var: np.ndarray,
          cur_mean: np.ndarray, cur_var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running (mean, var) such that gamma (x' - m') / s' + beta has the original output moments."""
    s = np.sqrt(var + eps)
    ok = (orig_var > 1e-12) & (cur_var > 1e-12)
    ratio = np.where(ok, np.sqrt(np.where(ok, cur_var, 1.0) / np.where(ok, orig_var, 1.0)), 1.0)
    s_new = s * ratio
    new_var = np.maximum(s_new ** 2 - eps, 0.0)
    s_new = np.sqrt(new_var + eps)
    new_mean = cur_mean - (orig_mean - mean) * s_new / s
    return new_mean, new_var
