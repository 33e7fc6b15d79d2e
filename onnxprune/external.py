"""Weights kept in external data files, read lazily and written without a second copy.

A model loaded with external data keeps its tensors as references into the ``.data``
file; ``read_tensor`` decodes one tensor at a time, and ``write_model`` streams every
tensor (edited ones from memory, untouched ones straight from the source file) into the
output's data file. Peak memory stays near the size of what the rewrite changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

BASE_KEY = "onnxprune.external_base"  # metadata entry naming the source directory (never saved)
CHUNK = 64 * 2**20


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def mark_lazy(model: onnx.ModelProto, base_dir: Path) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = BASE_KEY, str(base_dir.resolve())


def base_dir(model: onnx.ModelProto) -> Path | None:
    for entry in model.metadata_props:
        if entry.key == BASE_KEY:
            return Path(entry.value)
    return None


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def read_tensor(t: onnx.TensorProto, model: onnx.ModelProto) -> np.ndarray:
    """A tensor's value, read from its external file when it has one."""
    if not is_external(t):
        return numpy_helper.to_array(t)
    base = base_dir(model)
    if base is None:
        raise ValueError(f"tensor '{t.name}' refers to external data but the model's directory is unknown")
    info = _info(t)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    count = int(np.prod(t.dims)) if t.dims else 1
    with open(base / info["location"], "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        data = np.fromfile(fh, dtype=dtype, count=count)
    return data.reshape(tuple(t.dims))


def _copy_bytes(src: Path, offset: int, length: int, dst) -> None:  # noqa: ANN001
    with open(src, "rb") as fh:
        fh.seek(offset)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                raise OSError(f"{src}: external data ends early")
            dst.write(chunk)
            length -= len(chunk)


def write_model(model: onnx.ModelProto, path: Path, location: str, min_bytes: int = 1024) -> None:
    """Save ``model`` to ``path`` with tensors over ``min_bytes`` in ``location`` beside it.

    The model itself is not modified: a weightless copy is written, tensor bytes are
    streamed to the data file.
    """
    out = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.metadata_props.extend(e for e in model.metadata_props if e.key != BASE_KEY)
    g, src = out.graph, model.graph
    g.name, g.doc_string = src.name, src.doc_string
    for field in ("node", "input", "output", "value_info", "sparse_initializer", "quantization_annotation"):
        getattr(g, field).extend(getattr(src, field))
    source_dir = base_dir(model)
    offset = 0
    with open(path.parent / location, "wb") as data:
        for t in src.initializer:
            raw_len = len(t.raw_data) if t.HasField("raw_data") else 0
            if not is_external(t) and raw_len <= min_bytes:
                g.initializer.add().CopyFrom(t)
                continue
            new = g.initializer.add()
            new.name, new.data_type, new.doc_string = t.name, t.data_type, t.doc_string
            new.dims.extend(t.dims)
            if is_external(t):
                info = _info(t)
                assert source_dir is not None
                length = int(info.get("length", 0)) or os.path.getsize(source_dir / info["location"])
                _copy_bytes(source_dir / info["location"], int(info.get("offset", 0)), length, data)
            else:
                raw = t.raw_data if raw_len else numpy_helper.to_array(t).tobytes()
                length = len(raw)
                data.write(raw)
            new.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = new.external_data.add()
                entry.key, entry.value = key, value
            offset += length
            pad = (-offset) % 64  # keep tensors aligned for memory mapping
            data.write(b"\0" * pad)
            offset += pad
    onnx.save_model(out, str(path))
