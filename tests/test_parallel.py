"""Per-weight work on threads: results in order, bounded work in flight, errors raised,
and the threaded pipeline writes exactly what the single-threaded one writes."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis import analyze
from onnxprune.api import score_channels
from onnxprune.parallel import ordered_map, weight_workers
from onnxprune.passes import constants
from tests.test_mapped import _big_model, _write


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    lock = threading.Lock()
    started, yielded, peak = [0], [0], [0]

    def work(i: int) -> int:
        with lock:
            started[0] += 1
            peak[0] = max(peak[0], started[0] - yielded[0])
        time.sleep(random.random() * 0.002)
        return i * i

    out = []
    for r in ordered_map(work, range(50), workers=3):
        out.append(r)
        with lock:
            yielded[0] += 1
    assert out == [i * i for i in range(50)]
    assert 1 < peak[0] <= 2 * 3 + 1


def test_ordered_map_raises_the_error_of_its_item():
    def work(i: int) -> int:
        if i == 7:
            raise ValueError("item 7")
        return i

    got = []
    with pytest.raises(ValueError, match="item 7"):
        for r in ordered_map(work, range(20), workers=2):
            got.append(r)
    assert got == list(range(7))


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_THREADS", "3")
    assert weight_workers() == 3
    monkeypatch.setenv("ONNXPRUNE_THREADS", "lots")
    with pytest.raises(ValueError, match="ONNXPRUNE_THREADS"):
        weight_workers()


@pytest.mark.parametrize("mapped", [False, True])
def test_threads_change_nothing(tmp_path, monkeypatch, mapped):
    monkeypatch.setattr(constants, "PARALLEL_MIN_ELEMENTS", 0)  # slice on threads even this small model
    src = _write(_big_model(shared=True), tmp_path / "m.onnx")
    written, scores = [], []
    for threads in ("1", "4"):
        monkeypatch.setenv("ONNXPRUNE_THREADS", threads)
        model = onnxprune.load(src, mapped=mapped)
        analysis = analyze(model)
        s = score_channels(model, analysis, "l2")
        plan = onnxprune.plan_by_ratio(model, analysis, ratio=0.4, scores=s)
        out = tmp_path / f"p{threads}.onnx"
        onnxprune.save_model(onnxprune.apply_plan(model, analysis, plan).model, out)
        written.append(out.read_bytes())
        scores.append(s)
    assert written[0] == written[1]
    assert scores[0].keys() == scores[1].keys()
    assert all(np.array_equal(scores[0][k], scores[1][k]) for k in scores[0])
