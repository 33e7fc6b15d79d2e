"""Compare a pruned model with its original in onnxruntime: output agreement, accuracy,
parameters, FLOPs, size on disk, and latency per execution provider and batch size.

The report is a plain dict (JSON-serialisable):

``original`` / ``pruned``
    ``params``, ``macs``, ``flops`` (2 x MACs), ``size_bytes`` (file and external data on
    disk, or the serialised size), ``latency_ms`` (p50/p90/mean/min of the first provider
    and batch size) and ``latency`` (``{provider: {batch: {p50, p90, ...}}}``).
``outputs``
    per output: ``original_shape``, ``pruned_shape``, ``max_abs_diff``, ``mean_abs_diff``,
    ``rel_max_abs_diff`` (over the original's largest magnitude), ``cosine`` (mean per-sample
    cosine similarity), ``cosine_min``, ``top1_agreement`` / ``top5_agreement`` for
    classifier-like outputs ([N, classes]; top-5: the original's top-1 class is among the
    pruned model's five best), ``diff_histogram`` ({edges, counts} of pruned - original).
``accuracy`` (labels given)
    ``original``, ``pruned`` (top-1) and ``top5_original``, ``top5_pruned`` when there are
    more than five classes.
ratios and speed
    ``params_ratio``, ``macs_ratio``, ``flops_ratio``, ``size_ratio`` (pruned / original),
    ``speedup`` (p50 original / pruned, first provider and batch size), ``speedups``
    (per provider and batch size), ``latency_skipped`` (batch sizes a static batch refuses).
``inputs``
    ``"given"``, or ``"random"`` when no feeds were given (``RANDOM_SAMPLES`` random samples
    compared; latency timed on one).
``language_model`` (given integer token windows and a [N, seq, vocab] logits output)
    perplexity of both models over the windows (padding ignored with an ``attention_mask``)
    and tokens per second of the first timed provider and batch (``lm_eval.language_model_report``).

``check_tolerances`` turns a report into a pass / fail verdict (``verify --atol ...``).

``verify`` streams: both models run chunk by chunk over the samples (at most ``RUN_BYTES`` of
outputs per run, each model once over them), every chunk is compared and scored (agreement,
accuracy, next-token loss) as it comes and then dropped, so neither model's outputs are held
whole; ``progress`` hears of every chunk and timing step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import ModelLoadError, ModelMismatchError, ModelRunError, OnnxPruneError
from onnxprune.analysis.flops import model_cost
from onnxprune.prepare.normalize import prepare
from onnxprune.runtime.session import Feeds, ort_error_text, random_inputs, random_samples, session

Progress = Callable[[str, int, int], None]  # (what is running, done, total): verify's progress

HIST_BINS = 41
RANDOM_SAMPLES = 8  # compared when no inputs are given: enough for agreement to mean something


def load_inputs(path: str | os.PathLike[str], model: onnx.ModelProto) -> Feeds:
    """Feeds from an .npz whose arrays are named after the model's inputs."""
    from onnxprune.io.fileutil import read_arrays

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: inputs file not found")
    data = read_arrays(p, error=ModelLoadError)  # never unpickles; any failure names the file
    names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    missing = [n for n in names if n not in data]
    if missing:
        raise ModelLoadError(f"{p}: no array for model input(s) {', '.join(missing)} (has: {', '.join(data)})")
    return {n: data[n] for n in names}


RUN_BYTES = 256 << 20  # outputs per onnxruntime run in run_batched (memory grows with it)


