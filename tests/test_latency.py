"""Latency tables and allocation to a latency target (onnxprune.selection.latency).

Timing is on CPU with one intra-op thread and few runs; the target is checked with a
generous tolerance (shared CI machines are noisy). The CUDA / TensorRT code path (IO
binding, provider chain) is tested against a mocked onnxruntime, and on a real GPU when
onnxruntime-gpu sees one.
"""

from __future__ import annotations

import functools
import json
import types

import numpy as np
import onnx
import pytest

from onnxprune.selection import latency as lat
from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, load, score_channels
from onnxprune.errors import PlanError, SelectionError
from onnxprune.runtime.session import random_inputs
from tests.zoo_cache import zoo_path

RUNS = dict(threads=1, runs=10, warmup=3)


@functools.lru_cache(maxsize=None)
def _resnet18():
    model = load(zoo_path("resnet18"))
    analysis = analyze(model)
    feeds = random_inputs(model)
    table = lat.build_latency_table(model, analysis, feeds=feeds, round_to=8, **RUNS)
    return model, analysis, feeds, table


def _synthetic(measured: lat.LatencyTable, analysis, calibration=None) -> lat.LatencyTable:
    """The measured table's groups and points with noise-free timings: 100 ms, each group
    saving up to 60 ms x its share of the model's MACs, in proportion to the units it loses
    (logic under test must not hinge on a busy machine's timings)."""
    total = sum(analysis.group(gid).macs for gid in measured.groups)
    groups = {gid: {**e, "points": [[k, 100.0 - 60.0 * analysis.group(gid).macs / total * (1 - k / e["size"])]
                                    for k, _ in e["points"]]}
              for gid, e in measured.groups.items()}
    return lat.LatencyTable.from_dict({**measured.to_dict(), "base_ms": 100.0, "groups": groups,
                                       "calibration": calibration})


def test_table_covers_every_prunable_group_and_round_trips_json(tmp_path):
    model, analysis, feeds, table = _resnet18()
    assert table.provider == "CPUExecutionProvider" and table.threads == 1
    assert table.fingerprint == analysis.fingerprint and table.base_ms > 0
    assert table.inputs == {k: list(v.shape) for k, v in feeds.items()}
    assert not table.missing(analysis)
    for g in analysis.prunable_groups:
        entry = table.groups[g.id]
        ks = [k for k, _ in entry["points"]]
        assert ks == lat.table_points(g, round_to=8)
        assert all((k * g.unit_width) % 8 == 0 and 0 < k < g.size for k in ks)
        assert all(ms > 0 for _, ms in entry["points"])
    path = tmp_path / "lat.json"
    table.save(path)
    data = json.loads(path.read_text())
    assert data["format_version"] == lat.FORMAT_VERSION and list(data["tables"]) == [table.key]
    back = lat.LatencyTable.load(path, fingerprint=analysis.fingerprint, provider="cpu",
                                 inputs={k: v.shape for k, v in feeds.items()}, threads=1)
    assert back is not None and back.to_dict() == table.to_dict()
    # a second table (another provider) is added beside the first, not over it
    other = lat.LatencyTable.from_dict({**table.to_dict(), "provider": "CUDAExecutionProvider"})
    other.save(path)
    assert len(json.loads(path.read_text())["tables"]) == 2
    assert lat.LatencyTable.load(path, provider="cuda").provider == "CUDAExecutionProvider"
    assert lat.LatencyTable.load(path, provider="cpu").to_dict() == table.to_dict()
    assert lat.LatencyTable.load(path, fingerprint="another model") is None
    assert lat.LatencyTable.load(path, threads=4) is None


def test_cached_table_is_reused_and_completed(tmp_path):
    model, analysis, feeds, table = _resnet18()
    path = tmp_path / "lat.json"
    partial = lat.LatencyTable.from_dict(table.to_dict())
    dropped = analysis.prunable_groups[0].id
    del partial.groups[dropped]
    partial.save(path)
    completed = lat.load_or_build_table(path, model, analysis, feeds=feeds, round_to=8, **RUNS)
    assert not completed.missing(analysis)
    assert completed.base_ms == table.base_ms  # the cached measurements are kept
    for gid, entry in table.groups.items():
        if gid != dropped:
            assert completed.groups[gid] == entry
    again = lat.LatencyTable.load(path, fingerprint=analysis.fingerprint)
    assert again is not None and not again.missing(analysis)


