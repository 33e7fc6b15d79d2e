"""Timing models in onnxruntime: the one timer of the package (the latency tables and the search
of ``selection.latency``, ``verify``, ``selection.sweep`` and ``runtime.session.latency_ms`` use it).

``benchmark`` times one model: warm-up runs, a fixed number of intra-op threads, sequential
execution, idle threads that sleep instead of spinning, IO binding on CUDA / TensorRT (inputs
and outputs stay on the device, so transfers are not timed), percentiles over the timed runs.
``benchmark_pair`` times two models in alternating blocks so that machine load affects both
alike; ``timed_step``, ``warm_up`` and ``interleaved`` are its parts, for callers that keep a
warmed-up session across several comparisons.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import RuntimeUnavailableError, SelectionError
from onnxprune.runtime.session import PROVIDERS, _ort, _streamed, from_file

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def full_provider(name: str) -> str:
    """'cpu' / 'cuda' / 'tensorrt' or a full onnxruntime provider name -> the full name."""
    if name in PROVIDERS.values():
        return name
    full = PROVIDERS.get(name.lower())
    if full is None:
        raise RuntimeUnavailableError(f"unknown provider '{name}' (choose {', '.join(PROVIDERS)})")
    return full


def provider_chain(provider: str, device_id: int = 0) -> list[Any]:
    """The provider list for a session: TensorRT falls back to CUDA then CPU, CUDA to CPU."""
    provider = full_provider(provider)
    if provider == "TensorrtExecutionProvider":
        return [("TensorrtExecutionProvider", {"device_id": device_id}),
                ("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    if provider == "CUDAExecutionProvider":
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def timing_session(model: onnx.ModelProto | str | bytes, *, provider: str = "CPUExecutionProvider",
                   threads: int = 0, optimize: bool = True, device_id: int = 0,
                   spin: bool = False):  # noqa: ANN201
    """An InferenceSession for timing: all graph optimisations on, sequential execution,
    ``threads`` intra-op threads (0: onnxruntime's default), idle intra-op threads sleep
    instead of spin-waiting unless ``spin`` (onnxruntime's default is to spin: on a machine
    whose cores are shared with other jobs a spinning thread pool makes every timing depend
    on the neighbours' load; see docs/latency.md)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if hasattr(opts, "add_session_config_entry"):
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if isinstance(model, onnx.ModelProto) and _streamed(model):  # a large model: no serialised copy in memory
        return from_file(model, opts, provider_chain(provider, device_id))
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, sess_options=opts, providers=provider_chain(provider, device_id))


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(times_ms, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "mean": float(arr.mean()), "min": float(arr.min()), "runs": int(arr.size)}


def benchmark(model: onnx.ModelProto | str | bytes, feeds: Mapping[str, np.ndarray], *,
              provider: str = "CPUExecutionProvider", threads: int = 0, warmup: int = 5, runs: int = 30,
              device_id: int = 0, session: Any = None) -> dict[str, float]:
    """Latency of one inference in milliseconds: p50, p90, mean, min over ``runs`` timed runs
    after ``warmup`` untimed ones. On CUDA / TensorRT the inputs are copied to the device once
    and bound (IO binding), outputs are bound to the device, and every run is synchronised."""
    provider = full_provider(provider)
    if runs < 1:
        raise SelectionError(f"runs must be >= 1, got {runs}")
    sess = session if session is not None else timing_session(model, provider=provider, threads=threads,
                                                              device_id=device_id)
    step = timed_step(sess, feeds, provider, device_id)
    warm_up(step, warmup, provider)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return percentiles(times)


def benchmark_pair(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *,
                   provider: str = "CPUExecutionProvider", threads: int = 0, warmup: int = 5, runs: int = 30,
                   rounds: int = 5, device_id: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Latency of two models timed in alternating blocks (``rounds`` blocks each), so that a
    change in machine load affects both alike: the ratio of their p50s is what to trust."""
    provider = full_provider(provider)
    steps = [timed_step(timing_session(m, provider=provider, threads=threads, device_id=device_id), feeds, provider,
                   device_id) for m in (a, b)]
    for step in steps:
        warm_up(step, warmup, provider)
    return interleaved(steps[0], steps[1], runs, rounds)


def interleaved(step_a: Callable[[], None], step_b: Callable[[], None], runs: int, rounds: int
                 ) -> tuple[dict[str, float], dict[str, float]]:
    times: list[list[float]] = [[], []]
    per = max(1, math.ceil(runs / max(1, rounds)))
    for _ in range(max(1, rounds)):
        for step, out in zip((step_a, step_b), times):
            for _ in range(per):
                t = time.perf_counter()
                step()
                out.append((time.perf_counter() - t) * 1e3)
    return percentiles(times[0]), percentiles(times[1])


def warm_up(step: Callable[[], None], warmup: int, provider: str) -> None:
    for _ in range(max(warmup, 1 if provider == "TensorrtExecutionProvider" else 0)):
        step()


def timed_step(sess: Any, feeds: Mapping[str, np.ndarray], provider: str, device_id: int) -> Callable[[], None]:
    return _io_bound_step(sess, feeds, device_id) if provider in GPU_PROVIDERS else _cpu_step(sess, feeds)


def _cpu_step(sess: Any, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
    names = [o.name for o in sess.get_outputs()]
    feeds = dict(feeds)

    def step() -> None:
        sess.run(names, feeds)

    return step


def _io_bound_step(sess: Any, feeds: Mapping[str, np.ndarray], device_id: int) -> Callable[[], None]:
    ort = _ort()
    binding = sess.io_binding()
    keep_alive = []
    for name, arr in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), "cuda", device_id)
        keep_alive.append(value)
        binding.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda", device_id)

    def step() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    step.keep_alive = keep_alive  # type: ignore[attr-defined]  # the device copies live as long as step
    return step
