"""Memory of recovery's statistics of the original (issue 13): the per-channel moments bias
compensation and BN re-estimation read are measured from the original's cursor at the step
that first reads them, not in one whole-model run with every such tensor as an output. The
same moments to the bit, the same recovered bytes and report as that run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from onnxprune.io.calib_data import CalibrationData
from onnxprune.recovery import activations, pipeline, recover, segments
from onnxprune.recovery.segments import Cursor
from tests.test_recovery_memory import _calib, _pruned, _two_layer


def _recover_capturing(model, analysis, plan, pruned, calib, monkeypatch, **options):  # noqa: ANN001, ANN202
    """recover(...) and the original's moments it used, {(tensor, axis): (n, s1, s2)}."""
    seen: list[dict] = []
    run = pipeline._Recovery.run

    def capture(self):  # noqa: ANN001, ANN202
        out = run(self)
        seen.append({k: (m.n, m.s1.copy(), m.s2.copy()) for k, m in self.orig_means.items()})
        return out

    monkeypatch.setattr(pipeline._Recovery, "run", capture)
    recovered, report = recover(model, pruned, analysis, plan, calib, **options)
    monkeypatch.setattr(pipeline._Recovery, "run", run)
    return recovered, report, seen[0]


def _whole_model_stats_runs(monkeypatch) -> list[list[str]]:
    """Record every Probe.stream call's names (a whole-model run)."""
    calls: list[list[str]] = []
    stream = activations.Probe.stream

    def spy(self, model, names):  # noqa: ANN001, ANN202
        calls.append(list(names))
        return stream(self, model, names)

    monkeypatch.setattr(activations.Probe, "stream", spy)
    return calls


@pytest.mark.parametrize("batch_size", [7, 256])
def test_original_moments_come_from_the_cursor_with_the_same_values(tmp_path, monkeypatch, batch_size):
    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    options = {"methods": ("bias",), "bias_means": "original", "batch_size": batch_size}
    calls = _whole_model_stats_runs(monkeypatch)
    asked: list[list[str]] = []
    tensors = Cursor.tensors

    def spy(self, m, node, names, *, after=False):  # noqa: ANN001, ANN202
        asked.append(list(names))
        return tensors(self, m, node, names, after=after)

    monkeypatch.setattr(Cursor, "tensors", spy)
    recovered, report, moments = _recover_capturing(model, analysis, plan, pruned, _calib(), monkeypatch, **options)
    assert list(moments) == [("r", 1)] and moments[("r", 1)][0] == 30  # fc2's input; 30 fit samples
    assert ["r"] in asked  # read from the cursor ...
    assert not any("r" in names for names in calls)  # ... and by no whole-model run
    assert report["updated"].get("bias") == ["fc2"]

    # the whole-model run (no cursors: as before) gives the same moments, model and report
    monkeypatch.setattr(pipeline, "runs_in_stretches", lambda m: False)
    del calls[:]
    old, old_report, old_moments = _recover_capturing(model, analysis, plan, pruned, _calib(), monkeypatch, **options)
    assert ["r"] in calls
    assert old.SerializeToString() == recovered.SerializeToString() and old_report == report
    for key, (n, s1, s2) in old_moments.items():
        assert moments[key][0] == n
        assert moments[key][1].tobytes() == s1.tobytes() and moments[key][2].tobytes() == s2.tobytes()


def test_moments_the_cursor_cannot_serve_come_from_one_whole_model_run(tmp_path, monkeypatch):
    """A cursor that answers None (gave up, or past the point): that moment and every one still
    due are measured in one whole-model run, with the same values."""
    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    options = {"methods": ("bias",), "bias_means": "original", "batch_size": 7}
    recovered, report, moments = _recover_capturing(model, analysis, plan, pruned, _calib(), monkeypatch, **options)
    calls = _whole_model_stats_runs(monkeypatch)
    monkeypatch.setattr(Cursor, "tensors", lambda self, *a, **k: None)
    again, again_report, again_moments = _recover_capturing(model, analysis, plan, pruned, _calib(), monkeypatch,
                                                            **options)
    assert ["r"] in calls
    assert again.SerializeToString() == recovered.SerializeToString() and again_report == report
    assert {k: (n, a.tobytes(), b.tobytes()) for k, (n, a, b) in again_moments.items()} == \
        {k: (n, a.tobytes(), b.tobytes()) for k, (n, a, b) in moments.items()}


