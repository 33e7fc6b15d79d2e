"""Learned thresholds (Manessi et al. 2017, 1712.01721), applied per channel group.

Each prunable group g has a learnable threshold t_g on its units' saliency s (the L2 norm
of the unit's producer weights and normalisation scales, standardised with the group's
mean and spread at the start and computed differentiably from the module's parameters;
see ``saliency.py``). During the soft phase every unit's gate is the soft mask
sigmoid(k (s - t_g)), and, while the hard cut (s < t) still misses (1 - margin) x the
FLOPs target, the loss adds

    reg_weight * soft FLOPs(sigmoid(k_reg (s - t))) / original FLOPs

where soft FLOPs is the exact FLOPs count with each unit weighted by its mask: every
group's pull on its threshold is proportional to the FLOPs its units cost. The
regulariser uses a fixed, wide sigmoid (``k_reg``) so that it reaches every threshold even
when the gates themselves have saturated. Its weight is a dual-ascent multiplier: every
step the hard cut misses the goal G = (1 - margin) x target ratio, it is multiplied by
exp(``reg_rate`` x (hard FLOPs ratio / G - 1)), fast while far from the budget, slowly
near it (the first units of a trained network are expensive to lose: with a fixed weight
the thresholds stall just below them).
Weights and thresholds train jointly; k is annealed geometrically from ``k_start`` to
``k_end``, so the soft masks become hard. By default the masks' gradient reaches the
thresholds and, through the gates, the weights, but not the weights through the
saliency (``saliency_grad=True`` allows it; the weights then tend to grow past the
thresholds instead of the thresholds rising).

After ``cut_fraction`` of the steps the cut is made: units with s < t_g are removed (legal
counts: round_to, min_channels, max_ratio; at least one unit per group). If that misses
the budget, every group's learned removal count is scaled by the smallest common factor
that meets it (and the result says so); the remaining steps fine-tune the hard-masked
network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.selection.budget import Budget, select_to_budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.train.config import TrainConfig
from onnxprune.train.errors import TrainingError
from onnxprune.train.loop import TrainHooks, Trainer
from onnxprune.train.saliency import UnitSaliency
from onnxprune.train.session import PruningSession, TrainPruneResult


def scaled_counts(session: PruningSession, learned: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Per-group removal counts following c x the learned counts, for the smallest c >= 1 that
    meets the budget (units are added in the order of the c each needs), or None."""
    costs, units = session.costs, session.units
    if not learned.any():
        return None
    steps = []  # (c at which group gi asks for its n-th unit, gi, n)
    for gi in np.flatnonzero(learned):
        for n in range(int(learned[gi]) + 1, costs.max_removable(gi) + 1):
            steps.append((n / learned[gi], int(gi), n))
    steps.sort()
    want = learned.astype(int).copy()
    for c, gi, n in [(1.0, -1, 0), *steps]:
        if gi >= 0:
            want[gi] = n
        counts = np.array([costs.allowed(g, int(k)) for g, k in enumerate(want)])
        removed = np.zeros(units.n_units, dtype=bool)
        for g, k in enumerate(counts):
            removed[units.units_of(g)[:k]] = True  # cost depends on counts only
        if costs.flops(removed) <= session.target:
            return counts, float(c)
    return None


