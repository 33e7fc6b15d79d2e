"""Running models in onnxruntime: sessions and inputs (timing: ``runtime.timing``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import RuntimeUnavailableError
from onnxprune.graph import GraphIndex, batch_axes, static_batch
from onnxprune.io.external import all_tensors, base_dir, is_external

Feeds = dict[str, np.ndarray]


def _ort():  # noqa: ANN202
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed: pip install 'onnxprune[cpu]' (or 'onnxprune[gpu]' on GPU machines)"
        ) from exc
    return onnxruntime


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def resolve_provider(name: str) -> str:
    """'auto' picks CUDA when onnxruntime-gpu sees a GPU, else CPU; otherwise cpu|cuda|tensorrt."""
    available = _ort().get_available_providers()
    if name == "auto":
        return "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"
    full = PROVIDERS.get(name)
    if full is None:
        raise RuntimeUnavailableError(f"unknown provider '{name}' (choose auto, {', '.join(PROVIDERS)})")
    if full not in available:
        raise RuntimeUnavailableError(f"provider '{name}' is not available here (available: {', '.join(available)})")
    return full


def session(model: onnx.ModelProto | str, *, optimize: bool = False, provider: str = "CPUExecutionProvider",
            threads: int = 0, quiet: bool = False, initializers: Sequence[onnx.TensorProto] = ()):  # noqa: ANN201
    """An InferenceSession; graph optimisations are off unless asked (exact comparisons).
    ``quiet``: onnxruntime logs nothing, not even failed runs (for best-effort runs whose
    failure the caller handles). ``initializers``: more initializers of the graph, kept
    elsewhere (another model's weights a sub-model reads: not copied into it)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 4 if quiet else 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    if isinstance(model, str):
        return ort.InferenceSession(model, sess_options=opts, providers=chain)
    if not _streamed(model, initializers):
        if initializers:
            whole = onnx.ModelProto()
            whole.CopyFrom(model)
            whole.graph.initializer.extend(initializers)
            model = whole
        return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=chain)
    opts.enable_cpu_mem_arena = False  # see ``from_file``
    return from_file(model, opts, chain, initializers)


def from_file(model: onnx.ModelProto, opts, providers: Sequence, initializers: Sequence[onnx.TensorProto] = ()):  # noqa: ANN001, ANN201
    """An InferenceSession of a large model (``_streamed``) read from temporary files written one
    initializer at a time (deleted once the session is made): the weights in a data file that
    onnxruntime maps (``io.external.write_split``), where bytes would be one more copy of every
    weight, and a single file one more while it is parsed (on SmolLM2 a session of the whole
    model kept 0.58 GB from one file, 0.44 GB mapped: only its kernels' repacked copies). Callers also turn the CPU
    memory arena off for these (``enable_cpu_mem_arena``): the arena keeps the largest blocks a
    run took (a decoder LM's logits) for the session's life; on SmolLM2 the peak of a session
    running 4 token windows falls by 0.2 GB, the memory kept after it by 0.4 GB, no slower."""
    import tempfile
    from pathlib import Path

    from onnxprune.io.external import write_split

    # a mapped file may outlive its folder (removed on POSIX; where it cannot be, it is left)
    with tempfile.TemporaryDirectory(prefix="onnxprune-session-", ignore_cleanup_errors=True) as folder:
        path = write_split(model, Path(folder), initializers)  # one initializer at a time
        return _ort().InferenceSession(str(path), sess_options=opts, providers=providers)


STREAM_BYTES = 64 << 20  # models larger than this reach onnxruntime through a temporary file


def _streamed(model: onnx.ModelProto, initializers: Sequence[onnx.TensorProto] = ()) -> bool:
    """Whether ``session`` hands ``model`` to onnxruntime as temporary files rather than bytes: a
    large model whose weights are all in it (onnxruntime reads the file as it parses it; the
    bytes would be one more copy of every weight, next to the model and onnxruntime's own), or
    a model whose initializers are kept in files (mapped from the model file or external data
    whose folder is known: ``write_split`` copies them into its data file, so that the session
    never needs a copy of them in memory)."""
    tensors = [*model.graph.initializer, *initializers]
    if any(is_external(t) for t in tensors):
        return base_dir(model) is not None and not any(is_external(t) for t in all_tensors(model, initializers=False))
    return _weight_bytes(tensors) > STREAM_BYTES


def _weight_bytes(tensors: Sequence[onnx.TensorProto]) -> int:
    """The tensors' size from their shapes and types (``ByteSize`` would walk the data)."""
    total = 0
    for t in tensors:
        try:
            item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            item = 1
        total += int(np.prod(t.dims, dtype=np.int64)) * item
    return total


