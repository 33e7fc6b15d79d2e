"""Elementwise math, comparisons, casts, reductions, softmax and friends."""

from __future__ import annotations

import functools

import math

import torch
import torch.nn.functional as F

from onnxprune.torchexec.convert import torch_dtype
from onnxprune.torchexec.ops import Node, axes_of, axis_of, op

# -- unary -------------------------------------------------------------------------

_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal,
    "Neg": torch.neg, "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, like ONNX
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh,
    "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh, "Not": torch.logical_not,
    "IsNaN": torch.isnan, "Softsign": F.softsign, "Mish": F.mish, "HardSwish": F.hardswish,
    "BitwiseNot": torch.bitwise_not,
}


def _unary(fn):
    def run(n: Node, x: torch.Tensor) -> torch.Tensor:
        return fn(x)
    return run


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("Identity")
def identity(n: Node, x: torch.Tensor) -> torch.Tensor:
    return x


@op("Dropout")
def dropout(n: Node, x: torch.Tensor, ratio=None, training_mode=None):
    """Inference: the identity (and a mask of ones when asked for)."""
    if n.wants(1):
        return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)
    return x


@op("LeakyRelu")
def leaky_relu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, n.attr("alpha", 0.01))


@op("HardSigmoid")
def hard_sigmoid(n: Node, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x * n.attr("alpha", 0.2) + n.attr("beta", 0.5), 0.0, 1.0)


@op("Elu")
def elu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, n.attr("alpha", 1.0))


@op("Selu")
def selu(n: Node, x: torch.Tensor) -> torch.Tensor:
    alpha = n.attr("alpha", 1.67326319217681884765625)
    gamma = n.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@op("Celu")
def celu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return F.celu(x, n.attr("alpha", 1.0))


@op("ThresholdedRelu")
def thresholded_relu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > n.attr("alpha", 1.0), x, torch.zeros_like(x))


@op("Shrink")
def shrink(n: Node, x: torch.Tensor) -> torch.Tensor:
    lambd, bias = n.attr("lambd", 0.5), n.attr("bias", 0.0)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


@op("Gelu")
def gelu(n: Node, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=n.attr("approximate", "none"))


@op("Softplus")
def softplus(n: Node, x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x)


@op("IsInf")
def is_inf(n: Node, x: torch.Tensor) -> torch.Tensor:
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    if pos and neg:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros(x.shape, dtype=torch.bool, device=x.device)


@op("Cast")
def cast(n: Node, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch_dtype(n.attr("to")))


