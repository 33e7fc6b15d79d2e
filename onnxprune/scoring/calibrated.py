"""Data-driven importance of every prunable unit, from a calibration pass in torch.

Criteria (higher = keep; each one registry entry at the end of this module, see
``scoring.criteria``; a gate-based one is a ``GateStatistic``):
- ``taylor-fo`` (Molchanov 2019): (g * dL/dg)^2 of the unit's gate, per minibatch, averaged;
- ``taylor-so``: the squared per-example gradients (Fisher / Gauss-Newton surrogate);
- ``taylor-act`` (Molchanov 2016): |mean over positions of a * dL/da| per example,
  averaged, L2-normalised per group, optionally minus ``flops_reg`` x the unit's share of FLOPs;
- ``activation``: mean activation; ``apoz``: minus the average percentage of zeros;
- ``oracle``: the true change of loss when the unit alone is removed.

Losses: cross-entropy with integer labels, MSE with float labels; without labels,
pseudo-labels (the model's own argmax) for classifiers and, for any other output, a random
projection of the outputs (its squared gradients estimate the Gauss-Newton diagonal; a
distillation loss would have zero gradient at g = 1). Scores of a unit with several
consumers are reduced over them: ``sum`` (one shared gate: exact first order), ``mean``
or ``max`` of the per-consumer scores.

Under ``torch.distributed`` (torchrun; gloo on CPU, nccl on GPU), each process scores its
shard of every global batch and the per-batch gradient sums are all-reduced before
squaring, so the result equals one process on the same data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.io.calib_data import CalibrationData, CalibrationError
from onnxprune.scoring.criteria import get_criterion, names, register_criterion
from onnxprune.scoring.gates import GateLayout, Gates, gate_layout
from onnxprune.scoring import fluctuation
from onnxprune.errors import ScoringError
from onnxprune.graph import GraphIndex, static_batch

log = logging.getLogger(__name__)

REDUCTIONS = ("sum", "mean", "max")
LOSSES = ("auto", "ce", "mse", "pseudo", "fisher")


def calibration_scores(model: onnx.ModelProto, analysis: Analysis, data: CalibrationData, criterion: str, *,
                       loss: str = "auto", reduction: str = "sum", batch_size: int = 32, device: str = "cpu",
                       flops_reg: float = 0.0, seed: int = 0, projections: int = 1,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Score every prunable group's units with a registered data-driven criterion.

    ``projections``: passes over the calibration set, each with fresh random projections for
    the label-free 'fisher' loss (its estimate of the Gauss-Newton diagonal averages them:
    more projections, less noise, when samples are few)."""
    if criterion not in names(needs_data=True):
        raise ScoringError(f"unknown data-driven criterion '{criterion}' "
                           f"(choose from {', '.join(names(needs_data=True))})")
    return get_criterion(criterion).score(model, analysis, data, loss=loss, reduction=reduction,
                                          batch_size=batch_size, device=device, flops_reg=flops_reg, seed=seed,
                                          projections=projections, progress=progress)


@dataclass(frozen=True)
class GateStatistic:
    """How a gate-based criterion reads the calibration pass (the sums of ``_Runner.accumulate``)."""

    values: Callable[[dict, GateLayout], tuple[np.ndarray, np.ndarray]] | None  # (per entry, per unit); None: oracle
    need_grad: bool = True
    record_stats: bool = False  # activation sums and zero counts at the gates
    entries_only: bool = False  # no shared-gate unit score: always reduce the entries (mean for 'sum')
    normalise: bool = False  # Molchanov 2016: L2-normalised per group, minus flops_reg x the FLOPs share


