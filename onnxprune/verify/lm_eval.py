"""Causal language models on token windows: perplexity, prompt throughput, English text.

A causal-LM export reads ``input_ids`` [batch, seq] (int64) and writes logits
[batch, seq, vocab]; the logits at position t predict token t + 1. Windows are rows of
token ids of one length: perplexity is exp of the mean next-token cross-entropy over every
predicted position of every window (``perplexity``); ``tokens_per_second`` times one
prompt in onnxruntime. ``package_text`` gathers English prose that ships with installed
Python packages (licence texts, one copy of each), and ``split_windows`` cuts token ids
into disjoint calibration and evaluation windows. ``LanguageModelStream`` gives ``verify``
perplexity before and after pruning (chunk by chunk, as both models stream over the windows)
and tokens per second when its inputs are token windows and the model writes logits. ``next_token_taylor_scores`` scores the
prunable units on calibration windows with the natural label-free loss of a causal LM,
next-token cross-entropy (first-order Taylor: the squared gradient of the loss with respect
to each unit's gate, per batch, averaged; Molchanov et al. 2019).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.errors import ModelError
from onnxprune.runtime.session import session

LICENCE_WORDS = ("LICENSE", "LICENCE", "COPYING", "NOTICE")  # the files of a distribution read as text


class LanguageModelError(ModelError):
    """A model or token windows that do not fit a causal-LM measurement."""


def _session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0, optimize: bool = True):  # noqa: ANN202
    src = str(model) if isinstance(model, (str, os.PathLike)) else model
    return session(src, optimize=optimize, threads=threads)


def _ids_input(sess) -> str:  # noqa: ANN001
    names = [i.name for i in sess.get_inputs()]
    if len(names) != 1:
        raise LanguageModelError(f"expected a causal LM with one input (input_ids), got inputs {', '.join(names)}")
    return names[0]


def next_token_nll(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, int]:
    """(summed negative log-likelihood of ids[:, 1:] under logits[:, :-1], positions counted).

    With an attention ``mask`` (ids' shape, 0 = padding) a position counts only when both the
    token predicted and the one it is predicted from are real (not padding)."""
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise LanguageModelError(f"logits of shape {logits.shape} do not match token windows of shape {ids.shape}")
    if mask is not None and np.shape(mask) != ids.shape:
        raise LanguageModelError(f"attention mask of shape {np.shape(mask)} does not match token windows "
                                 f"of shape {ids.shape}")
    keep = np.ones((ids.shape[0], max(ids.shape[1] - 1, 0)), bool)
    if mask is not None:
        real = np.asarray(mask) != 0
        keep = real[:, :-1] & real[:, 1:]
    total = 0.0
    for row, row_ids, row_keep in zip(logits, ids, keep):  # a row at a time: [seq, vocab] in float64 at most
        pred, target = row[:-1][row_keep].astype(np.float64), row_ids[1:][row_keep]
        if not len(target):
            continue
        top = pred.max(-1, keepdims=True)
        log_z = np.log(np.exp(pred - top).sum(-1)) + top[:, 0]
        total += float((log_z - pred[np.arange(len(target)), target]).sum())
    return total, int(keep.sum())


def perplexity(model: onnx.ModelProto | str | os.PathLike, windows: np.ndarray, *, batch_size: int = 4,
               threads: int = 0) -> float:
    """Perplexity of ``model`` (a causal-LM ONNX model or its path) on token ``windows``
    [n, length]: exp(mean next-token cross-entropy) over all windows, in onnxruntime."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2 or not len(windows):
        raise LanguageModelError(f"token windows must be [n, length >= 2], got shape {windows.shape}")
    sess = _session(model, threads)
    name = _ids_input(sess)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = windows[start:start + batch_size].astype(np.int64)
        (logits,) = sess.run(None, {name: ids})[:1]
        nll, n = next_token_nll(logits, ids)
        total, count = total + nll, count + n
    return float(np.exp(total / count))


def causal_lm_io(feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> tuple[str, str | None, str] | None:
    """(token input, attention-mask input or None, logits output) when ``feeds`` hold integer
    token windows [n, length >= 2] (the input named ``input_ids``, or the only 2-D integer input
    besides an ``attention_mask``) and ``outputs`` a float [n, length, vocab] output whose
    vocabulary covers every token (the one named ``logits`` first); None otherwise."""
    ints = {k: np.asarray(v) for k, v in feeds.items()
            if np.ndim(v) == 2 and np.issubdtype(np.asarray(v).dtype, np.integer)}
    mask_name = "attention_mask" if "attention_mask" in ints else None
    tokens = ["input_ids"] if "input_ids" in ints else [k for k in ints if k != mask_name]
    if len(tokens) != 1:
        return None
    ids = ints[tokens[0]]
    if ids.shape[1] < 2 or not ids.size or ids.min() < 0:
        return None
    if mask_name is not None and ints[mask_name].shape != ids.shape:
        mask_name = None
    fits = [k for k, v in outputs.items() if np.ndim(v) == 3 and np.shape(v)[:2] == ids.shape
            and np.issubdtype(np.asarray(v).dtype, np.floating) and np.shape(v)[2] > ids.max()]
    if not fits:
        return None
    return tokens[0], mask_name, "logits" if "logits" in fits else fits[0]


class LanguageModelStream:
    """Perplexity of a causal LM before and after pruning, accumulated chunk by chunk of token
    windows (``verify`` streams both models: ``update`` with each chunk's feeds and outputs,
    ``report`` at the end). ``detect`` finds the token input and logits (``causal_lm_io``)."""

    def __init__(self, ids_name: str, mask_name: str | None, logits_name: str, shape: tuple[int, int]) -> None:
        self.ids_name, self.mask_name, self.logits_name = ids_name, mask_name, logits_name
        self.shape = shape
        self.nll = [0.0, 0.0]
        self.count = 0
        self.pruned_ok = True

    @classmethod
    def detect(cls, feeds: Mapping[str, np.ndarray], part: Mapping[str, np.ndarray],
               outputs: Mapping[str, np.ndarray]) -> LanguageModelStream | None:
        """The stream for ``feeds`` (all windows) given the first chunk's feeds (``part``) and
        the original's outputs on it; None unless they are token windows and logits."""
        found = causal_lm_io(part, outputs)
        if found is None:
            return None
        ids = np.asarray(feeds[found[0]])
        if ids.ndim != 2 or ids.min() < 0 or np.shape(outputs[found[2]])[2] <= ids.max():
            return None
        mask = found[1] if found[1] is not None and np.shape(feeds[found[1]]) == ids.shape else None
        return cls(found[0], mask, found[2], (int(ids.shape[0]), int(ids.shape[1])))

    def update(self, part: Mapping[str, np.ndarray], original: Mapping[str, np.ndarray],
               pruned: Mapping[str, np.ndarray]) -> None:
        """Add one chunk of windows: its feeds and both models' outputs on them."""
        ids = np.asarray(part[self.ids_name])
        mask = None if self.mask_name is None else np.asarray(part[self.mask_name])
        logits = np.asarray(original[self.logits_name])
        nll, count = next_token_nll(logits, ids, mask)
        self.nll[0] += nll
        self.count += count
        after = pruned.get(self.logits_name)
        if after is None or np.shape(after) != logits.shape:
            self.pruned_ok = False
        if self.pruned_ok:
            self.nll[1] += next_token_nll(np.asarray(after), ids, mask)[0]

    def report(self, latency_original: Mapping[str, Mapping[str, Mapping]],
               latency_pruned: Mapping[str, Mapping[str, Mapping]],
               timed_feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The ``language_model`` entry of ``verify`` (see ``language_model_report``)."""
        count = self.count
        ppl_o = float(np.exp(self.nll[0] / count)) if count else float("nan")
        ppl_p = float(np.exp(self.nll[1] / count)) if count and self.pruned_ok else float("nan")
        report: dict[str, Any] = {
            "input": self.ids_name, "attention_mask": self.mask_name, "output": self.logits_name,
            "windows": self.shape[0], "window_length": self.shape[1], "tokens_scored": count,
            "original": {"perplexity": ppl_o, "tokens_per_s": None},
            "pruned": {"perplexity": ppl_p, "tokens_per_s": None},
            "perplexity_ratio": ppl_p / ppl_o if ppl_o else float("nan"), "throughput": None}
        timed = np.asarray((timed_feeds or {}).get(self.ids_name, np.zeros(self.shape)))
        for provider, per_batch in latency_original.items():
            for batch, stats in per_batch.items():
                other = latency_pruned.get(provider, {}).get(batch)
                if other is None or timed.ndim != 2:
                    continue
                tokens = int(batch) * int(timed.shape[1])
                for side, lat in (("original", stats), ("pruned", other)):
                    p50 = float(lat.get("p50", float("nan")))
                    report[side]["tokens_per_s"] = tokens / (p50 / 1000) if p50 > 0 else float("nan")
                report["throughput"] = {"provider": provider, "batch": int(batch), "tokens_per_run": tokens}
                return report
        return report


def language_model_report(feeds: Mapping[str, np.ndarray], original: Mapping[str, np.ndarray],
                          pruned: Mapping[str, np.ndarray], latency_original: Mapping[str, Mapping[str, Mapping]],
                          latency_pruned: Mapping[str, Mapping[str, Mapping]],
                          timed_feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, Any] | None:
    """Perplexity and prompt throughput of a causal LM before and after pruning, from outputs
    already computed on token windows: None unless ``causal_lm_io`` finds token windows and
    logits. Throughput: tokens per timed run (batch x window length of ``timed_feeds``,
    default ``feeds``) over the p50 latency, of the first provider and batch size timed for
    both (``latency_*``: ``{provider: {batch: {"p50": ms, ...}}}``). ``verify`` gets the same
    from ``LanguageModelStream``, chunk by chunk."""
    stream = LanguageModelStream.detect(feeds, feeds, original)
    if stream is None:
        return None
    stream.update(feeds, original, pruned)
    return stream.report(latency_original, latency_pruned, feeds if timed_feeds is None else timed_feeds)


def tokens_per_second(model: onnx.ModelProto | str | os.PathLike, *, prompt: int = 256, batch: int = 1,
                      repeats: int = 5, threads: int = 0, vocab: int = 1000, seed: int = 0) -> float:
    """Prompt throughput in onnxruntime (all graph optimisations on): batch x prompt tokens
    over the fastest of ``repeats`` runs after one warm-up run (on a shared machine the
    fastest run is the one least disturbed by other work)."""
    sess = _session(model, threads)
    name = _ids_input(sess)
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, prompt)).astype(np.int64)
    sess.run(None, {name: ids})
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        sess.run(None, {name: ids})
        times.append(time.perf_counter() - t0)
    return batch * prompt / min(times)


def package_text(packages: Sequence[str] | None = None, *, max_chars: int = 2_000_000) -> str:
    """English prose shipped with installed Python distributions: the paragraphs of their
    licence files (LICENSE, COPYING, NOTICE, third-party licences), each distinct paragraph
    once (the same licence ships with many packages), in a stable order, joined by blank
    lines. ``packages``: distribution names (a pinned one gives the same text everywhere,
    e.g. ``["torch"]``); default: every installed distribution."""
    from importlib import metadata

    if packages is None:
        dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    else:
        try:
            dists = [metadata.distribution(name) for name in packages]
        except metadata.PackageNotFoundError as exc:
            raise LanguageModelError(f"package '{exc.name}' is not installed "
                                     "(its licence texts were asked for)") from exc
    seen: set[str] = set()
    paragraphs: list[str] = []
    size = 0
    for dist in dists:
        files = sorted(str(f) for f in dist.files or () if any(w in Path(str(f)).name.upper() for w in LICENCE_WORDS))
        for name in files:
            try:
                text = Path(dist.locate_file(name)).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for para in text.split("\n\n"):
                words = " ".join(para.split())
                digest = hashlib.sha1(words.lower().encode()).hexdigest()
                if len(words) < 40 or digest in seen:
                    continue
                seen.add(digest)
                paragraphs.append(words)
                size += len(words) + 2
                if size >= max_chars:
                    return "\n\n".join(paragraphs)
    return "\n\n".join(paragraphs)


def split_windows(tokens: Sequence[int] | np.ndarray, length: int, calib: int,
                  evaluate: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint windows of ``length`` tokens: ``calib`` from the start of the stream,
    ``evaluate`` from its end (no token in both)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens) // length
    if calib + evaluate > n:
        raise LanguageModelError(f"{len(tokens)} tokens make {n} windows of {length}; "
                                 f"{calib} + {evaluate} were asked for")
    rows = tokens[: n * length].reshape(n, length)
    return rows[:calib].copy(), rows[n - evaluate:].copy()


RECOMPUTE_BYTES = 64 << 20  # models with more weights than this recompute activations in the backward pass


def recompute_stretch(steps: int) -> int:
    """Steps per recomputed stretch of a module of ``steps`` steps: about the square root (as
    many stretches as steps in one; on SmolLM2 a stretch is under a decoder layer)."""
    return math.isqrt(steps - 1) + 1 if steps > 1 else 1  # the ceiling of the square root


NEXT_TOKEN_CRITERIA = ("taylor-fo", "taylor-so")


def next_token_taylor_scores(model: onnx.ModelProto, analysis: Analysis, windows: np.ndarray, *,
                             batch_size: int = 4, device: str = "cpu", recompute: bool | None = None,
                             criterion: str = "taylor-fo") -> dict[str, np.ndarray]:
    """Taylor scores (higher = keep) of every prunable group's units on token ``windows``
    under the next-token cross-entropy, run in ``onnxprune.torchexec`` (needs torch).
    ``criterion``: 'taylor-fo' (the gate gradient summed over each batch of ``batch_size``
    windows, squared, summed over the batches) or 'taylor-so' (the Fisher surrogate: squared
    per window, summed over the windows: independent of ``batch_size``; the same pass).
    ``recompute``: keep only the tensors between stretches of the graph through each forward
    pass and make the rest again in the backward pass (``OnnxModule.recompute``: the same
    scores to the bit, about a third more time, a fraction of the activations' memory);
    default: for models of more than ``RECOMPUTE_BYTES`` of weights (a decoder LM)."""
    from onnxprune._optional import require_torch

    torch = require_torch("scoring a language model")
    import torch.nn.functional as F

    from onnxprune.scoring.gates import Gates, gate_layout
    from onnxprune.torchexec import OnnxModule

    if criterion not in NEXT_TOKEN_CRITERIA:
        raise LanguageModelError(f"unknown criterion '{criterion}' for the next-token loss "
                                 f"(choose from {', '.join(NEXT_TOKEN_CRITERIA)})")
    windows = np.asarray(windows, dtype=np.int64)
    module = OnnxModule(model, trainable=lambda name: False).to(device).eval()
    if len(module.input_names) != 1:
        raise LanguageModelError(f"expected a causal LM with one input (input_ids), got {module.input_names}")
    layout = gate_layout(analysis)
    gates = Gates(module, layout)
    entry_unit = torch.as_tensor(layout.entry_unit)
    total = torch.zeros(layout.n_units, dtype=torch.float64)
    batches = 0
    if recompute is None:
        from onnxprune.io.modelio import weight_bytes

        recompute = weight_bytes(model) > RECOMPUTE_BYTES
    every = recompute_stretch(len(module.node_names)) if recompute else 0
    try:
        for start in range(0, len(windows), batch_size):
            ids = torch.as_tensor(windows[start:start + batch_size], device=device)
            values = gates.new_batch(len(ids), torch.device(device), requires_grad=True)
            with module.recompute(every):
                logits = module(ids)
            logits = logits[0] if isinstance(logits, tuple) else logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                   reduction="sum")
            del logits  # the backward pass does not read them: 0.1 GB less at its peak (2 windows of SmolLM2)
            (grad,) = torch.autograd.grad(loss, values)
            per_window = grad.double().cpu()  # [windows, gate entries]
            if criterion == "taylor-fo":
                per_window = per_window.sum(0, keepdim=True)
            units = torch.zeros(len(per_window), layout.n_units, dtype=torch.float64)
            total += (units.index_add_(1, entry_unit, per_window) ** 2).sum(0)
            batches += len(per_window)  # the squares summed: one per batch (taylor-fo) or per window
    finally:
        gates.remove()
    unit_scores = (total / max(1, batches)).numpy()
    return {gid: unit_scores[offset:offset + analysis.group(gid).size] for gid, offset in layout.unit_offsets.items()}
