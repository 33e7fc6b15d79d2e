"""The held-out part of the calibration set: which samples no fit sees, and how far a
model's graph outputs are from the original's on them.

Every recovery step (a refit, a bias, BatchNorm statistics) is computed on the other
samples only and kept only if it lowers the error measured here, so the figures this
module gives are the ones that say whether recovery helped: they are not the error on
the data the weights were fitted to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.recovery import activations
from onnxprune.recovery.activations import Probe, Stored
from onnxprune.recovery.errors import RecoveryError
from onnxprune.recovery.temperature import (
    KL_ROWS,
    TemperatureFit,
    fit_temperature,
    log_softmax,
    logit_terms,
    reference_terms,
)

MIN_HELD = 4  # held-out samples wanted at least (half the set when it is smaller than 8)
METRICS = ("mse", "kl")  # what a recovery step must lower on the held-out samples (``HeldOut``)


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


Batches = Iterable[Mapping[str, np.ndarray]]  # graph outputs, one batch of samples at a time, in order


class HeldOut:
    """Graph outputs of models against the original's on the held-out samples (the
    original's computed once and kept as the batches came, never joined into one array: in
    memory, or beyond ``activations.SPILL_BYTES`` in a temporary folder read back a chunk of
    samples at a time, ``activations.Stored``: a decoder LM's held-out logits are not held
    through the walk).

    A model's outputs are compared one batch at a time as they are computed (``outputs``
    may be a stream of batches, e.g. ``segments.Cursor.suffix_batches``): a decoder LM's
    logits on every held-out sample are never held twice. The sums are taken over the same
    chunks of samples, in the same order, as on whole arrays, so the figures are the same
    to the last bit.

    ``metric`` is what ``error`` measures, the figure every recovery step must lower: 'mse'
    (the graph outputs' mean squared difference) or 'kl' (a causal LM: the mean over token
    positions of the KL divergence of the model's next-token distribution from the
    original's, on the logits output ``lm_eval.causal_lm_io`` finds; a logit the vocabulary
    never samples weighs nothing, where the squared difference weighs every one alike)."""

    def __init__(self, original: onnx.ModelProto, calib: CalibrationData, batch_size: int,
                 metric: str = "mse") -> None:
        if metric not in METRICS:
            raise RecoveryError(f"unknown held-out metric '{metric}' (choose from {', '.join(METRICS)})")
        self.probe = Probe(calib, batch_size)
        self.original = original
        self.names = [o.name for o in original.graph.output]
        self.metric = metric
        self._reference: Stored | None = None
        self._logits: str | None = None

    def __len__(self) -> int:
        return len(self.probe)

    def error(self, model: onnx.ModelProto, outputs: Mapping[str, np.ndarray] | Batches | None = None) -> float:
        """The held-out ``metric`` of ``model``: the mean over graph outputs of their mean squared
        difference from the original's, or the mean next-token KL divergence (``outputs``:
        ``model``'s graph outputs on every held-out sample, when already computed: whole arrays,
        or a stream of batches)."""
        reference, outputs = self._outputs(model, outputs)
        if self.metric == "kl":
            return self._kl(reference, outputs)
        floating = [n for n in self.names if _floating(reference, n)]
        if not floating:
            for _ in outputs:  # run it all the same (a failure shows as it would)
                pass
            return 0.0
        sums = dict.fromkeys(floating, 0.0)
        rows = {n: _diff_rows(reference.first[n][0]) for n in floating}
        streams = _split(outputs, floating)
        for n in floating:
            for got, want in zip(_rechunk(streams[n], rows[n]), _rechunk(reference.rows(n, rows[n]), rows[n])):
                sums[n] += _sum_of_squares(got, want)
        per = {n: sums[n] / _size(reference, n) for n in floating}
        return float(np.mean(list(per.values())))

    def metrics(self, model: onnx.ModelProto, outputs: Mapping[str, np.ndarray] | Batches | None = None) -> dict:
        """``output_mse`` (the mean over graph outputs of their MSE), ``per_output`` MSE; with the
        'kl' metric ``kl`` (as ``error``); ``criterion``: the figure ``error`` gives; for every [N, K] output (K >= 2,
        a classifier's logits) the fraction of samples whose arg-max agrees with the
        original's (``top1_agreement``, and their mean over such outputs under ``top1``);
        the mean per-sample cosine of every floating output with the original's (``cosine``,
        and their mean under ``mean_cosine``)."""
        reference, outputs = self._outputs(model, outputs)
        per: dict[str, float] = {}
        top1: dict[str, float] = {}
        cosine: dict[str, float] = {}
        floating = [n for n in self.names if _floating(reference, n)]
        logits = self._logits_name(reference) if self.metric == "kl" else None
        kl_sum, kl_count = 0.0, 0
        streams = _split(outputs, floating)
        for n in floating:
            step = _metric_rows(reference.first[n][0])
            sq, agree, cos = 0.0, [], []
            for o, r in zip(_rechunk(streams[n], step), _rechunk(reference.rows(n, step), step)):
                if n == logits:
                    total, count = _kl_sum(np.asarray(o), np.asarray(r))
                    kl_sum, kl_count = kl_sum + total, kl_count + count
                s, a, c = _chunk_metrics(np.asarray(o), np.asarray(r))
                sq += s
                if a is not None:
                    agree.append(a)
                if c is not None:
                    cos.append(c)
            per[n] = sq / _size(reference, n)
            if agree:
                top1[n] = float(np.concatenate(agree).mean())
            if cos:
                cosine[n] = float(np.concatenate(cos).mean())
        found = {"output_mse": float(np.mean(list(per.values()))) if per else 0.0, "per_output": per,
                 "top1_agreement": top1, "top1": float(np.mean(list(top1.values()))) if top1 else None,
                 "cosine": cosine, "mean_cosine": float(np.mean(list(cosine.values()))) if cosine else None}
        if logits is not None:
            found["kl"] = kl_sum / max(kl_count, 1)
        found["criterion"] = found["kl"] if logits is not None else found["output_mse"]
        return found

    def logits_name(self) -> str:
        """The causal-LM logits output (``lm_eval.causal_lm_io`` on the original's first held-out
        batch); a ``RecoveryError`` when the model has none."""
        return self._logits_name(self._reference_outputs())

    def temperature(self, model: onnx.ModelProto) -> TemperatureFit:
        """The temperature of ``model``'s logits fitted to the original's next-token distribution
        on the held-out samples, each sample a window, cross-fitted on two folds
        (``recovery.temperature``). ``model``'s logits are computed once and kept (in a
        temporary folder past ``activations.SPILL_BYTES``), read back one window at a time."""
        name = self.logits_name()
        reference = self._reference_outputs()
        stored = Stored({name: np.asarray(out[name])} for _, _, out in self.probe.stream(model, [name]))

        def windows() -> Iterator[np.ndarray]:
            return _rechunk(stored.rows(name, 1), 1)

        # the original's logits are read once: every later pass needs only these terms of them
        constants = [reference_terms(z, r) for z, r in zip(windows(), _rechunk(reference.rows(name, 1), 1))]

        def terms(asked: Sequence[Sequence[float]]) -> list[list[tuple[float, float, float]]]:
            out = []
            for z, ts in zip(windows(), asked):
                found = {t: logit_terms(z, t) for t in dict.fromkeys(ts)}
                out.append([found[t] for t in ts])
            return out

        return fit_temperature(terms, constants)

    def _logits_name(self, reference: Stored) -> str:
        """The causal-LM logits output the 'kl' metric is taken on (``lm_eval.causal_lm_io``
        on the first batch's shapes); a ``RecoveryError`` when the model has none."""
        from onnxprune.verify.lm_eval import causal_lm_io

        if self._logits is not None:
            return self._logits
        first = next(iter(reference.first.values()), None)
        n = 0 if first is None or not first[0] else int(first[0][0])
        feeds = {k: v[:n] for k, v in self.probe.calib.inputs.items()}
        shapes = {k: np.broadcast_to(np.zeros((), dtype), shape) for k, (shape, dtype) in reference.first.items()}
        found = causal_lm_io(feeds, shapes)
        if found is None:
            raise RecoveryError("the 'kl' held-out metric needs a causal LM: integer token windows in and "
                                f"[batch, sequence, vocabulary] logits out (outputs: {', '.join(self.names)})")
        self._logits = found[2]
        return found[2]

    def _kl(self, reference: Stored, outputs: Iterable[Mapping[str, np.ndarray]]) -> float:
        """Mean next-token KL divergence of ``outputs``' logits from the original's."""
        name = self._logits_name(reference)
        step = _metric_rows(reference.first[name][0])
        stream = (np.asarray(batch[name]) for batch in outputs)  # the other outputs are not kept
        total, count = 0.0, 0
        for o, r in zip(_rechunk(stream, step), _rechunk(reference.rows(name, step), step)):
            s, c = _kl_sum(np.asarray(o), np.asarray(r))
            total, count = total + s, count + c
        return total / max(count, 1)

    def drop_reference(self) -> None:
        """Free the original's outputs (computed again if asked for)."""
        self._reference = None

    def _outputs(self, model: onnx.ModelProto, outputs: Mapping[str, np.ndarray] | Batches | None
                 ) -> tuple[Stored, Iterable[Mapping[str, np.ndarray]]]:
        """(the original's graph outputs, ``model``'s) on the held-out samples, as batches."""
        reference = self._reference_outputs()
        if outputs is None:
            outputs = (out for _, _, out in self.probe.stream(model, self.names))
        elif isinstance(outputs, Mapping):
            outputs = [outputs]
        return reference, outputs

    def _reference_outputs(self) -> Stored:
        """The original's graph outputs on the held-out samples (computed on the first call)."""
        if self._reference is None:
            self._reference = Stored({n: np.asarray(out[n]) for n in self.names}
                                     for _, _, out in self.probe.stream(self.original, self.names))
        return self._reference


CHUNK_ELEMENTS = 2**22  # elements of one output converted to float64 at a time


def _sum_of_squares(got: np.ndarray, want: np.ndarray) -> float:
    """sum((got - want) ** 2) in float64, in one float64 array (``activations.squared_error``'s values)."""
    return activations.sum_of_squares(got, want)


def _chunk_metrics(o: np.ndarray, r: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """(sum of squared differences, arg-max agreement per sample of an [N, K] output, cosine per
    sample) of a chunk of ``model``'s output ``o`` against the original's ``r``, all in float64
    in one array of the chunk's size: the values of ``np.linalg.norm``, ``(a * b).sum(1)`` and
    ``np.sum((o - r) ** 2)`` on float64 copies, element by element the same products summed
    the same way (the arg-max of float32 values is that of their exact float64 copies)."""
    agree = None
    if r.ndim == 2 and r.shape[1] >= 2:
        agree = r.argmax(1) == o.argmax(1)
    cos = None
    t = np.empty(r.shape, dtype=np.float64)
    if r.ndim >= 1:
        a, b, flat = r.reshape(len(r), -1), o.reshape(len(o), -1), t.reshape(len(r), -1)
        norm_a = np.sqrt(np.add.reduce(np.multiply(a, a, out=flat, dtype=np.float64), axis=1))
        norm_b = np.sqrt(np.add.reduce(np.multiply(b, b, out=flat, dtype=np.float64), axis=1))
        den = norm_a * norm_b
        dot = np.multiply(a, b, out=flat, dtype=np.float64).sum(1)
        cos = np.where(den > 0, dot / np.where(den > 0, den, 1), 1.0)
    np.subtract(o, r, out=t, dtype=np.float64)  # float64(o) - float64(r)
    return float(np.sum(np.multiply(t, t, out=t))), agree, cos


def _kl_sum(o: np.ndarray, r: np.ndarray) -> tuple[float, int]:
    """(summed KL(softmax(r) || softmax(o)) over the token positions of logits ``o`` and ``r``
    [..., vocabulary], positions counted), in float64, ``KL_ROWS`` positions at a time."""
    o2, r2 = o.reshape(-1, o.shape[-1]), r.reshape(-1, r.shape[-1])
    total = 0.0
    for lo in range(0, len(r2), KL_ROWS):
        log_p, log_q = log_softmax(r2[lo:lo + KL_ROWS]), log_softmax(o2[lo:lo + KL_ROWS])
        total += float(np.sum(np.exp(log_p) * (log_p - log_q)))
    return total, len(r2)


def _floating(reference: Stored, name: str) -> bool:
    return name in reference.first and np.issubdtype(reference.first[name][1], np.floating) \
        and _size(reference, name) > 0


def _size(reference: Stored, name: str) -> int:
    return reference.sizes.get(name, 0)


def _metric_rows(shape: tuple[int, ...]) -> int:
    """Samples per float64 chunk of ``metrics`` (``shape``: the first batch's): about
    ``CHUNK_ELEMENTS`` elements."""
    return max(1, CHUNK_ELEMENTS // max(1, int(np.prod(shape[1:], dtype=np.int64)) if shape else 1))


def _diff_rows(shape: tuple[int, ...]) -> int:
    """Samples per float64 chunk of ``error``: as ``activations.squared_error`` takes them."""
    return max(1, activations.DIFF_BYTES // max(8 * int(np.prod(shape[1:], dtype=np.int64)), 1))


def _split(batches: Iterable[Mapping[str, np.ndarray]], names: list[str]) -> dict[str, Iterator[np.ndarray]]:
    """One stream of arrays per name from one stream of batches. The batches are read once: the
    first name's stream pulls them and keeps the other names' arrays until their turn (a
    single output, a decoder LM's logits, is never held whole)."""
    source = iter(batches)
    waiting: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def stream(name: str) -> Iterator[np.ndarray]:
        while True:
            if waiting[name]:
                yield waiting[name].pop(0)
                continue
            batch = next(source, None)
            if batch is None:
                return
            for other in names:
                if other != name:
                    waiting[other].append(np.asarray(batch[other]))
            yield np.asarray(batch[name])

    return {n: stream(n) for n in names}


def _rechunk(arrays: Iterable[np.ndarray], rows: int) -> Iterator[np.ndarray]:
    """The arrays joined along their first axis, cut into consecutive chunks of ``rows``
    (the last one shorter): the chunks of the joined array, without joining it."""
    pending: list[np.ndarray] = []
    have = 0
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 0:
            a = a.reshape(1)
        lo = 0
        while lo < len(a):
            take = min(rows - have, len(a) - lo)
            pending.append(a[lo: lo + take])
            have += take
            lo += take
            if have == rows:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, have = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)
