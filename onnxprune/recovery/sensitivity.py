"""Where a layer's reconstruction error matters: the Fisher (Gauss-Newton diagonal) weight
of every row and output channel of a tensor, label-free.

The squared gradient of a random projection r . f(x) of the graph outputs with respect to
a tensor t estimates, in expectation over r, how much an error at each element of t moves
the outputs (J^T J's diagonal). Reduced over the channel axis it weights the rows the
reconstruction fits; over the rows it weights the channels. Rows that never reach an
output (the padded tokens a masked mean-pooling drops) get weight 0, and channels a
following normalisation divides away count little, so least squares spends its degrees
of freedom where the outputs need them. Computed once on the original model in torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData
from onnxprune.graph import GraphIndex


def output_sensitivity(model: onnx.ModelProto, axes: Mapping[str, int], calib: CalibrationData, *,
                       batch_size: int = 32, projections: int = 4,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor name in ``axes`` (its channel axis): (row weights [samples x positions],
    in sample-major order with positions in C order, mean 1; channel weights [C], mean 1)."""
    from onnxprune._optional import require_torch

    torch = require_torch("Fisher-weighted recovery")
    from onnxprune.torchexec import OnnxModule

    module = OnnxModule(model, trainable=lambda name: False).eval()
    names = list(axes)
    index = GraphIndex(model)
    probes: dict[str, torch.Tensor] = {}  # per batch: a zero added where each tensor is read

    def probe(name: str):  # noqa: ANN202
        def fn(x: torch.Tensor) -> torch.Tensor:
            if name not in probes:
                probes[name] = torch.zeros_like(x, requires_grad=True)
            return x + probes[name]
        return fn

    for name in names:
        for node, slot in index.users(name):
            module.set_input_hook(node.name, slot, probe(name))
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    channels: dict[str, np.ndarray] = {}
    for step, (feeds, _) in enumerate(calib.batches(batch_size)):
        generator = torch.Generator().manual_seed(seed * 100003 + step)
        tensors = {k: torch.as_tensor(v) for k, v in feeds.items()}
        probes.clear()
        outputs = module(**tensors)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        by_output = dict(zip(module.output_names, outputs))
        # a tensor nothing reads is a graph output: the gradient there is the projection itself
        targets = [probes[n] if n in probes else torch.zeros_like(by_output[n], requires_grad=True) for n in names]
        floats = [o + targets[names.index(n)] if n in names and n not in probes else o
                  for n, o in zip(module.output_names, outputs) if o.is_floating_point()]
        sq = [torch.zeros_like(t, dtype=torch.float64) for t in targets]
        for k in range(projections):
            loss = sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in floats)
            grads = torch.autograd.grad(loss, targets, retain_graph=k < projections - 1, allow_unused=True)
            for acc, g in zip(sq, grads):
                if g is not None:
                    acc += g.double() ** 2
        for name, acc in zip(names, sq):
            g2 = np.moveaxis(acc.numpy(), axes[name], -1)
            rows[name].append(g2.mean(-1).reshape(-1))
            per_channel = g2.reshape(-1, g2.shape[-1]).sum(0)
            channels[name] = channels[name] + per_channel if name in channels else per_channel
    result = {}
    for name in names:
        r = np.concatenate(rows[name])
        c = channels[name]
        result[name] = (r / r.mean() if r.mean() > 0 else np.ones_like(r),
                        c / c.mean() if c.mean() > 0 else np.ones_like(c))
    return result
