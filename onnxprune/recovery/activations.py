"""Read a model's activations: run it on calibration data and read intermediate tensors
(``Probe``; not to be confused with ``prepare.shape_probe``, which runs a model to learn shapes).

A copy of the model has its graph outputs replaced by the tensors asked for (graph inputs
asked for are taken from the feeds), and onnxruntime runs it batch by batch with graph
optimisations off, so every intermediate tensor is the one the graph names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.graph import GraphIndex, static_batch
from onnxprune.runtime.session import session_with_outputs


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (computed tensors)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend(exposed_outputs(model, names))
    return copy


def exposed_outputs(model: onnx.ModelProto, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """The graph outputs of ``expose(model, names)``."""
    index = GraphIndex(model)
    return [onnx.helper.make_tensor_value_info(name, index.elem_type(name) or onnx.TensorProto.FLOAT, None)
            for name in dict.fromkeys(names)]


def batch_size_for(model: onnx.ModelProto, wanted: int) -> int:
    """``wanted``, unless the model's batch dimension is static (then that one)."""
    return static_batch(model) or wanted


class Probe:
    """Batched runs of models on one calibration set."""

    def __init__(self, calib: CalibrationData, batch_size: int = 256) -> None:
        self.calib = calib
        self.batch_size = batch_size
        self._reference: tuple[onnx.ModelProto, Stored] | None = None
        self.stretched_runs = 0  # graph outputs run in stretches (``_stretched``), for tests

    def __len__(self) -> int:
        return len(self.calib)

    def stream(self, model: onnx.ModelProto, names: Sequence[str]
               ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Yield (index of the batch's first sample, samples in the batch, {name: array}) per batch.
        A large model's graph outputs are run a stretch of the graph at a time (``_stretched``)."""
        names = list(dict.fromkeys(names))
        if not names:
            return
        done = 0
        stretched = self._stretched(model, names)
        if stretched is not None:
            from onnxprune.recovery.segments import SuffixFailed

            try:
                for start, n, out in stretched:
                    yield start, n, out
                    done = start + n
                return
            except SuffixFailed:  # the last stretch failed on the way: the whole model from that batch on
                pass
        for start, n, out in self._whole(model, names):
            if start >= done:
                yield start, n, out

    def _stretched(self, model: onnx.ModelProto, names: list[str]
                   ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]] | None:
        """The graph outputs ``names`` (all of them) of a model with more than
        ``segments.STRETCHED_BYTES`` of weights, run by a ``segments.Cursor`` from the start of
        the graph (``Cursor.suffix_batches``: a stretch of about ``segments.STRETCH_BYTES`` of
        weights at a time, the last one batch by batch): the same values as one session of
        the whole model (the same kernels on the same inputs), without onnxruntime holding a
        copy of every weight at once (on SmolLM2 0.58 GB: about one stretch's instead). None
        where this does not apply or the cursor cannot (the caller runs the whole model)."""
        from onnxprune.io.modelio import weight_bytes
        from onnxprune.recovery import segments

        if set(names) != {o.name for o in model.graph.output} or weight_bytes(model) <= segments.STRETCHED_BYTES \
                or not segments.supported(model):
            return None
        batches = segments.Cursor(self.calib, self.batch_size).suffix_batches(model)
        if batches is None:
            return None
        self.stretched_runs += 1
        return _numbered(batches, names, len(self.calib), batch_size_for(model, self.batch_size))

    def _whole(self, model: onnx.ModelProto, names: list[str]) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """``stream`` by one session of the whole model."""
        inputs = {vi.name for vi in model.graph.input}
        computed = [n for n in names if n not in inputs]
        sess = session_with_outputs(model, exposed_outputs(model, computed)) if computed else None  # no copy
        bs = batch_size_for(model, self.batch_size)
        start = 0
        for feeds, _ in self.calib.batches(bs):
            out = dict(zip(computed, sess.run(computed, feeds))) if sess is not None else {}
            for n in names:
                if n in inputs:
                    out[n] = np.asarray(feeds[n])
            n = len(next(iter(feeds.values())))
            yield start, n, out
            start += n

    def mse(self, reference: onnx.ModelProto, model: onnx.ModelProto) -> dict[str, float]:
        """Mean squared difference of every graph output of ``model`` from ``reference``'s
        (same output names), streamed over the calibration set; their mean under 'total'.
        ``reference``'s outputs are kept for the next call with the same model (not modified
        in between: recovery's original)."""
        names = [o.name for o in reference.graph.output]
        sums = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0)
        if self._reference is None or self._reference[0] is not reference:  # the original is run once
            self._reference = None  # the previous one's files go before the new one is written
            self._reference = (reference, Stored(out for _, _, out in self.stream(reference, names)))
        for ref, (_, _, out) in zip(self._reference[1].lazy(), self.stream(model, names)):  # spilled: read by rows
            for n in names:
                got = np.asarray(out[n])
                sums[n] += squared_error(got, ref[n])
                counts[n] += got.size
        per = {n: sums[n] / max(counts[n], 1) for n in names}
        per["total"] = float(np.mean([per[n] for n in names])) if names else 0.0
        return per