def session_with_outputs(model: onnx.ModelProto, outputs: Sequence[onnx.ValueInfoProto], **options):  # noqa: ANN201
    """``session(model)`` with the graph outputs ``outputs`` instead of the model's: the same
    session as on a copy of ``model`` with those outputs, without copying the weights (the
    outputs are swapped in place while the session is made, then put back)."""
    graph = model.graph
    saved = [_copy_value_info(o) for o in graph.output]
    wanted = [_copy_value_info(o) for o in outputs]
    del graph.output[:]
    graph.output.extend(wanted)
    try:
        return session(model, **options)
    finally:
        del graph.output[:]
        graph.output.extend(saved)


def _copy_value_info(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(info)
    return out


UNKNOWN_DIM = 32


def random_inputs(model: onnx.ModelProto, *, seed: int = 0, batch: int = 1,
                  shapes: Mapping[str, Sequence[int]] | None = None) -> Feeds:
    """Random feeds for every graph input. ``shapes`` overrides; otherwise dynamic dims become
    ``batch`` on the input's batch axis (``graph.batch_axes``: axis 0, or where another input
    names its batch, as a recurrent state [layers, batch, hidden] does) and 32 elsewhere."""
    rng = np.random.default_rng(seed)
    index = GraphIndex(model)
    axes = batch_axes(model)
    feeds: Feeds = {}
    for vi in model.graph.input:
        if vi.name in index.initializers:
            continue
        at = axes.get(vi.name, 0)
        shape = list((shapes or {}).get(vi.name) or [
            d if isinstance(d, int) else (batch if i == at else UNKNOWN_DIM)
            for i, d in enumerate(index.shape(vi.name) or ())])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = np.asarray(rng.random(shape) > 0.5)
        elif "mask" in vi.name.lower():
            feeds[vi.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[vi.name] = rng.integers(0, 8, size=shape).astype(dtype)
    return feeds


def feeds_for_batch(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], batch: int) -> Feeds | None:
    """``feeds`` cut or repeated along their batch axis (``graph.batch_axes``) to ``batch``
    samples; None when the model's batch is fixed to another size."""
    fixed = static_batch(model)
    if fixed is not None and fixed != batch:
        return None
    axes = batch_axes(model)
    out: Feeds = {}
    for name, arr in feeds.items():
        a = np.asarray(arr)
        axis = axes.get(name)
        if axis is None or a.ndim <= axis or a.shape[axis] == 0:
            out[name] = a
        else:
            out[name] = np.ascontiguousarray(np.take(a, np.arange(batch) % a.shape[axis], axis=axis))
    return out


def random_samples(model: onnx.ModelProto, n: int, *, seed: int = 0) -> Feeds:
    """At least ``n`` random samples: draws of ``random_inputs`` (one sample each, or the
    model's fixed batch) joined along each input's batch axis; an input without one (a scalar
    option) comes from the first draw."""
    per_draw = static_batch(model) or 1
    draws = [random_inputs(model, seed=seed + i) for i in range(max(1, -(-n // per_draw)))]
    axes = batch_axes(model)
    return {k: np.concatenate([d[k] for d in draws], axis=axes[k]) if k in axes and v.ndim > axes[k] else v
            for k, v in draws[0].items()}


_ORT_STATUS = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_BOILERPLATE = re.compile(r"\s*Please fix either the inputs(/outputs)? or the model\.?")
ORT_MESSAGE_CHARS = 600


def ort_error_text(exc: BaseException) -> str:
    """onnxruntime's message on one line: its status prefix and closing boilerplate dropped,
    every informative line kept ("index: 2 Got: 100 Expected: 224"), joined with '; '."""
    text = _ORT_BOILERPLATE.sub("", _ORT_STATUS.sub("", str(exc).strip()))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    one = "; ".join(lines) or type(exc).__name__
    return one if len(one) <= ORT_MESSAGE_CHARS else one[:ORT_MESSAGE_CHARS - 1] + "\u2026"


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, optimize: bool = False) -> dict[str, np.ndarray]:
    sess = session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def latency_ms(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, warmup: int = 5, runs: int = 30,
               provider: str = "CPUExecutionProvider", threads: int = 0) -> dict[str, float]:
    """Latency percentiles (ms) with all graph optimisations on, after warm-up: ``runtime.timing.benchmark``."""
    from onnxprune.runtime.timing import benchmark

    return benchmark(model, feeds, provider=provider, threads=threads, warmup=warmup, runs=runs)