class _LearnedThreshold(TrainHooks):
    def __init__(self, session: PruningSession, *, cut_at: int, k_start: float, k_end: float, k_reg: float,
                 start_gap: float, reg_weight: float, reg_rate: float, margin: float,
                 saliency_grad: bool) -> None:
        import torch

        self.s = session
        self.cut_at, self.k_start, self.k_end, self.k_reg = cut_at, k_start, k_end, k_reg
        self.reg_weight, self.reg_rate = reg_weight, reg_rate
        self.margin, self.saliency_grad = margin, saliency_grad
        self.saliency = UnitSaliency(session.trainer.module, session.model, session.analysis, session.units, p=2,
                                     scale="zscore", fixed=True)
        self.group_of = torch.as_tensor(session.units.group_of, device=session.device)
        with torch.no_grad():  # just below each group's least salient unit: nothing is cut at first
            sal = self.saliency().cpu().numpy()
        start = [float(sal[session.units.units_of(gi)].min()) - start_gap for gi in range(session.units.n_groups)]
        self.thresholds = torch.nn.Parameter(torch.tensor(start, device=session.device))
        self.ratio = session.target / session.costs.original
        self.removed = np.zeros(session.units.n_units, dtype=bool)
        self.cut = False
        self.k = k_start
        self._margin = None

    def _k(self, step: int) -> float:
        frac = min(1.0, step / max(1, self.cut_at - 1))
        return float(self.k_start * (self.k_end / self.k_start) ** frac)

    def _cut(self, trainer: Trainer, step: int) -> None:
        import torch

        s = self.s
        costs, units = s.costs, s.units
        with torch.no_grad():
            sal = self.saliency().double().cpu().numpy()
            t = self.thresholds.detach().double().cpu().numpy()[units.group_of]
        learned = costs.legal(sal < t, priority=sal)
        learned_counts = np.bincount(units.group_of[learned], minlength=units.n_groups)
        removed = learned
        flops = costs.flops(learned)
        if flops > s.target:
            scaled = scaled_counts(s, learned_counts)
            if scaled is not None:
                counts, c = scaled
                removed = costs.lowest(dict(enumerate(counts.tolist())), sal)
                s.note(f"the learned cut keeps {flops / costs.original:.1%} of the FLOPs, over the budget "
                       f"({s.target / costs.original:.1%}): the learned per-group counts were scaled by up to "
                       f"{c:.2f} ({int(learned.sum())} -> {int(removed.sum())} units)")
            else:
                plan = select_to_budget(s.model, s.analysis, units.per_group(sal), Budget("flops", s.target),
                                        round_to=costs.options.round_to, min_channels=costs.options.min_channels,
                                        max_ratio=costs.options.max_ratio).plan
                removed = units.removed_mask(plan)
                s.note(f"the learned cut keeps {flops / costs.original:.1%} of the FLOPs and scaling its counts "
                       f"cannot meet the budget: units were chosen by one global saliency ranking instead")
        elif flops < 0.9 * s.target:
            s.note(f"the learned cut keeps {flops / costs.original:.1%} of the FLOPs, well under the budget "
                   f"({s.target / costs.original:.1%})")
        self.removed = removed
        self.cut = True
        trainer.recovery_start = step
        s.history.append({"step": step, "cut": True, "learned_removed": int(learned.sum()),
                          "learned_flops_ratio": flops / costs.original, "removed": int(removed.sum()),
                          "flops_ratio": costs.flops(removed) / costs.original,
                          "thresholds": [float(v) for v in self.thresholds.detach().cpu()]})
        s.set_removed(self.removed, recalibrate=True)

    def before_step(self, trainer: Trainer, step: int) -> None:
        import torch

        if self.cut:
            return
        if step >= self.cut_at:
            self._cut(trainer, step)
            return
        self.k = self._k(step)
        sal = self.saliency()
        self._margin = (sal if self.saliency_grad else sal.detach()) - self.thresholds[self.group_of]
        self.s.gates.set(torch.sigmoid(self.k * self._margin))

    def extra_loss(self, trainer: Trainer, step: int):  # noqa: ANN201
        import torch

        if self.cut or self._margin is None:
            return None
        costs = self.s.costs
        hard = costs.flops(self._margin.detach().cpu().numpy() < 0) / costs.original
        if step % 10 == 0:
            self.s.history.append({"step": step, "k": self.k, "hard_flops_ratio": hard,
                                   "reg_weight": self.reg_weight,
                                   "thresholds": [float(v) for v in self.thresholds.detach().cpu()]})
        goal = (1.0 - self.margin) * self.ratio
        if hard <= goal:
            return None
        soft = costs.soft_flops(torch.sigmoid(self.k_reg * self._margin)) / costs.original
        weight = self.reg_weight
        self.reg_weight *= float(np.exp(self.reg_rate * (hard / goal - 1.0)))
        return weight * soft

    def after_step(self, trainer: Trainer, step: int, loss: float) -> None:
        self._margin = None
        if not self.cut and step + 1 >= trainer.total:
            trainer.total += 1  # the cut happens at the next step

    def state(self) -> dict[str, Any]:
        import torch

        return {"thresholds": self.thresholds.detach().cpu(), "removed": torch.as_tensor(self.removed),
                "cut": self.cut, "reg_weight": self.reg_weight, "history": list(self.s.history),
                "notes": list(self.s.notes)}

    def load_state(self, state: dict[str, Any]) -> None:
        import torch

        if not state:
            return
        with torch.no_grad():
            self.thresholds.copy_(state["thresholds"].to(self.thresholds.device))
        self.removed = state["removed"].numpy().astype(bool)
        self.cut = bool(state["cut"])
        self.reg_weight = float(state["reg_weight"])
        self.s.history[:] = list(state["history"])
        self.s.notes[:] = list(state["notes"])
        if self.cut:
            self.s.set_removed(self.removed)

    def note(self) -> str:
        return "cut" if self.cut else f"k {self.k:.1f}"