def _gate_scores(criterion: str, stat: GateStatistic, model: onnx.ModelProto, analysis: Analysis,
                 data: CalibrationData, *, loss: str = "auto", reduction: str = "sum", batch_size: int = 32, device: str = "cpu",
                 flops_reg: float = 0.0, seed: int = 0, projections: int = 1,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """A gate-based criterion's scores: one calibration pass in torch with a gate per unit."""
    if reduction not in REDUCTIONS:
        raise ScoringError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if loss not in LOSSES:
        raise ScoringError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if len(data) == 0:
        raise CalibrationError("calibration set is empty")
    if projections < 1:
        raise ScoringError(f"projections must be >= 1, got {projections}")
    if projections > 1:
        data = CalibrationData({k: np.concatenate([v] * projections) for k, v in data.inputs.items()},
                               None if data.labels is None else np.concatenate([data.labels] * projections))
    from onnxprune._optional import require_torch

    torch = require_torch(f"scoring with '{criterion}'")
    from onnxprune.torchexec import OnnxModule

    fixed = static_batch(model)
    if fixed and fixed != batch_size:
        log.info("the model's batch dimension is fixed at %d: calibrating in batches of %d", fixed, fixed)
        batch_size = fixed
    module = OnnxModule(model, trainable=lambda name: False).to(device).eval()
    layout = gate_layout(analysis)
    gates = Gates(module, layout)
    run = _Runner(module, gates, data, _loss(loss, data, model), batch_size, torch.device(device), seed, progress)
    try:
        if stat.values is None:
            unit_scores = run.oracle(layout.n_units)
            return _per_group(analysis, layout.unit_offsets, unit_scores)
        gates.record_stats = stat.record_stats
        acc = run.accumulate(need_grad=stat.need_grad)
    finally:
        gates.remove()
    entry_scores, unit_scores = stat.values(acc, layout)
    if reduction != "sum" or stat.entries_only:
        unit_scores = _reduce_entries(entry_scores, layout.entry_unit, layout.n_units,
                                      "mean" if reduction == "sum" else reduction)
    scores = _per_group(analysis, layout.unit_offsets, unit_scores)
    if stat.normalise:
        scores = _normalise_per_group(scores, analysis, flops_reg)
    return scores


class _Runner:
    def __init__(self, module, gates: Gates, data: CalibrationData, loss_fn, batch_size: int,  # noqa: ANN001
                 device, seed: int, progress) -> None:  # noqa: ANN001
        import torch.distributed as dist

        self.module, self.gates, self.loss_fn, self.device, self.seed = module, gates, loss_fn, device, seed
        self.batch_size, self.progress = batch_size, progress
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.distributed else 1
        rank = dist.get_rank() if self.distributed else 0
        self.total_batches = -(-len(data) // (batch_size * self.world))
        self.local = data.shard(rank, self.world, batch_size) if self.distributed else data

    def _batches(self):  # noqa: ANN202
        batches = list(self.local.batches(self.batch_size))
        for step in range(self.total_batches):
            yield step, (batches[step] if step < len(batches) else None)

    def _forward_loss(self, feeds, labels, step: int):  # noqa: ANN001, ANN202
        import torch

        tensors = {k: torch.as_tensor(v, device=self.device) for k, v in feeds.items()}
        outputs = self.module(**tensors)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return self.loss_fn(outputs, labels, torch.Generator().manual_seed(self.seed * 100003 + step))

    def accumulate(self, need_grad: bool) -> dict:
        """Per entry ('e') and per unit ('u'): first-order (squared batch sums), second-order
        (sums of squared per-example gradients), and sums of |per-example gradient|."""
        import torch

        layout = self.gates.layout
        e, u = len(layout.entry_unit), layout.n_units
        entry_unit = torch.as_tensor(layout.entry_unit)
        acc = {f"{k}_{s}": torch.zeros(e if s == "e" else u, dtype=torch.float64)
               for k in ("fo", "so", "abs") for s in ("e", "u")}
        n = torch.zeros(1, dtype=torch.float64)
        for step, batch in self._batches():
            grad_sum = torch.zeros(e, dtype=torch.float64)
            if batch is not None:
                feeds, labels = batch
                size = len(next(iter(feeds.values())))
                values = self.gates.new_batch(size, self.device, requires_grad=need_grad)
                with torch.set_grad_enabled(need_grad):
                    loss = self._forward_loss(feeds, labels, step)
                    if need_grad:
                        (grad,) = torch.autograd.grad(loss, values)
                        g = grad.double().cpu()
                        g_unit = torch.zeros(size, u, dtype=torch.float64).index_add_(1, entry_unit, g)
                        grad_sum = g.sum(0)
                        acc["so_e"] += (g**2).sum(0)
                        acc["so_u"] += (g_unit**2).sum(0)
                        acc["abs_e"] += g.abs().sum(0)
                        acc["abs_u"] += g_unit.abs().sum(0)
                n += size
            grad_sum = self._all_reduce(grad_sum)
            acc["fo_e"] += grad_sum**2
            acc["fo_u"] += torch.zeros(u, dtype=torch.float64).index_add_(0, entry_unit, grad_sum) ** 2
            if self.progress:
                self.progress(step + 1, self.total_batches)
        for key in ("so_e", "so_u", "abs_e", "abs_u"):
            acc[key] = self._all_reduce(acc[key])
        for name in ("act_sum", "zero_sum", "example_count"):
            acc[name] = self._all_reduce(getattr(self.gates, name))
        acc["n"] = float(self._all_reduce(n).item()) or 1.0
        acc["batches"] = self.total_batches
        return acc

    def oracle(self, n_units: int) -> np.ndarray:
        import torch

        def total_loss(masked: np.ndarray | None) -> float:
            self.gates.masked_units = masked
            value = torch.zeros(1, dtype=torch.float64)
            with torch.no_grad():
                for step, batch in self._batches():
                    if batch is not None:
                        feeds, labels = batch
                        self.gates.new_batch(len(next(iter(feeds.values()))), self.device, requires_grad=False)
                        value += float(self._forward_loss(feeds, labels, step))
            return float(self._all_reduce(value))

        base = total_loss(None)
        scores = np.zeros(n_units)
        for u in range(n_units):
            scores[u] = total_loss(np.array([u])) - base
            if self.progress:
                self.progress(u + 1, n_units)
        self.gates.masked_units = None
        return scores

    def _all_reduce(self, t):  # noqa: ANN001, ANN202
        if self.distributed:
            import torch.distributed as dist

            t = t.clone()
            dist.all_reduce(t)
        return t


def _loss(kind: str, data: CalibrationData, model: onnx.ModelProto):  # noqa: ANN202
    """A loss summed over examples (so per-example gradients decompose it)."""
    import torch
    import torch.nn.functional as F

    labels = data.labels
    if kind == "auto":
        if labels is not None:
            kind = "ce" if np.issubdtype(labels.dtype, np.integer) else "mse"
        else:
            kind = "pseudo" if _classifier_like(model) else "fisher"
    if kind in ("ce", "mse") and labels is None:
        raise CalibrationError(f"loss '{kind}' needs labels")
    log.info("calibration loss: %s", kind)

    def fn(outputs, batch_labels, generator):  # noqa: ANN001, ANN202
        first = outputs[0]
        if kind == "ce":
            return F.cross_entropy(first, torch.as_tensor(batch_labels, device=first.device).long(), reduction="sum")
        if kind == "mse":
            target = torch.as_tensor(batch_labels, device=first.device, dtype=first.dtype).reshape(first.shape)
            return F.mse_loss(first, target, reduction="sum")
        if kind == "pseudo":
            return F.cross_entropy(first, first.detach().argmax(-1), reduction="sum")
        total = first.new_zeros(())
        for out in outputs:  # fisher: a random projection of every float output
            if out.is_floating_point():
                r = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
                total = total + (out * r).sum()
        return total

    return fn


# -- the gate statistics: (per-entry scores, per-unit scores with one shared gate per unit) -------------
def _taylor_fo(acc: dict, layout: GateLayout) -> tuple[np.ndarray, np.ndarray]:
    batches = max(1, acc["batches"])
    return (acc["fo_e"] / batches).numpy(), (acc["fo_u"] / batches).numpy()


def _taylor_so(acc: dict, layout: GateLayout) -> tuple[np.ndarray, np.ndarray]:
    return (acc["so_e"] / acc["n"]).numpy(), (acc["so_u"] / acc["n"]).numpy()


def _taylor_act(acc: dict, layout: GateLayout) -> tuple[np.ndarray, np.ndarray]:
    import torch

    positions = torch.as_tensor(np.maximum(layout.positions, 1.0))
    unit_positions = np.ones(layout.n_units)
    np.maximum.at(unit_positions, layout.entry_unit, np.maximum(layout.positions, 1.0))
    return (acc["abs_e"] / positions / acc["n"]).numpy(), (acc["abs_u"] / acc["n"]).numpy() / unit_positions


def _mean_at_gates(key: str, sign: float) -> Callable[[dict, GateLayout], tuple[np.ndarray, np.ndarray]]:
    def values(acc: dict, layout: GateLayout) -> tuple[np.ndarray, np.ndarray]:
        import torch

        count = torch.clamp(acc["example_count"][:-1], min=1.0)
        entry = sign * (acc[key][:-1] / count).numpy()
        return entry, _reduce_entries(entry, layout.entry_unit, layout.n_units, "mean")

    return values


_NEEDS = "calibration inputs (labels optional) and torch"


def _register(name: str, help: str, stat: GateStatistic) -> None:  # noqa: A002
    register_criterion(name, help=help, needs_data=True, needs=_NEEDS, score=partial(_gate_scores, name, stat))


_register("taylor-fo", "Molchanov 2019: (g dL/dg)^2 of the unit's gate, per minibatch, averaged",
          GateStatistic(_taylor_fo))
_register("taylor-so", "second order: squared per-example gate gradients (Fisher / Gauss-Newton surrogate)",
          GateStatistic(_taylor_so))
_register("taylor-act", "Molchanov 2016: |mean of a dL/da| per example, L2-normalised per group (--flops-reg)",
          GateStatistic(_taylor_act, normalise=True))
_register("activation", "mean activation at the unit's gates",
          GateStatistic(_mean_at_gates("act_sum", 1.0), need_grad=False, record_stats=True, entries_only=True))
_register("apoz", "minus the average percentage of zeros at the unit's gates (fewer zeros = keep)",
          GateStatistic(_mean_at_gates("zero_sum", -1.0), need_grad=False, record_stats=True, entries_only=True))
_register("oracle", "the true change of loss when the unit alone is removed (one pass per unit: small models)",
          GateStatistic(None, need_grad=False))


def __getattr__(name: str) -> Any:
    if name == "DATA_DRIVEN":  # the registered data-driven criteria (a live view of the registry)
        return names(needs_data=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _classifier_like(model: onnx.ModelProto) -> bool:
    """A first output of shape [batch, classes] is treated as class scores."""
    shape = GraphIndex(model).shape(model.graph.output[0].name)
    return shape is not None and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1


def _reduce_entries(entry: np.ndarray, entry_unit: np.ndarray, n_units: int, how: str) -> np.ndarray:
    out = np.full(n_units, -np.inf if how == "max" else 0.0)
    if how == "max":
        np.maximum.at(out, entry_unit, entry)
        return np.where(np.isinf(out), 0.0, out)
    np.add.at(out, entry_unit, entry)
    counts = np.bincount(entry_unit, minlength=n_units)
    return out / np.maximum(counts, 1)


def _per_group(analysis: Analysis, offsets: Mapping[str, int], unit_scores: np.ndarray) -> dict[str, np.ndarray]:
    return {gid: np.asarray(unit_scores[off: off + analysis.group(gid).size], dtype=np.float64)
            for gid, off in offsets.items()}


def _normalise_per_group(scores: dict[str, np.ndarray], analysis: Analysis, flops_reg: float) -> dict[str, np.ndarray]:
    """Molchanov 2016: divide by the group's L2 norm; optionally subtract lambda x FLOPs share."""
    max_macs = max((float(g.unit_macs.max()) for g in analysis.prunable_groups if g.size), default=1.0) or 1.0
    out = {}
    for gid, s in scores.items():
        norm = float(np.sqrt((s**2).sum()))
        s = s / norm if norm > 0 else s
        if flops_reg:
            s = s - flops_reg * analysis.group(gid).unit_macs / max_macs
        out[gid] = s
    return out


register_criterion("flap", help="FLAP (An et al. 2024): variance of the unit's input over the calibration "
                   "data x squared norm of its weight column; no gradients", needs_data=True,
                   needs="calibration inputs (onnxruntime only)", score=fluctuation.criterion_score)
