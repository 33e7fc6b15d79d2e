"""How much each residual block matters, on calibration data (higher = keep).

- ``influence``: Block Influence (ShortGPT, Men et al. 2024; SLEB's cosine form):
  1 - the mean cosine similarity of the block's input ``x`` and output ``x + f(x)``. One
  onnxruntime pass with every block's input and output as extra outputs. The cosine is per
  position over the feature axis: the last axis of a rank-3 tensor (tokens: [batch, seq,
  hidden]), axis 1 otherwise (channels: [batch, channels, ...]).
- ``loss``: the loss increase when the block alone is bypassed (``x + 0 * f(x)``), one pass
  per block over the data, all from one onnxruntime session whose blocks are gated by scalar
  inputs. The loss: next-token cross-entropy for a causal LM (integer token windows in,
  logits over the vocabulary out: ``lm_eval.causal_lm_io``); otherwise the outputs' squared
  error against the unbypassed model's, relative to their mean square.

``greedy_blocks`` picks blocks to remove one at a time, re-scoring the rest by ``loss`` with
the ones already chosen bypassed (SLEB, Song et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.analysis.blocks import ResidualBlock
from onnxprune.errors import ScoringError
from onnxprune.graph import GraphIndex
from onnxprune.io.calib_data import CalibrationData

CRITERIA = ("influence", "loss")
GATE = "__block_gate_"
Progress = Callable[[int, int], None]


def block_scores(model: onnx.ModelProto, blocks: Sequence[ResidualBlock], data: CalibrationData, *,
                 criterion: str = "influence", batch_size: int = 4, threads: int = 0,
                 progress: Progress | None = None) -> dict[str, float]:
    """Block (Add node name) -> importance on ``data``; higher = keep."""
    if criterion not in CRITERIA:
        raise ScoringError(f"unknown block criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if not blocks:
        return {}
    if criterion == "influence":
        return _influence(model, blocks, data, batch_size, threads, progress)
    losses = GatedLoss(model, blocks, data, batch_size=batch_size, threads=threads)
    base = losses.loss(())
    out = {}
    for k, b in enumerate(blocks):
        out[b.add] = losses.loss((b.add,)) - base
        if progress:
            progress(k + 1, len(blocks))
    return out


def greedy_blocks(model: onnx.ModelProto, blocks: Sequence[ResidualBlock], data: CalibrationData, count: int, *,
                  batch_size: int = 4, threads: int = 0, progress: Progress | None = None) -> list[str]:
    """``count`` blocks removed one at a time, each the one whose bypass (with those chosen
    before bypassed too) raises the loss least (SLEB)."""
    losses = GatedLoss(model, blocks, data, batch_size=batch_size, threads=threads)
    chosen: list[str] = []
    total = sum(len(blocks) - k for k in range(count))
    done = 0
    for _ in range(min(count, len(blocks))):
        trial = {}
        for b in blocks:
            if b.add not in chosen:
                trial[b.add] = losses.loss((*chosen, b.add))
                done += 1
                if progress:
                    progress(done, total)
        chosen.append(min(trial, key=trial.__getitem__))
    return chosen


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(_extra_outputs(out, names))
    return out


def _extra_outputs(model: onnx.ModelProto, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """The outputs ``_with_outputs`` adds to ``model``'s for ``names``."""
    index = GraphIndex(model)
    have = {o.name for o in model.graph.output}
    infos = {vi.name: vi for vi in (*model.graph.value_info, *model.graph.input)}
    extra = []
    for name in names:
        if name in have:
            continue
        have.add(name)
        extra.append(infos[name] if name in infos else onnx.helper.make_tensor_value_info(
            name, index.elem_type(name) or onnx.TensorProto.FLOAT, None))
    return extra


def outputs_session(model: onnx.ModelProto, names: Sequence[str], **options):  # noqa: ANN201
    """The onnxruntime session of ``_with_outputs(model, names)``, made without copying the weights."""
    from onnxprune.runtime.session import session_with_outputs

    return session_with_outputs(model, [*model.graph.output, *_extra_outputs(model, names)], **options)


