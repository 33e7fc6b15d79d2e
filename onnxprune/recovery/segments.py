"""Run a model one stretch of its graph at a time, so that a walk over the graph computes
each node about once instead of running the whole model at every step.

A ``Cursor`` holds, for one calibration set, the values of the tensors that are *live* at a
point of the model's node order (made before it, read at or after it, or graph outputs).
Asked for tensors at a later node, it runs only the nodes between the two points (a
sub-model whose inputs are the cached tensors) and moves there. Recovery edits the
weights of the node it stands at (or inserts a node after it), never anything before: the
cached values stay those of the model as it is now. ``suffix`` runs the rest of the graph
from the cursor to the graph outputs (the held-out check of a step).

Graphs with sub-graph attributes (If, Loop, Scan), whose nodes may read tensors of the
outer graph, are not cut (``supported``), and a cursor whose cache would outgrow
``MAX_BYTES`` (a large calibration set of large activations: the cache holds every
sample, a whole-model run only one batch) gives up: ``tensors`` answers None from then on
and the caller runs whole models, as it does for anything a cursor cannot serve.

Only batch-major tensors (leading dimension the batch's sample count in every batch) are
cached per sample; any other value a stretch makes (a shape, a rotary table, a mask shared
by the batch) is kept once, as the first batch made it, and fed whole to every batch; one
that differs between batches (a shape holding the batch size, with a shorter last batch)
cannot be served: the cursor gives up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper

from onnxprune.graph import GraphIndex, static_batch
from onnxprune.io.calib_data import CalibrationData
from onnxprune.io.external import share_source
from onnxprune.runtime.session import session

log = logging.getLogger(__name__)
MAX_BYTES = 512 * 2**20  # cached activations per cursor, at most (projected from the first batch)
STRETCHED_BYTES = 256 << 20  # models with more weights than this run their graph outputs in stretches
STRETCH_BYTES = 64 << 20  # weights per stretch, about (``stretch_starts``)


class _TooLarge(Exception):
    """The cache would outgrow ``MAX_BYTES``."""


def supported(model: onnx.ModelProto) -> bool:
    """Whether ``model`` can be run in stretches (no node carries a sub-graph)."""
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in model.graph.node for a in n.attribute)


class Cursor:
    """One model's live tensors on ``calib`` at a point of its node order (see the module)."""

    def __init__(self, calib: CalibrationData, batch_size: int) -> None:
        self.calib = calib
        self.batch_size = batch_size
        self.position = 0  # index into graph.node of the node the cursor stands before
        self.at: str | None = None  # that node's name (None: before the first node)
        self.values: dict[str, np.ndarray] = dict(calib.inputs)
        self.shared: set[str] = set()  # values that are not batch-major: one for every batch
        self.given_up = False  # the cache would be too large: every call answers None

    def __len__(self) -> int:
        return len(self.calib)

    def tensors(self, model: onnx.ModelProto, node: str, names: Sequence[str], *, after: bool = False
                ) -> dict[str, np.ndarray] | None:
        """The values (every sample) of ``names`` in ``model`` just before ``node`` (just after
        it with ``after``), moving the cursor there. None when the cursor is already past that
        point, or a name is neither live there nor made on the way (the caller then runs the
        whole model)."""
        nodes = model.graph.node
        index = next((i for i, n in enumerate(nodes) if n.name == node), None)
        if index is None or self.given_up:
            return None
        target = index + 1 if after else index
        start = self._start(model)
        if start is None or target < start:
            return None
        produced, last_use = _lifetimes(model)
        constants = _constants(model)
        segment = nodes[start:target]
        made = {o for n in segment for o in n.output if o}
        if any(n not in self.values and n not in made for n in names):
            return None
        live = {t for t, p in produced.items()
                if start <= p < target and last_use.get(t, -1) >= target and t not in constants}
        wanted = [t for t in dict.fromkeys([*live, *names]) if t in made]
        try:
            new = self._run(model, segment, wanted, budget=True) if wanted else {}
        except _TooLarge:
            log.debug("recovery: running whole models from node '%s' on: the cache would pass %d bytes", node, MAX_BYTES)
            self.given_up, self.values = True, {}
            return None
        except Exception as exc:  # noqa: BLE001 - a sub-model onnxruntime refuses: run whole models instead
            log.debug("recovery: running whole models from node '%s' on: %s", node, exc)
            self.given_up, self.values = True, {}
            return None
        got = {**self.values, **new}
        inputs = model_inputs(model)
        self.values = {t: v for t, v in got.items()
                       if (last_use.get(t, -1) >= target or t in inputs) and t not in constants}
        self.position, self.at = target, (nodes[target].name if target < len(nodes) else None)
        return {n: got[n] for n in names}

    def suffix(self, model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
        """The graph outputs of ``model`` computed from the cursor's point to the end (None if
        the cursor's node is not in ``model``)."""
        start = self._start(model)
        if start is None or self.given_up:
            return None
        outputs = [o.name for o in model.graph.output]
        missing = [o for o in outputs if o not in self.values]
        try:
            new = self._run(model, model.graph.node[start:], missing) if missing else {}
        except Exception as exc:  # noqa: BLE001 - as in ``tensors``
            log.debug("recovery: running whole models from here on: %s", exc)
            self.given_up, self.values = True, {}
            return None
        return {o: new[o] if o in new else self.values[o] for o in outputs}

    def suffix_batches(self, model: onnx.ModelProto) -> Iterator[dict[str, np.ndarray]] | None:
        """``suffix`` one batch at a time (``{output: batch slice}``, batches in sample order), so
        that the graph outputs of every sample (a decoder LM's logits) are never held at once.
        None where ``suffix`` would be None or an output is not batch-major; a failure while
        running raises ``SuffixFailed`` (the cursor has then given up: run the whole model)."""
        start = self._start(model)
        if start is None or self.given_up:
            return None
        ahead = self._ahead(model, start)
        if ahead is not None:
            return ahead.suffix_batches(model)
        outputs = [o.name for o in model.graph.output]
        if any(o in self.values and o in self.shared for o in outputs):
            return None
        missing = [o for o in outputs if o not in self.values]
        try:
            batches = self._batches(model, model.graph.node[start:], missing) if missing else None
        except Exception as exc:  # noqa: BLE001 - as in ``tensors``
            log.debug("recovery: running whole models from here on: %s", exc)
            self.given_up, self.values = True, {}
            return None
        return self._suffix_stream(outputs, batches, static_batch(model) or self.batch_size)

    def _ahead(self, model: onnx.ModelProto, start: int) -> Cursor | None:
        """For a model of more than ``STRETCHED_BYTES`` of weights: a copy of this cursor moved
        through the rest of the graph to its last ``stretch_starts`` cut (about ``STRETCH_BYTES``
        of weights a stretch), so that the rest is never one session holding every weight after
        the cursor (this cursor stays where it is). None where there is nothing to cut, or the
        copy cannot move (the rest then runs in one stretch)."""
        from onnxprune.io.modelio import weight_bytes

        if weight_bytes(model) <= STRETCHED_BYTES:
            return None
        at = {n.name: i for i, n in enumerate(model.graph.node)}
        cuts = [c for c in stretch_starts(model, STRETCH_BYTES) if at[c] > start]
        if not cuts:
            return None
        ahead = Cursor(self.calib, self.batch_size)
        ahead.position, ahead.at, ahead.values, ahead.shared = self.position, self.at, dict(self.values), set(self.shared)
        for node in cuts:
            if ahead.tensors(model, node, []) is None:
                return None
        return ahead

    def _suffix_stream(self, outputs: list[str], batches: Iterator[tuple[int, int, dict[str, np.ndarray]]] | None,
                       bs: int) -> Iterator[dict[str, np.ndarray]]:
        n = len(self.calib)
        for lo in range(0, n, bs):
            new: dict[str, np.ndarray] = {}
            if batches is not None:
                try:
                    start, count, new = next(batches)
                except Exception as exc:  # noqa: BLE001 - a run onnxruntime refuses: run whole models
                    log.debug("recovery: running whole models from here on: %s", exc)
                    self.given_up, self.values = True, {}
                    raise SuffixFailed(str(exc)) from exc
                if start != lo or any(v.ndim == 0 or v.shape[0] != count for v in new.values()):
                    self.given_up, self.values = True, {}
                    raise SuffixFailed("an output of the rest of the graph is not batch-major")
            yield {o: new[o] if o in new else self.values[o][lo: lo + bs] for o in outputs}

    def _start(self, model: onnx.ModelProto) -> int | None:
        """The cursor's index in ``model`` (nodes may have been inserted after it)."""
        if self.at is None:
            return self.position if self.position == 0 else len(model.graph.node)
        return next((i for i, n in enumerate(model.graph.node) if n.name == self.at), None)

    def _batches(self, model: onnx.ModelProto, segment: Sequence[onnx.NodeProto], outputs: list[str]
                 ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """A session of ``segment`` (made now: a sub-model onnxruntime refuses raises here), then
        per batch of the cached values: (first sample, samples, {output: value})."""
        sub, inputs, weights = _sub_graph(model, segment, outputs, self.values)
        # the weights are streamed from ``model`` (never copied into ``sub``); a failure falls back
        # to whole-model runs: not an error to show
        sess = session(sub, quiet=True, initializers=weights)
        bs = static_batch(model) or self.batch_size

        def run() -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
            n = len(self.calib)
            for lo in range(0, n, bs):
                feeds = {k: self.values[k] if k in self.shared else self.values[k][lo: lo + bs] for k in inputs}
                yield lo, min(bs, n - lo), dict(zip(outputs, sess.run(outputs, feeds)))

        return run()

    def _run(self, model: onnx.ModelProto, segment: Sequence[onnx.NodeProto], outputs: list[str],
             budget: bool = False) -> dict[str, np.ndarray]:
        """Run ``segment`` (consecutive nodes of ``model``) on the cached values, batch by batch
        (``budget``: raise ``_TooLarge`` when the first batch projects the cache past ``MAX_BYTES``).
        Batch-major outputs are written into one array per output as the batches come (no list
        of batches joined at the end: that would hold every value twice)."""
        n, bs = len(self.calib), static_batch(model) or self.batch_size
        parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}  # values that are not batch-major
        joined: dict[str, np.ndarray] = {}  # batch-major values, every sample
        for lo, count, got in self._batches(model, segment, outputs):
            for o, v in got.items():
                if o in self.shared and parts[o]:  # kept once: every batch must make the same value
                    if v.shape != parts[o][0].shape or not np.array_equal(v, parts[o][0]):
                        raise ValueError(f"tensor '{o}' is neither batch-major nor the same in every batch")
                    continue
                if o not in self.shared and (v.ndim == 0 or v.shape[0] != count):
                    self.shared.add(o)
                    if o in joined:  # batch-major so far: the values of the batches before, as made
                        parts[o] = [joined[o][s: s + bs] for s in range(0, lo, bs)]
                        del joined[o]
                if o in self.shared:
                    parts[o].append(v)
                    continue
                if o not in joined:
                    joined[o] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
                joined[o][lo: lo + count] = v
            if budget and lo == 0:  # project the cache from the first batch
                held = sum(v.nbytes for k, v in self.values.items() if k not in self.calib.inputs)
                batch = sum(v[:count].nbytes for v in joined.values())
                once = sum(p[0].nbytes for o, p in parts.items() if o in self.shared)  # a tied lm_head's table
                if held + once + batch * n / count > MAX_BYTES:
                    raise _TooLarge
        out = {}
        for o in outputs:
            if o in joined:
                out[o] = joined[o]
                continue
            v = parts[o]
            if any(p.shape != v[-1].shape or not np.array_equal(p, v[-1]) for p in v[:-1]):
                raise ValueError(f"tensor '{o}' is neither batch-major nor the same in every batch")
            out[o] = v[-1]
        return out


def stretch_starts(model: onnx.ModelProto, weight_bytes: int) -> list[str]:
    """Names of nodes that cut ``model``'s node order into stretches of about ``weight_bytes``
    of weights each (counted where a weight is first read; a stretch ends once it passes the
    size), at nodes whose name is unique (a cursor finds a node by its name)."""
    from onnxprune.io.external import tensor_nbytes

    nodes = model.graph.node
    sizes = {t.name: tensor_nbytes(t) for t in model.graph.initializer}
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.name] = counts.get(n.name, 0) + 1
    cuts, seen, size = [], set(), 0
    for i, n in enumerate(nodes):
        for t in n.input:
            if t in sizes and t not in seen:
                seen.add(t)
                size += sizes[t]
        if size >= weight_bytes and i + 1 < len(nodes) and nodes[i + 1].name and counts[nodes[i + 1].name] == 1:
            cuts.append(nodes[i + 1].name)
            size = 0
    return cuts


