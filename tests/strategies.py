"""Hypothesis strategies drawing random, valid ONNX CNN graphs out of the ops onnxprune supports.

A drawn model is a small DAG of *blocks* (a conv, a residual pair of branches, a
squeeze-excitation, a Split whose parts are re-joined, a channel shuffle, ...) on an NCHW
float32 input, ending in a head (Flatten -> Gemm, GlobalAveragePool -> Flatten -> MatMul +
Add, or a last Conv). Structure is drawn with hypothesis (so failures shrink to few, simple
blocks); weight *values* come from a numpy generator seeded by one drawn integer.

Every drawn model passes the full ONNX checker and runs in onnxruntime with finite outputs
(the generator's own correctness); ``random_models()`` returns it already ``prepare``d.

Use ``GeneratedModel.model`` for the ModelProto; its ``repr`` is a compact description of
the blocks (hypothesis prints it for a falsifying example) and ``save(path)`` writes it.

Kept out on purpose, because they hit known library bugs that have strict-xfail regression
tests in tests/test_rules.py (add them here once those are fixed): Squeeze without axes
on a tensor whose channels can be pruned down to one, and If/Loop subgraphs that read a
channel tensor from the outer scope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import assume
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.prepare.normalize import prepare

OPSET = 17
INT64_MAX = 2**63 - 1
MAX_CHANNELS = 16  # keep graphs tiny: blocks that would grow past this are not drawn

Draw = Callable  # hypothesis' draw function

# channel counts of drawn convs: mostly >= 2 (a one-channel group can never be pruned)
CHANNELS = st.sampled_from([2, 3, 4, 5, 6, 8, 1])


@dataclass(frozen=True)
class T:
    """A live NCHW tensor of the graph under construction."""

    name: str
    c: int
    h: int
    w: int


@dataclass
class GeneratedModel:
    model: onnx.ModelProto
    blocks: list[str]
    input_shape: tuple[int | str, ...]
    outputs: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        body = "\n    ".join(self.blocks)
        return (f"GeneratedModel(input={list(self.input_shape)}, outputs={self.outputs}, "
                f"nodes={len(self.model.graph.node)}):\n    {body}")

    def save(self, path: str) -> None:
        onnx.save(self.model, path)


class GraphBuilder:
    """Accumulates nodes and initializers; names everything deterministically."""

    def __init__(self, rng: np.random.Generator, opset: int = OPSET, draw: Draw | None = None,
                 dynamic_batch: bool = False) -> None:
        self.rng = rng
        self.opset = opset
        self.draw = draw
        self.dynamic = dynamic_batch
        self.batch: int | str = "N" if dynamic_batch else 1
        self._shared: dict[tuple, list[str]] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.log: list[str] = []
        self._k = 0

    def fresh(self, prefix: str) -> str:
        self._k += 1
        return f"{prefix}_{self._k}"

    # -- constants -----------------------------------------------------------
    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values, prefix: str = "i") -> str:  # noqa: ANN001
        return self.const(np.array(values, dtype=np.int64), prefix)

    def shared(self, key: tuple, make: Callable[[], str]) -> str:
        """Now and then reuse an earlier constant of the same kind and shape (one initializer read
        by several nodes, which pruning must slice copy-on-write); otherwise make a new one."""
        earlier = self._shared.setdefault(key, [])
        if earlier and self.draw is not None and self.draw(st.integers(0, 3)) == 0:
            return self.draw(st.sampled_from(earlier))
        name = make()
        earlier.append(name)
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, prefix: str = "w") -> str:
        std = 1.0 / np.sqrt(max(1, fan_in))
        return self.shared(("w", prefix, shape), lambda: self.const(
            (self.rng.standard_normal(shape) * std).astype(np.float32), prefix))

    def normal(self, shape: tuple[int, ...], prefix: str, scale: float = 1.0) -> str:
        return self.shared(("n", prefix, shape, scale), lambda: self.const(
            (self.rng.standard_normal(shape) * scale).astype(np.float32), prefix))

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float, prefix: str) -> str:
        return self.shared(("u", prefix, shape, lo, hi), lambda: self.const(
            self.rng.uniform(lo, hi, size=shape).astype(np.float32), prefix))

    # -- nodes ---------------------------------------------------------------
    def node(self, op: str, inputs: list[str], n_out: int = 1, *, domain: str = "", **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(f"n_{op}"), domain=domain or None,
                                           **attrs))
        return outs

    def one(self, op: str, inputs: list[str], **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def build(self, x: T, outputs: list[tuple[str, list[int]]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "random",
            [helper.make_tensor_value_info(x.name, TensorProto.FLOAT, [self.batch, x.c, x.h, x.w])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [self.batch] + list(s[1:])) for n, s in outputs],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return model


Block = Callable[[Draw, GraphBuilder, T, list[T]], T]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# Blocks. Each takes the current tensor and returns the next one (and may read earlier ones).
# ---------------------------------------------------------------------------------------------

def conv(draw: Draw, b: GraphBuilder, x: T, cout: int | None = None, kind: str | None = None,
         stride_ok: bool = True) -> T:
    """Conv: dense, grouped (groups divide both sides) or depthwise (channel multiplier 1/2)."""
    kinds = ["dense", "dense"]
    if any(g > 1 for g in _divisors(x.c)):
        kinds += ["grouped", "depthwise"]
    kind = kind if kind in kinds else draw(st.sampled_from(kinds))
    if kind == "dense":
        groups = 1
        cout = cout or draw(CHANNELS)
    elif kind == "grouped":
        groups = draw(st.sampled_from([g for g in _divisors(x.c) if g > 1]))
        if cout is None or cout % groups:
            cout = groups * draw(st.sampled_from([m for m in (2, 1, 3) if groups * m <= MAX_CHANNELS]))
    else:
        groups = x.c
        if cout is None or cout % groups:
            cout = x.c * draw(st.sampled_from([1, 2] if 2 * x.c <= MAX_CHANNELS else [1]))
    k = draw(st.sampled_from([1, 3]))
    stride = 2 if stride_ok and k == 3 and min(x.h, x.w) >= 8 and draw(st.booleans()) else 1
    pad = k // 2
    inputs = [x.name, b.weight((cout, x.c // groups, k, k), fan_in=x.c // groups * k * k)]
    bias = draw(st.booleans())
    if bias:
        inputs.append(b.normal((cout,), "b", 0.1))
    attrs = {"kernel_shape": [k, k], "pads": [pad] * 4, "strides": [stride, stride]}
    if groups > 1:
        attrs["group"] = groups
    y = b.one("Conv", inputs, **attrs)
    h, w = (x.h + 2 * pad - k) // stride + 1, (x.w + 2 * pad - k) // stride + 1
    b.log.append(f"{y} = Conv[{kind}, g={groups}, k={k}, s={stride}, bias={bias}]({x.name}: {x.c}->{cout})")
    return T(y, cout, h, w)


def conv_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    return conv(draw, b, x)


def conv_transpose_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    groups = 1
    if x.c > 1 and draw(st.integers(0, 3)) == 0:  # sometimes grouped (the spec asks group 1 mostly)
        groups = draw(st.sampled_from([g for g in _divisors(x.c) if g > 1]))
    og = draw(st.sampled_from([o for o in (2, 3, 4, 1) if o * groups <= MAX_CHANNELS]))
    up = max(x.h, x.w) <= 4 and draw(st.booleans())
    k, stride, pad = (2, 2, 0) if up else (3, 1, 1)
    inputs = [x.name, b.weight((x.c, og, k, k), fan_in=x.c // groups * k * k)]
    bias = draw(st.booleans())
    if bias:
        inputs.append(b.normal((og * groups,), "b", 0.1))
    attrs = {"kernel_shape": [k, k], "pads": [pad] * 4, "strides": [stride, stride]}
    if groups > 1:
        attrs["group"] = groups
    y = b.one("ConvTranspose", inputs, **attrs)
    h, w = (x.h - 1) * stride - 2 * pad + k, (x.w - 1) * stride - 2 * pad + k
    b.log.append(f"{y} = ConvTranspose[g={groups}, k={k}, s={stride}, bias={bias}]({x.name}: {x.c}->{og * groups})")
    return T(y, og * groups, h, w)


def batchnorm_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    c = x.c
    y = b.one("BatchNormalization", [x.name, b.uniform((c,), 0.5, 1.5, "bn_s"), b.normal((c,), "bn_b", 0.2),
                                     b.normal((c,), "bn_m", 0.2), b.uniform((c,), 0.5, 1.5, "bn_v")])
    b.log.append(f"{y} = BatchNormalization({x.name})")
    return T(y, c, x.h, x.w)


def instancenorm_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    y = b.one("InstanceNormalization", [x.name, b.uniform((x.c,), 0.5, 1.5, "in_s"), b.normal((x.c,), "in_b", 0.2)])
    b.log.append(f"{y} = InstanceNormalization({x.name})")
    return T(y, x.c, x.h, x.w)


def prelu_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    shape = draw(st.sampled_from([(x.c, 1, 1), (1, x.c, 1, 1), (1,)]))
    y = b.one("PRelu", [x.name, b.uniform(shape, 0.05, 0.5, "slope")])
    b.log.append(f"{y} = PRelu({x.name}, slope{list(shape)})")
    return T(y, x.c, x.h, x.w)


UNARY = ["Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Softplus",
         "Identity", "Dropout", "Abs", "Neg", "Softsign", "Erf", "Selu", "Celu"]


def unary(draw: Draw, b: GraphBuilder, x: T, op: str | None = None) -> T:
    op = op or draw(st.sampled_from(UNARY))
    if op == "Clip":  # ReLU6
        y = b.one("Clip", [x.name, b.const(np.array(0.0, np.float32), "lo"), b.const(np.array(6.0, np.float32), "hi")])
    elif op == "LeakyRelu":
        y = b.one(op, [x.name], alpha=0.1)
    else:
        y = b.one(op, [x.name])
    b.log.append(f"{y} = {op}({x.name})")
    return T(y, x.c, x.h, x.w)


def unary_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    return unary(draw, b, x)


def _branch(draw: Draw, b: GraphBuilder, x: T, cout: int | None) -> T:
    """x itself (when channels allow), or a conv (optionally followed by an activation)."""
    if (cout is None or cout == x.c) and draw(st.booleans()):
        return x
    y = conv(draw, b, x, cout=cout, kind="dense" if cout is not None else None, stride_ok=False)
    if draw(st.booleans()):
        y = unary(draw, b, y)
    return y


def _safe_divisor(b: GraphBuilder, t: T) -> T:
    y = b.one("Add", [b.one("Abs", [t.name]), b.const(np.array(1.5, np.float32), "one5")])
    return T(y, t.c, t.h, t.w)


def binary(draw: Draw, b: GraphBuilder, lhs: T, rhs: T, op: str | None = None) -> T:
    op = op or draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    if op == "Div":
        rhs = _safe_divisor(b, rhs)
    y = b.one(op, [lhs.name, rhs.name])
    b.log.append(f"{y} = {op}({lhs.name}, {rhs.name})")
    return T(y, lhs.c, lhs.h, lhs.w)


def residual_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Two live branches of equal channels joined by Add/Sub/Mul/Div (or three by Sum/Mean/Max/Min)."""
    cout = draw(st.sampled_from([None, x.c]))
    left = _branch(draw, b, x, cout)
    right = _branch(draw, b, x, left.c)
    if draw(st.integers(0, 3)) == 0:
        op = draw(st.sampled_from(["Sum", "Mean", "Max", "Min"]))
        branches = [left, right] + ([_branch(draw, b, x, left.c)] if draw(st.booleans()) else [])
        y = b.one(op, [t.name for t in branches])
        b.log.append(f"{y} = {op}({', '.join(t.name for t in branches)})")
        return T(y, left.c, left.h, left.w)
    return binary(draw, b, left, right)


