"""The temperature of a causal LM's logits (temperature scaling, Guo et al. 2017), restored
after pruning: one scalar t on the logits, fitted to the original's next-token distribution.

A pruned and refitted decoder is often more confident than the original: its refits fit the
calibration windows closely and its next-token distributions grow sharper elsewhere (on
SmolLM2-135M at 20%, t = 0.95 lowers the held-out KL by 2%, docs/llm.md). The scalar is
fitted on the held-out windows themselves, since the fit windows are the ones the refits
memorised: it minimises the mean next-token KL divergence of softmax(t * logits) from the
original's distribution. Being fitted where it is judged, it is checked by cross-fitting:
the held-out windows are split in two folds, each fold's t is judged on the other fold, and
the step is kept only if those cross-fitted figures are below the KL at t = 1 (the figure
reported: an out-of-sample estimate, never the in-sample one). The t kept is fitted on
every held-out window.

The KL is convex in t (a log-sum-exp of t * z minus a linear term), so Newton's method from
t = 1 with damped steps finds it: value, first and second derivative per window in one
pass over the logits (``reference_terms`` once, ``logit_terms`` per pass, ``kl_at``). The scalar is folded into the weights (``fold_point``):
a constant scaling the logits' MatMul input (an RMSNorm's weight, used nowhere else), the
MatMul's own weight when only it reads it, or else a Mul by a scalar before the MatMul (one
parameter): the graph computes t times the logits with no other change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph import GraphIndex
from onnxprune.recovery.params import fresh_name, set_constant

KL_ROWS = 64  # token positions of a causal LM's logits converted to float64 at a time
T_RANGE = (0.25, 4.0)  # the temperatures considered
MAX_STEP = 0.25  # Newton steps are clipped to this
TOLERANCE = 1e-4  # Newton stops when a step is smaller
MAX_ITERATIONS = 12


@dataclass(frozen=True)
class Fold:
    """Where a scalar on the logits goes: ``kind`` 'initializer' (scale constant ``tensor``,
    read only by node ``node``) or 'insert' (a Mul by a scalar on ``tensor``, the first input
    of the MatMul or Gemm ``node``)."""

    kind: str
    node: str
    tensor: str


def fold_point(model: onnx.ModelProto, logits: str) -> Fold | str:
    """Where a temperature on graph output ``logits`` can be folded, or why it cannot (a
    one-line reason): the logits must come straight from a MatMul or a Gemm without a bias."""
    index = GraphIndex(model)
    node = index.producer.get(logits)
    if node is None:
        return f"the logits '{logits}' are not computed by a node"
    if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
        return f"the logits come from {node.op_type} '{node.name}'; a temperature folds into a MatMul or Gemm"
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        return f"the logits come from a Gemm with a bias ('{node.name}')"
    for slot in (1, 0):
        if _owned_constant(index, node.input[slot], node):
            return Fold("initializer", node.name, node.input[slot])
    a = node.input[0]
    source = index.producer.get(a)
    if (source is not None and source.op_type == "Mul" and source.domain in ("", "ai.onnx")
            and [user for user, _ in index.users(a)] == [node] and a not in index.graph_outputs):
        owned = [t for t in source.input if _owned_constant(index, t, source)]
        if len(owned) == 1:
            return Fold("initializer", source.name, owned[0])
    return Fold("insert", node.name, a)


def _owned_constant(index: GraphIndex, name: str, node: onnx.NodeProto) -> bool:
    """A floating initializer only ``node`` reads (scaling it changes nothing else)."""
    tensor = index.initializers.get(name)
    if tensor is None or name in index.graph_outputs:
        return False
    if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        return False
    return [user.name for user, _ in index.users(name)] == [node.name]


def apply_temperature(model: onnx.ModelProto, fold: Fold, t: float) -> None:
    """Make ``model``'s logits ``t`` times what they were, as ``fold`` says (in place: a scaled
    constant replaces the old one, read wherever it lives, or a Mul node and its scalar are
    added)."""
    index = GraphIndex(model)
    node = index.nodes[fold.node]
    if fold.kind == "initializer":
        value = index.const(fold.tensor, unaligned_ok=True)
        if value is None:
            raise KeyError(fold.tensor)
        slot = list(node.input).index(fold.tensor)
        set_constant(model, fold.node, slot, (value.astype(np.float64) * t).astype(value.dtype))
        return
    dtype = onnx.helper.tensor_dtype_to_np_dtype(index.elem_type(fold.tensor) or onnx.TensorProto.FLOAT)
    scalar = fresh_name(model, f"{fold.tensor}__temperature")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(t, dtype=dtype), scalar))
    scaled = fresh_name(model, f"{fold.tensor}__tempered")
    mul = onnx.helper.make_node("Mul", [fold.tensor, scalar], [scaled], name=fresh_name(model, f"{fold.node}__temperature"))
    node.input[0] = scaled
    position = next(k for k, n in enumerate(model.graph.node) if n.name == fold.node)
    model.graph.node.insert(position, mul)


def reference_terms(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float, int]:
    """(sum over token positions of sum_v p log p, of E_p[z], positions counted) for logits z
    and the original's ``reference`` logits [..., vocabulary], p = softmax(reference): what the
    KL at any t needs from the original (``kl_at``), in float64, ``KL_ROWS`` positions at a time."""
    z2, r2 = _rows(logits), _rows(reference)
    entropy = mean_z = 0.0
    for lo in range(0, len(z2), KL_ROWS):
        log_p = log_softmax(r2[lo:lo + KL_ROWS])
        p = np.exp(log_p)
        entropy += float(np.sum(p * log_p))
        mean_z += float(np.sum(p * z2[lo:lo + KL_ROWS]))
    return entropy, mean_z, len(z2)


def logit_terms(logits: np.ndarray, t: float) -> tuple[float, float, float]:
    """(sum over token positions of logsumexp(t z), of E_q[z], of Var_q[z]), q = softmax(t z),
    in float64, ``KL_ROWS`` positions at a time."""
    z2 = _rows(logits)
    lse = mean = var = 0.0
    for lo in range(0, len(z2), KL_ROWS):
        z = z2[lo:lo + KL_ROWS].astype(np.float64)
        tz = z * t
        top = tz.max(-1, keepdims=True)
        q = np.exp(tz - top)
        total = q.sum(-1, keepdims=True)
        q /= total
        lse += float(np.sum(np.log(total) + top))
        eq = (q * z).sum(-1)
        mean += float(eq.sum())
        var += float(np.sum((q * z * z).sum(-1) - eq * eq))
    return lse, mean, var


def kl_at(reference: tuple[float, float, int], logit: tuple[float, float, float], t: float
          ) -> tuple[float, float, float]:
    """(summed KL(p || softmax(t z)), its first and second derivatives in t) from a window's
    ``reference_terms`` and ``logit_terms`` at ``t``: sum p log p - t E_p[z] + logsumexp(t z);
    d/dt = E_q[z] - E_p[z]; d2/dt2 = Var_q[z] (>= 0: convex)."""
    entropy, mean_p, _ = reference
    lse, mean_q, var = logit
    return entropy - t * mean_p + lse, mean_q - mean_p, var


def _rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).reshape(-1, np.shape(x)[-1])


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over the last axis, in float64 (a new array)."""
    x = x.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


