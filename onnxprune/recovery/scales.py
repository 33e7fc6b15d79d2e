"""Output-scale tuning (Kwon et al. 2022), the solver: keep a consumer's pruned weights and
refit one scale per kept input channel (and the bias) so that its output reproduces the
original consumer's output.

With rows X' [R, D] of the consumer's input, targets Y [R, N], the pruned weights W [N, D]
and ``channel_of`` [D] mapping each feature to its input channel (Conv features are
(channel, kernel position)), find s [C] and b [N] minimising

    sum_r a_r sum_n c_n (Y - X' diag(s[channel_of]) W^T - b)_rn^2 + mu ||s - 1||^2,

with optional row weights a and output-channel weights c (``sensitivity``).

The problem has C unknowns but R x N equations, so it stays well posed where a full
least-squares refit of the weights (``lstsq``) is not: few calibration rows for a wide
layer (a transformer's output projection or FFN down-projection read by a few hundred
tokens). Its normal equations are cheap: G = A^T ((X^T X) * (W^T W)) A with A the
feature-to-channel one-hot matrix, both Gram matrices of the centred rows. ``ScaleProblem``
builds G once; each ridge strength of a grid is then one C x C solve.
"""

from __future__ import annotations

import numpy as np

from onnxprune.recovery.lstsq import RANK_TOL, weighted_mean


class ScaleProblem:
    """The normal equations of one scale refit, built once for a grid of ridge strengths."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, channel_of: np.ndarray,
                 row_weight: np.ndarray | None = None, out_weight: np.ndarray | None = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.w = np.asarray(w, dtype=np.float64)
        self.channel_of = np.asarray(channel_of, dtype=np.int64)
        self.channels = int(self.channel_of.max(initial=-1)) + 1
        a = np.ones(len(x)) if row_weight is None else np.asarray(row_weight, dtype=np.float64)
        c = np.ones(self.w.shape[0]) if out_weight is None else np.asarray(out_weight, dtype=np.float64)
        self.mx, self.my = weighted_mean(x, a), weighted_mean(y, a)
        xc, yc = x - self.mx, y - self.my
        xw = xc * a[:, None]
        wc = self.w * c[:, None]
        onehot = np.zeros((x.shape[1], self.channels))
        onehot[np.arange(x.shape[1]), self.channel_of] = 1.0
        self.gram = onehot.T @ ((xw.T @ xc) * (self.w.T @ wc)) @ onehot
        self.rhs = onehot.T @ ((xw.T @ yc) * wc.T).sum(1)
        diag = np.diag(self.gram)
        tol = RANK_TOL * float(diag.max(initial=0.0))
        self.rank = int((diag > tol).sum()) if tol > 0 else 0  # channels that vary (an upper bound)

    def fit(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """(s [C], b [N]) for the relative ridge ``ridge``."""
        n = self.channels
        mu = ridge * float(np.trace(self.gram)) / max(n, 1)
        mu = mu if mu > 0 else ridge
        system = self.gram + mu * np.eye(n)
        target = self.rhs + mu * np.ones(n)
        try:
            s = np.linalg.solve(system, target)
        except np.linalg.LinAlgError:
            s = np.linalg.lstsq(system, target, rcond=None)[0]
        return s, self.my - (self.mx * s[self.channel_of]) @ self.w.T


def scale_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, channel_of: np.ndarray, ridge: float,
              row_weight: np.ndarray | None = None,
              out_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(s [C], b [N]) for rows x [R, D], targets y [R, N], weights w [N, D] and the feature ->
    channel map ``channel_of`` [D]; ``ridge`` is relative to the mean diagonal of G; optional
    row weights [R] and output weights [N]."""
    return ScaleProblem(x, y, w, channel_of, row_weight, out_weight).fit(ridge)
