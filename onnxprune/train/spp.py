"""Structured Probabilistic Pruning (Wang et al. 2017, 1709.06994), per channel.

Every unit has a pruning probability p (0 at the start). Each training step samples a
mask: unit u's gate is 0 with probability p[u]. Every ``update_every`` steps the units of
each group are ranked by an L1 criterion (rank 0 = smallest) and p grows by

    D(r) = A exp(-a r)                          for r <= N_c
    D(r) = 2 u A - A exp(-a (2 N_c - r))        for r >  N_c

with a = ln(2 / u) / (R N) and N_c = -ln(u) / a: a centre-symmetric exponential around
(N_c, u A) that is positive for the R N lowest-ranked units and negative above (N units
in the group, R its target ratio). p is clipped to [0, 1]; a unit whose p reaches 1 is
removed for good; a group is done when R N of its units are. A unit pruned too eagerly
early can still recover, as long as its p has not reached 1.

The per-group targets R N come from the FLOPs budget: ``onnxprune.selection.budget.select_to_budget``
on the L1 scores (one global allocation, legal counts with round_to). Removing them meets
the budget, whichever units of each group go. If groups are still open when
``prune_fraction`` of the steps has passed, their units with the highest p are removed
(and the result says so); the remaining steps fine-tune the fixed network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.selection.budget import Budget, select_to_budget
from onnxprune.io.calib_data import CalibrationData
from onnxprune.scoring.data_free import score
from onnxprune.graph import GraphIndex
from onnxprune.train.config import TrainConfig
from onnxprune.train.errors import TrainingError
from onnxprune.train.loop import TrainHooks, Trainer
from onnxprune.train.saliency import UnitSaliency
from onnxprune.train.schedule import step_generator
from onnxprune.train.session import PruningSession, TrainPruneResult


def spp_increment(ranks: np.ndarray, n: int, ratio: float, A: float = 0.05, u: float = 0.25) -> np.ndarray:
    """The probability increment of units with ``ranks`` (0 = least important) in a group of ``n``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ratio <= 0:
        return np.full(ranks.shape, -A)
    alpha = math.log(2.0 / u) / (ratio * n)
    n_c = -math.log(u) / alpha
    low = A * np.exp(-alpha * ranks)
    high = 2.0 * u * A - A * np.exp(-alpha * (2.0 * n_c - ranks))
    return np.where(ranks <= n_c, low, high)


