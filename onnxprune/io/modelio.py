"""Loading, checking, fingerprinting and atomically saving ONNX models."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxprune.errors import ModelLoadError, OutputPathError
from onnxprune.io.external import (
    all_tensors,
    base_dir,
    check_external_data,
    drop_private,
    embed_external,
    embedded_file,
    file_map,
    is_external,
    is_mapped,
    map_model,
    mark_lazy,
    tensor_nbytes,
    write_model,
    write_single,
)

TWO_GB = 2**31 - 1


def load_model(path: str | os.PathLike[str], *, check: bool = True, lazy: bool = True,
               mapped: bool = False) -> onnx.ModelProto:
    """Load an ONNX model and run the basic checker.

    With ``lazy`` (the default), tensors in external data files stay there and are read
    one at a time when needed (see ``onnxprune.io.external``); otherwise they are loaded.
    With ``mapped``, the large weights of a single-file model stay in the (memory-mapped)
    file too: loading parses only the model's structure, and weights are read as zero-copy
    views when needed (``onnxprune.io.external.map_model``). The pipeline reads such a model
    throughout (analyze, score, apply_plan, recovery, save_model; ``runtime.session`` and the
    torch execution copy its weights from the file); ``materialize`` it before handing it to
    other tools.
    Raises ModelLoadError naming the file and what is wrong with it.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: file not found")
    if not p.is_file():
        raise ModelLoadError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p}: file is empty")
    try:
        model = map_model(p) if mapped else onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError, IndexError, EOFError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {detail})") from exc
    if not mapped:
        drop_private(model)  # never saved: a file that carries them is not to be trusted
    bad_text = _invalid_text(model)
    if bad_text:
        raise ModelLoadError(f"{p}: not a readable ONNX model (a {bad_text} is not valid UTF-8 text; corrupt file?)")
    _load_external(model, p, lazy)
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{p}: not an ONNX model (no graph found; truncated or wrong file type?)")
    if check:
        check_basic(model, p)
    return model


def _invalid_text(model: onnx.ModelProto) -> str:
    """The first string field (``Message.field``) that does not decode as UTF-8, or ''.

    protobuf parses proto2 strings without checking them: reading such a field gives bytes
    (upb) or raises UnicodeDecodeError, and writing it back fails wherever that happens.
    Bytes fields (weights) are not touched."""
    string, message = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE
    stack: list = [model]
    while stack:
        msg = stack.pop()
        for fd in msg.DESCRIPTOR.fields:
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FieldDescriptor.LABEL_REPEATED
            try:
                if fd.type == string:
                    value = getattr(msg, fd.name)
                    if any(isinstance(v, bytes) for v in (value if repeated else (value,))):
                        return f"{msg.DESCRIPTOR.name}.{fd.name}"
                elif fd.type == message:
                    if repeated:
                        stack.extend(getattr(msg, fd.name))
                    elif msg.HasField(fd.name):
                        stack.append(getattr(msg, fd.name))
            except UnicodeDecodeError:
                return f"{msg.DESCRIPTOR.name}.{fd.name}"
    return ""


def _load_external(model: onnx.ModelProto, p: Path, lazy: bool) -> None:
    """Check every external-data reference (``external.check_external_data``), then read
    them all (``lazy=False``) or leave the weights in their files; tensors outside the
    initializers (Constant values, subgraphs) are always read, as the passes only stream
    initializers."""
    embedded = embedded_file(model)
    stray = any(is_external(t) and not is_mapped(t, embedded) for t in all_tensors(model))
    if stray:
        check_external_data(model, p.parent, p)
    elif lazy or embedded is None:
        return
    try:
        for t in all_tensors(model, initializers=not lazy):  # mapped weights too
            if is_external(t):
                embed_external(t, p.parent)
        if not lazy:
            drop_private(model)
            return
    except OSError as exc:
        raise ModelLoadError(f"{p}: cannot read its external data ({' '.join(str(exc).split())[:200]})") from exc
    if base_dir(model) is None and any(is_external(t) and not is_mapped(t, embedded)
                                       for t in model.graph.initializer):
        mark_lazy(model, p.parent)


