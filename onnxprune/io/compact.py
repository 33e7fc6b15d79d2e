"""A model moved into fresh memory, without the weights its message no longer holds.

Python's protobuf runtime (upb) allocates a message's fields in an arena that is freed only
with the whole message: a bytes field set to a new value (a weight sliced by the rewrite, a
refit written back) keeps the old bytes too, and a copy of a model that is then sliced holds
the original's weights and the sliced ones (on SmolLM2 the pruned model took 1.0 GB for its
0.45 GB of weights through recovery). ``Parked`` writes a model's weights to a temporary
file one at a time, so that the caller can drop the old message before the model is read
back into a new one, a weight at a time (never the file and the message whole together).
"""

from __future__ import annotations

import mmap
import tempfile
from pathlib import Path

import onnx

from onnxprune.io.external import PRIVATE_KEYS, _copy_fields, _shell, is_external, tensor_nbytes

COMPACT_BYTES = 64 << 20  # models with fewer bytes of weights are not worth the round trip


def worth_compacting(model: onnx.ModelProto) -> bool:
    """Whether ``model`` keeps enough weights in its message to be worth moving (weights in
    files, external or mapped, are not in its arena: only the in-memory ones count)."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer if not is_external(t)) > COMPACT_BYTES


class Parked:
    """``model`` in a temporary folder until ``take`` reads it back (and removes the folder):
    the model without its initializers, then every initializer in order, a ``raw_data`` one as
    its other fields and its bytes in a data file. Weights the model keeps in files stay there
    (as references, read back with the entries naming their source)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="onnxprune-parked-")
        folder = Path(self._folder.name)
        self.path = folder / "model.onnx"
        self._data = folder / "weights.bin"
        self._records: list[tuple[bytes, int, int]] = []  # per initializer: fields, data offset, length (-1: none)
        self._private = [(e.key, e.value) for e in model.metadata_props if e.key in PRIVATE_KEYS]
        self.path.write_bytes(_shell(model).SerializeToString())
        with open(self._data, "wb") as fh:
            for t in model.graph.initializer:
                if not t.HasField("raw_data"):
                    self._records.append((t.SerializeToString(), 0, -1))
                    continue
                head = onnx.TensorProto()
                _copy_fields(t, head, skip=("raw_data",))
                data = t.raw_data  # one weight's bytes at a time
                self._records.append((head.SerializeToString(), fh.tell(), len(data)))
                fh.write(data)
                del data

    def take(self) -> onnx.ModelProto:
        """The model as a new message (its arena holds each weight once); the folder goes."""
        try:
            model = onnx.ModelProto()
            model.ParseFromString(self.path.read_bytes())
            for key, value in self._private:
                model.metadata_props.add(key=key, value=value)
            initializers = model.graph.initializer
            with open(self._data, "rb") as fh, \
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self._data.stat().st_size else _Empty() as data:
                for fields, offset, length in self._records:
                    t = initializers.add()
                    t.ParseFromString(fields)
                    if length >= 0:
                        t.raw_data = data[offset:offset + length]
            return model
        finally:
            self._folder.cleanup()


class _Empty:
    """An empty data file (no raw_data weight): nothing to map."""

    def __enter__(self) -> bytes:
        return b""

    def __exit__(self, *exc: object) -> None:
        return None


def compacted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in fresh memory (a large in-memory model, else ``model`` itself).
    The caller gains only once it drops ``model``: where it can drop it first, use ``Parked``
    (the old and the new message are then never held together)."""
    if not worth_compacting(model):
        return model
    return Parked(model).take()