class _SPP(TrainHooks):
    """The SPP schedule as training hooks: ``prob`` per unit, ``amplitude`` (the paper's A) and
    ``crossing`` (its u) shape the increment (``spp_increment``)."""

    def __init__(self, session: PruningSession, targets: np.ndarray, *, update_every: int, amplitude: float,
                 crossing: float, prune_until: int) -> None:
        self.session, self.targets = session, targets
        self.update_every, self.prune_until = update_every, prune_until
        self.amplitude, self.crossing = amplitude, crossing
        n_units = session.units.n_units
        self.prob = np.zeros(n_units)
        self.removed = np.zeros(n_units, dtype=bool)
        self.done = np.array([target == 0 for target in targets])
        self.saliency = UnitSaliency(session.trainer.module, session.model, session.analysis, session.units, p=1)
        self.forced = 0
        self.updates = 0

    def _l1(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.saliency().double().cpu().numpy()

    def _close(self, group_index: int) -> None:
        idx = self.session.units.units_of(group_index)
        self.prob[idx[~self.removed[idx]]] = 0.0
        self.done[group_index] = True

    def _update(self, step: int) -> None:
        units = self.session.units
        l1 = self._l1()
        for group_index in np.flatnonzero(~self.done):
            idx = units.units_of(group_index)
            group = units.groups[group_index]
            ranks = np.empty(group.size, dtype=np.int64)
            ranks[np.lexsort((np.arange(group.size), l1[idx]))] = np.arange(group.size)
            prob = np.clip(self.prob[idx] + spp_increment(ranks, group.size, self.targets[group_index] / group.size,
                                                          self.amplitude, self.crossing), 0, 1)
            prob[self.removed[idx]] = 1.0
            need = self.targets[group_index] - int(self.removed[idx].sum())
            newly = np.flatnonzero((prob >= 1.0) & ~self.removed[idx])
            if len(newly) > need:  # more reached 1 than the group may lose: the lowest-ranked go
                newly = newly[np.argsort(ranks[newly], kind="stable")]
                prob[newly[need:]] = np.nextafter(1.0, 0.0)
                newly = newly[:need]
            self.removed[idx[newly]] = True
            self.prob[idx] = prob
            if self.removed[idx].sum() >= self.targets[group_index]:
                self._close(group_index)
        self.updates += 1
        mean_p = float(self.prob[~self.removed].mean()) if (~self.removed).any() else 0.0
        self.session.history.append({"step": step, "update": self.updates, "removed": int(self.removed.sum()),
                                     "target": int(self.targets.sum()), "mean_p": mean_p})

    def _force(self, step: int) -> None:
        units = self.session.units
        l1 = self._l1()
        forced = 0
        for group_index in np.flatnonzero(~self.done):
            idx = units.units_of(group_index)
            open_ = idx[~self.removed[idx]]
            need = self.targets[group_index] - int(self.removed[idx].sum())
            order = open_[np.lexsort((open_, l1[open_], -self.prob[open_]))]  # highest p, then lowest L1
            self.removed[order[:need]] = True
            self.prob[order[:need]] = 1.0
            forced += int(need)
            self._close(group_index)
        self.forced += forced
        self.session.note(f"{forced} unit(s) in open groups were removed by their probability at step {step} "
                    f"(pruning phase over before p reached 1); raise A, steps or prune_fraction to avoid it")

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def before_step(self, trainer: Trainer, step: int) -> None:
        import torch

        if self.finished:
            return  # the fixed mask is in place
        if step >= self.prune_until:
            self._force(step)
        elif step % self.update_every == 0:
            self._update(step)
        if self.finished:
            trainer.recovery_start = step
            self.session.set_removed(self.removed, recalibrate=True)
            return
        generator = step_generator(self.session.config.seed, step, salt=17)
        draw = torch.rand(len(self.prob), generator=generator).double().numpy()
        keep = draw >= self.prob
        keep[self.removed] = False
        self.session.gates.set_mask(keep, self.session.device)

    def after_step(self, trainer: Trainer, step: int, loss: float) -> None:
        if not self.finished and step + 1 >= trainer.total:
            trainer.total += 1  # the forced completion happens at the next step

    def state(self) -> dict[str, Any]:
        import torch

        return {"p": torch.as_tensor(self.prob), "removed": torch.as_tensor(self.removed),
                "done": torch.as_tensor(self.done), "forced": self.forced, "updates": self.updates,
                "history": list(self.session.history), "notes": list(self.session.notes)}

    def load_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.prob = state["p"].numpy().astype(np.float64)
        self.removed = state["removed"].numpy().astype(bool)
        self.done = state["done"].numpy().astype(bool)
        self.forced, self.updates = int(state["forced"]), int(state["updates"])
        self.session.history[:] = list(state["history"])
        self.session.notes[:] = list(state["notes"])
        if self.finished:
            self.session.set_removed(self.removed)

    def note(self) -> str:
        return f"removed {int(self.removed.sum())}/{int(self.targets.sum())}"


def spp_prune(model: onnx.ModelProto, data: CalibrationData, *, target_flops: float, steps: int | None = None,
              update_every: int = 2, A: float = 0.05, u: float = 0.25, prune_fraction: float = 0.6,
              teacher: onnx.ModelProto | None = None, analysis: Analysis | None = None, round_to: int = 1,
              min_channels: int = 1, max_ratio: float = 1.0, config: TrainConfig | None = None,
              on_step: Callable[[int, float], None] | None = None, **options) -> TrainPruneResult:
    """Structured probabilistic pruning to a FLOPs budget, with distillation from ``teacher``
    (default: the original model) during the sampled-mask training; see the module doc."""
    if update_every < 1:
        raise TrainingError("update_every must be >= 1")
    if not 0 < A <= 1 or not 0 < u < 1:
        raise TrainingError(f"SPP needs 0 < A <= 1 and 0 < u < 1 (got A={A}, u={u})")
    if not 0 < prune_fraction <= 1:
        raise TrainingError(f"prune_fraction must be in (0, 1], got {prune_fraction}")
    if steps is not None:
        options["steps"] = steps
    session = PruningSession(model, data, method="spp", target_flops=target_flops, teacher=teacher, config=config,
                             options=options, analysis=analysis, round_to=round_to, min_channels=min_channels,
                             max_ratio=max_ratio, on_step=on_step, description="SPP pruning")
    l1 = score("l1", GraphIndex(model), session.analysis)
    allocation = select_to_budget(model, session.analysis, l1, Budget("flops", target_flops), round_to=round_to,
                                  min_channels=min_channels, max_ratio=max_ratio, criterion="l1")
    units = session.units
    targets = np.array([group.size - len(allocation.plan.keep.get(group.id, range(group.size)))
                        for group in units.groups])
    trainer = session.trainer
    hooks = _SPP(session, targets, update_every=update_every, amplitude=A, crossing=u,
                 prune_until=max(1, int(prune_fraction * trainer.total)))
    trainer.hooks = hooks
    trainer.total = max(trainer.total, 1)
    trainer.planned = trainer.total
    trainer.run()
    if not hooks.finished:  # no step left to finish on (steps=0): remove by probability now
        hooks._force(trainer.step)
    return session.finish(hooks.removed, criterion="l1", options={
        "schedule": "spp", "update_every": update_every, "A": A, "u": u, "forced": hooks.forced})
