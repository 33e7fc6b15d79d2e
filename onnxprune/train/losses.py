"""Training losses: distillation from the teacher's outputs and supervision by labels.

Distillation needs no labels: for every float output of shape [batch, classes] the
KL divergence between the temperature-softened teacher and student distributions
(times T^2, Hinton et al.), for any other float output the mean squared error. With
labels, cross-entropy on the first output (integer labels) or MSE (float labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LossWeights:
    distill: float
    ce: float
    temperature: float


def resolve_weights(distill: float | None, ce: float | None, temperature: float, has_teacher: bool,
                    has_labels: bool) -> LossWeights:
    from onnxprune.train.errors import TrainingError

    d = (1.0 if has_teacher else 0.0) if distill is None else float(distill)
    c = (1.0 if has_labels else 0.0) if ce is None else float(ce)
    if d > 0 and not has_teacher:
        raise TrainingError("a distillation weight needs a teacher model")
    if c > 0 and not has_labels:
        raise TrainingError("a cross-entropy weight needs labels (--labels NAME)")
    if d == 0 and c == 0:
        raise TrainingError("nothing to train on: give a teacher (distillation) or labels (cross-entropy)")
    return LossWeights(d, c, temperature)


def distillation(student: tuple, teacher: tuple, temperature: float):  # noqa: ANN201
    import torch
    import torch.nn.functional as F

    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        if not s.is_floating_point():
            continue
        t = t.to(s.dtype)
        if s.dim() == 2 and s.shape[1] > 1:
            log_s = F.log_softmax(s / temperature, dim=-1)
            log_t = F.log_softmax(t / temperature, dim=-1)
            total = total + F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2
        else:
            total = total + F.mse_loss(s, t)
    return total if isinstance(total, torch.Tensor) else torch.as_tensor(total)


def supervised(first, labels):  # noqa: ANN001, ANN201
    import torch.nn.functional as F

    if not labels.is_floating_point():
        return F.cross_entropy(first, labels.long())
    return F.mse_loss(first, labels.to(first.dtype).reshape(first.shape))


def make_loss(weights: LossWeights) -> Callable:
    """fn(student outputs, teacher outputs or None, labels or None) -> (loss, {part: value})."""

    def fn(student: tuple, teacher: tuple | None, labels):  # noqa: ANN001, ANN202
        parts = {}
        loss = student[0].new_zeros(())
        if weights.distill > 0:
            parts["distill"] = distillation(student, teacher, weights.temperature)
            loss = loss + weights.distill * parts["distill"]
        if weights.ce > 0:
            parts["ce"] = supervised(student[0], labels)
            loss = loss + weights.ce * parts["ce"]
        return loss, parts

    return fn