def run_batched(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, chunk: int = 256,
                optimize: bool = False) -> dict[str, np.ndarray]:
    """Outputs for every sample of ``feeds``: in chunks of the model's fixed batch size (or, for
    a dynamic batch, of ``chunk`` samples, fewer where one sample's outputs are large: at most
    ``RUN_BYTES`` of outputs per run), concatenated. Exact (optimisations off) by default."""
    from onnxprune.graph import batch_axes, static_batch

    sess = session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    axes = {k: a for k, a in batch_axes(model).items() if k in feeds and feeds[k].ndim > a}
    n = min((feeds[k].shape[a] for k, a in axes.items()), default=0)
    step = static_batch(model) or chunk
    if not static_batch(model) and n > 1:  # a causal LM's logits are [batch, seq, vocab]: size the chunks
        one = sess.run(names, {k: np.take(v, [0], axis=axes[k]) if k in axes else v for k, v in feeds.items()})
        step = max(1, min(step, RUN_BYTES // max(1, sum(o.nbytes for o in one))))
    if n == 0 or n == step or (n < step and not static_batch(model)):
        return dict(zip(names, sess.run(names, feeds)))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, step):
        real = min(step, n - start)
        idx = start + np.arange(step) % real  # a short last chunk of a fixed batch is padded, then cut
        outs = sess.run(names, {k: np.take(v, idx, axis=axes[k]) if k in axes else v for k, v in feeds.items()})
        for i, o in enumerate(outs):
            parts[i].append(o[:real] if o.ndim and len(o) == step else o)
    return {name: np.concatenate(p) if p[0].ndim else p[-1] for name, p in zip(names, parts)}


def compare_threads() -> int:
    """Intra-op threads for the exact runs of ``verify``: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def stream_outputs(models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray], *, chunk: int = 256,
                   names: Sequence[object] = (), threads: int = 0, progress: Progress | None = None
                   ) -> Iterator[tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]]:
    """(chunk of ``feeds``, each model's outputs on it) over every sample, exact (optimisations
    off), each model running once over the samples. Chunks follow ``run_batched``: the first
    model's fixed batch size (a short last chunk padded, its outputs cut), or for a dynamic
    batch the first sample alone, then ``chunk`` samples at most and no more than ``RUN_BYTES``
    of outputs per run. A failed run raises ``ModelRunError`` naming the model (``names``)."""
    from onnxprune.graph import batch_axes, static_batch

    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    labels = [names[i] if i < len(names) else f"model {i + 1}" for i in range(len(models))]
    sessions = []
    for model, label in zip(models, labels):
        try:
            sessions.append(session(model, threads=threads))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise _explained(exc, label, feeds) from exc
    lead = models[0]
    axes = {k: a for k, a in batch_axes(lead).items() if k in feeds and feeds[k].ndim > a}
    n = min((feeds[k].shape[a] for k, a in axes.items()), default=0)
    fixed = static_batch(lead)

    def run(idx: np.ndarray | None) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
        part = feeds if idx is None else {k: np.take(v, idx, axis=axes[k]) if k in axes else v
                                          for k, v in feeds.items()}
        outs = []
        for sess, label in zip(sessions, labels):
            try:
                names_out = [o.name for o in sess.get_outputs()]
                outs.append(dict(zip(names_out, sess.run(names_out, part))))
            except Exception as exc:  # noqa: BLE001
                raise _explained(exc, label, part) from exc
        return part, outs

    if n == 0 or (not fixed and n == 1) or len({feeds[k].shape[a] for k, a in axes.items()}) > 1:
        yield run(None)  # no batch axis, one sample, or inputs that disagree on it: as given
        if progress:
            progress("running both models", max(n, 1), max(n, 1))
        return
    start, step = 0, fixed or 1
    while start < n:
        real = min(step, n - start)
        idx = start + np.arange(step if fixed else real) % real
        part, outs = run(idx)
        if fixed and real < step:
            part = {k: np.take(v, np.arange(real), axis=axes[k]) if k in axes else v for k, v in part.items()}
            outs = [{k: o[:real] if o.ndim and len(o) == step else o for k, o in out.items()} for out in outs]
        if start == 0 and not fixed:  # the first sample alone sizes the chunks
            size = max(sum(o.nbytes for o in out.values()) for out in outs)
            step = max(1, min(chunk, RUN_BYTES // max(1, size)))
        start += real
        if progress:
            progress("running both models", start, n)
        yield part, outs


def _explained(exc: Exception, name: object, feeds: Mapping[str, np.ndarray]) -> Exception:
    if isinstance(exc, OnnxPruneError):
        return exc
    shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
    return ModelRunError(f"{name}: onnxruntime could not run it on the inputs given ({shapes}): "
                         f"{ort_error_text(exc).rstrip('.')}. "
                         "Feed inputs the model accepts: --inputs FILE (real data) or "
                         "--input-shape NAME=d1,d2,... for the random ones.")


def disk_size(model: onnx.ModelProto, path: str | os.PathLike[str] | None = None) -> int:
    """Bytes on disk: the file plus its external data files; without a path, the serialised size."""
    if path is None or not Path(path).exists():
        return int(model.ByteSize())
    p = Path(path)
    total = p.stat().st_size
    locations = set()
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    for loc in locations:
        f = p.parent / loc
        if f.exists():
            total += f.stat().st_size
    return int(total)


def _is_classifier(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[-1] > 1 and np.issubdtype(a.dtype, np.floating)


HIST_KEEP = 1 << 22  # differences kept for the histogram; beyond that every k-th one (its range stays exact)
BLOCK = 1 << 22  # elements compared at a time in float64 (memory grows with it)


class OutputAgreement:
    """Agreement of one output of the pruned model with the original's, accumulated over
    chunks of samples (``update`` per chunk, axis 0 the samples; ``result`` the entry that
    ``compare_outputs`` returns for the whole). Compares at most ``BLOCK`` elements at a time
    in float64. The histogram's range is exact; past ``keep`` differences (given ``total``,
    the elements expected) it counts every k-th one (``diff_histogram["every"]``)."""

    def __init__(self, *, bins: int = HIST_BINS, total: int | None = None, keep: int = HIST_KEEP) -> None:
        self.bins = bins
        self.every = max(1, -(-int(total) // keep)) if total else 1
        self.shapes: list[list[int] | None] = [None, None]
        self.mismatch = False
        self.max_diff = np.float64(0.0)
        self.sum_diff, self.count, self.scale = 0.0, 0, np.float64(0.0)
        self.cosines: list[np.ndarray] = []
        self.whole = np.zeros(3)  # dot, |a|^2, |b|^2 of a 0-d / 1-d output: one vector over all chunks
        self.lim, self.finite, self.offset = 0.0, False, 0
        self.kept: list[np.ndarray] = []
        self.classifier: bool | None = None
        self.top1 = self.top5 = self.rows = 0

    def _shape(self, i: int, arr: np.ndarray | None) -> None:
        if arr is None:
            return
        if self.shapes[i] is None or not arr.ndim:
            self.shapes[i] = list(arr.shape)
        else:
            self.shapes[i][0] += len(arr)

    def update(self, a: np.ndarray, b: np.ndarray | None) -> None:
        """Add one chunk: ``a`` the original's output, ``b`` the pruned model's (None: missing)."""
        a = np.asarray(a)
        self._shape(0, a)
        self._shape(1, None if b is None else np.asarray(b))
        if b is None or a.shape != np.shape(b):
            self.mismatch = True
        if self.mismatch:
            return
        b = np.asarray(b)
        if self.classifier is None:
            self.classifier = _is_classifier(a)
        if a.size:
            self._blocks(a, b)
        if self.classifier:
            top_a = a.argmax(-1)
            self.top1 += int((top_a == b.argmax(-1)).sum())
            if a.shape[-1] > 5:
                top5_b = np.argsort(-b, axis=-1)[:, :5]
                self.top5 += int((top5_b == top_a[:, None]).any(axis=1).sum())
            self.rows += len(a)

    def _blocks(self, a: np.ndarray, b: np.ndarray) -> None:
        flat_a = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(1, -1)
        flat_b = b.reshape(flat_a.shape)
        rows, width = flat_a.shape
        sums = np.zeros((3, rows))
        if width >= BLOCK:
            spans = [(r, r + 1, j, j + BLOCK) for r in range(rows) for j in range(0, width, BLOCK)]
        else:
            step = max(1, BLOCK // max(1, width))
            spans = [(r, min(rows, r + step), 0, width) for r in range(0, rows, step)]
        for r0, r1, j0, j1 in spans:
            a64 = flat_a[r0:r1, j0:j1].astype(np.float64)
            b64 = flat_b[r0:r1, j0:j1].astype(np.float64)
            signed = b64 - a64
            diff = np.abs(signed)
            self.max_diff = np.maximum(self.max_diff, diff.max())
            self.sum_diff += float(diff.sum())
            self.count += diff.size
            self.scale = np.maximum(self.scale, np.abs(a64).max())
            sums[0, r0:r1] += (a64 * b64).sum(axis=1)
            sums[1, r0:r1] += (a64 * a64).sum(axis=1)
            sums[2, r0:r1] += (b64 * b64).sum(axis=1)
            self._histogram(signed.reshape(-1))
        if a.ndim > 1:
            self.cosines.append(_cosines(*sums))
        else:
            self.whole += sums[:, 0]

    def _histogram(self, signed: np.ndarray) -> None:
        finite = np.isfinite(signed)
        if finite.any():
            self.finite = True
            self.lim = max(self.lim, float(np.abs(signed[finite]).max()))
        sample = signed[(-self.offset) % self.every::self.every]
        self.offset += signed.size
        self.kept.append(sample[np.isfinite(sample)])

    def result(self) -> dict[str, Any]:
        """The entry of ``compare_outputs`` for everything added."""
        entry: dict[str, Any] = {"original_shape": self.shapes[0], "pruned_shape": self.shapes[1]}
        if self.mismatch or self.shapes[0] is None:
            entry.update(max_abs_diff=float("nan"), mean_abs_diff=float("nan"), cosine=None, top1_agreement=None)
            return entry
        scale = float(self.scale)
        entry["max_abs_diff"] = float(self.max_diff)
        entry["mean_abs_diff"] = self.sum_diff / self.count if self.count else 0.0
        entry["rel_max_abs_diff"] = entry["max_abs_diff"] / scale if scale else entry["max_abs_diff"]
        entry["max_abs_original"] = scale
        if self.count:
            cos = np.concatenate(self.cosines) if self.cosines else _cosines(*self.whole[:, None])
            entry["cosine"] = float(np.clip(cos, -1.0, 1.0).mean())
            entry["cosine_min"] = float(np.clip(cos, -1.0, 1.0).min())
            if self.finite:
                lim = self.lim or 1e-12
                counts, edges = np.histogram(np.concatenate(self.kept), bins=self.bins, range=(-lim, lim))
                entry["diff_histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
                if self.every > 1:
                    entry["diff_histogram"]["every"] = self.every
        else:
            entry["cosine"] = 1.0
        if self.classifier and self.rows:
            entry["top1_agreement"] = self.top1 / self.rows
            if self.shapes[0][-1] > 5:
                entry["top5_agreement"] = self.top5 / self.rows
        else:
            entry["top1_agreement"] = None
        return entry


def _cosines(dots: np.ndarray, aa: np.ndarray, bb: np.ndarray) -> np.ndarray:
    na, nb = np.sqrt(aa), np.sqrt(bb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dots / np.maximum(na * nb, 1e-300))


def compare_outputs(a: np.ndarray, b: np.ndarray | None, *, bins: int = HIST_BINS) -> dict[str, Any]:
    """Agreement of one output of the pruned model (``b``) with the original's (``a``)."""
    agreement = OutputAgreement(bins=bins, total=np.size(a))
    agreement.update(a, b)
    return agreement.result()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 (and top-5 with more than five classes) accuracy of [N, classes] scores."""
    labels = np.asarray(labels).reshape(-1)
    out = {"top1": float((logits.argmax(-1) == labels).mean())}
    if logits.ndim == 2 and logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        out["top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
    return out


def _latencies(model: onnx.ModelProto, feeds: Feeds, providers: Sequence[str], batch_sizes: Sequence[int] | None,
               runs: int, warmup: int, threads: int, *, progress: Progress | None = None, label: str = "model",
               step: tuple[int, int] = (0, 1)) -> tuple[dict[str, dict[str, dict[str, float]]], list[str]]:
    from onnxprune.graph import static_batch
    from onnxprune.runtime.session import feeds_for_batch
    from onnxprune.runtime.timing import benchmark, timing_session

    table: dict[str, dict[str, dict[str, float]]] = {}
    skipped: list[str] = []
    batches = list(batch_sizes) if batch_sizes else [static_batch(model) or _batch_of(feeds)]
    for provider in providers:
        per_batch: dict[str, dict[str, float]] = {}
        sess = timing_session(model, provider=provider, threads=threads)
        for b in batches:
            bf = feeds_for_batch(model, feeds, b)
            if bf is None:
                skipped.append(f"batch {b}: the model's batch size is fixed")
                continue
            if progress:
                short = provider.replace("ExecutionProvider", "")
                progress(f"timing the {label} model ({short}, batch {b}, {warmup} + {runs} runs)", step[0], step[1])
            per_batch[str(b)] = benchmark(model, bf, provider=provider, warmup=warmup, runs=runs, session=sess)
        table[provider] = per_batch
    return table, sorted(set(skipped))


def _batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    sizes = [len(v) for v in feeds.values() if np.asarray(v).ndim]
    return sizes[0] if sizes else 1


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: Feeds | None = None, *,
           labels: np.ndarray | None = None, runs: int = 30, provider: str = "CPUExecutionProvider",
           providers: Sequence[str] | None = None, batch_sizes: Sequence[int] | None = None, warmup: int = 5,
           threads: int = 0, original_path: str | os.PathLike[str] | None = None,
           pruned_path: str | os.PathLike[str] | None = None, latency_feeds: Feeds | None = None,
           progress: Progress | None = None) -> dict[str, Any]:
    """Run both models on the same inputs and report agreement, accuracy, cost, size and latency.

    ``providers`` (default: ``[provider]``) and ``batch_sizes`` (default: the batch of the
    feeds; one window for a causal LM's token windows) choose where and how latency is
    measured; ``latency_feeds`` (default: ``feeds``) are the samples timed, cut or repeated to
    each batch size. Without ``feeds``, ``RANDOM_SAMPLES`` random samples are compared (one at
    a time if the model refuses them together) and one is timed. The outputs are compared in
    chunks, both models on every chunk in turn, on every core (``stream_outputs``);
    ``progress(what, done, total)`` hears of each chunk and each timing step. Both models
    are normalised in place first (see ``onnxprune.prepare.normalize``)."""
    from onnxprune.runtime.timing import full_provider

    _check_same_interface(original, pruned, original_path, pruned_path)
    for m in (original, pruned):
        prepare(m)  # count Constant-node weights as parameters, fresh shapes for MACs
    drawn = feeds is None
    providers = [full_provider(p) for p in (providers or [provider])]
    if drawn:
        feeds = random_samples(original, RANDOM_SAMPLES)
        if latency_feeds is None:
            latency_feeds = random_inputs(original)
    names = (original_path or "the original model", pruned_path or "the pruned model")
    try:
        compared = _compare(original, pruned, feeds, labels, names, chunk=256, lm=not drawn, progress=progress)
    except ModelRunError:
        if not drawn:
            raise
        # a batch axis left symbolic by an export that only runs one sample at a time
        compared = _compare(original, pruned, feeds, labels, names, chunk=1, lm=False, progress=progress)
    outputs, acc, lm = compared
    timed_feeds = latency_feeds if latency_feeds is not None else feeds
    if batch_sizes is None and lm is not None and latency_feeds is None:
        batch_sizes = [1]  # token windows: one window is the prompt timed
    steps = [("original", original), ("pruned", pruned)]
    lat: dict[str, Any] = {}
    skipped: list[str] = []
    for i, (side, model) in enumerate(steps):
        lat[side], skip = _latencies(model, timed_feeds, providers, batch_sizes, runs, warmup, threads,
                                     progress=progress, label=side, step=(i, len(steps)))
        skipped = skipped or skip
    lat_o, lat_p = lat["original"], lat["pruned"]
    co, cp = model_cost(original), model_cost(pruned)
    so, sp = disk_size(original, original_path), disk_size(pruned, pruned_path)

    def first(lat: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
        for per_batch in lat.values():
            for v in per_batch.values():
                return v
        return {"p50": float("nan"), "p90": float("nan"), "mean": float("nan")}

    speedups = {prov: {b: (lat_o[prov][b]["p50"] / lat_p[prov][b]["p50"] if lat_p[prov][b]["p50"] else float("nan"))
                       for b in lat_o[prov] if b in lat_p.get(prov, {})} for prov in lat_o}
    first_o, first_p = first(lat_o), first(lat_p)
    report: dict[str, Any] = {
        "original": {"params": co.params, "macs": co.macs, "flops": co.flops, "size_bytes": so,
                     "latency_ms": first_o, "latency": lat_o},
        "pruned": {"params": cp.params, "macs": cp.macs, "flops": cp.flops, "size_bytes": sp,
                   "latency_ms": first_p, "latency": lat_p},
        "outputs": outputs,
        "samples": _batch_of(feeds),
        "provider": providers[0],
        "providers": providers,
        "batch_sizes": [int(b) for b in batch_sizes] if batch_sizes else [int(b) for b in next(iter(lat_o.values()))],
        "latency_skipped": skipped,
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "params_ratio": cp.params / co.params if co.params else 1.0,
        "macs_ratio": cp.macs / co.macs if co.macs else 1.0,
        "flops_ratio": cp.flops / co.flops if co.flops else 1.0,
        "size_ratio": sp / so if so else 1.0,
        "speedup": first_o["p50"] / first_p["p50"] if first_p["p50"] else float("nan"),
        "speedups": speedups,
        "inputs": "random" if drawn else "given",
    }
    if lm is not None:  # token windows and logits: perplexity before / after, tokens per second
        report["language_model"] = lm.report(lat_o, lat_p, timed_feeds)
    if acc is not None:
        report["accuracy"] = acc
    return report


def _compare(original: onnx.ModelProto, pruned: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
             labels: np.ndarray | None, names: Sequence[object], *, chunk: int, lm: bool,
             progress: Progress | None) -> tuple[dict[str, dict[str, Any]], dict[str, float] | None, Any]:
    """(per-output agreement, accuracy or None, a ``LanguageModelStream`` or None): both models
    streamed over ``feeds`` once, every chunk scored and dropped."""
    from onnxprune.verify.lm_eval import LanguageModelStream

    agreements: dict[str, OutputAgreement] = {}
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    correct = np.zeros(4)  # top-1 original, top-1 pruned, top-5 original, top-5 pruned
    seen, top5 = 0, False
    stream = None
    n = _batch_of(feeds)
    for part, (out_o, out_p) in stream_outputs([original, pruned], feeds, chunk=chunk, names=names,
                                               threads=compare_threads(), progress=progress):
        for name, a in out_o.items():
            if name not in agreements:
                per_sample = a.size // max(1, len(a)) if a.ndim else a.size
                agreements[name] = OutputAgreement(total=per_sample * n)
            agreements[name].update(a, out_p.get(name))
        if lm and stream is None and not agreements.keys() - out_o.keys():
            stream = LanguageModelStream.detect(feeds, part, out_o)
            lm = stream is not None
        if stream is not None:
            stream.update(part, out_o, out_p)
        if labels is not None:
            first = next(iter(out_o))
            rows = len(out_o[first]) if out_o[first].ndim else 1
            chunk_labels = labels[seen:seen + rows]
            for i, logits in enumerate((out_o[first], out_p[first])):
                got = accuracy(logits, chunk_labels)
                correct[i] += got["top1"] * rows
                if "top5" in got:
                    correct[2 + i] += got["top5"] * rows
                    top5 = True
            seen += rows
    acc = None
    if labels is not None:
        acc = {"original": correct[0] / max(1, seen), "pruned": correct[1] / max(1, seen)}
        if top5:
            acc.update(top5_original=correct[2] / max(1, seen), top5_pruned=correct[3] / max(1, seen))
    return {name: a.result() for name, a in agreements.items()}, acc, stream


def _interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers], [o.name for o in model.graph.output]


def _check_same_interface(original: onnx.ModelProto, pruned: onnx.ModelProto,
                          original_path: str | os.PathLike[str] | None,
                          pruned_path: str | os.PathLike[str] | None) -> None:
    """Refuse to compare models whose graph inputs or outputs differ (not a pruned copy)."""
    (ins_o, outs_o), (ins_p, outs_p) = _interface(original), _interface(pruned)
    names = f"{pruned_path or 'the pruned model'} vs {original_path or 'the original'}"
    if sorted(ins_o) != sorted(ins_p):
        raise ModelMismatchError(f"{names}: graph inputs differ ({', '.join(ins_p)} vs {', '.join(ins_o)}); "
                                 "is it a pruned copy of this model?")
    if sorted(outs_o) != sorted(outs_p):
        raise ModelMismatchError(f"{names}: graph outputs differ ({', '.join(outs_p)} vs {', '.join(outs_o)}); "
                                 "is it a pruned copy of this model?")


def check_tolerances(report: Mapping[str, Any], *, atol: float | None = None, rtol: float | None = None,
                     min_cosine: float | None = None, min_top1: float | None = None) -> list[str]:
    """What in ``report`` fails the tolerances given, one phrase per failure (empty: all pass).

    An output meets ``atol`` / ``rtol`` when max |pruned - original| <= atol + rtol x max
    |original| (numpy's ``allclose`` with the output's largest magnitude as the scale; the one
    not given counts as 0). ``min_cosine`` bounds each output's mean per-sample cosine
    similarity, ``min_top1`` the top-1 agreement of each classifier-like output ([N, classes]).
    NaN fails every check; an output whose shape changed fails all of them."""
    failures: list[str] = []
    bounded = atol is not None or rtol is not None
    a, r = float(atol or 0.0), float(rtol or 0.0)
    any_checks = bounded or min_cosine is not None or min_top1 is not None
    for name, out in report["outputs"].items():
        if out.get("original_shape") != out.get("pruned_shape"):
            if any_checks:
                failures.append(f"output '{name}': shape {out.get('pruned_shape')} != {out.get('original_shape')}")
            continue
        if bounded:
            diff = out.get("max_abs_diff", float("nan"))
            scale = out.get("max_abs_original")
            if scale is None:  # a report written before max_abs_original was recorded
                rel = out.get("rel_max_abs_diff") or 0.0
                scale = diff / rel if rel else 0.0
            allowed = a + r * scale
            if not diff <= allowed:
                why = f" = atol {a:g} + rtol {r:g} x max |original| {scale:.4g}" if r else ""
                failures.append(f"output '{name}': max |diff| {diff:.4g} > {allowed:.4g}{why}")
        cosine = out.get("cosine")
        if min_cosine is not None and not (cosine is not None and cosine >= min_cosine):
            failures.append(f"output '{name}': cosine {_fmt(cosine)} < {min_cosine:g}")
        top1 = out.get("top1_agreement")
        if min_top1 is not None and top1 is not None and not top1 >= min_top1:
            failures.append(f"output '{name}': top-1 agreement {_fmt(top1)} < {min_top1:g}")
    if min_top1 is not None and not any(o.get("top1_agreement") is not None for o in report["outputs"].values()):
        failures.append("top-1 agreement: no output is classifier-like ([N, classes])")
    return failures


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
