"""Per-unit weight saliency computed from an OnnxModule's parameters (differentiable).

For every weight slice a unit owns (producer rows and normalisation scales; consumer
columns for units that have neither), the unit's L_p norm of the slice is put on a
common scale per group, then averaged over the slices:

- ``scale="mean"``: divided by the mean over the group's units (a group's saliencies
  have mean 1; for rankings);
- ``scale="zscore"``: minus the group's mean, divided by the group's standard deviation
  (thresholds then live in units of spread: filter norms of a trained layer often differ
  by only a few percent, which a sigmoid on mean-scaled norms cannot separate).

With ``fixed=True`` the means and deviations are those of the weights at construction
and stay constant: saliencies are then absolute (a unit whose weights shrink loses
saliency without the others gaining any), which is what a threshold learned on them needs.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.graph import GraphIndex
from onnxprune.train.units import UnitIndex

PRIMARY_ROLES = ("producer", "param")
SCALES = ("mean", "zscore")


class UnitSaliency:
    def __init__(self, module, model: onnx.ModelProto, analysis: Analysis, units: UnitIndex,  # noqa: ANN001
                 p: int = 2, scale: str = "mean", fixed: bool = False) -> None:
        import torch

        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.module, self.units, self.p, self.scale = module, units, p, scale
        index = GraphIndex(model)
        primary, secondary = [], []
        covered = np.zeros(units.n_units + 1, dtype=bool)
        for ref in analysis.params:
            if not ref.is_weight:
                continue
            cu = units.channel_units(ref.elems)
            if (cu < 0).all():
                continue
            name = index.nodes[ref.node].input[ref.slot]
            entry = (name, ref.axis, np.where(cu < 0, units.n_units, cu))
            if ref.role in PRIMARY_ROLES:
                primary.append(entry)
                covered[entry[2]] = True
            else:
                secondary.append(entry)
        covered[units.n_units] = True
        terms = primary + [(n, a, np.where(covered[cu], units.n_units, cu)) for n, a, cu in secondary]
        self._terms = [(n, a, torch.as_tensor(cu)) for n, a, cu in terms if (cu < units.n_units).any()]
        self._group_of = torch.as_tensor(np.append(units.group_of, units.n_groups))
        self._stats: list | None = None
        if fixed:
            with torch.no_grad():
                self._stats = [(mean.detach().clone(), std.detach().clone()) for mean, std in self._group_stats()]

    def _values(self):  # noqa: ANN202 - per term: (per-unit norm, presence), both [n_units + 1]
        import torch

        n = self.units.n_units
        device = next(iter(self.module.parameters())).device
        for name, axis, cu in self._terms:
            w = self.module.parameter(name)
            cu = cu.to(device)
            per_channel = w.float().movedim(axis, 0).reshape(w.shape[axis], -1).abs().pow(self.p).sum(1)
            per_unit = torch.zeros(n + 1, device=device).index_add(0, cu, per_channel)
            per_unit = (per_unit + 1e-12).pow(1.0 / self.p)
            present = torch.zeros(n + 1, device=device).index_add(0, cu, torch.ones_like(per_channel)) > 0
            present[n] = False
            yield per_unit, present.float()

    def _group_stats(self):  # noqa: ANN202 - per term: mean and deviation over each group's units
        import torch

        groups = self.units.n_groups
        out = []
        for per_unit, pres in self._values():
            group_of = self._group_of.to(per_unit.device)
            zeros = torch.zeros(groups + 1, device=per_unit.device)
            count = zeros.index_add(0, group_of, pres).clamp(min=1.0)
            mean = zeros.index_add(0, group_of, per_unit * pres) / count
            var = zeros.index_add(0, group_of, (per_unit - mean[group_of]) ** 2 * pres) / count
            out.append((mean.clamp(min=1e-12), var.sqrt().clamp(min=1e-6 * mean.abs().max().item() + 1e-12)))
        return out

    def __call__(self):  # noqa: ANN204 - torch.Tensor [n_units]
        import torch

        n = self.units.n_units
        device = next(iter(self.module.parameters())).device
        group_of = self._group_of.to(device)
        stats = self._stats if self._stats is not None else self._group_stats()
        acc = torch.zeros(n + 1, device=device)
        count = torch.zeros(n + 1, device=device)
        for (per_unit, pres), (mean, std) in zip(self._values(), stats):
            mean, std = mean.to(device)[group_of], std.to(device)[group_of]
            value = per_unit / mean if self.scale == "mean" else (per_unit - mean) / std
            acc = acc + value * pres
            count = count + pres
        return (acc / count.clamp(min=1.0))[:n]