def learned_threshold_prune(model: onnx.ModelProto, data: CalibrationData, *, target_flops: float,
                            steps: int | None = None, cut_fraction: float = 0.6, k_start: float = 4.0,
                            k_end: float = 40.0, k_reg: float = 1.0, start_gap: float = 0.5,
                            threshold_lr: float = 0.1, reg_weight: float = 1.0, reg_rate: float = 0.05,
                            margin: float = 0.05, saliency_grad: bool = False,
                            teacher: onnx.ModelProto | None = None, analysis: Analysis | None = None,
                            round_to: int = 1, min_channels: int = 1, max_ratio: float = 1.0,
                            config: TrainConfig | None = None, on_step: Callable[[int, float], None] | None = None,
                            **options) -> TrainPruneResult:
    """Per-group learnable thresholds on channel saliency, trained with a FLOPs regulariser, cut
    hard after ``cut_fraction`` of the steps; see the module doc."""
    if not 0 < cut_fraction <= 1:
        raise TrainingError(f"cut_fraction must be in (0, 1], got {cut_fraction}")
    if not 0 < k_start <= k_end:
        raise TrainingError(f"need 0 < k_start <= k_end (got {k_start}, {k_end})")
    if reg_rate < 0:
        raise TrainingError(f"reg_rate must be >= 0, got {reg_rate}")
    if steps is not None:
        options["steps"] = steps
    session = PruningSession(model, data, method="learned-threshold", target_flops=target_flops, teacher=teacher,
                             config=config, options=options, analysis=analysis, round_to=round_to,
                             min_channels=min_channels, max_ratio=max_ratio, on_step=on_step,
                             description="learned thresholds")
    trainer = session.trainer
    trainer.total = max(trainer.total, 1)
    trainer.planned = trainer.total
    hooks = _LearnedThreshold(session, cut_at=max(1, int(cut_fraction * trainer.total)), k_start=k_start,
                              k_end=k_end, k_reg=k_reg, start_gap=start_gap, reg_weight=reg_weight,
                              reg_rate=reg_rate, margin=margin, saliency_grad=saliency_grad)
    trainer.hooks = hooks
    trainer.add_parameters([hooks.thresholds], lr=threshold_lr)
    trainer.run()
    if not hooks.cut:
        hooks._cut(trainer, trainer.step)
    return session.finish(hooks.removed, criterion="learned-threshold", options={
        "schedule": "learned-threshold", "cut_fraction": cut_fraction, "k_start": k_start, "k_end": k_end,
        "reg_weight": reg_weight, "reg_rate": reg_rate,
        "thresholds": [float(v) for v in hooks.thresholds.detach().cpu()]})
