"""A quick, noise-aware answer to "is the pruned model faster?" (the end of ``prune``).

Both models get a timing session (``runtime.timing.timing_session``: all graph optimisations,
sequential execution, idle threads sleep instead of spinning) and are warmed up; then they
run in *paired rounds* for about ``budget_s`` seconds: each round times a block of runs of
one model and then of the other (the order alternates round by round), so a change in the
machine's load hits both alike. A block holds as many runs as fill ``BLOCK_MS``, at least
``MIN_BLOCK`` where the budget allows (a model that runs for seconds, once); its time is
that of its fastest run: on a machine shared with other jobs, a run that was not preempted
measures the model, the others the neighbours.

Per round r: ratio_r = original time / pruned time. The speedup is the median of the
ratios (robust to the rounds a neighbour's burst of work spoils); the noise margin is
the half-width of an approximate 95% interval of that median (1.57 x IQR / sqrt(rounds),
the notch of a box plot; with fewer than ``FEW_ROUNDS`` rounds at least half the range of
the ratios), but at least ``tolerance``. The pruned model is judged
*slower* only when the speedup is below 1 - margin, *faster* when above 1 + margin, and
"about the same" in between.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import ModelRunError, OptionError
from onnxprune.runtime.timing import full_provider, timed_step, timing_session, warm_up  # the package's one timer

log = logging.getLogger(__name__)

BLOCK_MS = 5.0  # each model's block of runs in a round lasts at least this long
MIN_BLOCK = 3  # runs per block where the budget allows
MIN_ROUNDS = 3  # a model that runs for seconds gets three rounds, whatever the budget
MAX_ROUNDS = 1000
TOLERANCE = 0.03  # below 3% a difference is not called, however many rounds agree
FEW_ROUNDS = 10  # below this many rounds the margin is at least half the range of the ratios


@dataclass(frozen=True)
class SpeedResult:
    """Measured latency of the original and the pruned model and the speedup (the median of
    the per-round ratios original / pruned). The times (ms per inference, each round's fastest
    run) are those of the round whose ratio is nearest that median: medians taken per model
    apart can disagree with it when the machine's load changes between rounds (a loaded
    machine showed '1.24x faster (8.34 -> 4.26 ms)'), a measured pair cannot."""

    original_ms: float
    pruned_ms: float
    speedup: float
    runs: int  # timed runs of each model
    rounds: int = 0
    margin: float = TOLERANCE  # relative noise margin of ``speedup``
    seconds: float = 0.0  # wall time of the timed rounds
    provider: str = "CPUExecutionProvider"

    @property
    def slower(self) -> bool:
        """The pruned model is slower than the original beyond the noise margin."""
        return self.speedup < 1.0 - self.margin

    @property
    def faster(self) -> bool:
        """The pruned model is faster than the original beyond the noise margin."""
        return self.speedup > 1.0 + self.margin

    @property
    def verdict(self) -> str:
        return "slower" if self.slower else "faster" if self.faster else "about the same"

    def summary(self) -> str:
        """One line, e.g. 'measured 1.42x faster (2.31 -> 1.63 ms, +/-3%, 40 rounds on CPU)'."""
        where = self.provider.replace("ExecutionProvider", "")
        if self.slower:
            speed = f"{1 / self.speedup:.2f}x SLOWER than the original"
        elif self.faster:
            speed = f"{self.speedup:.2f}x faster"
        else:
            speed = f"{self.speedup:.2f}x, about as fast as the original"
        return (f"measured {speed} ({self.original_ms:.3g} -> {self.pruned_ms:.3g} ms, +/-{self.margin:.0%}, "
                f"{self.rounds} rounds on {where})")

    def to_dict(self) -> dict[str, object]:
        return {"original_ms": self.original_ms, "pruned_ms": self.pruned_ms, "speedup": self.speedup,
                "runs": self.runs, "rounds": self.rounds, "margin": self.margin, "seconds": self.seconds,
                "provider": self.provider, "verdict": self.verdict}


def judge(times_ms: np.ndarray, *, per_round: int = 1, tolerance: float = TOLERANCE, seconds: float = 0.0,
          provider: str = "CPUExecutionProvider") -> SpeedResult:
    """The ``SpeedResult`` of paired rounds: ``times_ms`` has shape (rounds, 2), the time per
    run of (original, pruned) in each round (of ``per_round`` runs each)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 2 or len(t) == 0:
        raise ValueError(f"times must have shape (rounds, 2), got {t.shape}")
    t = np.maximum(t, 1e-9)  # a timer that read 0 for a tiny model
    ratios = t[:, 0] / t[:, 1]
    speedup = float(np.median(ratios))
    q1, q3 = np.percentile(ratios, [25, 75])
    notch = 1.57 * float(q3 - q1) / math.sqrt(len(ratios)) / speedup
    if len(ratios) < FEW_ROUNDS:  # too few for quartiles to mean much: half their whole range
        notch = max(notch, float(ratios.max() - ratios.min()) / 2 / speedup)
    k = int(np.argmin(np.abs(ratios - speedup)))  # the round that measured the median speed-up: the times shown
    return SpeedResult(original_ms=float(t[k, 0]), pruned_ms=float(t[k, 1]),
                       speedup=speedup, runs=len(t) * per_round, rounds=len(t), margin=max(tolerance, notch),
                       seconds=seconds, provider=provider)