def test_bad_table_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not a JSON latency table"):
        lat.LatencyTable.load(bad)
    bad.write_text(json.dumps({"format_version": 99, "tables": {}}))
    with pytest.raises(PlanError, match="format_version"):
        lat.LatencyTable.load(bad)
    with pytest.raises(PlanError, match="not found"):
        lat.LatencyTable.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="malformed"):
        lat.LatencyTable.from_dict({"fingerprint": "x"})


def test_interpolation_is_monotone_clamped_and_additive():
    table = lat.LatencyTable(fingerprint="f", provider="CPUExecutionProvider", inputs={"x": [1, 3]}, threads=1,
                             base_ms=10.0, groups={
                                 "a": {"size": 8, "unit_width": 1, "points": [[6, 9.0], [4, 7.0], [2, 6.0]]},
                                 # noisy: pruning to 6 measured slower than the unpruned model
                                 "b": {"size": 8, "unit_width": 1, "points": [[6, 10.5], [4, 9.0]]},
                             })
    assert table.latency("a", 8) == 10.0
    assert table.latency("a", 5) == pytest.approx(8.0)
    assert table.latency("a", 1) == pytest.approx(5.5)  # the last segment's slope below the last point
    assert table.latency("b", 6) == 10.0  # never predicted slower than with more channels
    assert table.saving("b", 4) == pytest.approx(1.0)
    assert table.latency("unknown", 3) == 10.0
    assert table.predict({"a": 4, "b": 4}) == pytest.approx(10.0 - 3.0 - 1.0)
    kept = [table.latency("a", k) for k in range(0, 9)]
    assert kept == sorted(kept) and min(kept) >= 0.0


def test_parse_latency_target():
    assert lat.parse_latency_target("12.5", lambda: 99.0) == 12.5
    assert lat.parse_latency_target("3ms", lambda: 99.0) == 3.0
    assert lat.parse_latency_target("70%", lambda: 10.0) == pytest.approx(7.0)
    assert lat.parse_latency_target("0.5x", lambda: 10.0) == pytest.approx(5.0)
    with pytest.raises(SelectionError, match="target-latency"):
        lat.parse_latency_target("fast", lambda: 1.0)


@pytest.mark.parametrize("order", ["score", "efficiency"])
def test_prediction_fits_target_without_measuring(order):
    model, analysis, _, measured = _resnet18()
    table = _synthetic(measured, analysis)
    scores = score_channels(model, analysis, "l2")
    target = 0.8 * table.base_ms
    result = lat.select_to_latency(model, analysis, scores, target, table, round_to=8, measure=False, order=order)
    assert result.measured_ms is None and result.met
    assert result.predicted_ms <= target
    assert result.plan.keep  # something was pruned
    for gid, keep in result.plan.keep.items():
        assert (len(keep) * analysis.group(gid).unit_width) % 8 == 0
    # a looser target prunes no more
    looser = lat.select_to_latency(model, analysis, scores, 0.95 * table.base_ms, table, round_to=8,
                                   measure=False, order=order)
    removed = lambda r: sum(analysis.group(g).size - len(k) for g, k in r.plan.keep.items())  # noqa: E731
    assert removed(looser) <= removed(result)


