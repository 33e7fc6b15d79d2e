"""Loading, checking, fingerprinting and atomically saving ONNX models."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

import numpy as np

from onnxprune.errors import ModelLoadError, OutputPathError
from onnxprune.external import base_dir, is_external, mark_lazy, write_model

TWO_GB = 2**31 - 1


def load_model(path: str | os.PathLike[str], *, check: bool = True, lazy: bool = True) -> onnx.ModelProto:
    """Load an ONNX model and run the basic checker.

    With ``lazy`` (the default), tensors in external data files stay there and are read
    one at a time when needed (see ``onnxprune.external``); otherwise they are loaded.
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
        model = onnx.load_model(str(p), load_external_data=False)
        if any(is_external(t) for t in model.graph.initializer):
            if lazy:
                mark_lazy(model, p.parent)
            else:
                onnx.load_external_data_for_model(model, str(p.parent))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
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
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else 0
        if total > TWO_GB - 64 * 2**20:
            return True
    return False


LIGHT_THRESHOLD = 64 * 2**20


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of weights, in memory or in external files."""
    return sum(len(t.raw_data) if t.HasField("raw_data") else
               (int(np.prod(t.dims)) * 4 if is_external(t) else 0) for t in model.graph.initializer)


def light_copy(model: onnx.ModelProto, min_bytes: int = 1024) -> onnx.ModelProto:
    """A copy without the bytes of large weights, for checking and shape inference.

    Large initializers become graph inputs of the same type and shape: the checker and
    shape inference see every shape, and nothing serialises gigabytes of weights. The
    original is left as it was.
    """
    light = onnx.ModelProto()
    light.ir_version = max(4, model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, field).extend(getattr(src, field))
    for t in src.initializer:
        if is_external(t) or (t.HasField("raw_data") and len(t.raw_data) > min_bytes):
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.add().CopyFrom(t)
    return light


def check_basic(model: onnx.ModelProto, source: str | os.PathLike[str] = "<model>") -> None:
    """Run onnx's basic checker; raise ModelLoadError naming the source on failure.

    Large models are checked on a light copy (their weights' bytes are not serialised).
    """
    try:
        onnx.checker.check_model(light_copy(model) if weight_bytes(model) > LIGHT_THRESHOLD else model)
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
    """Write a model atomically: to a temporary directory beside the target, then rename.

    Models over 2 GB, models loaded with external data, or any model when
    external_data=True are written with their tensors in ``<name>.data`` beside the file.
    """
    out = Path(path)
    lazy = base_dir(model) is not None
    if external_data is None:
        external_data = lazy or is_large(model)
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
            onnx.save_model(model, str(tmp_model))
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