def _numbered(batches: Iterator[dict[str, np.ndarray]], names: list[str], samples: int, batch_size: int
              ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``Cursor.suffix_batches`` as ``Probe.stream`` yields them: (first sample, samples, {name: array})."""
    for start, out in zip(range(0, samples, batch_size), batches):
        yield start, min(batch_size, samples - start), {n: out[n] for n in names}


SPILL_BYTES = 64 << 20  # kept outputs beyond this go to a temporary folder (a decoder LM's logits)
DIFF_BYTES = 32 << 20  # float64 bytes of one output compared at a time, about


def squared_error(got: np.ndarray, want: np.ndarray | OnDisk) -> float:
    """The sum of squared differences, in float64 a few rows at a time (about ``DIFF_BYTES``;
    ``want`` may be a spilled array, ``OnDisk``: only those rows are read)."""
    if got.ndim == 0 or want.shape != got.shape:
        diff = np.asarray(got, np.float64) - np.asarray(want, np.float64)
        return float(np.sum(diff * diff))
    rows = max(1, DIFF_BYTES // max(8 * int(np.prod(got.shape[1:], dtype=np.int64)), 1))
    total = 0.0
    for lo in range(0, len(got), rows):
        total += sum_of_squares(got[lo:lo + rows], want[lo:lo + rows])
    return total


def sum_of_squares(got: np.ndarray, want: np.ndarray) -> float:
    """sum((got - want) ** 2) in float64 (arrays of one shape), computed in a single float64
    array: the same value as ``np.sum((float64(got) - float64(want)) ** 2)`` without its three
    more temporaries (one sample of a decoder LM's logits is 100 MB in float64)."""
    diff = np.array(got, dtype=np.float64)
    np.subtract(diff, want, out=diff)  # ``want`` is converted element by element: the same values
    np.multiply(diff, diff, out=diff)
    return float(np.sum(diff))


class Stored:
    """Batches of outputs ({name: array} each), kept to be read again in order: in memory up to
    ``SPILL_BYTES``, then written to a temporary folder (removed with this object), one ``.npy``
    file per batch and name, and read back a batch (``__iter__``) or a few samples
    (``lazy``) at a time, so that a reference run over the calibration set does not hold its
    outputs (gigabytes of logits) in memory. ``sizes`` (elements per name over every batch)
    and ``first`` (per name, the first batch's shape and dtype) describe them without reading."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]], spill_bytes: int | None = None) -> None:
        spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes
        self.memory: list[dict[str, np.ndarray]] = []
        self.files: list[str] = []
        self.sizes: dict[str, int] = {}
        self.first: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._batches: list[dict[str, str]] = []  # spilled: per batch, {name: file}
        self._folder: tempfile.TemporaryDirectory | None = None
        size = 0
        for batch in batches:
            for name, value in batch.items():
                value = np.asarray(value)
                self.first.setdefault(name, (value.shape, value.dtype))
                self.sizes[name] = self.sizes.get(name, 0) + int(value.size)
            size += sum(np.asarray(v).nbytes for v in batch.values())
            if self._folder is None and size > spill_bytes:
                self._folder = tempfile.TemporaryDirectory(prefix="onnxprune-outputs-")
                for kept in self.memory:
                    self._write(kept)
                self.memory = []
            if self._folder is None:
                self.memory.append(batch)
            else:
                self._write(batch)

    @property
    def spilled(self) -> bool:
        return self._folder is not None

    def _write(self, batch: dict[str, np.ndarray]) -> None:
        assert self._folder is not None
        paths = {}
        for k, (name, value) in enumerate(batch.items()):
            path = os.path.join(self._folder.name, f"{len(self._batches)}-{k}.npy")
            np.save(path, np.asarray(value, order="C"))  # C order: samples are read back by offset
            paths[name] = path
            self.files.append(path)
        self._batches.append(paths)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._folder is None:
            yield from self.memory
            return
        for paths in self._batches:
            yield {n: np.load(path) for n, path in paths.items()}

    def lazy(self) -> Iterator[dict[str, np.ndarray | OnDisk]]:
        """The batches in order, a spilled batch's arrays as ``OnDisk`` readers (a slice of
        samples reads only those): a batch of a decoder LM's logits is never read whole."""
        if self._folder is None:
            yield from self.memory
            return
        for paths in self._batches:
            yield {n: OnDisk(path) for n, path in paths.items()}

    def rows(self, name: str, rows: int) -> Iterator[np.ndarray]:
        """``name``'s arrays in batch order, spilled ones read at most ``rows`` samples at a time
        (in memory: each batch's array itself)."""
        for batch in self.lazy():
            value = batch[name]
            if isinstance(value, np.ndarray):
                yield value
                continue
            if not value.shape:
                yield np.asarray(value)
                continue
            for lo in range(0, value.shape[0], max(1, rows)):
                yield value[lo: lo + rows]


class OnDisk:
    """A C-ordered ``.npy`` file read a slice of its first axis at a time (``value[lo:hi]``,
    steps of 1), or whole (``np.asarray``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._sliceable = bool(self.shape) and not fortran and not self.dtype.hasobject

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001
        whole = np.load(self.path)
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key: slice) -> np.ndarray:
        if not self._sliceable or not isinstance(key, slice) or key.step not in (None, 1):
            return np.asarray(self)[key]
        lo, hi, _ = key.indices(self.shape[0])
        hi = max(lo, hi)
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        with open(self.path, "rb") as f:
            f.seek(self.offset + lo * row * self.dtype.itemsize)
            data = np.fromfile(f, dtype=self.dtype, count=(hi - lo) * row)
        return data.reshape((hi - lo, *self.shape[1:]))