def test_interaction_correction_is_a_fraction():
    model, analysis, _, table = _resnet18()
    predictor = lat.LatencyPredictor(model, analysis, table, calibrated=False)
    half = {g.id: g.size // 2 for g in analysis.prunable_groups}
    c = predictor.correction(half)
    assert 0.0 < c < 1.0  # chained convolutions: savings overlap
    one = analysis.prunable_groups[-1]
    assert predictor.correction({one.id: one.size // 2}) == pytest.approx(1.0)
    assert predictor(half) >= table.predict(half)
    assert predictor.scale == 1.0


def test_calibration_measurement_scales_predictions():
    model, analysis, _, measured = _resnet18()
    cal = measured.calibration
    assert cal is not None and cal["ms"] > 0
    assert set(cal["counts"]) == {g.id for g in analysis.prunable_groups if measured.groups[g.id]["points"]}
    # the scaling itself is checked on synthetic timings: on a busy machine the measured
    # separate savings can add up to more than the whole model, and predictions clip at 0 ms
    counts = dict(cal["counts"])
    plain = lat.LatencyPredictor(model, analysis, _synthetic(measured, analysis))
    assert plain.scale == 1.0
    saving = 100.0 - plain(counts)
    assert 0 < saving < 100.0
    smallest = {gid: min(k for k, _ in e["points"]) for gid, e in measured.groups.items() if e["points"]}
    for ratio, scale in [(0.7, 0.7), (1.2, 1.2), (3.0, 1.5), (0.05, 0.2)]:  # the last two clip
        table = _synthetic(measured, analysis, {"counts": counts, "ms": 100.0 - ratio * saving})
        predictor = lat.LatencyPredictor(model, analysis, table)
        assert predictor.scale == pytest.approx(scale)
        assert 100.0 - predictor(counts) == pytest.approx(scale * saving)
        assert 100.0 - predictor(smallest) == pytest.approx(scale * (100.0 - plain(smallest)))
        if ratio == scale:  # not clipped: the calibration plan is predicted as measured
            assert predictor(counts) == pytest.approx(100.0 - ratio * saving)


def test_measured_latency_meets_target():
    """The acceptance check: target 0.7 x the original's measured p50; the pruned model, as
    measured by the tool, is within 25 % of it."""
    model, analysis, feeds, table = _resnet18()
    scores = score_channels(model, analysis, "l2")
    original = lat.benchmark(model, feeds, threads=1, runs=20, warmup=3)["p50"]
    target = 0.7 * original
    result = lat.select_to_latency(model, analysis, scores, target, table, round_to=8, feeds=feeds,
                                   tolerance=0.1, max_tries=4, runs=20)
    assert result.measured_ms is not None and result.original_ms is not None
    assert result.measured_ms <= 1.25 * target, result.to_dict()
    assert 1 <= len(result.tries) <= 4
    assert all({"step", "predicted_ms", "measured_ms", "raw_ms", "original_ms"} <= set(t) for t in result.tries)
    assert len({t["step"] for t in result.tries}) == len(result.tries)  # never the same plan twice
    assert result.plan.options["budget"] == "latency"
    apply_plan(model, analysis, result.plan)  # a valid plan


def test_benchmark_pair_and_feeds_for_batch():
    model, analysis, feeds, _ = _resnet18()
    a, b = lat.benchmark_pair(model, model, feeds, threads=1, runs=6, rounds=3, warmup=1)
    assert a["runs"] == b["runs"] == 6 and a["p50"] > 0 and b["p50"] > 0
    assert lat.static_batch(model) == 1
    assert lat.feeds_for_batch(model, feeds, 4) is None  # the export's batch is fixed
    assert lat.feeds_for_batch(model, feeds, 1)["input"].shape == feeds["input"].shape


# -- CUDA / TensorRT path, with onnxruntime mocked ---------------------------------------------


class _FakeBinding:
    def __init__(self, log):
        self.log = log

    def bind_ortvalue_input(self, name, value):
        self.log.append(("input", name, value.device))

    def bind_output(self, name, device, device_id):
        self.log.append(("output", name, device))

    def synchronize_outputs(self):
        self.log.append(("sync",))


class _FakeSession:
    instances: list = []

    def __init__(self, src, sess_options=None, providers=None):
        self.providers, self.options, self.log = providers, sess_options, []
        _FakeSession.instances.append(self)

    def get_outputs(self):
        return [types.SimpleNamespace(name="y")]

    def io_binding(self):
        return _FakeBinding(self.log)

    def run_with_iobinding(self, binding):
        self.log.append(("run",))

    def run(self, names, feeds):  # the CPU path; must not be used on CUDA
        raise AssertionError("CUDA timing must use IO binding")


def _fake_ort():
    class OrtValue:
        def __init__(self, device):
            self.device = device

        @staticmethod
        def ortvalue_from_numpy(arr, device, device_id):
            return OrtValue(device)

    return types.SimpleNamespace(
        SessionOptions=lambda: types.SimpleNamespace(),
        GraphOptimizationLevel=types.SimpleNamespace(ORT_ENABLE_ALL="all", ORT_DISABLE_ALL="none"),
        ExecutionMode=types.SimpleNamespace(ORT_SEQUENTIAL="seq"),
        InferenceSession=_FakeSession, OrtValue=OrtValue, __version__="fake",
        get_available_providers=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                         "CPUExecutionProvider"])


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_use_io_binding(monkeypatch, provider):
    monkeypatch.setattr("onnxprune.runtime.timing._ort", _fake_ort)  # the timer lives in runtime/
    _FakeSession.instances.clear()
    stats = lat.benchmark(b"model", {"x": np.zeros((1, 3), np.float32)}, provider=provider, threads=2, warmup=2,
                          runs=5)
    assert stats["runs"] == 5
    sess = _FakeSession.instances[-1]
    names = [p[0] if isinstance(p, tuple) else p for p in sess.providers]
    expected = (["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else
                ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert names == expected
    assert sess.options.intra_op_num_threads == 2 and sess.options.graph_optimization_level == "all"
    assert ("input", "x", "cuda") in sess.log and ("output", "y", "cuda") in sess.log
    assert sess.log.count(("run",)) == 7 and sess.log.count(("sync",)) == 7  # warm-up + timed


def test_unknown_provider():
    from onnxprune.errors import RuntimeUnavailableError

    with pytest.raises(RuntimeUnavailableError, match="unknown provider"):
        lat.full_provider("npu")


def test_real_gpu_latency_table_when_available():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDAExecutionProvider here (onnxruntime-gpu and a GPU needed)")
    model = load(zoo_path("vgg"))
    analysis = analyze(model)
    table = lat.build_latency_table(model, analysis, provider="cuda", runs=5, warmup=3, round_to=8)
    assert table.provider == "CUDAExecutionProvider" and not table.missing(analysis)


# -- command line ------------------------------------------------------------------------------


def test_cli_prune_target_latency(monkeypatch, capsys, tmp_path):
    from tests.test_cli import cli

    out, table = tmp_path / "small.onnx", tmp_path / "lat.json"
    code, text, err = cli(monkeypatch, capsys, "prune", zoo_path("resnet18"), "-o", out, "--target-latency", "0.7x",
                          "--round-to", "8", "--latency-table", table, "--provider", "cpu")
    assert code == 0, err
    assert out.exists() and table.exists()
    assert "latency p50" in text and "target" in text and "measured" in text
    data = json.loads(table.read_text())
    assert len(data["tables"]) == 1
    code, _, err = cli(monkeypatch, capsys, "prune", zoo_path("resnet18"), "-o", tmp_path / "o.onnx",
                       "--ratio", "0.3", "--target-latency", "5")
    assert code != 0 and "exactly one" in err and "--target-latency" in err


# -- hardware channel block and timing sessions -------------------------------------------------


def test_channel_block_is_the_padding_onnxruntime_applies():
    """A convolution with 24 output channels runs with its weights padded to the block."""
    import tempfile

    from onnx import TensorProto, helper, numpy_helper

    ort = pytest.importorskip("onnxruntime")
    block = lat.channel_block("cpu")
    assert block in (1, 8, 16, 32)
    assert lat.channel_block("cuda") == 8 and lat.resolve_align("auto", "cpu") == block
    assert lat.resolve_align(None) == 1 and lat.resolve_align("8") == 8
    for bad in ("x", 0, "-2"):
        with pytest.raises(SelectionError, match="align"):
            lat.resolve_align(bad)
    w = numpy_helper.from_array(np.ones((24, 32, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 16, 16])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    dims = {i.name: list(i.dims) for i in optimized.graph.initializer}
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    assert dims[conv.input[1]][0] == -(-24 // block) * block  # 24 channels computed as the next multiple


def test_timing_sessions_do_not_spin_unless_asked(monkeypatch):
    entries = []

    def options():
        return types.SimpleNamespace(add_session_config_entry=lambda k, v: entries.append((k, v)))

    fake = _fake_ort()
    fake.SessionOptions = options
    monkeypatch.setattr("onnxprune.runtime.timing._ort", lambda: fake)  # the timer lives in runtime/
    lat.timing_session(b"model", threads=2)
    lat.timing_session(b"model", threads=2, spin=True)
    assert entries == [("session.intra_op.allow_spinning", "0"), ("session.intra_op.allow_spinning", "1")]


def test_select_to_latency_with_align_keeps_block_multiples():
    model = load(zoo_path("mobilenetv2"))
    analysis = analyze(model)
    table = lat.build_latency_table(model, analysis, threads=1, runs=3, warmup=1, round_to=8)
    scores = score_channels(model, analysis, "l2")
    result = lat.select_to_latency(model, analysis, scores, table.base_ms * 0.6, table, round_to=8, align=16,
                                   measure=False)
    assert result.plan.options["align"] == 16
    for gid, keep in result.plan.keep.items():
        kept = len(keep) * analysis.group(gid).unit_width
        assert kept % 16 == 0 or kept == 8