def skip_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """A long skip: join x with an earlier tensor of the same shape."""
    same = _same_shape(x, pool)
    other = draw(st.sampled_from(same))
    lhs, rhs = (x, other) if draw(st.booleans()) else (other, x)
    return binary(draw, b, lhs, rhs, op=draw(st.sampled_from(["Add", "Add", "Mul", "Sub"])))


def const_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Mul/Add (and Sub, Div by a positive constant) with a per-channel or scalar constant."""
    op = draw(st.sampled_from(["Mul", "Add", "Sub", "Div"]))
    shape = draw(st.sampled_from([(1, x.c, 1, 1), (x.c, 1, 1), (), (1,)]))
    if op == "Div":
        c = b.uniform(shape, 0.5, 2.0, "k")
    else:
        c = b.normal(shape, "k")
    inputs = [x.name, c] if op in ("Sub", "Div") or draw(st.booleans()) else [c, x.name]
    y = b.one(op, inputs)
    b.log.append(f"{y} = {op}({', '.join(inputs)}) const{list(shape)}")
    return T(y, x.c, x.h, x.w)


def se_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    r = draw(st.integers(1, 4))
    s = b.one("GlobalAveragePool", [x.name])
    s = b.one("Conv", [s, b.weight((r, x.c, 1, 1), x.c), b.normal((r,), "b", 0.1)], kernel_shape=[1, 1])
    s = b.one("Relu", [s])
    s = b.one("Conv", [s, b.weight((x.c, r, 1, 1), r), b.normal((x.c,), "b", 0.1)], kernel_shape=[1, 1])
    s = b.one("Sigmoid", [s])
    y = b.one("Mul", [x.name, s] if draw(st.booleans()) else [s, x.name])
    b.log.append(f"{y} = SqueezeExcite({x.name}, r={r})")
    return T(y, x.c, x.h, x.w)


def concat_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    n = draw(st.sampled_from([2, 3]))
    parts: list[T] = []
    for i in range(n):
        room = MAX_CHANNELS - sum(p.c for p in parts) - (n - 1 - i)
        if room < 1:
            break
        free = room >= max(6, 2 * x.c)  # any branch fits (a depthwise conv may double x.c)
        parts.append(_branch(draw, b, x, None if free else draw(st.integers(1, min(6, room)))))
    total = sum(p.c for p in parts)
    axis = draw(st.sampled_from([1, -3]))
    y = b.one("Concat", [p.name for p in parts], axis=axis)
    b.log.append(f"{y} = Concat[axis={axis}]({', '.join(f'{p.name}:{p.c}' for p in parts)})")
    return T(y, total, x.h, x.w)


def split_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Split on axis 1 (sizes as an input, equal or not, or omitted); every part is used."""
    n = draw(st.integers(2, min(3, x.c)))
    style = draw(st.sampled_from(["sizes", "equal_sizes", "no_sizes"]))
    if style != "sizes" and x.c % n:
        style = "sizes"
    if style == "sizes":
        cuts = sorted(draw(st.lists(st.integers(1, x.c - 1), min_size=n - 1, max_size=n - 1, unique=True)))
        sizes = [e - s for s, e in zip([0] + cuts, cuts + [x.c])]
    else:
        sizes = [x.c // n] * n
    axis = draw(st.sampled_from([1, -3]))
    inputs = [x.name] if style == "no_sizes" else [x.name, b.ints(sizes, "split")]
    outs = b.node("Split", inputs, n_out=len(sizes), axis=axis)
    b.log.append(f"{outs} = Split[axis={axis}, {style}]({x.name}, {sizes})")
    parts = [T(o, s, x.h, x.w) for o, s in zip(outs, sizes)]
    parts = [p if draw(st.booleans()) else _branch(draw, b, p, None) for p in parts]
    if len({p.c for p in parts}) == 1 and draw(st.booleans()):
        y = parts[0]
        for p in parts[1:]:
            y = binary(draw, b, y, p, op=draw(st.sampled_from(["Add", "Mul"])))
        return y
    order = draw(st.permutations(range(len(parts))))
    parts = [parts[i] for i in order]
    y = b.one("Concat", [p.name for p in parts], axis=1)
    b.log.append(f"{y} = Concat[axis=1]({', '.join(f'{p.name}:{p.c}' for p in parts)})")
    return T(y, sum(p.c for p in parts), x.h, x.w)


def slice_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Slice on the channel axis (constant bounds, step 1; negative / INT_MAX forms), and
    sometimes a spatial axis in the same node."""
    start = draw(st.integers(0, x.c - 1))
    end = draw(st.integers(start + 1, x.c))
    s_val = start - x.c if draw(st.booleans()) and start > 0 else start
    if end == x.c:
        e_val = draw(st.sampled_from([x.c, INT64_MAX, x.c + 5]))
    else:
        e_val = end - x.c if draw(st.booleans()) else end
    starts, ends, axes = [s_val], [e_val], [draw(st.sampled_from([1, -3]))]
    h, w = x.h, x.w
    if x.h >= 4 and draw(st.booleans()):
        starts.append(1)
        ends.append(-1)
        axes.append(draw(st.sampled_from([2, 3])))
        if axes[-1] == 2:
            h -= 2
        else:
            w -= 2
    inputs = [x.name, b.ints(starts, "starts"), b.ints(ends, "ends"), b.ints(axes, "axes")]
    if draw(st.booleans()):
        inputs.append(b.ints([1] * len(axes), "steps"))
    y = b.one("Slice", inputs)
    b.log.append(f"{y} = Slice({x.name}, starts={starts}, ends={ends}, axes={axes})")
    return T(y, end - start, h, w)


def spatial_slice_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    axis = draw(st.sampled_from([2, 3, -1, -2]))
    y = b.one("Slice", [x.name, b.ints([1], "starts"), b.ints([INT64_MAX], "ends"), b.ints([axis], "axes")])
    b.log.append(f"{y} = Slice[spatial axis {axis}]({x.name}, 1:)")
    h, w = (x.h - 1, x.w) if axis in (2, -2) else (x.h, x.w - 1)
    return T(y, x.c, h, w)


def pool_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    kinds = ["MaxPool3", "AveragePool3", "GlobalAveragePool", "GlobalMaxPool"]
    if x.h % 2 == 0 and x.w % 2 == 0 and min(x.h, x.w) >= 4:
        kinds += ["MaxPool2", "AveragePool2"]
    kind = draw(st.sampled_from(kinds))
    if kind.startswith("Global"):
        y = b.one(kind, [x.name])
        h = w = 1
    elif kind.endswith("3"):
        y = b.one(kind[:-1], [x.name], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
        h, w = x.h, x.w
    else:
        y = b.one(kind[:-1], [x.name], kernel_shape=[2, 2], strides=[2, 2])
        h, w = x.h // 2, x.w // 2
    b.log.append(f"{y} = {kind}({x.name})")
    return T(y, x.c, h, w)


def resize_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    up = max(x.h, x.w) <= 4 or (x.h % 2 or x.w % 2)
    f = 2.0 if up else 0.5
    h, w = int(x.h * f), int(x.w * f)
    if b.dynamic or draw(st.booleans()):
        y = b.one("Resize", [x.name, "", b.const(np.array([1, 1, f, f], np.float32), "scales")], mode="nearest")
        b.log.append(f"{y} = Resize[nearest, scales x{f}]({x.name})")
    else:  # sizes hold the channel count: it must follow the pruned channels
        y = b.one("Resize", [x.name, "", "", b.ints([1, x.c, h, w], "sizes")], mode="nearest")
        b.log.append(f"{y} = Resize[nearest, sizes {[1, x.c, h, w]}]({x.name})")
    return T(y, x.c, h, w)


def pad_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    mode = draw(st.sampled_from(["constant", "reflect", "edge"] if min(x.h, x.w) >= 2 else ["constant", "edge"]))
    p = 1
    inputs = [x.name, b.ints([0, 0, p, p, 0, 0, p, p], "pads")]
    if mode == "constant" and draw(st.booleans()):
        inputs.append(b.const(np.array(0.5, np.float32), "padv"))
    y = b.one("Pad", inputs, mode=mode)
    b.log.append(f"{y} = Pad[{mode}, spatial +{p}]({x.name})")
    return T(y, x.c, x.h + 2 * p, x.w + 2 * p)


def reducemean_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    axes = draw(st.sampled_from([[2, 3], [-1, -2], [3]]))
    y = b.one("ReduceMean", [x.name], axes=axes, keepdims=1)
    b.log.append(f"{y} = ReduceMean[axes={axes}, keepdims=1]({x.name})")
    return T(y, x.c, 1 if 2 in axes or -2 in axes else x.h, 1)


def nhwc_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Transpose to NHWC, a per-channel op on the last axis, and back."""
    t = b.one("Transpose", [x.name], perm=[0, 2, 3, 1])
    inner = draw(st.sampled_from(["none", "unary", "mul", "add"]))
    if inner == "unary":
        t = b.one(draw(st.sampled_from(["Relu", "Sigmoid", "Tanh"])), [t])
    elif inner in ("mul", "add"):
        t = b.one(inner.capitalize(), [t, b.normal((x.c,), "k")])
    y = b.one("Transpose", [t], perm=[0, 3, 1, 2])
    b.log.append(f"{y} = NHWC[{inner}]({x.name})")
    return T(y, x.c, x.h, x.w)


def shuffle_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Channel shuffle: Reshape [N, g, C/g, H, W] -> Transpose(0,2,1,3,4) -> Reshape [N, C, H, W]."""
    gs = [g for g in (2, 3) if x.c % g == 0]
    g = draw(st.sampled_from(gs))
    if b.dynamic:  # the batch entry must follow the input: 0 (copy) or -1 (infer)
        first = draw(st.sampled_from([[0, g, x.c // g, x.h, x.w], [-1, g, x.c // g, x.h, x.w],
                                      [0, g, -1, x.h, x.w]]))
    else:
        first = draw(st.sampled_from([[1, g, x.c // g, x.h, x.w], [0, g, x.c // g, x.h, x.w],
                                      [1, g, -1, x.h, x.w]]))
    r = b.one("Reshape", [x.name, b.ints(first, "shape")])
    t = b.one("Transpose", [r], perm=[0, 2, 1, 3, 4])
    if b.dynamic:
        last = draw(st.sampled_from([[0, x.c, x.h, x.w], [-1, x.c, x.h, x.w], [0, -1, x.h, x.w]]))
    else:
        last = draw(st.sampled_from([[1, x.c, x.h, x.w], [1, -1, x.h, x.w], [0, x.c, x.h, x.w]]))
    y = b.one("Reshape", [t, b.ints(last, "shape")])
    b.log.append(f"{y} = ChannelShuffle[g={g}, {first} -> {last}]({x.name})")
    return T(y, x.c, x.h, x.w)


def expand_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Squeeze-excitation whose gate is Expand-ed to the full shape (a shape constant holding C)."""
    s = b.one("GlobalAveragePool", [x.name])
    s = b.one("Conv", [s, b.weight((x.c, x.c, 1, 1), x.c)], kernel_shape=[1, 1])
    s = b.one("HardSigmoid", [s])
    target = draw(st.sampled_from([[1, x.c, x.h, x.w], [1, 1, x.h, x.w], [x.h, x.w]]))
    e = b.one("Expand", [s, b.ints(target, "shape")])
    y = b.one("Mul", [x.name, e])
    b.log.append(f"{y} = ExpandGate[{target}]({x.name})")
    return T(y, x.c, x.h, x.w)


def tile_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    reps = draw(st.sampled_from([[1, 1, 2, 2], [1, 1, 1, 2], [1, 1, 2, 1]]))
    y = b.one("Tile", [x.name, b.ints(reps, "repeats")])
    b.log.append(f"{y} = Tile[{reps}]({x.name})")
    return T(y, x.c, x.h * reps[2], x.w * reps[3])


def spatial_softmax_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Reshape [N, C, H*W] -> Softmax over H*W -> Reshape back (channels pass through)."""
    if b.dynamic:
        shape = draw(st.sampled_from([[0, x.c, x.h * x.w], [0, x.c, -1], [-1, x.c, x.h * x.w]]))
        back = draw(st.sampled_from([[0, x.c, x.h, x.w], [-1, x.c, x.h, x.w]]))
    else:
        shape = draw(st.sampled_from([[1, x.c, x.h * x.w], [1, x.c, -1], [0, x.c, -1], [1, -1, x.h * x.w]]))
        back = [1, x.c, x.h, x.w]
    r = b.one("Reshape", [x.name, b.ints(shape, "shape")])
    r = b.one(draw(st.sampled_from(["Softmax", "LogSoftmax"])), [r], axis=-1)
    y = b.one("Reshape", [r, b.ints(back, "shape")])
    b.log.append(f"{y} = SpatialSoftmax[{shape}]({x.name})")
    return T(y, x.c, x.h, x.w)


def unsqueeze_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """Unsqueeze a unit axis (axes as an input, opset 13+) and Squeeze it away again."""
    axis = draw(st.sampled_from([0, 2, 4, -1]))
    u = b.one("Unsqueeze", [x.name, b.ints([axis], "axes")])
    if draw(st.booleans()):
        y = b.one("Squeeze", [u, b.ints([axis], "axes")])
    else:  # no axes: every unit axis goes (only safe when the tensor has no other unit axis)
        if x.c == 1 or x.h == 1 or x.w == 1 or b.dynamic:
            y = b.one("Squeeze", [u, b.ints([axis], "axes")])
        else:
            y = b.one("Reshape", [b.one("Squeeze", [u]), b.ints([1, x.c, x.h, x.w], "shape")])
    b.log.append(f"{y} = Unsqueeze/Squeeze[{axis}]({x.name})")
    return T(y, x.c, x.h, x.w)


def nhwc_linear_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """A pointwise conv written as a Linear in NHWC (ConvNeXt-style): Transpose -> MatMul (+ Add)
    -> activation -> Transpose back."""
    d = draw(CHANNELS)
    t = b.one("Transpose", [x.name], perm=[0, 2, 3, 1])
    t = b.one("MatMul", [t, b.weight((x.c, d), x.c, "lw")])
    bias = draw(st.booleans())
    if bias:
        t = b.one("Add", [t, b.normal((d,), "lb", 0.1)])
    t = b.one(draw(st.sampled_from(["Relu", "Tanh", "Identity"])), [t])
    y = b.one("Transpose", [t], perm=[0, 3, 1, 2])
    b.log.append(f"{y} = NHWC-Linear[bias={bias}]({x.name}: {x.c}->{d})")
    return T(y, d, x.h, x.w)


def spatial_attention_block(draw: Draw, b: GraphBuilder, x: T, pool: list[T]) -> T:
    """x * sigmoid(att) with a one-channel map att broadcast over the channels: made by a conv
    (C -> 1), or CBAM-style from the mean and max over the channels (which must block them)."""
    if draw(st.booleans()):
        m = b.one("ReduceMean", [x.name], axes=[1], keepdims=1)
        mx = b.one("ReduceMax", [x.name], axes=[1], keepdims=1)
        att = b.one("Concat", [m, mx], axis=1)
        att = b.one("Conv", [att, b.weight((1, 2, 3, 3), 18, "aw")], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        kind = "cbam"
    else:
        att = b.one("Conv", [x.name, b.weight((1, x.c, 1, 1), x.c, "aw")], kernel_shape=[1, 1])
        kind = "conv"
    att = b.one("Sigmoid", [att])
    y = b.one("Mul", [x.name, att] if draw(st.booleans()) else [att, x.name])
    b.log.append(f"{y} = SpatialAttention[{kind}]({x.name})")
    return T(y, x.c, x.h, x.w)


BLOCKS: dict[str, Block] = {
    "spatial_attention": spatial_attention_block,
    "nhwc_linear": nhwc_linear_block,
    "expand": expand_block,
    "tile": tile_block,
    "spatial_softmax": spatial_softmax_block,
    "unsqueeze": unsqueeze_block,
    "conv": conv_block,
    "conv_transpose": conv_transpose_block,
    "batchnorm": batchnorm_block,
    "instancenorm": instancenorm_block,
    "prelu": prelu_block,
    "unary": unary_block,
    "residual": residual_block,
    "skip": skip_block,
    "const": const_block,
    "se": se_block,
    "concat": concat_block,
    "split": split_block,
    "slice": slice_block,
    "spatial_slice": spatial_slice_block,
    "pool": pool_block,
    "resize": resize_block,
    "pad": pad_block,
    "reducemean": reducemean_block,
    "nhwc": nhwc_block,
    "shuffle": shuffle_block,
}

def _same_shape(x: T, pool: list[T]) -> list[T]:
    return [p for p in pool if (p.c, p.h, p.w) == (x.c, x.h, x.w) and p.name != x.name]


# When a block can be drawn (the current tensor x, the earlier tensors pool).
APPLICABLE: dict[str, Callable[[T, list[T]], bool]] = {
    "instancenorm": lambda x, pool: x.h * x.w > 1,
    "skip": lambda x, pool: bool(_same_shape(x, pool)),
    "split": lambda x, pool: x.c >= 2,
    "slice": lambda x, pool: x.c >= 2,
    "spatial_slice": lambda x, pool: min(x.h, x.w) >= 3,
    "resize": lambda x, pool: max(x.h, x.w) <= 8,
    "pad": lambda x, pool: max(x.h, x.w) <= 8,
    "shuffle": lambda x, pool: x.c % 2 == 0 or x.c % 3 == 0,
    "concat": lambda x, pool: x.c <= MAX_CHANNELS - 2,
    "tile": lambda x, pool: max(x.h, x.w) <= 4,
}

# conv appears more often: it is what makes channels prunable
_BLOCK_CHOICES = ["conv", "conv"] + list(BLOCKS)


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------

def head(draw: Draw, b: GraphBuilder, x: T, kind: str | None = None) -> tuple[str, list[int]]:
    kind = kind or draw(st.sampled_from(["gemm", "matmul", "conv", "mlp"]))
    n = draw(st.integers(2, 5))
    if kind == "mlp":  # GAP / Flatten -> Gemm -> (BatchNorm1d) -> act -> (Dropout) -> Gemm
        if x.h * x.w > 4 and draw(st.booleans()):
            x = T(b.one("GlobalAveragePool", [x.name]), x.c, 1, 1)
        k = x.c * x.h * x.w
        f = b.one("Flatten", [x.name], axis=1)
        hidden = draw(CHANNELS)
        bias_shape = draw(st.sampled_from([(hidden,), (1, hidden)]))
        hdn = b.one("Gemm", [f, b.weight((hidden, k), k), b.normal(bias_shape, "gb", 0.1)], transB=1)
        bn = draw(st.booleans())
        if bn:
            hdn = b.one("BatchNormalization", [hdn, b.uniform((hidden,), 0.5, 1.5, "bn_s"), b.normal((hidden,), "bn_b", 0.2),
                                               b.normal((hidden,), "bn_m", 0.2), b.uniform((hidden,), 0.5, 1.5, "bn_v")])
        hdn = b.one(draw(st.sampled_from(["Relu", "Tanh", "Sigmoid"])), [hdn])
        if draw(st.booleans()):
            hdn = b.one("Dropout", [hdn])
        trans_b = draw(st.sampled_from([0, 1]))
        y = b.one("Gemm", [hdn, b.weight((n, hidden) if trans_b else (hidden, n), hidden)], transB=trans_b)
        b.log.append(f"{y} = MLP[bias{list(bias_shape)}, bn={bn}, transB={trans_b}]({x.name}: {k}->{hidden}->{n})")
        return y, [1, n]
    if kind == "gemm":
        k = x.c * x.h * x.w
        flat = draw(st.sampled_from(["flatten", "reshape", "reshape_k", "nhwc", "reducemean", "view"]))
        if flat == "flatten":
            f = b.one("Flatten", [x.name], axis=1)
        elif flat == "view":  # torch's x.view(x.size(0), -1): prepare folds the static shape chain
            n0 = b.one("Gather", [b.one("Shape", [x.name]), b.ints(0, "idx")], axis=0)
            target = b.one("Concat", [b.one("Unsqueeze", [n0, b.ints([0], "axes")]), b.ints([-1], "rest")], axis=0)
            f = b.one("Reshape", [x.name, target])
        elif flat == "reshape":
            f = b.one("Reshape", [x.name, b.ints([0 if b.dynamic else 1, -1], "shape")])
        elif flat == "reshape_k":
            f = b.one("Reshape", [x.name, b.ints([-1 if b.dynamic else 1, k], "shape")])
        elif flat == "nhwc":
            f = b.one("Flatten", [b.one("Transpose", [x.name], perm=[0, 2, 3, 1])], axis=1)
        else:
            f = b.one("ReduceMean", [x.name], axes=[2, 3], keepdims=0)
            k = x.c
        trans_b = draw(st.sampled_from([0, 1]))
        w = b.weight((n, k) if trans_b else (k, n), k)
        inputs = [f, w]
        if draw(st.booleans()):
            inputs.append(b.normal((n,), "gb", 0.1))
        y = b.one("Gemm", inputs, transB=trans_b)
        b.log.append(f"{y} = Gemm[transB={trans_b}]({flat}({x.name}): {k}->{n})")
        return y, [1, n]
    if kind == "matmul":
        g = b.one("GlobalAveragePool", [x.name])
        f = b.one("Flatten", [g], axis=1)
        m = b.one("MatMul", [f, b.weight((x.c, n), x.c)])
        y = b.one("Add", [m, b.normal((n,), "mb", 0.1)])
        b.log.append(f"{y} = MatMul+Add(Flatten(GAP({x.name})): {x.c}->{n})")
        return y, [1, n]
    out = conv(draw, b, x, cout=draw(st.sampled_from([2, 3, 1])), kind="dense", stride_ok=False)
    return out.name, [1, out.c, out.h, out.w]


@st.composite
def random_models(draw: Draw, min_blocks: int = 3, max_blocks: int = 10,
                  blocks: tuple[str, ...] | None = None, dynamic_batch: bool = False) -> GeneratedModel:
    """A prepared, checked, runnable random CNN (see the module docstring); with ``dynamic_batch``
    the input is [N, C, H, W] with a symbolic N (shape constants use 0 / -1 for it)."""
    seed = draw(st.integers(0, 2**32 - 1))
    b = GraphBuilder(np.random.default_rng(seed), draw=draw, dynamic_batch=dynamic_batch)
    c = draw(st.integers(1, 6))
    hw = draw(st.sampled_from([4, 6, 8]))
    x = T("input", c, hw, hw)
    cur = x
    pool: list[T] = [x]
    extra_outputs: list[T] = []
    choices = list(blocks) if blocks else _BLOCK_CHOICES
    n_blocks = draw(st.integers(min_blocks, max_blocks))
    for _ in range(n_blocks):
        usable = [k for k in choices if APPLICABLE.get(k, lambda *_: True)(cur, pool)] or ["conv"]
        kind = draw(st.sampled_from(usable))
        nxt = BLOCKS[kind](draw, b, cur, pool)
        assume(nxt.c <= MAX_CHANNELS and 1 <= nxt.h <= 16 and 1 <= nxt.w <= 16)
        if nxt.name != cur.name:
            pool.append(nxt)
        cur = nxt
        # now and then an intermediate result is also a graph output (its channels must stay)
        if cur.name != x.name and draw(st.integers(0, 9)) == 0:
            extra_outputs.append(cur)
    if cur.name == x.name:  # every block returned its input (all branches were identities)
        cur = conv(draw, b, cur)
    out, out_shape = head(draw, b, cur)
    outputs = [(out, out_shape)] + [(t.name, [1, t.c, t.h, t.w]) for t in extra_outputs if t.name != out]
    model = b.build(x, outputs)
    _check_generated(model, x)
    prepare(model)
    return GeneratedModel(model, b.log, (b.batch, x.c, x.h, x.w), [o for o, _ in outputs])


def _check_generated(model: onnx.ModelProto, x: T) -> None:
    """The generator's own correctness: a valid model that runs and gives finite values."""
    onnx.checker.check_model(model, full_check=True)
    from onnxprune.runtime.session import random_inputs, run

    dynamic = not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    for batch in (1, 2) if dynamic else (1,):
        outs = run(model, random_inputs(model, seed=0, batch=batch))
        for name, value in outs.items():
            assert np.all(np.isfinite(value)), f"generated model gives non-finite values in {name}"
            expected = next(o for o in model.graph.output if o.name == name)
            dims = [d.dim_value if d.HasField("dim_value") else batch for d in expected.type.tensor_type.shape.dim]
            assert list(value.shape) == dims, f"generator bookkeeping: {name} is {value.shape}, expected {dims}"
