"""Shared helpers for the model zoo: channel scaling and deterministic finalisation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "RESIDUAL_GAMMA",
    "ch",
    "even_ch",
    "make_divisible",
    "conv_bn",
    "seeded",
    "finalize",
    "randomize_bn",
]


RESIDUAL_GAMMA = (0.1, 0.5)  # gamma range for the last BN of residual branches (keeps deep nets well-conditioned)


def ch(channels: float, width: float = 1.0, minimum: int = 1) -> int:
    """Scale a channel count by ``width`` and round to an int >= ``minimum``."""
    return max(minimum, int(round(channels * width)))


def even_ch(channels: float, width: float = 1.0) -> int:
    """Scale a channel count and round to an even int >= 2 (for channel splits)."""
    return 2 * max(1, int(round(channels * width / 2)))


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet rounding: nearest multiple of ``divisor``, never dropping > 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] | None = lambda: nn.ReLU(inplace=True),
) -> nn.Sequential:
    """Conv2d(bias=False, 'same'-style padding) -> BatchNorm2d -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def seeded(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: run a builder under ``torch.manual_seed(seed)`` without
    disturbing the caller's global RNG state."""

    def wrapper(width: float = 1.0, seed: int = 0, **kwargs) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(width=width, seed=seed, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


@torch.no_grad()
def randomize_bn(model: nn.Module, affine: bool = True, stats: bool = True) -> None:
    """Give every BatchNorm random affine params and/or randomly perturbed running stats.

    gamma ~ U(0.5, 1.5), beta ~ N(0.5, 0.25^2); a BN module carrying a
    ``zoo_gamma_range`` attribute (last BN of a residual branch, damped as in
    trained ResNets) gets gamma from that range and beta ~ N(0, 0.1^2).
    Running stats: mean += N(0, 0.1^2) * std, var *= U(0.8, 1.25).
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if affine and m.affine:
                residual = hasattr(m, "zoo_gamma_range")
                lo, hi = getattr(m, "zoo_gamma_range", (0.5, 1.5))
                m.weight.copy_(torch.empty(n).uniform_(lo, hi))
                # A positive mean shift keeps most units active, which keeps random deep nets
                # well-conditioned (ORT vs torch float32 error stays ~1e-5); residual ends stay centred.
                m.bias.copy_(torch.randn(n) * 0.1 if residual else 0.5 + torch.randn(n) * 0.25)
            if stats and m.track_running_stats:
                m.running_mean.add_(torch.randn(n) * 0.1 * m.running_var.sqrt())
                m.running_var.mul_(torch.empty(n).uniform_(0.8, 1.25))


@torch.no_grad()
def finalize(model: nn.Module, input_shapes: Sequence[Sequence[int]] | None = None, batch: int = 8) -> nn.Module:
    """Make BN non-trivial and put ``model`` in eval mode.

    BN weight/bias are randomised; if ``input_shapes`` (batch-1 shapes) is
    given, running statistics are then calibrated on a random batch (so
    activations stay O(1) even in deep nets, like a trained model); finally
    the running statistics are randomly perturbed.
    """
    randomize_bn(model, affine=True, stats=False)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns and input_shapes is not None:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average -> exact batch statistics
        model.train()
        xs = [torch.randn(batch, *tuple(s)[1:]) for s in input_shapes]
        model(*xs)
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.zero_()
    randomize_bn(model, affine=False, stats=True)
    return model.eval()
