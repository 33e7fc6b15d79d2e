"""Bias compensation (FLAP, Ma et al. 2023): keep the consumer's mean output.

For a mixing op y = W x + b, the original's mean output on the calibration data is
W mu + b (mu: per-input-channel means over samples and positions). The pruned op reads
only the kept channels with weights W'. The bias that restores the mean is

    b' = b + W_orig[kept outputs] mu  -  W' mu[kept inputs],

which for a plain slice (W' = W[:, kept]) is b + sum over removed j of W[:, j] mu_j, the
FLAP formula; when a plan merged removed channels into kept ones (their weights moved),
the same expression subtracts what the merge already accounts for. For a convolution
the weights are summed over the kernel: exact at interior positions, approximate within
(kernel - 1) / 2 of a zero-padded border (the removed channel contributed a partial sum
there, the bias adds the full one). Exact everywhere when the removed channels are
constant and the consumer has no padding.
"""

from __future__ import annotations

import numpy as np


def bias_delta(orig_per_input: np.ndarray, pruned_per_input: np.ndarray, in_mean: np.ndarray,
               in_kept: np.ndarray, out_kept: np.ndarray, kept_mean: np.ndarray | None = None) -> np.ndarray:
    """The change of bias, one value per kept output.

    orig_per_input: [N_orig, C_orig] original weights (summed over the kernel);
    pruned_per_input: [N_kept, C_kept] the pruned node's weights; in_mean: [C_orig] means of
    the original input channels; in_kept / out_kept: masks of the surviving channels.
    """
    full = orig_per_input[out_kept] @ in_mean
    kept = pruned_per_input @ (in_mean[in_kept] if kept_mean is None else kept_mean)
    return full - kept
