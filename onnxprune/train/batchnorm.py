"""Re-estimating BatchNorm statistics of a (masked or pruned) network.

Training runs the graph as exported, in inference mode: BatchNormalization normalises
with its stored running mean and variance, which gradient steps do not change. After
channels are removed upstream, a BatchNorm's input statistics shift and the stored ones
no longer fit; ``recalibrate_batchnorm`` sets every BatchNorm's mean and variance to
those of its input over ``samples`` examples, layer after layer in one forward pass of
all the samples as one batch (each layer sees its inputs through the already
re-estimated layers before it, as in training mode). The graph is unchanged; only the
mean and variance initializers get new values.
"""

from __future__ import annotations

from collections.abc import Mapping

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
