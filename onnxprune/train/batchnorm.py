"""Re-estimating BatchNorm statistics of a (masked or pruned) network.

Training runs the graph as exported, in inference mode: BatchNormalization normalises
with its stored running mean and variance, which gradient steps do not change. After
channels are removed upstream, a BatchNorm's input statistics shift and the stored ones
no longer fit; ``recalibrate_batchnorm`` sets every BatchNorm's mean and variance to
those of its input over ``samples`` examples, layer after layer in one forward pass of
all the samples as one batch (each layer sees its inputs through the already
re-estimated layers before it, as in training mode). The graph is unchanged; only the
mean and variance initializers get new values.

``batch_statistics`` is the training-mode counterpart: within it, every BatchNorm
normalises with the mean and variance of the batch it sees (as torch's ``train()`` mode),
differentiably, while the graph still runs its inference-mode BatchNormalization. Each
BatchNorm's input x is replaced by

    x' = (x - mean_b) / sqrt(var_b + eps) * sqrt(var_r + eps) + mean_r

(b: this batch, r: the stored statistics), which the node maps to
(x - mean_b) / sqrt(var_b + eps) * scale + shift, whatever the stored statistics are. The
stored ones are not touched: re-estimate them afterwards (``recalibrate_batchnorm``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np


def batchnorm_nodes(module) -> list[tuple[str, str, str]]:  # noqa: ANN001 - OnnxModule
    """(node name, mean initializer, variance initializer) of every BatchNormalization."""
    out = []
    for step in module._steps:  # noqa: SLF001 - the module's execution order
        node = step.node
        if node.op_type == "BatchNormalization" and len(node.inputs) >= 5:
            out.append((node.name, node.inputs[3], node.inputs[4]))
    return out


def recalibrate_batchnorm(module, inputs: Mapping[str, np.ndarray], *, samples: int = 512,  # noqa: ANN001
                          seed: int = 0, device=None) -> int:  # noqa: ANN001
    """Set the BatchNorm statistics of ``module`` from ``samples`` examples; returns how many were set."""
    import torch

    nodes = batchnorm_nodes(module)
    names = [n for n, _, _ in nodes]
    if not nodes or len(set(names)) != len(names) or not all(names):
        return 0
    n = len(next(iter(inputs.values())))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
    device = device or next(iter(module.parameters())).device

    def hook(mean_name: str, var_name: str):  # noqa: ANN202
        mean, var = module.parameter(mean_name), module.parameter(var_name)

        def fn(x):  # noqa: ANN001, ANN202
            dims = [0, *range(2, x.dim())]
            with torch.no_grad():
                mean.copy_(x.mean(dims).to(mean.dtype))
                var.copy_(x.var(dims, unbiased=False).to(var.dtype))
            return x

        return fn

    previous = {name: module._hooks.get((name, 0)) for name in names}  # noqa: SLF001
    try:
        for name, mean_name, var_name in nodes:
            module.set_input_hook(name, 0, hook(mean_name, var_name))
        with torch.no_grad():
            module(**{k: torch.as_tensor(v[idx]).to(device) for k, v in inputs.items()})
    finally:
        for name in names:
            module.set_input_hook(name, 0, previous[name])
    return len(nodes)


@contextlib.contextmanager
def batch_statistics(module) -> Iterator[int]:  # noqa: ANN001 - OnnxModule
    """Within the block every BatchNorm of ``module`` normalises with batch statistics
    (see the module docstring); yields how many BatchNorms do. A batch with fewer than two
    values per channel keeps the stored statistics. Hooks already set stay in front."""
    import torch

    nodes = batchnorm_nodes(module)
    names = [n for n, _, _ in nodes]
    if not nodes or len(set(names)) != len(names) or not all(names):
        yield 0
        return
    eps = {s.node.name: float(s.node.attr("epsilon", 1e-5)) for s in module._steps}  # noqa: SLF001

    def hook(name: str, mean_name: str, var_name: str, before):  # noqa: ANN001, ANN202
        mean, var, e = module.parameter(mean_name), module.parameter(var_name), eps[name]

        def fn(x):  # noqa: ANN001, ANN202
            x = before(x) if before is not None else x
            if x.dim() < 2 or x.numel() < 2 * x.shape[1]:
                return x
            dims = [0, *range(2, x.dim())]
            shape = (1, -1, *([1] * (x.dim() - 2)))
            mu, v = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
            stored = torch.sqrt(var.detach().to(x.dtype).reshape(shape) + e)
            return (x - mu) * torch.rsqrt(v + e) * stored + mean.detach().to(x.dtype).reshape(shape)

        return fn

    previous = {name: module._hooks.get((name, 0)) for name in names}  # noqa: SLF001
    try:
        for name, mean_name, var_name in nodes:
            module.set_input_hook(name, 0, hook(name, mean_name, var_name, previous[name]))
        yield len(nodes)
    finally:
        for name in names:
            module.set_input_hook(name, 0, previous[name])
