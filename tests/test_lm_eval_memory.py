"""Memory of the Taylor pass on a decoder LM (issue 13): activations recomputed in the backward
pass (``OnnxModule.recompute``) give the same next-token scores to the bit. A small random-weight
model of SmolLM2's structure; skipped without transformers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB  # noqa: E402


def test_taylor_scores_with_recomputed_activations_are_the_same_to_the_bit(tiny_lm, monkeypatch):
    from onnxprune.torchexec import OnnxModule
    from onnxprune.verify import lm_eval

    model, analysis = tiny_lm
    windows = np.random.default_rng(0).integers(0, TINY_VOCAB, (5, 24)).astype(np.int64)
    kept = lm_eval.next_token_taylor_scores(model, analysis, windows, batch_size=2, recompute=False)
    used = []
    stretches = OnnxModule._run_stretches
    monkeypatch.setattr(OnnxModule, "_run_stretches", lambda self, *a: used.append(self.recompute_every)
                        or stretches(self, *a))
    again = lm_eval.next_token_taylor_scores(model, analysis, windows, batch_size=2, recompute=True)
    assert used and set(used) == {lm_eval.recompute_stretch(len(OnnxModule(model).node_names))}
    assert set(again) == set(kept)
    for gid in kept:
        assert np.array_equal(again[gid], kept[gid]), gid
    # by default only a large model recomputes (the tiny one keeps its activations)
    used.clear()
    lm_eval.next_token_taylor_scores(model, analysis, windows[:2], batch_size=2)
    assert not used
    monkeypatch.setattr(lm_eval, "RECOMPUTE_BYTES", 0)
    lm_eval.next_token_taylor_scores(model, analysis, windows[:2], batch_size=2)
    assert used


def test_recompute_stretch_is_about_the_square_root():
    from onnxprune.verify.lm_eval import recompute_stretch

    assert [recompute_stretch(n) for n in (1, 2, 4, 5, 100, 101, 2000)] == [1, 2, 2, 3, 10, 11, 45]
