"""The quick speed check at the end of prune (onnxprune.verify.speedcheck): the judgement on
synthetic paired timings, the adaptive round loop on a fake clock, and one real call whose
result is checked for shape only (timings on a shared machine are not asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.verify.speedcheck import (
    MIN_ROUNDS,
    TOLERANCE,
    SpeedResult,
    block_size,
    judge,
    measure_speedup,
    paired_rounds,
)


def rounds_with(ratio: float, n: int = 60, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """(n, 2) times: the original at ~2 ms, the pruned model ``ratio`` times faster, both with
    multiplicative noise that hits each round's pair alike plus a little of their own."""
    rng = np.random.default_rng(seed)
    load = np.exp(rng.normal(0, 0.3, n))  # the machine's load, shared by the pair
    own = np.exp(rng.normal(0, noise, (n, 2)))
    return np.stack([2.0 * load, 2.0 / ratio * load], axis=1) * own


def test_clear_speedup_is_faster():
    result = judge(rounds_with(1.5))
    assert result.speedup == pytest.approx(1.5, rel=0.02)
    assert result.faster and not result.slower and result.verdict == "faster"
    assert "1.50x faster" in result.summary()
    assert result.rounds == 60 and result.runs == 60
    assert result.original_ms > result.pruned_ms


def test_clear_slowdown_is_slower_and_says_so():
    result = judge(rounds_with(0.85))
    assert result.speedup == pytest.approx(0.85, rel=0.02)
    assert result.slower and not result.faster and result.verdict == "slower"
    assert "SLOWER" in result.summary()
    assert result.to_dict()["verdict"] == "slower"


def test_difference_within_the_tolerance_is_not_called():
    result = judge(rounds_with(0.98, noise=0.001))
    assert result.margin == TOLERANCE
    assert not result.slower and not result.faster and result.verdict == "about the same"
    assert "about as fast" in result.summary()


def test_noisy_rounds_widen_the_margin():
    """Rounds whose pruned and original times are unrelated (each model hit by its own
    noise): 7% slower in the median is not called slower on 12 rounds."""
    rng = np.random.default_rng(1)
    times = np.stack([rng.uniform(1, 3, 12), rng.uniform(1, 3, 12) / 0.93], axis=1)
    result = judge(times)
    assert result.margin > 0.1
    assert not result.slower


def test_few_rounds_of_a_slow_model_get_a_margin_as_wide_as_their_spread():
    times = np.array([[250.0, 100.0], [280.0, 150.0], [260.0, 120.0], [270.0, 140.0]])  # ratios 1.87 to 2.5
    result = judge(times)
    ratios = times[:, 0] / times[:, 1]
    assert result.margin == pytest.approx((ratios.max() - ratios.min()) / 2 / np.median(ratios))
    assert result.faster


def test_spoiled_rounds_do_not_move_the_median():
    times = rounds_with(1.3)
    times[::10, 1] *= 20  # a neighbour's burst of work during every tenth pruned block
    result = judge(times)
    assert result.speedup == pytest.approx(1.3, rel=0.03)
    assert result.faster


def test_timer_that_reads_zero_does_not_divide_by_zero():
    result = judge(np.zeros((5, 2)))
    assert np.isfinite(result.speedup) and not result.slower


def test_judge_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        judge(np.ones((4, 3)))


def test_verdict_boundaries():
    base = dict(original_ms=1.0, pruned_ms=1.0, runs=10, rounds=10, margin=0.05)
    assert SpeedResult(speedup=0.94, **base).slower
    assert not SpeedResult(speedup=0.96, **base).slower
    assert SpeedResult(speedup=1.06, **base).faster
    assert not SpeedResult(speedup=1.04, **base).faster


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, durations: list[float]):  # noqa: ANN201 - a step whose runs take these seconds, in turn
        state = {"i": 0}

        def run() -> None:
            self.now += durations[state["i"] % len(durations)]
            state["i"] += 1

        run.calls = state  # type: ignore[attr-defined]
        return run


def test_paired_rounds_stop_at_the_budget_and_keep_each_blocks_fastest_run():
    clock = FakeClock()
    a = clock.step([0.004, 0.001, 0.001])  # one preempted run in three
    b = clock.step([0.0005])
    times = paired_rounds(a, b, budget_s=1.0, per_round=3, clock=clock)
    # one round: 6 ms of a + 1.5 ms of b; the loop checks the budget before each round
    assert len(times) == int(np.ceil(1.0 / 0.0075))
    np.testing.assert_allclose(times[:, 0], 1.0)
    np.testing.assert_allclose(times[:, 1], 0.5)
    assert a.calls["i"] == b.calls["i"] == 3 * len(times)


def test_paired_rounds_alternate_the_order():
    clock, seen = FakeClock(), []

    def a() -> None:
        seen.append("a")
        clock.now += 0.01

    def b() -> None:
        seen.append("b")
        clock.now += 0.01

    paired_rounds(a, b, budget_s=0.05, per_round=1, clock=clock)
    assert seen[:6] == ["a", "b", "b", "a", "a", "b"]


def test_a_slow_model_still_gets_the_least_rounds_and_a_fast_one_at_most_the_most():
    clock = FakeClock()
    slow = paired_rounds(clock.step([2.0]), clock.step([2.0]), budget_s=1.0, per_round=1, clock=clock)
    assert len(slow) == MIN_ROUNDS
    fast = paired_rounds(clock.step([1e-6]), clock.step([1e-6]), budget_s=10.0, per_round=1, max_rounds=50,
                         clock=clock)
    assert len(fast) == 50


def test_block_size_adapts_to_the_models_latency():
    assert block_size(0.01, 3.0) == 500  # 10 us per run: 500 runs fill 5 ms
    assert block_size(0.0, 3.0) == 1000
    assert block_size(50.0, 3.0) == 3  # three runs per block fit 3 rounds in 3 s
    assert block_size(50.0, 0.5) == 1  # they do not in 0.5 s
    assert block_size(2000.0, 3.0) == 1


def conv_net(width: int):  # noqa: ANN201
    """Conv(3 -> width) - Relu - Conv(width -> 8) on [1, 3, 16, 16]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((width, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, width, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_measure_speedup_on_real_sessions_returns_a_consistent_result():
    pytest.importorskip("onnxruntime")
    result = measure_speedup(conv_net(32), conv_net(16), budget_s=0.3)
    assert result.rounds >= MIN_ROUNDS and result.runs >= result.rounds
    assert result.original_ms > 0 and result.pruned_ms > 0 and result.speedup > 0
    assert result.margin >= TOLERANCE
    assert result.seconds < 0.3 + 0.5  # the budget, and at most the round under way when it ran out
    assert result.provider == "CPUExecutionProvider"


def test_bad_budget_is_refused():
    with pytest.raises(OnnxPruneError, match="budget"):
        measure_speedup(None, None, budget_s=0)  # type: ignore[arg-type]


def test_the_times_shown_are_the_round_that_measured_the_median_speedup():
    """Load that comes and goes moves both models' times together: per-model medians then
    disagree with the paired median ratio (here 12 -> 4 ms beside 1.25x); the times shown are
    a measured pair whose ratio is the speed-up."""
    times = np.array([[5.0, 4.0], [5.0, 4.0], [12.0, 4.0], [12.0, 10.0], [12.0, 10.0]])
    result = judge(times)
    assert result.speedup == pytest.approx(1.25)
    assert (result.original_ms, result.pruned_ms) == (5.0, 4.0)
    assert result.original_ms / result.pruned_ms == pytest.approx(result.speedup)