class SuffixFailed(Exception):
    """A run of ``Cursor.suffix_batches`` failed: the cursor gave up, run the whole model instead."""


def model_inputs(model: onnx.ModelProto) -> set[str]:
    inits = {t.name for t in model.graph.initializer}
    return {vi.name for vi in model.graph.input if vi.name not in inits}


def _lifetimes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Per tensor: the index of the node that makes it (-1: a graph input), and of the last
    node that reads it (the node count for a graph output)."""
    produced = {name: -1 for name in model_inputs(model)}
    last_use: dict[str, int] = {}
    for i, n in enumerate(model.graph.node):
        for t in n.input:
            if t:
                last_use[t] = i
        for t in n.output:
            if t:
                produced[t] = i
    for o in model.graph.output:
        last_use[o.name] = len(model.graph.node)
    return produced, last_use


_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
                     "Multinomial"})


def _constants(model: onnx.ModelProto) -> dict[str, int]:
    """Tensors computed from initializers alone (a tied embedding's Transpose for the LM head), by
    the index of the node that makes them. A cursor never caches these (every cursor would hold
    its own copy, for every sample set: 4 x 113 MB on SmolLM2); a stretch that reads one runs the
    nodes that make it (``_with_constants``)."""
    known = {t.name for t in model.graph.initializer}
    out: dict[str, int] = {}
    for i, n in enumerate(model.graph.node):
        if (n.input and n.op_type not in _RANDOM and all(not t or t in known or t in out for t in n.input)
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)):
            out.update((o, i) for o in n.output if o)
    return out


def _with_constants(model: onnx.ModelProto, segment: Sequence[onnx.NodeProto],
                    values: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """``segment`` after the nodes (in graph order) that make the constants (``_constants``) it
    reads and neither makes nor finds in ``values``."""
    constants = _constants(model)
    made = {o for n in segment for o in n.output if o}
    todo = [t for n in segment for t in n.input if t and t in constants and t not in made and t not in values]
    nodes, needed = model.graph.node, set()
    while todo:
        i = constants[todo.pop()]
        if i not in needed:
            needed.add(i)
            todo.extend(t for t in nodes[i].input if t in constants)
    return [nodes[i] for i in sorted(needed)] + list(segment)


def _sub_model(model: onnx.ModelProto, segment: Sequence[onnx.NodeProto], outputs: list[str],
               values: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """A model of ``segment`` whose graph inputs are the tensors it reads that it does not
    make (taken from ``values``) and whose outputs are ``outputs``; and those input names."""
    sub, inputs, weights = _sub_graph(model, segment, outputs, values)
    sub.graph.initializer.extend(weights)
    return sub, inputs


def _sub_graph(model: onnx.ModelProto, segment: Sequence[onnx.NodeProto], outputs: list[str],
               values: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str], list[onnx.TensorProto]]:
    """``_sub_model`` without its initializers, its input names, and the initializers it reads
    (``model``'s own, not copies: a stretch of a large model's graph reads hundreds of MB).
    The constants it reads that are not cached are made in it (``_with_constants``)."""
    segment = _with_constants(model, segment, values)
    index = GraphIndex(model)
    made: set[str] = set()
    inputs: list[str] = []
    inits: list[onnx.TensorProto] = []
    seen: set[str] = set()
    for n in segment:
        for t in n.input:
            if not t or t in made or t in seen:
                continue
            seen.add(t)
            if t in index.initializers:
                inits.append(index.initializers[t])
            elif t in values:
                inputs.append(t)
            else:
                raise KeyError(f"tensor '{t}' read by node '{n.name}' is not cached")
        made.update(o for o in n.output if o)
    graph = helper.make_graph(
        list(segment), "segment",
        [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(values[t].dtype), None) for t in inputs],
        [helper.make_tensor_value_info(t, index.elem_type(t) or onnx.TensorProto.FLOAT, None) for t in outputs])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    share_source(model, sub)  # weights kept in files are read from where ``model``'s are
    return sub, inputs, inits


def batched(values: dict[str, np.ndarray], batch_size: int) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(first sample, samples, {name: slice}) per batch of cached values, as ``Probe.stream`` yields."""
    n = len(next(iter(values.values()))) if values else 0
    for lo in range(0, n, batch_size):
        part = {k: v[lo: lo + batch_size] for k, v in values.items()}
        yield lo, len(next(iter(part.values()))), part
