"""Loading, checking, fingerprinting and atomically saving ONNX models."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

import numpy as np

from onnxprune.errors import ModelLoadError, OutputPathError
from onnxprune.external import (PRIVATE_KEYS, base_dir, embedded_file, file_map, is_external, is_mapped, map_model, mark_lazy,
                                 tensor_nbytes, write_model, write_single)

TWO_GB = 2**31 - 1


def load_model(path: str | os.PathLike[str], *, check: bool = True, lazy: bool = True,
               mapped: bool = False) -> onnx.ModelProto:
    """Load an ONNX model and run the basic checker.

    With ``lazy`` (the default), tensors in external data files stay there and are read
    one at a time when needed (see ``onnxprune.external``); otherwise they are loaded.
    With ``mapped``, the large weights of a single-file model stay in the (memory-mapped)
    file too: loading parses only the model's structure, and weights are read as zero-copy
    views when needed (``onnxprune.external.map_model``). Such a model is for the pruning
    pipeline (analyze, plan, apply_plan, save_model); ``materialize`` it before handing it
    to onnxruntime or other tools.
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
        embedded = embedded_file(model)
        if any(is_external(t) and not is_mapped(t, embedded) for t in model.graph.initializer):
            if not lazy:
                onnx.load_external_data_for_model(model, str(p.parent))  # mapped weights too
                _drop_private(model)
            elif base_dir(model) is None:
                mark_lazy(model, p.parent)
    except (DecodeError, RuntimeError, ValueError, OSError, IndexError) as exc:
        raise ModelLoadError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{p}: not an ONNX model (no graph found; truncated or wrong file type?)")
    if check:
        check_basic(model, p)
    return model


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
    _drop_private(model)
    return model


def _drop_private(model: onnx.ModelProto) -> None:
    keep = [e for e in model.metadata_props if e.key not in PRIVATE_KEYS]
    if len(keep) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(keep)


def check_basic(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>") -> None:
    """Run onnx's basic checker; raise ModelLoadError naming the source on failure.

    Large models are checked on a light copy (their weights' bytes are not serialised).
    """
    try:
        onnx.checker.check_model(checkable(model))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source}: model fails the ONNX checker: {first}") from exc


def check_output_path(input_path: str | os.PathLike[str] | None, output_path: str | os.PathLike[str]) -> Path:
    """Refuse an output path equal to the input or inside a missing directory."""
    out = Path(output_path)
    if input_path is not None:
        inp = Path(input_path)
        if out.resolve() == inp.resolve() or (out.exists() and inp.exists() and out.samefile(inp)):
            raise OutputPathError(f"{out}: output path is the input model; refusing to overwrite it")
    if not out.parent.exists():
        raise OutputPathError(f"{out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise OutputPathError(f"{out}: is a directory")
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
    """Write a model atomically: to a temporary file (or directory) beside the target, then rename.

    Models over 2 GB, models loaded with external data, or any model when
    external_data=True are written with their tensors in ``<name>.data`` beside the file.
    """
    out = Path(path)
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
