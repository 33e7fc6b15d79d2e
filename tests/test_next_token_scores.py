"""The next-token Taylor scores of a decoder LM (``lm_eval.next_token_taylor_scores``):
'taylor-fo' squares the gate gradient of each batch of windows, 'taylor-so' (the Fisher
surrogate) that of each window, from the same pass. A small random-weight model of SmolLM2's
structure; skipped without transformers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB  # noqa: E402
from onnxprune.verify import lm_eval  # noqa: E402


def _scores(tiny_lm, batch_size: int, criterion: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    windows = np.random.default_rng(0).integers(0, TINY_VOCAB, (6, 16)).astype(np.int64)
    return lm_eval.next_token_taylor_scores(*tiny_lm, windows, batch_size=batch_size, criterion=criterion)


def test_taylor_so_squares_each_window_whatever_the_batch(tiny_lm):
    one = _scores(tiny_lm, 1, "taylor-fo")  # a batch of one window: its own square
    so2, so3 = _scores(tiny_lm, 2, "taylor-so"), _scores(tiny_lm, 3, "taylor-so")
    fo2 = _scores(tiny_lm, 2, "taylor-fo")
    assert set(one) == set(so2) == set(so3) == set(fo2) and one
    for gid in one:
        np.testing.assert_allclose(so2[gid], one[gid], rtol=1e-9, atol=0)
        np.testing.assert_allclose(so3[gid], one[gid], rtol=1e-9, atol=0)
    assert any(not np.allclose(fo2[gid], so2[gid], rtol=1e-3) for gid in one)  # pairs summed before squaring


def test_unknown_next_token_criterion_is_refused(tiny_lm):
    with pytest.raises(lm_eval.LanguageModelError, match="unknown criterion 'l2' for the next-token loss"):
        _scores(tiny_lm, 2, "l2")


def test_a_decoder_scored_by_taylor_so_keeps_the_next_token_loss():
    from onnxprune.recipe import Context, Recipe, resolve

    ctx = Context(has_calib=True, transformer=True, causal_lm=True)
    r = resolve(Recipe(target_params=0.8, criterion="taylor-so"), ctx)
    assert (r.criterion, r.loss, r.ranking) == ("taylor-so", "next-token", "per-mac")
    assert "taylor-so (next-token loss)" in r.describe()
