"""Read a model's activations: run it on calibration data and read intermediate tensors
(``Probe``; not to be confused with ``prepare.shape_probe``, which runs a model to learn shapes).

A copy of the model has its graph outputs replaced by the tensors asked for (graph inputs
asked for are taken from the feeds), and onnxruntime runs it batch by batch with graph
optimisations off, so every intermediate tensor is the one the graph names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.graph import GraphIndex, static_batch
from onnxprune.runtime.session import session


def expose(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``names`` (computed tensors)."""
    index = GraphIndex(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    for name in dict.fromkeys(names):
        elem = index.elem_type(name) or onnx.TensorProto.FLOAT
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return copy


def batch_size_for(model: onnx.ModelProto, wanted: int) -> int:
    """``wanted``, unless the model's batch dimension is static (then that one)."""
    return static_batch(model) or wanted


class Probe:
    """Batched runs of models on one calibration set."""

    def __init__(self, calib: CalibrationData, batch_size: int = 256) -> None:
        self.calib = calib
        self.batch_size = batch_size
        self._reference: tuple[onnx.ModelProto, list[dict[str, np.ndarray]]] | None = None

    def __len__(self) -> int:
        return len(self.calib)

    def stream(self, model: onnx.ModelProto, names: Sequence[str]
               ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Yield (index of the batch's first sample, samples in the batch, {name: array}) per batch."""
        names = list(dict.fromkeys(names))
        if not names:
            return
        inputs = {vi.name for vi in model.graph.input}
        computed = [n for n in names if n not in inputs]
        sess = session(expose(model, computed)) if computed else None
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
            self._reference = (reference, [out for _, _, out in self.stream(reference, names)])
        for ref, (_, _, out) in zip(self._reference[1], self.stream(model, names)):
            for n in names:
                diff = np.asarray(out[n], np.float64) - np.asarray(ref[n], np.float64)
                sums[n] += float(np.sum(diff * diff))
                counts[n] += diff.size
        per = {n: sums[n] / max(counts[n], 1) for n in names}
        per["total"] = float(np.mean([per[n] for n in names])) if names else 0.0
        return per