def paired_rounds(step_a: Callable[[], None], step_b: Callable[[], None], *, budget_s: float, per_round: int,
                  min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS,
                  clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """The fastest of ``per_round`` runs (ms) of each step in alternating blocks, round after
    round until ``budget_s`` seconds have passed (at least ``min_rounds``, at most
    ``max_rounds`` rounds): an array of shape (rounds, 2)."""
    rows: list[list[float]] = []
    start = clock()
    while len(rows) < min_rounds or (len(rows) < max_rounds and clock() - start < budget_s):
        row = [0.0, 0.0]
        order = (0, 1) if len(rows) % 2 == 0 else (1, 0)
        for i in order:
            step = step_a if i == 0 else step_b
            best = math.inf
            for _ in range(per_round):
                t = clock()
                step()
                best = min(best, clock() - t)
            row[i] = best * 1e3
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def block_size(estimate_ms: float, budget_s: float, block_ms: float = BLOCK_MS) -> int:
    """Runs per block for a model that takes ``estimate_ms`` per run: enough to fill
    ``block_ms``, and up to ``MIN_BLOCK`` where ``MIN_ROUNDS`` rounds of that fit the budget
    (the fastest of a few runs is what makes a round robust), at most 1000."""
    estimate_ms = max(estimate_ms, 1e-3)
    fill = math.ceil(block_ms / estimate_ms)
    affordable = int(budget_s * 1e3 / (2 * estimate_ms * MIN_ROUNDS))
    return max(1, min(1000, max(fill, min(MIN_BLOCK, affordable))))


def _estimate_ms(step: Callable[[], None], provider: str, within_s: float) -> float:
    """One untimed run (kernel selection, allocations), then the fastest of up to three timed
    runs, stopping once ``within_s`` is spent."""
    warm_up(step, 1, provider)
    best, start = math.inf, time.perf_counter()
    for _ in range(3):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
        if time.perf_counter() - start > within_s:
            break
    return best * 1e3


def measure_speedup(original: onnx.ModelProto, pruned: onnx.ModelProto,
                    feeds: Mapping[str, np.ndarray] | None = None, *, provider: str = "CPUExecutionProvider",
                    budget_s: float = 3.0, threads: int = 0, warmup: int = 3, tolerance: float = TOLERANCE,
                    device_id: int = 0) -> SpeedResult:
    """Time ``original`` and ``pruned`` in paired rounds for about ``budget_s`` seconds (plus
    session creation and up to ``warmup`` warm-up runs each, within a tenth of the budget) on
    ``provider`` and judge the speedup (see the module docstring); a model slower than about a
    third of the budget per run still gets ``MIN_ROUNDS`` rounds. ``feeds``: one input batch
    for both (default: ``runtime.random_inputs`` of the original, batch 1)."""
    if not budget_s > 0:
        raise OptionError(f"the speed check's time budget must be positive, got {budget_s}")
    from onnxprune.runtime.session import random_inputs

    provider = full_provider(provider)
    feeds = dict(feeds) if feeds is not None else random_inputs(original)
    try:
        steps = [timed_step(timing_session(m, provider=provider, threads=threads, device_id=device_id), feeds,
                            provider, device_id) for m in (original, pruned)]
        estimate = max(_estimate_ms(step, provider, 0.05 * budget_s) for step in steps)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise _not_runnable(exc, feeds) from exc
    extra = min(warmup, int(0.1 * budget_s * 1e3 / max(estimate, 1e-3)))  # at most a tenth of the budget
    for step in steps:
        warm_up(step, extra, provider)
    per = block_size(estimate, budget_s)
    start = time.perf_counter()
    times = paired_rounds(steps[0], steps[1], budget_s=budget_s, per_round=per)
    result = judge(times, per_round=per, tolerance=tolerance, seconds=time.perf_counter() - start,
                   provider=provider)
    log.info("speed check: %s", result.summary())
    return result


def _not_runnable(exc: BaseException, feeds: Mapping[str, np.ndarray]) -> ModelRunError:
    """onnxruntime refused the inputs the speed check made up (a dynamic axis too short for
    the model, say): a one-line error naming the shapes and what to give instead."""
    from onnxprune.runtime.session import ort_error_text

    shapes = ", ".join(f"{name} {list(np.shape(value))}" for name, value in feeds.items())
    return ModelRunError(f"the model does not run on the inputs the speed check made up ({shapes}): "
                         f"{ort_error_text(exc).rstrip('.')}; give --calib, or --input-shape NAME=d1,d2,... "
                         "with sizes the model accepts")