def _influence(model: onnx.ModelProto, blocks: Sequence[ResidualBlock], data: CalibrationData, batch_size: int,
               threads: int, progress: Progress | None) -> dict[str, float]:
    names = list(dict.fromkeys(n for b in blocks for n in (b.skip, b.output)))
    sess = outputs_session(model, names, optimize=True, threads=threads)
    inputs = {i.name for i in sess.get_inputs()}
    sums = dict.fromkeys((b.add for b in blocks), 0.0)
    count = 0
    total = -(-len(data) // batch_size)
    for k, (feeds, _) in enumerate(data.batches(batch_size)):
        values = dict(zip(names, sess.run(names, {n: v for n, v in feeds.items() if n in inputs})))
        for b in blocks:
            cos = _cosine(values[b.skip], values[b.output])
            sums[b.add] += float(cos.sum())
        count += cos.size
        if progress:
            progress(k + 1, total)
    return {add: 1.0 - s / max(count, 1) for add, s in sums.items()}


def _cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity per position over the feature axis (see the module docstring)."""
    axis = -1 if x.ndim == 3 else 1 if x.ndim >= 2 else 0
    x, y = x.astype(np.float64), y.astype(np.float64)
    dot = (x * y).sum(axis)
    norm = np.sqrt((x * x).sum(axis) * (y * y).sum(axis))
    return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0)


class GatedLoss:
    """The calibration loss with any set of blocks bypassed, from one onnxruntime session
    (each block's branch multiplied by a scalar gate input: 1 kept, 0 bypassed)."""

    def __init__(self, model: onnx.ModelProto, blocks: Sequence[ResidualBlock], data: CalibrationData, *,
                 batch_size: int = 4, threads: int = 0) -> None:
        from onnxprune.runtime.session import session

        self.blocks = {b.add: k for k, b in enumerate(blocks)}
        self.sess = session(_gated(model, blocks), optimize=True, threads=threads)
        self.batches = [feeds for feeds, _ in data.batches(batch_size)]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.reference: list[dict[str, np.ndarray]] | None = None
        self.lm = None
        first = self._run(self.batches[0], ())
        from onnxprune.verify.lm_eval import causal_lm_io

        self.lm = causal_lm_io(self.batches[0], first)
        if self.lm is None:
            self.reference = [first] + [self._run(f, ()) for f in self.batches[1:]]

    def _run(self, feeds: Mapping[str, np.ndarray], bypassed: Sequence[str]) -> dict[str, np.ndarray]:
        gates = np.ones(len(self.blocks), dtype=np.float32)
        for name in bypassed:
            gates[self.blocks[name]] = 0.0
        full = {**feeds, **{f"{GATE}{k}": np.array(g, dtype=np.float32) for k, g in enumerate(gates)}}
        return dict(zip(self.outputs, self.sess.run(self.outputs, full)))

    def loss(self, bypassed: Sequence[str]) -> float:
        """Mean loss over the data with ``bypassed`` blocks gated off."""
        from onnxprune.verify.lm_eval import next_token_nll

        total, count = 0.0, 0
        for k, feeds in enumerate(self.batches):
            out = self._run(feeds, bypassed)
            if self.lm is not None:
                ids, mask, logits = self.lm
                nll, n = next_token_nll(out[logits], feeds[ids], feeds.get(mask) if mask else None)
                total, count = total + nll, count + n
                continue
            ref = self.reference[k]  # type: ignore[index]
            for name, value in out.items():
                if np.issubdtype(value.dtype, np.floating):
                    r = ref[name].astype(np.float64)
                    total += float(((value - r) ** 2).mean() / max((r * r).mean(), 1e-30))
            count += 1
        return total / max(count, 1)


def _gated(model: onnx.ModelProto, blocks: Sequence[ResidualBlock]) -> onnx.ModelProto:
    """A copy of ``model`` whose block ``k`` reads ``branch * __block_gate_k`` (a scalar input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out)
    inserts: dict[str, list[onnx.NodeProto]] = {}
    for k, b in enumerate(blocks):
        node = index.nodes[b.add]
        slot = 1 if node.input[0] == b.skip else 0
        gate, gated = f"{GATE}{k}", f"{b.branch}__gated{k}"
        elem = index.elem_type(b.branch) or onnx.TensorProto.FLOAT
        out.graph.input.append(onnx.helper.make_tensor_value_info(gate, onnx.TensorProto.FLOAT, []))
        nodes = []
        src = gate
        if elem != onnx.TensorProto.FLOAT:
            src = f"{gate}__cast"
            nodes.append(onnx.helper.make_node("Cast", [gate], [src], to=elem, name=f"{GATE}cast{k}"))
        nodes.append(onnx.helper.make_node("Mul", [node.input[slot], src], [gated], name=f"{GATE}mul{k}"))
        inserts[node.name] = nodes
        node.input[slot] = gated
    from onnxprune.rewrite.masking import insert_before

    insert_before(out.graph, inserts)
    return out
