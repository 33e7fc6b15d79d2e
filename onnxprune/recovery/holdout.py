"""The held-out part of the calibration set: which samples no fit sees, and how far a
model's graph outputs are from the original's on them.

Every recovery step (a refit, a bias, BatchNorm statistics) is computed on the other
samples only and kept only if it lowers the error measured here, so the figures this
module gives are the ones that say whether recovery helped: they are not the error on
the data the weights were fitted to.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.recovery.activations import Probe, squared_error

MIN_HELD = 4  # held-out samples wanted at least (half the set when it is smaller than 8)


def split(samples: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of a calibration set of ``samples``.

    ``round(fraction * samples)`` samples, but at least ``MIN_HELD`` (at most half the
    set), spread evenly over the set (a set sorted by class gives a held-out part of every
    class); none when ``fraction`` is 0 or fewer than 2 would be held out or left to fit."""
    everything = np.arange(samples)
    if fraction <= 0:
        return everything, everything[:0]
    n = max(round(fraction * samples), min(MIN_HELD, samples // 2))
    if n < 2 or samples - n < 2:
        return everything, everything[:0]
    held = np.floor((np.arange(n) + 0.5) * samples / n).astype(np.int64)
    return np.setdiff1d(everything, held), held


def subset(calib: CalibrationData, index: np.ndarray) -> CalibrationData:
    return CalibrationData({k: v[index] for k, v in calib.inputs.items()},
                           None if calib.labels is None else calib.labels[index])


class HeldOut:
    """Graph outputs of models against the original's on the held-out samples (the
    original's computed once)."""

    def __init__(self, original: onnx.ModelProto, calib: CalibrationData, batch_size: int) -> None:
        self.probe = Probe(calib, batch_size)
        self.original = original
        self.names = [o.name for o in original.graph.output]
        self._reference: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.probe)

    def error(self, model: onnx.ModelProto, outputs: dict[str, np.ndarray] | None = None) -> float:
        """The mean over graph outputs of their mean squared difference from the original's
        (``outputs``: ``model``'s graph outputs on every held-out sample, when already computed)."""
        reference, outputs = self._outputs(model, outputs)
        per = {}
        for n in self.names:
            r, o = np.asarray(reference[n]), np.asarray(outputs[n])
            if np.issubdtype(r.dtype, np.floating) and r.size:
                per[n] = squared_error(o, r) / r.size
        return float(np.mean(list(per.values()))) if per else 0.0

    def metrics(self, model: onnx.ModelProto, outputs: dict[str, np.ndarray] | None = None) -> dict:
        """``output_mse`` (as ``error``), ``per_output`` MSE; for every [N, K] output (K >= 2,
        a classifier's logits) the fraction of samples whose arg-max agrees with the
        original's (``top1_agreement``, and their mean over such outputs under ``top1``);
        the mean per-sample cosine of every floating output with the original's (``cosine``,
        and their mean under ``mean_cosine``)."""
        reference, outputs = self._outputs(model, outputs)
        per: dict[str, float] = {}
        top1: dict[str, float] = {}
        cosine: dict[str, float] = {}
        for n in self.names:
            r, o = np.asarray(reference[n]), np.asarray(outputs[n])
            if not np.issubdtype(r.dtype, np.floating) or not r.size:
                continue
            sq, agree, cos = 0.0, [], []
            for r64, o64 in _chunks(r, o):  # float64, a few samples at a time (logits can be large)
                sq += float(np.sum((o64 - r64) ** 2))
                if r64.ndim == 2 and r64.shape[1] >= 2:
                    agree.append(r64.argmax(1) == o64.argmax(1))
                if r64.ndim >= 1:
                    a, b = r64.reshape(len(r64), -1), o64.reshape(len(o64), -1)
                    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                    cos.append(np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), 1.0))
            per[n] = sq / r.size
            if agree:
                top1[n] = float(np.concatenate(agree).mean())
            if cos:
                cosine[n] = float(np.concatenate(cos).mean())
        return {"output_mse": float(np.mean(list(per.values()))) if per else 0.0, "per_output": per,
                "top1_agreement": top1, "top1": float(np.mean(list(top1.values()))) if top1 else None,
                "cosine": cosine, "mean_cosine": float(np.mean(list(cosine.values()))) if cosine else None}

    def _outputs(self, model: onnx.ModelProto, outputs: dict[str, np.ndarray] | None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(the original's graph outputs, ``model``'s) on the held-out samples."""
        if self._reference is None:
            self._reference = _gather(self.probe.stream(self.original, self.names), self.names)
        if outputs is None:
            outputs = _gather(self.probe.stream(model, self.names), self.names)
        return self._reference, outputs


CHUNK_ELEMENTS = 2**22  # elements of one output converted to float64 at a time


def _chunks(ref: np.ndarray, out: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ref, out) as float64, a few samples (leading-axis entries) at a time; a scalar whole."""
    if ref.ndim == 0:
        yield ref.astype(np.float64), out.astype(np.float64)
        return
    step = max(1, CHUNK_ELEMENTS // max(1, ref[:1].size))
    for lo in range(0, len(ref), step):
        yield ref[lo: lo + step].astype(np.float64), out[lo: lo + step].astype(np.float64)


def _gather(stream, names: list[str]) -> dict[str, np.ndarray]:
    """Whole arrays of ``names`` from a ``Probe.stream``."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for _, _, out in stream:
        for n in names:
            parts[n].append(np.asarray(out[n]))
    return {n: np.concatenate(v) for n, v in parts.items()}