def has_external_data(path: str | os.PathLike[str]) -> bool:
    """Whether the model file keeps (some of) its tensors in external files."""
    model = onnx.load_model(str(path), load_external_data=False)
    return any(is_external(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    """Whether the model's tensors exceed protobuf's 2 GB limit (ByteSize() itself fails then)."""
    total = 0
    embedded = embedded_file(model)
    for t in model.graph.initializer:
        if not is_external(t) or is_mapped(t, embedded):  # mapped weights are saved inside the file
            total += tensor_nbytes(t)
        if total > TWO_GB - 64 * 2**20:
            return True
    return False


LIGHT_THRESHOLD = 64 * 2**20


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of weights, in memory or in files (mapped or external)."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer)


def has_file_weights(model: onnx.ModelProto) -> bool:
    """Whether some weights are still in files (external data, or mapped from the model file)."""
    return base_dir(model) is not None and any(is_external(t) for t in model.graph.initializer)


LIGHT_KEEP_INT_BYTES = 64 * 1024  # integer constants up to this size stay (shape inference reads them)
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}


def light_copy(model: onnx.ModelProto, min_bytes: int = 1024, *, check_sizes: bool = False) -> onnx.ModelProto:
    """A copy without the bytes of large weights, for checking and shape inference.

    Large initializers become graph inputs of the same type and shape: the checker and
    shape inference see every shape, and nothing serialises the weights. Integer
    constants up to 64 KiB stay (shape inference with data propagation reads their
    values). With ``check_sizes``, the in-memory weights left out are checked as the ONNX
    checker would check them (``raw_data`` size against shape and type), so checking the
    light copy checks everything checking the model would. The original is left as it was.
    """
    light = onnx.ModelProto()
    light.ir_version = max(4, model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, field).extend(getattr(src, field))
    inputs = {vi.name for vi in src.input}
    for t in src.initializer:
        external = is_external(t)
        size = tensor_nbytes(t)
        if not external and (not t.HasField("raw_data") or size <= min_bytes
                             or (t.data_type in _INT_TYPES and size <= LIGHT_KEEP_INT_BYTES)):
            g.initializer.add().CopyFrom(t)
            continue
        if check_sizes and not external:
            _check_raw_size(t)
        if t.name not in inputs:  # an initializer also listed as an input (IR < 4) keeps its input entry
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def _check_tensor_data(t: onnx.TensorProto) -> None:
    """Refuse an in-memory tensor whose type is unknown or whose data does not fill its shape."""
    if t.data_type not in _DATA_TYPES:
        raise onnx.checker.ValidationError(f"TensorProto (tensor name: {t.name}) has an invalid data type "
                                           f"{t.data_type}")
    if any(d < 0 for d in t.dims):
        raise onnx.checker.ValidationError(f"TensorProto (tensor name: {t.name}) has a negative dimension "
                                           f"{list(t.dims)}")
    if t.HasField("raw_data"):
        _check_raw_size(t)
    elif t.data_type != onnx.TensorProto.STRING:
        try:
            numpy_helper.to_array(t)
        except (ValueError, TypeError) as exc:
            raise onnx.checker.ValidationError(f"TensorProto (tensor name: {t.name}) holds data that does not fill "
                                               f"its shape {list(t.dims)}") from exc


def _check_raw_size(t: onnx.TensorProto) -> None:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return  # an invalid type is reported by the checker on the value info
    if t.data_type not in _SIZED:
        return  # packed sub-byte and string types: the checker of the light copy sees their type only
    need = int(np.prod(t.dims, dtype=np.int64)) * itemsize
    have = len(t.raw_data)
    if have != need:
        relation = "too small" if have < need else "too large"
        raise onnx.checker.ValidationError(
            f"TensorProto (tensor name: {t.name}) raw_data size ({have} bytes) is {relation} for the declared "
            f"shape and type ({need} bytes required).")


_SIZED = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
          onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
          onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
          onnx.TensorProto.BOOL, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """What to hand onnx's checker: the model itself when it is small and all in memory,
    else its light copy (with the weights' sizes checked here)."""
    if has_file_weights(model) or weight_bytes(model) > LIGHT_THRESHOLD:
        return light_copy(model, check_sizes=True)
    return model


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read every weight still in a file (external data or mapped) into the model, in place.

    The result is a plain in-memory model that any tool can serialise."""
    base = base_dir(model)
    for t in model.graph.initializer:
        if not is_external(t):
            continue
        if base is None:
            raise ModelLoadError(f"tensor '{t.name}' refers to external data but the model's directory is unknown")
        info = {e.key: e.value for e in t.external_data}
        mm = file_map(base / info["location"])
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else len(mm) - offset
        t.ClearField("external_data")
        t.ClearField("data_location")
        t.raw_data = mm[offset:offset + length]
    drop_private(model)
    return model


# ops onnxruntime runs in the default domain although onnx does not define them (its
# transformer optimizer writes SimplifiedLayerNormalization there for LLaMA-style models)
ORT_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})
ORT_DOMAIN = "com.microsoft"


def checker_view(model: onnx.ModelProto, target: onnx.ModelProto) -> onnx.ModelProto:
    """``target`` (``model`` or its light copy) as onnx's checker can check a model that
    onnxruntime runs: on a copy, nodes of ``ORT_DEFAULT_DOMAIN_OPS`` move to com.microsoft,
    whose ops the checker leaves to onnxruntime; ``target`` itself when there are none."""
    if not any(n.op_type in ORT_DEFAULT_DOMAIN_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return target
    if target is model:
        target = light_copy(model, check_sizes=True)
    for node in target.graph.node:
        if node.op_type in ORT_DEFAULT_DOMAIN_OPS and node.domain in ("", "ai.onnx"):
            node.domain = ORT_DOMAIN
    if not any(o.domain == ORT_DOMAIN for o in target.opset_import):
        target.opset_import.add(domain=ORT_DOMAIN, version=1)
    return target


def check_basic(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>") -> None:
    """Run onnx's basic checker; raise ModelLoadError naming the source on failure.

    Large models are checked on a light copy (their weights' bytes are not serialised);
    ops onnxruntime runs in the default domain are left to onnxruntime (``checker_view``).
    """
    try:
        target = checker_view(model, checkable(model))
        if target is not model:
            target.ir_version = model.ir_version  # the light copy's own (>= 4) would hide an invalid one
        onnx.checker.check_model(target)
        for t in all_tensors(model):  # the checker takes a tensor's data on trust; the passes do not
            if not is_external(t) and (target is model or tensor_nbytes(t) <= 1024):  # (larger: light_copy did)
                _check_tensor_data(t)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source}: model fails the ONNX checker: {first}") from exc


def check_prunable(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>") -> None:
    """Refuse what the basic checker lets through but nothing can prune sensibly: a graph
    with no outputs, an input with a dimension of 0, ops computing in bfloat16 (no CPU kernels)
    and Conv weights of the wrong rank. Raises ModelLoadError naming the source."""
    g = model.graph
    if not g.output:
        raise ModelLoadError(f"{source}: the graph has no outputs, so nothing it computes is used")
    inits = {t.name: t for t in g.initializer}
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value == 0:
                raise ModelLoadError(f"{source}: input '{vi.name}' has a dimension of size 0 (axis {axis}); "
                                     f"give its real shape with --input-shape {vi.name}=...")
    bf16 = _bfloat16_compute(model) if _bfloat16_use(model) else ""
    if bf16:
        raise ModelLoadError(f"{source}: {bf16} computes in bfloat16, which onnxruntime's CPU provider has no "
                             "kernel for (it only casts bfloat16); convert the model to float32 or float16 first "
                             "(bfloat16 weights or inputs Cast to float are accepted)")
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in g.input
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    for i, node in enumerate(g.node):
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None:
            continue
        rank, data_rank = len(w.dims), ranks.get(node.input[0])
        if rank < 3 or (data_rank is not None and data_rank != rank):
            also = f" for an input of rank {data_rank}" if data_rank is not None else ""
            raise ModelLoadError(f"{source}: node '{node.name or f'#{i}'}' ({node.op_type}) has a weight "
                                 f"'{w.name}' of rank {rank} {list(w.dims)}{also}; a {node.op_type} weight is "
                                 "[out, in/group, kernel...], of the input's rank (3 or more)")


_WINDOWED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def check_weight_shapes(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>") -> None:
    """Refuse weights and window attributes that contradict the (inferred) shapes around
    them, as onnxruntime would when running the model: a Conv weight's rank or input
    channels against its input, kernel_shape against the weight, strides / pads /
    dilations of the wrong length, a Gemm or MatMul weight whose inner size does not meet
    its input's. Run on a prepared model (shapes inferred); unknown sizes are not judged.
    Raises ModelLoadError naming the node."""
    from onnxprune.graph import GraphIndex

    index = GraphIndex(model)
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or not node.input:
            continue
        what = f"{source}: node '{node.name or f'#{i}'}' ({node.op_type})"
        if node.op_type in _WINDOWED:
            _check_window(node, index, what)
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) >= 2 and node.input[1] in index.initializers:
            _check_inner_size(node, index, what)


def _attr(node: onnx.NodeProto, name: str, default):  # noqa: ANN001, ANN202
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_window(node: onnx.NodeProto, index, what: str) -> None:  # noqa: ANN001 - a GraphIndex
    x = index.shape(node.input[0])
    w = index.initializers.get(node.input[1]) if node.op_type.startswith("Conv") and len(node.input) > 1 else None
    wdims = list(w.dims) if w is not None else None
    rank = len(x) if x is not None else len(wdims) if wdims is not None else None
    if rank is None:
        return
    if wdims is not None and len(wdims) != rank:
        raise ModelLoadError(f"{what}: weight '{w.name}' has rank {len(wdims)} {wdims}, its input rank {rank}")
    spatial = rank - 2
    for name, want in (("kernel_shape", spatial), ("strides", spatial), ("dilations", spatial), ("pads", 2 * spatial)):
        value = _attr(node, name, None)
        if value is not None and (not isinstance(value, list) or len(value) != want):
            raise ModelLoadError(f"{what}: attribute {name} {value} should hold {want} values for a rank-{rank} input")
    if wdims is None:
        return
    kernel = _attr(node, "kernel_shape", None)
    if kernel is not None and list(kernel) != wdims[2:]:
        raise ModelLoadError(f"{what}: kernel_shape {kernel} does not match weight '{w.name}' {wdims}")
    group = _attr(node, "group", 1)
    channels = x[1] if x is not None and isinstance(x[1], int) else None
    if not isinstance(group, int) or group < 1:
        raise ModelLoadError(f"{what}: group must be a positive integer, got {group}")
    if node.op_type == "Conv":
        if wdims[0] % group or (channels is not None and channels != wdims[1] * group):
            raise ModelLoadError(f"{what}: weight '{w.name}' {wdims} with group {group} does not fit "
                                 f"{channels if channels is not None else 'its'} input channels")
    elif channels is not None and channels != wdims[0]:
        raise ModelLoadError(f"{what}: weight '{w.name}' {wdims} does not fit {channels} input channels")


def _check_inner_size(node: onnx.NodeProto, index, what: str) -> None:  # noqa: ANN001 - a GraphIndex
    w = index.initializers[node.input[1]]
    a, b = index.shape(node.input[0]), list(w.dims)
    if node.op_type == "Gemm":
        if len(b) != 2 or (a is not None and len(a) != 2):
            raise ModelLoadError(f"{what}: Gemm takes 2-d operands; weight '{w.name}' is {b}")
        k_a = None if a is None else a[0 if _attr(node, "transA", 0) else 1]
        k_b = b[1 if _attr(node, "transB", 0) else 0]
    else:
        if not b or a is None or not a:
            return
        k_a, k_b = a[-1], b[0] if len(b) == 1 else b[-2]
    if isinstance(k_a, int) and k_a != k_b:
        raise ModelLoadError(f"{what}: weight '{w.name}' {b} takes an inner size of {k_b}, its input gives {k_a}")


_BF16 = onnx.TensorProto.BFLOAT16


def _bfloat16_use(model: onnx.ModelProto) -> str:
    """What in the main graph is bfloat16 (a short description), or ''."""
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == _BF16:
            return f"tensor '{vi.name}'"
    for t in g.initializer:
        if t.data_type == _BF16:
            return f"weight '{t.name}'"
    for node in g.node:
        for a in node.attribute:
            if (a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i == _BF16) or \
                    (a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _BF16):
                return f"the output of node '{node.name or node.op_type}' ({node.op_type})"
    return ""


_BF16_CPU_OPS = {"Cast", "CastLike"}  # the ops onnxruntime's CPU provider runs on bfloat16 tensors


def _bfloat16_compute(model: onnx.ModelProto) -> str:
    """The first node that reads or writes a bfloat16 tensor and is not a Cast (a short
    description), or '' (also where a provider with bfloat16 kernels, CUDA, is installed)."""
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ""
    except ImportError:
        pass
    try:
        typed = onnx.shape_inference.infer_shapes(light_copy(model)).graph
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError):
        typed = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*typed.input, *typed.value_info, *typed.output)
             if vi.type.HasField("tensor_type")}
    types.update((t.name, t.data_type) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type in _BF16_CPU_OPS and node.domain in ("", "ai.onnx"):
            continue
        if any(types.get(name) == _BF16 for name in (*node.input, *node.output) if name):
            return f"node '{node.name or node.op_type}' ({node.op_type})"
    return ""


RUN_CHECK_BYTES = 16 * 2**20  # models with at most this much weight are also run once by check_runtime
_RUN_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def check_runtime(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>",
                  path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a model that onnxruntime cannot load (unknown opset or op, no kernel for a
    type, shapes its checks reject) or, when that is cheap and conclusive, run, with
    onnxruntime's reason; a no-op when onnxruntime is not installed.

    The session is built from the model's light copy (weights as inputs: nothing large is
    serialised). Should that be refused, the real model (``path``, or the model itself
    when it is all in memory) is tried before refusing, as a few kernels want constant
    weights. A small model (weights up to RUN_CHECK_BYTES) whose inputs are all float
    tensors of static shape (but for the batch axis) is also run once on random inputs:
    shapes that only clash at run time (a kernel size its weight lacks, channels that do
    not match a group count) are refused here rather than written out.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return
    small = not has_file_weights(model) and weight_bytes(model) <= LIGHT_THRESHOLD
    reason = _ort_refusal(ort, model if small else light_copy(model))
    if reason and not small:
        if not has_file_weights(model) and not is_large(model):
            reason = _ort_refusal(ort, model)
        elif path is not None and Path(path).is_file():
            reason = _ort_refusal(ort, str(path))
    if reason:
        raise ModelLoadError(f"{source}: onnxruntime cannot load the model: {reason} "
                             "(--no-runtime-check skips this check)")
    feeds = _run_check_feeds(model)
    if feeds is not None:
        full = model
        if has_file_weights(model):
            full = onnx.ModelProto()
            full.CopyFrom(model)
            materialize(full)
        reason = _ort_refusal(ort, full, feeds)
        if reason:
            raise ModelLoadError(f"{source}: onnxruntime cannot run the model: {reason} "
                                 "(--no-runtime-check skips this check)")


def _run_check_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Random inputs for the run check, or None when running is not cheap or not conclusive
    (large weights; inputs of other types, which may be indices, or of unknown size)."""
    if weight_bytes(model) > RUN_CHECK_BYTES:
        return None
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in _RUN_TYPES or not tt.HasField("shape"):
            return None
        shape = []
        for axis, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0:
                shape.append(1)
            else:
                return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _ort_refusal(ort, model: onnx.ModelProto | str,  # noqa: ANN001 - the onnxruntime module
                 feeds: dict[str, np.ndarray] | None = None) -> str:
    """onnxruntime's reason for refusing to create a session for ``model`` (or, given
    ``feeds``, to run it on them), on one line; '' when it does not refuse."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    try:
        sess = ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
        if feeds is not None:
            run_opts = ort.RunOptions()
            run_opts.log_severity_level = 4
            sess.run(None, feeds, run_opts)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own (C++) exception types
        return ort_reason(exc)
    return ""


def ort_reason(exc: BaseException, limit: int = 300) -> str:
    """onnxruntime's message, on one line, without its status prefix and C++ source location."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    text = re.sub(r"^Load model from .*? failed:\s*", "", text)
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+\s+(?:[^()]*?\((?:[^()]|\([^()]*\))*\)\s*(?:const\s*)?)?", "", text)
    text = text.replace("Fatal error: ", "").strip() or type(exc).__name__
    if len(text) > limit:  # the first sentences and the last (onnxruntime ends with what it supports)
        sentences = re.split(r"(?<=\.)\s+", text)
        head: list[str] = []
        for sentence in sentences[:-1]:
            if len(" ".join([*head, sentence])) + len(sentences[-1]) + 5 > limit:
                break
            head.append(sentence)
        text = f"{' '.join(head)} ... {sentences[-1]}" if head else text[:limit].rstrip() + "..."
    return text


def check_output_path(input_path: str | os.PathLike[str] | None, output_path: str | os.PathLike[str]) -> Path:
    """Refuse an output path equal to the input or inside a missing directory."""
    out = Path(output_path)
    if input_path is not None:
        inp = Path(input_path)
        if out.resolve() == inp.resolve() or (out.exists() and inp.exists() and out.samefile(inp)):
            raise OutputPathError(f"{out}: output path is the input model; refusing to overwrite it")
    if not out.parent.exists():
        raise OutputPathError(f"{out}: directory {out.parent} does not exist")
    if not out.parent.is_dir():
        raise OutputPathError(f"{out}: {out.parent} is not a directory")
    if out.is_dir():
        raise OutputPathError(f"{out}: is a directory")
    try:  # the one sure test of writability (permissions, read-only mounts, ACLs): create a file there
        fd, probe = tempfile.mkstemp(prefix=".onnxprune-probe-", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write to directory {out.parent} ({exc.strerror or exc})") from exc
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
    """Write a model atomically: to a temporary file (or directory) beside the target, then rename.

    Models over 2 GB, models loaded with external data, or any model when
    external_data=True are written with their tensors in ``<name>.data`` beside the file.
    """
    out = Path(path)
    try:
        return _save(model, out, external_data)
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write the model ({exc.strerror or exc})") from exc


def _save(model: onnx.ModelProto, out: Path, external_data: bool | None) -> Path:
    embedded = embedded_file(model)
    lazy = base_dir(model) is not None and any(is_external(t) and not is_mapped(t, embedded)
                                               for t in model.graph.initializer)
    if external_data is None:
        external_data = lazy or is_large(model)
    if lazy and not external_data:
        raise OutputPathError(f"{out}: the model keeps its weights in external data; save it with external data")
    if not external_data:  # one file: a temporary file beside the target (default permissions), then rename
        tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            write_single(model, tmp)  # streams weights: no serialised copy of the whole model
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        return out
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=out.parent))
    try:
        tmp_model = tmpdir / out.name
        if external_data:
            location = out.name + ".data"
            write_model(model, tmp_model, location)
            os.replace(tmpdir / location, out.parent / location)
        elif lazy:
            raise OutputPathError(f"{out}: the model keeps its weights in external data; save it with external data")
        else:
            write_single(model, tmp_model)  # streams weights: no serialised copy of the whole model
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def fingerprint(model: onnx.ModelProto) -> str:
    """A hash of the graph's structure: nodes, wiring, attributes and weight shapes (not values)."""
    h = hashlib.sha256()
    g = model.graph
    for vi in list(g.input) + list(g.output):
        h.update(f"io:{vi.name};".encode())
    for init in g.initializer:
        h.update(f"w:{init.name}:{init.data_type}:{tuple(init.dims)};".encode())
    for node in g.node:
        h.update(f"n:{node.name}:{node.domain}:{node.op_type}:{tuple(node.input)}:{tuple(node.output)};".encode())
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING):
                h.update(f"a:{attr.name}:{onnx.helper.get_attribute_value(attr)!r};".encode())
            elif attr.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
                h.update(f"a:{attr.name}:{tuple(onnx.helper.get_attribute_value(attr))!r};".encode())
    return h.hexdigest()[:32]
