"""The least-squares solvers of recovery: output-scale fits (Kwon et al. 2022) and weighted
rows, on problems with a known answer."""

from __future__ import annotations

import numpy as np

from onnxprune.recovery.lstsq import relative_error, ridge_fit
from onnxprune.recovery.scales import scale_fit


def test_scale_fit_recovers_per_channel_scales_and_bias():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w = rng.normal(size=(5, 6))
    true_s, true_b = np.array([0.5, 1.0, 2.0, -1.0, 1.5, 0.8]), rng.normal(size=5)
    y = (x * true_s) @ w.T + true_b
    s, b = scale_fit(x, y, w, np.arange(6), ridge=0.0)
    np.testing.assert_allclose(s, true_s, atol=1e-8)
    np.testing.assert_allclose(b, true_b, atol=1e-8)


def test_scale_fit_ties_the_features_of_one_channel():
    """Conv-style features (channel, kernel position): one scale per channel."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3 * 4))
    w = rng.normal(size=(7, 3 * 4))
    channel_of = np.repeat(np.arange(3), 4)
    true_s = np.array([0.3, 1.7, -0.4])
    y = (x * true_s[channel_of]) @ w.T
    s, _ = scale_fit(x, y, w, channel_of, ridge=0.0)
    np.testing.assert_allclose(s, true_s, atol=1e-8)


def test_scale_fit_ridge_pulls_towards_one():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(50, 4)), rng.normal(size=(3, 4))
    y = rng.normal(size=(50, 3))
    free, _ = scale_fit(x, y, w, np.arange(4), ridge=0.0)
    pulled, _ = scale_fit(x, y, w, np.arange(4), ridge=1e6)
    assert np.abs(pulled - 1).max() < 1e-3 < np.abs(free - 1).max()


def test_zero_weight_rows_do_not_count():
    """Rows weighted 0 (padded tokens) may hold anything: the fit is that of the other rows."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    w_true = rng.normal(size=(3, 4))
    y = x @ w_true.T + 0.5
    junk = np.arange(200) % 3 == 0
    y_junk = y.copy()
    y_junk[junk] = rng.normal(size=(int(junk.sum()), 3)) * 100
    a = (~junk).astype(float)
    w, b = ridge_fit(x, y_junk, np.zeros_like(w_true), 0.0, a)
    np.testing.assert_allclose(w, w_true, atol=1e-8)
    np.testing.assert_allclose(b, 0.5, atol=1e-8)
    s, b2 = scale_fit(x, y_junk, w_true, np.arange(4), 0.0, a)
    np.testing.assert_allclose(s, 1.0, atol=1e-8)
    assert relative_error(x, y_junk, w, b, a) < 1e-8 < relative_error(x, y_junk, w, b)


def test_output_weights_choose_which_outputs_a_scale_fit_serves():
    """Two outputs want opposite scales; the heavily weighted one wins."""
    x = np.random.default_rng(4).normal(size=(100, 1))
    w = np.array([[1.0], [1.0]])
    y = np.concatenate([2.0 * x, 0.5 * x], axis=1)
    s_first, _ = scale_fit(x, y, w, np.array([0]), 0.0, out_weight=np.array([1e6, 1.0]))
    s_second, _ = scale_fit(x, y, w, np.array([0]), 0.0, out_weight=np.array([1.0, 1e6]))
    assert abs(s_first[0] - 2.0) < 1e-3 and abs(s_second[0] - 0.5) < 1e-3
