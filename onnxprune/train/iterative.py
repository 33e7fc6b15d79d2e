"""Iterative pruning (Molchanov et al. 2016, 1611.06440).

Repeat { score every remaining unit with taylor-act (|mean over positions of a * dL/da|,
L2-normalised per group, optionally minus ``flops_reg`` x the unit's FLOPs share) on the
current, masked network; remove the ``channels_per_round`` lowest-scoring units (one
global ranking); fine-tune ``steps_per_round`` steps with distillation from the original }
until the FLOPs budget is met, then fine-tune for the rest of ``steps``.

Removed units are masked with 0 gates at their consumers; scoring runs
``onnxprune.scoring.calibrated.calibration_scores`` on the masked reference of the current weights
(``onnxprune.rewrite.masking.masked_model``), so a removed unit scores 0 and the remaining ones
are scored in the network as it is. Rounds keep every group's count legal (round_to,
min_channels, max_ratio); if ``steps`` runs out before the budget is met, rounds go on
until it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from onnxprune.analysis import Analysis
from onnxprune.scoring.calibrated import calibration_scores
from onnxprune.io.calib_data import CalibrationData
from onnxprune.rewrite.masking import masked_model
from onnxprune.train.config import TrainConfig
from onnxprune.train.errors import TrainingError
from onnxprune.train.loop import TrainHooks, Trainer
from onnxprune.train.session import PruningSession, TrainPruneResult


def score_subset(data: CalibrationData, samples: int | None, seed: int) -> CalibrationData:
    """A fixed random subset of ``samples`` examples (all when None or larger)."""
    if samples is None or samples >= len(data):
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=samples, replace=False))
    return CalibrationData({k: v[idx] for k, v in data.inputs.items()},
                           None if data.labels is None else data.labels[idx])


class _Iterative(TrainHooks):
    def __init__(self, session: PruningSession, score_data: CalibrationData, *, steps_per_round: int,
                 channels_per_round: int, flops_reg: float, score_batch_size: int) -> None:
        self.s = session
        self.score_data, self.steps_per_round, self.channels_per_round = score_data, steps_per_round, channels_per_round
        self.flops_reg, self.score_batch_size = flops_reg, score_batch_size
        self.removed = np.zeros(session.units.n_units, dtype=bool)
        self.done = session.costs.flops(self.removed) <= session.target
        self.rounds = 0

    # -- one round ----------------------------------------------------------------------------
    def _scores(self, trainer: Trainer) -> np.ndarray:
        s = self.s
        current = trainer.module.write_back(s.model)
        if self.removed.any():
            current = masked_model(current, s.analysis, s.costs.plan(self.removed, criterion="iterative"))
        scores = calibration_scores(current, s.analysis, self.score_data, "taylor-act", flops_reg=self.flops_reg,
                                    batch_size=self.score_batch_size, device=s.config.device, seed=s.config.seed)
        return s.units.from_groups(scores)

    def _round(self, trainer: Trainer, step: int) -> None:
        s = self.s
        costs, units = s.costs, s.units
        scores = self._scores(trainer)
        remaining = np.flatnonzero(~self.removed)
        order = remaining[np.lexsort((remaining, scores[remaining]))]  # lowest score first
        counts = np.bincount(units.group_of[self.removed], minlength=units.n_groups)
        pending: list[list[int]] = [[] for _ in range(units.n_groups)]
        legal = self.removed.copy()
        for u in order:
            gi = int(units.group_of[u])
            if counts[gi] + len(pending[gi]) >= costs.max_removable(gi):
                continue
            pending[gi].append(int(u))
            allowed = costs.allowed(gi, counts[gi] + len(pending[gi]))
            if allowed - counts[gi] == 0:
                continue  # round_to: this group needs more units before any can go
            legal[pending[gi][: allowed - counts[gi]]] = True
            if costs.flops(legal) <= s.target or (legal & ~self.removed).sum() >= self.channels_per_round:
                break
        newly = legal & ~self.removed
        if not newly.any():
            raise TrainingError("iterative pruning could not remove any further unit before meeting the budget")
        self.removed = legal
        self.rounds += 1
        flops = costs.flops(self.removed)
        s.history.append({"round": self.rounds, "step": step, "removed": int(newly.sum()),
                          "flops": int(flops), "flops_ratio": flops / costs.original})
        s.set_removed(self.removed, recalibrate=True)
        if flops <= s.target:
            self.done = True
            trainer.recovery_start = step

    # -- hooks --------------------------------------------------------------------------------
    def before_step(self, trainer: Trainer, step: int) -> None:
        if not self.done and step % self.steps_per_round == 0:
            self._round(trainer, step)

    def after_step(self, trainer: Trainer, step: int, loss: float) -> None:
        if not self.done and step + 1 >= trainer.total:
            trainer.total += self.steps_per_round  # keep going until the budget is met

    def state(self) -> dict[str, Any]:
        import torch

        return {"removed": torch.as_tensor(self.removed), "done": self.done, "rounds": self.rounds,
                "history": list(self.s.history)}

    def load_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.removed = state["removed"].numpy().astype(bool)
        self.done, self.rounds = bool(state["done"]), int(state["rounds"])
        self.s.history[:] = list(state["history"])
        self.s.set_removed(self.removed)

    def note(self) -> str:
        flops = self.s.costs.flops(self.removed) / self.s.costs.original
        return f"round {self.rounds}, FLOPs {flops:.1%}"


def iterative_prune(model: onnx.ModelProto, data: CalibrationData, *, target_flops: float,
                    steps_per_round: int = 10, channels_per_round: int = 4, steps: int | None = None,
                    flops_reg: float = 0.0, score_samples: int | None = 256, score_batch_size: int = 64,
                    teacher: onnx.ModelProto | None = None, analysis: Analysis | None = None, round_to: int = 1,
                    min_channels: int = 1, max_ratio: float = 1.0, config: TrainConfig | None = None,
                    on_step: Callable[[int, float], None] | None = None, **options) -> TrainPruneResult:
    """Molchanov 2016: score (taylor-act), remove a few units, fine-tune a few steps, repeat to the budget.

    ``target_flops``: a fraction of the original FLOPs (<= 1) or an absolute count. ``steps``:
    total training steps (pruning rounds + recovery; default from ``config`` / epochs).
    Distillation from ``teacher`` (default: the original model). Returns the pruned model
    (``onnxprune.api.apply_plan``) and its Plan.
    """
    if steps_per_round < 1 or channels_per_round < 1:
        raise TrainingError("steps_per_round and channels_per_round must be >= 1")
    if steps is not None:
        options["steps"] = steps
    session = PruningSession(model, data, method="iterative", target_flops=target_flops, teacher=teacher,
                             config=config, options=options, analysis=analysis, round_to=round_to,
                             min_channels=min_channels, max_ratio=max_ratio, on_step=on_step,
                             description="iterative pruning")
    hooks = _Iterative(session, score_subset(data, score_samples, session.config.seed),
                       steps_per_round=steps_per_round, channels_per_round=channels_per_round, flops_reg=flops_reg,
                       score_batch_size=score_batch_size)
    trainer = session.trainer
    trainer.hooks = hooks
    trainer.total = max(trainer.total, steps_per_round)
    trainer.planned = trainer.total
    trainer.run()
    return session.finish(hooks.removed, criterion="taylor-act", options={
        "schedule": "iterative", "steps_per_round": steps_per_round, "channels_per_round": channels_per_round,
        "flops_reg": flops_reg, "rounds": hooks.rounds})
