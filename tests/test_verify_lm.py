"""verify on a causal LM's token windows streams: both models run once over the windows in
chunks, perplexity and the output comparison come from the same chunks (equal to computing
them on the whole), and progress is printed per chunk. Small random-weight LLaMA from
models/llm.py; skipped without transformers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.verify import compare
from onnxprune.verify.compare import OutputAgreement, compare_outputs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import TINY_VOCAB, export_causal_lm, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def llm_pair(tmp_path_factory) -> tuple[str, str]:
    """The tiny LLaMA and a copy with one layer's FFN halved (same interface, other logits)."""
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load
    from onnxprune.io.modelio import save_model
    from onnxprune.plan import Plan

    folder = tmp_path_factory.mktemp("verify_lm")
    path = str(export_causal_lm(tiny_llama(), folder / "tiny.onnx"))
    model = load(path)
    analysis = analyze(model)
    ffn = max(analysis.prunable_groups, key=lambda g: g.size)
    plan = Plan(fingerprint=analysis.fingerprint, keep={ffn.id: tuple(range(0, ffn.size, 2))},
                sizes={ffn.id: ffn.size}, criterion="test")
    pruned = save_model(apply_plan(model, analysis, plan).model, folder / "pruned.onnx")
    return path, str(pruned)


def _windows(n: int = 7, length: int = 24, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY_VOCAB, (n, length)).astype(np.int64)


def _torch_perplexity(model, windows: np.ndarray) -> float:  # noqa: ANN001
    with torch.no_grad():
        ids = torch.from_numpy(windows)
        return float(torch.exp(model(input_ids=ids, labels=ids).loss))


def test_streamed_perplexity_equals_a_direct_computation(llm_pair, monkeypatch):
    """Windows in chunks of 2 (outputs capped by RUN_BYTES): the perplexity verify reports is
    the torch model's own loss over all windows, the pruned model's is lm_eval.perplexity's,
    each model runs once over the windows (7 windows fed to each), and the output comparison
    equals comparing the whole logits at once."""
    from onnxprune.runtime.session import run
    from onnxprune.verify.lm_eval import perplexity

    original, pruned = llm_pair
    windows = _windows()
    fed: dict[int, list[int]] = {}
    real_session = compare.session

    def counting_session(model, **kwargs):  # noqa: ANN001, ANN202
        sess = real_session(model, **kwargs)
        key = len(fed)
        fed[key] = []

        class Counted:
            def get_outputs(self):  # noqa: ANN202
                return sess.get_outputs()

            def run(self, names, feed):  # noqa: ANN001, ANN202
                fed[key].append(len(feed["input_ids"]))
                return sess.run(names, feed)

        return Counted()

    per_window = 24 * TINY_VOCAB * 4  # bytes of one window's logits
    monkeypatch.setattr(compare, "session", counting_session)
    monkeypatch.setattr(compare, "RUN_BYTES", 2 * per_window)
    report = compare.verify(onnx.load(original), onnx.load(pruned), {"input_ids": windows}, runs=1, warmup=0)
    assert fed == {0: [1, 2, 2, 2], 1: [1, 2, 2, 2]}  # the first window alone sizes the chunks; once each
    lm = report["language_model"]
    assert lm["tokens_scored"] == 7 * 23 and lm["windows"] == 7
    assert lm["original"]["perplexity"] == pytest.approx(_torch_perplexity(tiny_llama(), windows), rel=1e-4)
    assert lm["pruned"]["perplexity"] == pytest.approx(perplexity(pruned, windows), rel=1e-5)
    assert lm["pruned"]["perplexity"] != pytest.approx(lm["original"]["perplexity"], rel=1e-6)  # random weights: close
    assert lm["throughput"]["batch"] == 1 and lm["throughput"]["tokens_per_run"] == 24  # one window timed
    assert report["batch_sizes"] == [1]
    whole = compare_outputs(run(onnx.load(original), {"input_ids": windows})["logits"],
                            run(onnx.load(pruned), {"input_ids": windows})["logits"])
    got = report["outputs"]["logits"]
    assert got["original_shape"] == got["pruned_shape"] == [7, 24, TINY_VOCAB]
    for key in ("max_abs_diff", "mean_abs_diff", "cosine", "cosine_min", "max_abs_original"):
        assert got[key] == pytest.approx(whole[key], rel=1e-6), key
    assert got["diff_histogram"]["counts"] == whole["diff_histogram"]["counts"]
    assert sum(got["diff_histogram"]["counts"]) == windows.size * TINY_VOCAB


def test_output_agreement_over_chunks_equals_the_whole():
    """Chunked agreement equals one comparison of the whole, classifier outputs (top-1 / top-5)
    and 1-d outputs (one vector) included; past its keep limit the histogram counts every k-th
    difference over the exact range."""
    rng = np.random.default_rng(0)
    for shape in [(50, 12), (9, 5, 7), (40,)]:
        a = rng.standard_normal(shape).astype(np.float32)
        b = a + 0.3 * rng.standard_normal(shape).astype(np.float32)
        whole = compare_outputs(a, b)
        acc = OutputAgreement(total=a.size)
        for lo, hi in [(0, 1), (1, 8), (8, len(a))]:
            acc.update(a[lo:hi], b[lo:hi])
        got = acc.result()
        assert got.keys() == whole.keys()
        for key, value in whole.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-9), (shape, key)
            else:
                assert got[key] == value, (shape, key)
    a = rng.standard_normal((20, 100))
    b = a + rng.standard_normal((20, 100))
    sampled = OutputAgreement(total=a.size, keep=500)
    for lo in range(0, 20, 3):
        sampled.update(a[lo:lo + 3], b[lo:lo + 3])
    hist = sampled.result()["diff_histogram"]
    assert hist["every"] == 4 and sum(hist["counts"]) == a.size // 4
    assert hist["edges"][-1] == pytest.approx(np.abs(b - a).max())
    mismatch = OutputAgreement()
    mismatch.update(a[:3], b[:3, :50])
    assert np.isnan(mismatch.result()["max_abs_diff"]) and mismatch.result()["pruned_shape"] == [3, 50]


def test_verify_prints_progress_per_chunk(llm_pair, tmp_path, monkeypatch, capsys):
    """Without a terminal, the CLI prints a line on stderr per chunk of windows and per timing
    step once the run has taken VERIFY_LINES_AFTER_S (0 here; a quick run prints none, see
    test_cli_output); the report still has the perplexity."""
    import sys

    import onnxprune.cli as cli
    from onnxprune.cli import main

    original, pruned = llm_pair
    np.savez(tmp_path / "w.npz", input_ids=_windows(5))
    monkeypatch.setattr(compare, "RUN_BYTES", 2 * 24 * TINY_VOCAB * 4)
    monkeypatch.setattr(cli, "VERIFY_LINES_AFTER_S", 0.0)
    monkeypatch.setattr(sys, "argv", ["onnxprune", "verify", original, pruned, "--calib", str(tmp_path / "w.npz"),
                                      "--runs", "2", "--warmup", "0"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert not exc.value.code, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("verify: ")]
    assert lines[:3] == ["verify: running both models: 1/5", "verify: running both models: 3/5",
                         "verify: running both models: 5/5"]
    assert lines[3].startswith("verify: timing the original model (CPU, batch 1, 0 + 2 runs)")
    assert lines[4].startswith("verify: timing the pruned model (CPU, batch 1, 0 + 2 runs)")
    assert "Language model" in captured.out and "perplexity (5 windows of 24" in captured.out