@op("CastLike")
def cast_like(n: Node, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@op("Clip")
def clip(n: Node, x: torch.Tensor, lo=None, hi=None):
    if n.opset < 11:
        lo, hi = n.attr("min"), n.attr("max")
    if lo is None and hi is None:
        return x
    return torch.clamp(x, min=lo, max=hi)


# -- binary and variadic -----------------------------------------------------------

@op("Add")
def add(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


@op("Sub")
def sub(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a - b


@op("Mul")
def mul(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * b


@op("Div")
def div(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates toward zero


@op("Pow")
def pow_(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)


@op("Mod")
def mod(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if n.attr("fmod", 0) or a.dtype.is_floating_point:
        return torch.fmod(a, b)
    return torch.remainder(a, b)  # the sign of the divisor, like Python


def _fold(fn, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:  # noqa: ANN001
    """A variadic, broadcasting op as a left fold of its binary form."""
    return functools.reduce(fn, xs[1:], xs[0])


@op("Max")
def max_(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return _fold(torch.maximum, xs)


@op("Min")
def min_(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return _fold(torch.minimum, xs)


@op("Sum")
def sum_(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return _fold(torch.add, xs)


@op("Mean")
def mean_(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return sum_(n, *xs) / len(xs)


@op("Where")
def where(n: Node, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where``; a condition that holds nowhere (everywhere) selects ``b`` (``a``) whole,
    and when that already has the result's shape and type it is returned itself: the same
    values and gradients, without a copy for autograd to keep (a dynamo export guards every
    attention layer's Softmax with Where(IsNaN(p), 0, p): 0.18 GB of a SmolLM2 backward pass
    over 2 windows)."""
    cond = cond.to(torch.bool)
    shape = torch.broadcast_shapes(cond.shape, a.shape, b.shape)
    dtype = torch.result_type(a, b)
    for pick, other_all in ((b, False), (a, True)):
        if pick.shape == shape and pick.dtype == dtype and bool(cond.all() if other_all else not cond.any()):
            return pick
    return torch.where(cond, a, b)


_BINARY = {
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


def _binary(fn):
    def run(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)
    return run


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op("BitShift")
def bit_shift(n: Node, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a << b if n.attr("direction") == "LEFT" else a >> b


# -- reductions ----------------------------------------------------------------------

def _reduce_axes(n: Node, x: torch.Tensor, axes_input: torch.Tensor | None, input_since: int) -> list[int] | None:
    """The axes to reduce; None means the identity (noop_with_empty_axes with no axes)."""
    axes = n.attr("axes") if n.opset < input_since else n.ints(1, axes_input)
    if not axes:
        if n.attr("noop_with_empty_axes", 0) and n.opset >= input_since:
            return None
        return list(range(x.dim()))
    return sorted(set(axes_of(axes, x.dim())))


def _reduction(fn, input_since: int = 18):
    def run(n: Node, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = _reduce_axes(n, x, axes, input_since)
        if dims is None:
            return x
        keep = bool(n.attr("keepdims", 1))
        if x.dim() == 0:
            return fn(x.reshape(1), [0], False).reshape(()).to(x.dtype)
        out = fn(x, dims, keep)
        return out if out.dtype == x.dtype else out.to(x.dtype)  # torch sums integers as int64
    return run


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _mean(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    if x.dtype.is_floating_point or x.dtype.is_complex:
        return torch.mean(x, dim=dims, keepdim=keep)
    count = math.prod(x.shape[d] for d in dims)
    return torch.div(torch.sum(x, dim=dims, keepdim=keep), count, rounding_mode="trunc").to(x.dtype)


_REDUCTIONS = {
    "ReduceMean": _mean,
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}
for _name, _fn in _REDUCTIONS.items():
    op(_name)(_reduction(_fn, 13 if _name == "ReduceSum" else 18))


def _arg(fn):
    def run(n: Node, x: torch.Tensor) -> torch.Tensor:
        axis = axis_of(n.attr("axis", 0), x.dim())
        keep = bool(n.attr("keepdims", 1))
        if n.attr("select_last_index", 0):
            idx = fn(torch.flip(x, [axis]), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - idx
        return fn(x, dim=axis, keepdim=keep)
    return run


op("ArgMax")(_arg(torch.argmax))
op("ArgMin")(_arg(torch.argmin))


def _softmax_like(fn):
    def run(n: Node, x: torch.Tensor) -> torch.Tensor:
        if n.opset >= 13:
            return fn(x, axis_of(n.attr("axis", -1), x.dim()))
        # opset < 13: coerce to 2-D [prod(shape[:axis]), prod(shape[axis:])]
        axis = axis_of(n.attr("axis", 1), x.dim())
        rows = math.prod(x.shape[:axis])
        return fn(x.reshape(rows, -1), 1).reshape(x.shape)
    return run


def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return F.one_hot(torch.argmax(x, dim=dim), x.shape[dim]).movedim(-1, dim).to(x.dtype)


op("Softmax")(_softmax_like(lambda x, d: torch.softmax(x, d)))
op("LogSoftmax")(_softmax_like(lambda x, d: torch.log_softmax(x, d)))
op("Hardmax")(_softmax_like(_hardmax))


@op("Einsum")
def einsum(n: Node, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(n.attr("equation").replace(" ", ""), *xs)


@op("TopK")
def topk(n: Node, x: torch.Tensor, k: torch.Tensor):
    axis = axis_of(n.attr("axis", -1), x.dim())
    kk = n.ints(1, k)[0] if n.opset >= 10 else n.attr("k")
    values, indices = torch.topk(x, kk, dim=axis, largest=bool(n.attr("largest", 1)), sorted=True)
    return values, indices


@op("CumSum")
def cumsum(n: Node, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    dim = axis_of(n.ints(1, axis)[0], x.dim())
    if n.attr("reverse", 0):
        x = torch.flip(x, [dim])
    out = torch.cumsum(x, dim).to(x.dtype)
    if n.attr("exclusive", 0):
        out = out - x
    return torch.flip(out, [dim]) if n.attr("reverse", 0) else out