def test_refits_alone_measure_no_moments(tmp_path, monkeypatch):
    model, analysis = _two_layer(tmp_path)
    plan, pruned = _pruned(model, analysis)
    calls = _whole_model_stats_runs(monkeypatch)
    _, report, moments = _recover_capturing(model, analysis, plan, pruned, _calib(), monkeypatch, methods=("lstsq",))
    assert moments == {} and not any("r" in names and len(names) == 1 for names in calls)
    assert report["updated"]["lstsq"] == ["fc2"]


def _quarter_plan(model, analysis, rng: np.random.Generator):  # noqa: ANN001, ANN202
    """(plan, pruned model): a random quarter (at least one unit) of every prunable group removed."""
    from onnxprune.api import apply_plan
    from onnxprune.plan import Plan

    keep = {g.id: tuple(sorted(rng.choice(g.size, size=g.size - max(1, g.size // 4), replace=False).tolist()))
            for g in analysis.prunable_groups}
    plan = Plan(analysis.fingerprint, keep, {g.id: g.size for g in analysis.prunable_groups})
    return plan, apply_plan(model, analysis, plan).model


def test_decoder_moments_from_the_cursor_match_the_whole_model_run(tiny_lm, monkeypatch):
    """On a tiny decoder LM (bias compensation from the original's means, as the CLI runs a causal
    LM, four windows a batch): the same moments and recovered bytes with and without cursors."""
    from models.llm import TINY_VOCAB

    model, analysis = tiny_lm
    rng = np.random.default_rng(4)
    plan, pruned = _quarter_plan(model, analysis, rng)
    calib = CalibrationData({"input_ids": rng.integers(0, TINY_VOCAB, (24, 16)).astype(np.int64)})
    options = {"methods": ("bias", "lstsq"), "bias_means": "original", "batch_size": 4}
    recovered, report, moments = _recover_capturing(model, analysis, plan, pruned, calib, monkeypatch, **options)
    assert len(moments) >= 2
    monkeypatch.setattr(pipeline, "runs_in_stretches", lambda m: False)
    old, old_report, old_moments = _recover_capturing(model, analysis, plan, pruned, calib, monkeypatch, **options)
    assert old.SerializeToString() == recovered.SerializeToString() and old_report == report
    assert {k: (n, a.tobytes(), b.tobytes()) for k, (n, a, b) in old_moments.items()} == \
        {k: (n, a.tobytes(), b.tobytes()) for k, (n, a, b) in moments.items()}


# -- a large model's graph outputs run a stretch of the graph at a time -------------------------------

@pytest.fixture
def tiny_decoder(tiny_lm):  # noqa: ANN001, ANN201
    return tiny_lm[0]  # conftest's tiny LLaMA export


def _windows(n: int, seed: int = 5) -> CalibrationData:
    from models.llm import TINY_VOCAB

    return CalibrationData({"input_ids": np.random.default_rng(seed).integers(0, TINY_VOCAB, (n, 16)).astype(np.int64)})


@pytest.mark.parametrize("samples,stretch", [(12, 1 << 14), (8, 1 << 16), (8, 1 << 40), (10, 1 << 14)])
def test_outputs_run_in_stretches_are_the_whole_models_to_the_bit(tiny_decoder, monkeypatch, samples, stretch):
    """(10 samples: a shorter last batch; the export computes a shape from the batch size, which a
    cursor cannot cache: the graph runs in one stretch, as for any cut a cursor cannot make.)"""
    from onnxprune.recovery.segments import stretch_starts

    monkeypatch.setattr(segments, "STRETCHED_BYTES", 0)
    monkeypatch.setattr(segments, "STRETCH_BYTES", stretch)
    cuts = stretch_starts(tiny_decoder, stretch)
    assert (len(cuts) >= 3) == (stretch < 1 << 20)
    names = [o.name for o in tiny_decoder.graph.output]
    probe = activations.Probe(_windows(samples), 4)
    got = list(probe.stream(tiny_decoder, names))
    assert probe.stretched_runs == 1
    want = list(probe._whole(tiny_decoder, names))
    assert [(s, n) for s, n, _ in got] == [(s, n) for s, n, _ in want] == [(0, 4), (4, 4), (8, samples - 8)][
        :-(-samples // 4)]
    for (_, _, a), (_, _, b) in zip(got, want):
        assert list(a) == names
        for name in names:
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes()


def test_small_models_and_other_tensors_run_whole(tiny_decoder, monkeypatch):
    names = [o.name for o in tiny_decoder.graph.output]
    probe = activations.Probe(_windows(6), 4)
    list(probe.stream(tiny_decoder, names))  # under STRETCHED_BYTES
    monkeypatch.setattr(segments, "STRETCHED_BYTES", 0)
    inner = tiny_decoder.graph.node[len(tiny_decoder.graph.node) // 2].output[0]
    list(probe.stream(tiny_decoder, [inner]))  # not the graph outputs
    assert probe.stretched_runs == 0
    list(probe.stream(tiny_decoder, names))
    assert probe.stretched_runs == 1


def test_a_stretch_that_fails_falls_back_to_the_whole_model_from_that_batch(tiny_decoder, monkeypatch):
    monkeypatch.setattr(segments, "STRETCHED_BYTES", 0)
    monkeypatch.setattr(segments, "STRETCH_BYTES", 1 << 14)
    names = [o.name for o in tiny_decoder.graph.output]
    probe = activations.Probe(_windows(12), 4)
    want = list(probe._whole(tiny_decoder, names))
    stream = segments.Cursor._suffix_stream

    def failing_second(self, outputs, batches, bs):  # noqa: ANN001, ANN202
        for k, out in enumerate(stream(self, outputs, batches, bs)):
            if k == 1:
                raise segments.SuffixFailed("boom")
            yield out

    monkeypatch.setattr(segments.Cursor, "_suffix_stream", failing_second)
    got = list(probe.stream(tiny_decoder, names))
    assert probe.stretched_runs == 1
    assert [(s, n) for s, n, _ in got] == [(s, n) for s, n, _ in want]
    for (_, _, a), (_, _, b) in zip(got, want):
        assert all(a[k].tobytes() == b[k].tobytes() for k in names)


def test_recovery_with_outputs_in_stretches_gives_the_same_model(tiny_decoder, monkeypatch):
    """The decoder recipe's recovery (held-out reference and MSE runs, and the rest of the graph
    after each step for its held-out check, in stretches) recovers the same bytes and report as
    with whole-model runs."""
    from onnxprune.analysis import analyze

    analysis = analyze(tiny_decoder)
    plan, pruned = _quarter_plan(tiny_decoder, analysis, np.random.default_rng(7))
    calib = _windows(32, seed=8)  # 24 fit and 8 held-out windows: whole batches of 4
    options = {"methods": ("bias", "lstsq"), "bias_means": "original", "batch_size": 4, "residual": True}
    whole, whole_report = recover(tiny_decoder, pruned, analysis, plan, calib, **options)
    runs = []
    stretched = activations.Probe._stretched

    def counting(self, model, names):  # noqa: ANN001, ANN202
        out = stretched(self, model, names)
        runs.append(out is not None)
        return out

    monkeypatch.setattr(activations.Probe, "_stretched", counting)
    ahead = segments.Cursor._ahead
    moved = []

    def spy(self, model, start):  # noqa: ANN001, ANN202
        out = ahead(self, model, start)
        moved.append(out is not None and out.position > self.position)
        return out

    monkeypatch.setattr(segments.Cursor, "_ahead", spy)
    monkeypatch.setattr(segments, "STRETCHED_BYTES", 0)
    monkeypatch.setattr(segments, "STRETCH_BYTES", 1 << 14)
    got, report = recover(tiny_decoder, pruned, analysis, plan, calib, **options)
    assert sum(runs) >= 4  # the reference and recovered outputs, on fit and held-out samples
    assert sum(moved) > sum(runs)  # and the held-out checks of the steps (the rest of the graph after a node)
    assert got.SerializeToString() == whole.SerializeToString() and report == whole_report
