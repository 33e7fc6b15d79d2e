"""Weights kept in files, read lazily and written without a second copy.

A model loaded with external data keeps its tensors as references into the ``.data``
file; ``read_tensor`` decodes one tensor at a time, and ``write_model`` streams every
tensor (edited ones from memory, untouched ones straight from the source file) into the
output's data file. Peak memory stays near the size of what the rewrite changed.

A single-file model can be *mapped* the same way (``map_model``): the file is memory
mapped, only its structure is parsed, and every large ``raw_data`` weight becomes a
reference to its bytes inside the model file itself (an external reference whose
location is the model file, flagged by the ``EMBEDDED_KEY`` metadata entry). Reading
such a weight is a zero-copy view of the mapping, and ``write_single`` writes a
single-file model again, streaming the untouched weights' bytes from the mapping.
Neither metadata entry is ever saved.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import ModelLoadError

BASE_KEY = "onnxprune.external_base"  # metadata entry naming the source directory (never saved)
EMBEDDED_KEY = "onnxprune.embedded_file"  # metadata entry: mapped weights live in this model file
PRIVATE_KEYS = (BASE_KEY, EMBEDDED_KEY)
CHUNK = 64 * 2**20
MAP_MIN_BYTES = 1024  # raw_data weights at least this large are mapped, smaller ones parsed

# fixed-width element types whose raw_data is the plain little-endian array
_PLAIN = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
          onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
          onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def drop_private(model: onnx.ModelProto) -> None:
    """Remove onnxprune's private metadata entries. A file never carries them legitimately
    (they are never saved): one that does could point weights anywhere on disk."""
    keep = [e for e in model.metadata_props if e.key not in PRIVATE_KEYS]
    if len(keep) != len(model.metadata_props):
        del model.metadata_props[:]
        model.metadata_props.extend(keep)


def mark_lazy(model: onnx.ModelProto, base_dir: Path) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = BASE_KEY, str(base_dir.resolve())


def share_source(model: onnx.ModelProto, other: onnx.ModelProto) -> None:
    """Let ``other`` (a sub-model built from ``model``'s tensors) read the weights ``model``
    keeps in files: ``model``'s private entries naming where they are, copied."""
    drop_private(other)
    other.metadata_props.extend(e for e in model.metadata_props if e.key in PRIVATE_KEYS)


def base_dir(model: onnx.ModelProto) -> Path | None:
    for entry in model.metadata_props:
        if entry.key == BASE_KEY:
            return Path(entry.value)
    return None


def embedded_file(model: onnx.ModelProto) -> str | None:
    """The model file whose bytes mapped weights refer to (None for a model not mapped)."""
    for entry in model.metadata_props:
        if entry.key == EMBEDDED_KEY:
            return entry.value
    return None


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_mapped(t: onnx.TensorProto, embedded: str | None) -> bool:
    """Whether ``t`` is a mapped weight of a model whose ``embedded_file`` is ``embedded``."""
    if embedded is None or not is_external(t):
        return False
    return any(e.key == "location" and e.value == embedded for e in t.external_data)


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, in memory or external, without copying it out of the message."""
    if is_external(t):
        for e in t.external_data:
            if e.key == "length" and e.value.isdigit():
                return int(e.value)
        return math.prod(t.dims) * _itemsize(t.data_type)
    if t.HasField("raw_data"):  # the declared size: reading t.raw_data (or ByteSize) would copy it
        return math.prod(t.dims) * _itemsize(t.data_type)
    return 0


def _itemsize(data_type: int) -> int:
    """Bytes per element (1 for a type numpy does not know: the checker reports it)."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 1


def all_tensors(model: onnx.ModelProto, *, initializers: bool = True):  # noqa: ANN201 - iterator of TensorProto
    """Every tensor of the model: initializers (unless not ``initializers``: the main
    graph's are left out), sparse initializers and tensors in node attributes, in
    subgraphs and functions too (where external data can hide)."""
    def graph_tensors(g: onnx.GraphProto, main: bool = False):  # noqa: ANN202
        if initializers or not main:
            yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        yield from node_tensors(g.node)

    def node_tensors(nodes):  # noqa: ANN001, ANN202
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                if a.HasField("g"):
                    yield from graph_tensors(a.g)
                for sub in a.graphs:
                    yield from graph_tensors(sub)

    yield from graph_tensors(model.graph, main=True)
    for f in model.functions:
        yield from node_tensors(f.node)


def check_external_data(model: onnx.ModelProto, model_dir: Path, source: str | os.PathLike[str]) -> None:
    """Refuse external-data references that cannot be read safely, before reading any.

    Every location must be a relative path that stays inside ``model_dir`` (no absolute
    path, no ``..``, no symbolic link out of it) and name a regular file holding the whole
    tensor (offset plus its size). Mapped weights (``map_model``) are the model file's own
    bytes, checked when they were mapped. Raises ModelLoadError naming the file and tensor.
    """
    embedded = embedded_file(model)
    root = model_dir.resolve()
    checked: dict[str, int] = {}  # resolved file -> size
    for t in all_tensors(model):
        if not is_external(t) or is_mapped(t, embedded):
            continue
        info = _info(t)
        loc = info.get("location", "")
        where = f"{source}: tensor '{t.name}'"
        if not loc:
            raise ModelLoadError(f"{where} is stored in external data with no location")
        rel = Path(loc)
        if rel.is_absolute() or loc.startswith(("/", "\\")) or ".." in rel.parts or ".." in loc.split("\\") \
                or (len(loc) > 1 and loc[1] == ":"):
            raise ModelLoadError(f"{where} refers to external data at '{loc}', outside the model's folder; "
                                 "refusing to read it")
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            raise ModelLoadError(f"{where} refers to external data '{loc}', a link out of the model's folder "
                                 f"(to {target}); refusing to read it")
        key = str(target)
        if key not in checked:
            if not target.exists():
                raise ModelLoadError(f"{where} is stored in '{loc}', which is missing beside the model "
                                     f"(looked in {root})")
            if not target.is_file():
                raise ModelLoadError(f"{where} is stored in '{loc}', which is not a regular file")
            checked[key] = target.stat().st_size
        size = checked[key]
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelLoadError(f"{where} has an invalid external-data offset or length") from None
        if offset < 0 or (length is not None and length < 0) or any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{where} has a negative external-data offset, length or dimension")
        need = length
        if t.data_type in _PLAIN:
            want = math.prod(t.dims) * _dtype(t.data_type).itemsize
            if length is not None and length != want:
                raise ModelLoadError(f"{where}: external data length {length} does not match its shape "
                                     f"{list(t.dims)} ({want} bytes)")
            need = want
        if need is not None and offset + need > size:
            raise ModelLoadError(f"{where} needs bytes {offset}..{offset + need} of '{loc}', which has {size} "
                                 "(truncated or replaced data file?)")


def embed_external(t: onnx.TensorProto, directory: Path) -> None:
    """Read an external tensor's bytes into its ``raw_data``, in place (the reference is
    dropped). Check the model first (``check_external_data``)."""
    info = _info(t)
    path = directory / info["location"]
    offset = int(info.get("offset", "0"))
    if "length" in info:
        length = int(info["length"])
    elif t.data_type in _PLAIN:
        length = math.prod(t.dims) * _dtype(t.data_type).itemsize
    else:
        length = os.path.getsize(path) - offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(length)
    if len(raw) != length:
        raise ModelLoadError(f"{path}: external data of tensor '{t.name}' ends early")
    t.ClearField("external_data")
    t.ClearField("data_location")
    t.raw_data = raw


_MAPS: dict[str, tuple[tuple[int, int, int], mmap.mmap]] = {}


def file_map(path: str | os.PathLike[str]) -> mmap.mmap:
    """A read-only memory map of ``path``, shared by every tensor that refers to the file.

    Cached per path and re-opened when the file changed (size, inode or mtime), so a file
    replaced on disk is never read through a stale mapping. Files are replaced by
    renaming (``save_model``), which leaves an existing mapping's pages intact.
    """
    key = os.fspath(path)
    st = os.stat(key)
    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _MAPS.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    with open(key, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else mmap.mmap(-1, 1)
    _MAPS[key] = (sig, mm)
    return mm




def release_all(model: onnx.ModelProto) -> None:
    """Drop every page of the model file's mapping from this process's resident set
    (``MADV_DONTNEED``). The pages stay in the page cache and a later read maps them
    again, so views of mapped weights stay valid; until then they no longer count towards
    this process's memory. A no-op for a model that is not mapped."""
    embedded, base = embedded_file(model), base_dir(model)
    if embedded is None or base is None:
        return
    try:
        file_map(base / embedded).madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


class PageRelease:
    """Bytes read from a model's mapped or external weights, counted: every ``CHUNK`` of them the
    mapping's pages leave this process's resident set (``release_all``); ``close`` for the rest."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.pending = model, 0

    def read(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= CHUNK:
            self.close()

    def close(self) -> None:
        if self.pending:
            release_all(self.model)
            self.pending = 0


def source_of(model: onnx.ModelProto) -> tuple[Path | None, str | None]:
    """(base directory, embedded file) of a model: what ``read_tensor`` looks up per call;
    callers reading many tensors pass it in once."""
    return base_dir(model), embedded_file(model)


_DTYPES: dict[int, np.dtype] = {}


def _dtype(data_type: int) -> np.dtype:
    dt = _DTYPES.get(data_type)
    if dt is None:
        dt = _DTYPES[data_type] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")
    return dt


_LITTLE = np.little_endian


def read_tensor(t: onnx.TensorProto, model: onnx.ModelProto,
                source: tuple[Path | None, str | None] | None = None, *, unaligned_ok: bool = False) -> np.ndarray:
    """A tensor's value (read-only), read from its external file when it has one.

    A mapped weight (see ``map_model``) is a zero-copy view of the model file (a copy when
    its bytes are not aligned in the file, unless ``unaligned_ok``: a caller that only
    copies the data out, e.g. slicing it, gets the view). ``source`` is
    ``source_of(model)``, when known.
    """
    if not is_external(t):
        if _LITTLE and t.data_type in _PLAIN and t.HasField("raw_data") and not t.HasField("segment"):
            return np.frombuffer(t.raw_data, dtype=_dtype(t.data_type)).reshape(tuple(t.dims))
        return numpy_helper.to_array(t)
    base, embedded = source if source is not None else source_of(model)
    if base is None:
        raise ValueError(f"tensor '{t.name}' refers to external data but the model's directory is unknown")
    info = _info(t)
    dtype = _dtype(t.data_type)
    count = math.prod(t.dims)
    if info["location"] == embedded:
        offset = int(info.get("offset", 0))
        data = np.frombuffer(file_map(base / embedded), dtype=dtype, count=count, offset=offset)
        if offset % dtype.itemsize and not unaligned_ok:
            data = data.copy()  # raw_data need not be aligned in the file; numpy is slow on unaligned arrays
            data.flags.writeable = False
        return data.reshape(tuple(t.dims))
    with open(base / info["location"], "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        data = np.fromfile(fh, dtype=dtype, count=count)
    return data.reshape(tuple(t.dims))


# --------------------------------------------------------------------------- protobuf wire format
def _varint(buf, pos: int) -> tuple[int, int]:  # noqa: ANN001 - bytes or mmap
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf, start: int, end: int):  # noqa: ANN001, ANN202
    """(field number, wire type, field start, value start, value end) of a message's fields."""
    pos = start
    while pos < end:
        fstart = pos
        key, pos = _varint(buf, pos)
        number, wt = key >> 3, key & 7
        if wt == 0:
            _, pos2 = _varint(buf, pos)
            yield number, wt, fstart, pos, pos2
        elif wt == 1:
            yield number, wt, fstart, pos, pos + 8
            pos2 = pos + 8
        elif wt == 2:
            n, vstart = _varint(buf, pos)
            pos2 = vstart + n
            yield number, wt, fstart, vstart, pos2
        elif wt == 5:
            pos2 = pos + 4
            yield number, wt, fstart, pos, pos2
        else:  # groups (3, 4) are not used by ONNX
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if pos2 > end:
            raise ValueError("truncated protobuf message")
        pos = pos2


def _length_delimited(number: int, payload_len: int) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(payload_len)


# field numbers (onnx.proto)
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_RAW, _TENSOR_LOCATION = 1, 2, 9, 14


def _strip_tensor(buf, start: int, end: int, min_bytes: int) -> tuple[list, tuple[int, int] | None]:  # noqa: ANN001
    """The tensor's fields without its raw_data (as byte ranges) and the raw data's range,
    when the tensor is a plain weight of at least ``min_bytes``; else (None, None)."""
    dims: list[int] = []
    dtype = 0
    raw = None
    location = 0
    keep: list[tuple[int, int]] = []
    for number, wt, fstart, vstart, vend in _fields(buf, start, end):
        if number == _TENSOR_RAW and wt == 2:
            raw = (vstart, vend)
            continue
        keep.append((fstart, vend))
        if number == _TENSOR_DIMS:
            if wt == 0:
                dims.append(_varint(buf, vstart)[0])
            elif wt == 2:
                p = vstart
                while p < vend:
                    d, p = _varint(buf, p)
                    dims.append(d)
        elif number == _TENSOR_TYPE and wt == 0:
            dtype = _varint(buf, vstart)[0]
        elif number == _TENSOR_LOCATION and wt == 0:
            location = _varint(buf, vstart)[0]
    if raw is None or raw[1] - raw[0] < min_bytes or dtype not in _PLAIN or location != 0:
        return [], None
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize
    if raw[1] - raw[0] != int(np.prod(dims, dtype=np.int64)) * itemsize:
        return [], None  # inconsistent: parsed as it is, for the checker to report
    return keep, raw


def map_model(path: str | os.PathLike[str], min_bytes: int = MAP_MIN_BYTES) -> onnx.ModelProto:
    """Parse a single-file model's structure, leaving its large weights in the file.

    The file is memory mapped; every main-graph initializer whose ``raw_data`` holds at
    least ``min_bytes`` of a fixed-width type becomes an external reference to those bytes
    inside the file (read with ``read_tensor``, written back by ``write_single`` or
    ``write_model``). Everything else is parsed as ``onnx.load`` would.
    """
    p = Path(path)
    buf = file_map(p)
    size = len(buf)
    parts: list = []
    mapped: dict[int, tuple[int, int]] = {}  # initializer index -> (offset, length) of raw data
    n_init = 0
    for number, wt, fstart, vstart, vend in _fields(buf, 0, size):
        if number != _MODEL_GRAPH or wt != 2:
            parts.append(buf[fstart:vend])
            continue
        graph_parts: list = []
        for gnum, gwt, gfs, gvs, gve in _fields(buf, vstart, vend):
            if gnum != _GRAPH_INITIALIZER or gwt != 2:
                graph_parts.append(buf[gfs:gve])
                continue
            keep, raw = _strip_tensor(buf, gvs, gve, min_bytes)
            if raw is None:
                graph_parts.append(buf[gfs:gve])
            else:
                body = b"".join(buf[a:b] for a, b in keep)
                graph_parts.append(_length_delimited(_GRAPH_INITIALIZER, len(body)) + body)
                mapped[n_init] = (raw[0], raw[1] - raw[0])
            n_init += 1
        graph = b"".join(graph_parts)
        parts.append(_length_delimited(_MODEL_GRAPH, len(graph)) + graph)
    model = onnx.ModelProto()
    model.ParseFromString(b"".join(parts))
    drop_private(model)
    if mapped:
        inits = model.graph.initializer
        for i, (offset, length) in mapped.items():
            t = inits[i]
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", p.name), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
        mark_lazy(model, p.parent)
        entry = model.metadata_props.add()
        entry.key, entry.value = EMBEDDED_KEY, p.name
        release_all(model)  # the scan touched pages around every header; none is needed now
    return model


def _copy_bytes(src: Path, offset: int, length: int, dst) -> None:  # noqa: ANN001
    with open(src, "rb") as fh:
        fh.seek(offset)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                raise ModelLoadError(f"{src}: external data ends early (changed since the model was loaded?)")
            dst.write(chunk)
            length -= len(chunk)


def _external_length(t: onnx.TensorProto, source_dir: Path | None) -> int:
    """Bytes of an external tensor: its length entry, else what its shape and type need,
    else the rest of its file."""
    info = _info(t)
    if "length" in info:
        return int(info["length"])
    if t.data_type in _PLAIN:
        return math.prod(t.dims) * _dtype(t.data_type).itemsize
    assert source_dir is not None
    return os.path.getsize(source_dir / info["location"]) - int(info.get("offset", 0))


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
    out.metadata_props.extend(e for e in model.metadata_props if e.key not in PRIVATE_KEYS)
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
            if is_external(t) and _external_length(t, source_dir) <= min_bytes:
                small = g.initializer.add()  # small tensors inline, where shape inference and tools read them
                small.CopyFrom(t)
                assert source_dir is not None
                embed_external(small, source_dir)
                continue
            new = g.initializer.add()
            new.name, new.data_type, new.doc_string = t.name, t.data_type, t.doc_string
            new.dims.extend(t.dims)
            if is_external(t):
                info = _info(t)
                assert source_dir is not None
                length = _external_length(t, source_dir)
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


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its initializers and private metadata (nothing large is copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=("graph", "metadata_props"))
    out.metadata_props.extend(e for e in model.metadata_props if e.key not in PRIVATE_KEYS)
    g = out.graph
    _copy_fields(model.graph, g, skip=("initializer",))
    if model.HasField("graph") and not g.ListFields():
        g.SetInParent()
    return out


def _copy_fields(src, dst, skip: tuple[str, ...]) -> None:  # noqa: ANN001 - protobuf messages
    """Copy every set field of ``src`` into ``dst`` except those named in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def write_single(model: onnx.ModelProto, path: Path, extra: Sequence[onnx.TensorProto] = ()) -> None:
    """Save ``model`` as one file, streaming each initializer instead of serialising the
    whole model at once: mapped weights (``map_model``) go straight from the source file's
    mapping, others are serialised one at a time. The bytes parse to the same ModelProto
    as ``onnx.save_model`` would write (fields in the canonical order). ``extra``: more
    initializers, written after the model's (as if appended to them, without copying them
    into the model: a sub-model reading another model's weights)."""
    initializers = [*model.graph.initializer, *extra]
    embedded = embedded_file(model)
    source = base_dir(model)
    shell = _shell(model)
    graph_bytes = shell.graph.SerializeToString()
    shell.ClearField("graph")
    model_bytes = shell.SerializeToString()

    records: list = []  # per initializer: bytes or (header bytes, memoryview of the mapped data)
    for t in initializers:
        if is_mapped(t, embedded):
            assert source is not None and embedded is not None
            info = _info(t)
            offset, length = int(info["offset"]), int(info["length"])
            head = onnx.TensorProto()
            head.CopyFrom(t)
            head.ClearField("external_data")
            head.ClearField("data_location")
            body = head.SerializeToString() + _length_delimited(_TENSOR_RAW, length)
            data = memoryview(file_map(source / embedded))[offset:offset + length]
            records.append((_length_delimited(_GRAPH_INITIALIZER, len(body) + length) + body, data))
        else:
            records.append(None)
    graph_len = len(graph_bytes)
    for t, rec in zip(initializers, records):
        if rec is None:
            n = t.ByteSize()
            graph_len += len(_length_delimited(_GRAPH_INITIALIZER, n)) + n
        else:
            graph_len += len(rec[0]) + len(rec[1])
    # canonical order: graph fields before initializer (node, name), then initializers, then the rest
    split_graph = next((fs for num, _, fs, _, _ in _fields(graph_bytes, 0, len(graph_bytes)) if num > 5),
                       len(graph_bytes))
    split_model = next((fs for num, _, fs, _, _ in _fields(model_bytes, 0, len(model_bytes)) if num > 7),
                       len(model_bytes))
    with open(path, "wb") as fh:
        fh.write(model_bytes[:split_model])
        fh.write(_length_delimited(_MODEL_GRAPH, graph_len))
        fh.write(graph_bytes[:split_graph])
        for t, rec in zip(initializers, records):
            if rec is None:
                body = t.SerializeToString()
                fh.write(_length_delimited(_GRAPH_INITIALIZER, len(body)))
                fh.write(body)
                del body
            else:
                fh.write(rec[0])
                fh.write(rec[1])
        fh.write(graph_bytes[split_graph:])
        fh.write(model_bytes[split_model:])


SPLIT_MIN_BYTES = 64 << 10  # ``write_split``: weights at least this large go to the data file
SPLIT_ALIGN = 4096  # their offsets there: page-aligned, so that onnxruntime maps them instead of reading


def write_split(model: onnx.ModelProto, folder: Path, extra: Sequence[onnx.TensorProto] = (),
                min_bytes: int | None = None) -> Path:
    """Write ``model`` (plus the initializers ``extra``, as in ``write_single``) into ``folder`` as
    ``model.onnx`` and a data file ``weights.bin`` holding every in-memory ``raw_data`` weight of
    at least ``min_bytes`` at a page-aligned offset; returns the model file's path. onnxruntime
    maps such a file's weights instead of parsing them into a message and copying them into
    tensors: a session made from it never holds a second copy of a weight (only the repacked
    copies its kernels make), even while it is made. Smaller tensors (the shapes and axes its
    shape inference reads) stay in the model file; weights are read one at a time.

    Weights kept in files (mapped from the model file, or external data) are copied into the
    data file too, whatever their size (``extra`` are read from ``model``'s source as well);
    the mapping's pages leave this process's resident memory every ``CHUNK`` bytes."""
    min_bytes = SPLIT_MIN_BYTES if min_bytes is None else min_bytes
    source = source_of(model)
    shell = _shell(model)
    data_path = folder / "weights.bin"
    pages = PageRelease(model)
    with open(data_path, "wb") as fh:
        for t in [*model.graph.initializer, *extra]:
            head = shell.graph.initializer.add()
            in_file = is_external(t) and source[0] is not None
            if not in_file and (is_external(t) or not t.HasField("raw_data") or tensor_nbytes(t) < min_bytes):
                head.CopyFrom(t)
                continue
            _copy_fields(t, head, skip=("raw_data", "external_data", "data_location"))
            offset = -(-fh.tell() // SPLIT_ALIGN) * SPLIT_ALIGN
            fh.seek(offset)
            if in_file:
                data = read_tensor(t, model, source, unaligned_ok=True)
                length = data.nbytes
                fh.write(np.ascontiguousarray(data).data)
                pages.read(length)
            else:
                data = t.raw_data  # one weight's bytes at a time (upb copies on read)
                length = len(data)
                fh.write(data)
            head.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                entry = head.external_data.add()
                entry.key, entry.value = key, value
            del data
    pages.close()
    path = folder / "model.onnx"
    path.write_bytes(shell.SerializeToString())
    return path