# per window, its ``logit_terms`` at each temperature asked for that window (one pass over the logits)
Terms = Callable[[Sequence[Sequence[float]]], list[list[tuple[float, float, float]]]]


@dataclass
class TemperatureFit:
    """The fitted temperature and its figures (mean next-token KL per position)."""

    t: float  # fitted on every window
    folds: tuple[float, float]  # each fold's own t
    kl_at_one: float  # every window, t = 1
    kl_cross_fitted: float  # each fold at the other fold's t: the out-of-sample estimate

    @property
    def helps(self) -> bool:
        return self.kl_cross_fitted < self.kl_at_one


def fit_temperature(terms: Terms, reference: Sequence[tuple[float, float, int]]) -> TemperatureFit:
    """Fit t on the windows of ``reference`` (each window's ``reference_terms``; ``terms``
    gives each window's ``logit_terms`` at the temperatures asked for it, one pass over the
    logits), on two folds (even and odd windows) and on all of them, by damped Newton steps
    from t = 1; then each fold's windows at the other fold's t."""
    windows = len(reference)
    if windows < 2:
        raise ValueError("a temperature is cross-fitted on at least 2 windows")
    fold_of = np.arange(windows) % 2
    ts, done = [1.0, 1.0, 1.0], [False, False, False]  # fold 0, fold 1, every window
    at_one: float | None = None
    positions = sum(r[2] for r in reference)
    for _ in range(MAX_ITERATIONS):
        asked = [[ts[f], ts[2]] for f in fold_of]
        rows = terms(asked)
        if at_one is None:  # the first pass is at t = 1 everywhere
            at_one = sum(kl_at(reference[w], rows[w][1], 1.0)[0] for w in range(windows)) / positions
        grads, hesses = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        for w, f in enumerate(fold_of):
            for g, got in ((f, rows[w][0]), (2, rows[w][1])):
                _, dg, dh = kl_at(reference[w], got, ts[g])
                grads[g], hesses[g] = grads[g] + dg, hesses[g] + dh
        for g in range(3):
            if done[g]:
                continue
            step = float(np.clip(-grads[g] / hesses[g], -MAX_STEP, MAX_STEP)) if hesses[g] > 0 else 0.0
            new = float(np.clip(ts[g] + step, *T_RANGE))
            done[g] = abs(new - ts[g]) < TOLERANCE
            ts[g] = new
        if all(done):
            break
    assert at_one is not None
    crossed = [ts[1 - f] for f in fold_of]
    cross = terms([[t] for t in crossed])
    return TemperatureFit(ts[2], (ts[0], ts[1]), at_one,
                          sum(kl_at(reference[w], cross[w][0], crossed[w])[0] for w in range(windows)) / positions)
