"""The training loop shared by ``finetune`` and the pruning methods.

One step: the batch of ``BatchSchedule`` -> the method's ``before_step`` (masks) -> teacher
and student forward -> loss (+ the method's ``extra_loss``) -> backward -> optimiser step
-> ``after_step``. The graph is executed as exported, i.e. in inference mode: BatchNorm
uses its running statistics (which are not updated) while its scale and shift train
like any other weight. Checkpoints hold everything a resumed run needs to continue exactly
as an uninterrupted one (same seed, same device, CPU determinism).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from onnxprune.io.calib_data import CalibrationData, CalibrationError
from onnxprune.train.checkpoint import check_meta, load_checkpoint, restore_rng, save_checkpoint
from onnxprune.train.config import TrainConfig
from onnxprune.train.errors import TrainingError
from onnxprune.train.losses import make_loss, resolve_weights
from onnxprune.train.progress import progress_bar
from onnxprune.train.schedule import BatchSchedule, lr_factor
from onnxprune.train.teacher import Teacher

log = logging.getLogger(__name__)


class TrainHooks:
    """What a method adds around each step; every method is optional."""

    def before_step(self, trainer: Trainer, step: int) -> None: ...

    def extra_loss(self, trainer: Trainer, step: int):  # noqa: ANN201 - a scalar tensor or None
        return None

    def after_step(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None: ...

    def note(self) -> str:
        return ""


def _signature(module) -> str:  # noqa: ANN001
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class Trainer:
    """Trains the float weights of ``OnnxModule(model)`` on ``data``."""

    def __init__(self, model: onnx.ModelProto, data: CalibrationData, config: TrainConfig, *,
                 teacher: onnx.ModelProto | None = None, method: str = "finetune",
                 trainable: Callable[[str], bool] | None = None, description: str = "fine-tuning",
                 on_step: Callable[[int, float], None] | None = None) -> None:
        from onnxprune._optional import require_torch

        torch = require_torch(description)
        from onnxprune.torchexec import OnnxModule

        if len(data) == 0:
            raise CalibrationError("training data is empty")
        self.config, self.data, self.method, self.description = config, data, method, description
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError(f"device '{config.device}' requested but CUDA is not available")
        torch.manual_seed(config.seed)
        self.module = OnnxModule(model, trainable=trainable).to(self.device)
        self.teacher = Teacher(teacher, model, self.device) if teacher is not None else None
        self.weights = resolve_weights(config.distill_weight, config.ce_weight, config.temperature,
                                       self.teacher is not None, data.labels is not None)
        self.loss_fn = make_loss(self.weights)
        if self.teacher is not None:
            self.teacher.precompute(data.inputs, config.batch_size)
        self.batches = BatchSchedule(len(data), config.batch_size, config.seed)
        self.planned = config.total_steps(len(data))
        self.total = self.planned
        self.step = 0
        self.recovery_start = 0  # the learning-rate schedule runs from here to ``total``
        self.losses: list[float] = []
        self.hooks: TrainHooks = TrainHooks()
        self.on_step = on_step
        self._extra_groups: list[dict] = []
        self._optimizer = None
        self._labels = None if data.labels is None else torch.as_tensor(np.asarray(data.labels))

    # -- setup ------------------------------------------------------------------------------
    def add_parameters(self, params: Sequence, lr: float, weight_decay: float = 0.0) -> None:  # noqa: ANN001
        """Extra trainable tensors (a method's thresholds), optimised with their own learning rate."""
        if self._optimizer is not None:
            raise TrainingError("add parameters before training starts")
        self._extra_groups.append({"params": list(params), "lr": lr, "weight_decay": weight_decay})

    def optimizer(self):  # noqa: ANN201
        import torch

        if self._optimizer is None:
            cfg = self.config
            weights = [p for p in self.module.parameters() if p.requires_grad]
            if not weights:
                raise TrainingError("the model has no trainable float weights")
            groups = [{"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay}, *self._extra_groups]
            for g in groups:
                g["base_lr"] = g["lr"]
            if cfg.optimizer == "sgd":
                self._optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
            elif cfg.optimizer == "adam":
                self._optimizer = torch.optim.Adam(groups, lr=cfg.lr)
            else:
                self._optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        return self._optimizer

    def meta(self) -> dict[str, Any]:
        cfg = self.config
        return {"method": self.method, "module": _signature(self.module), "samples": len(self.data),
                "batch_size": cfg.batch_size, "seed": cfg.seed, "optimizer": cfg.optimizer}

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, path) -> None:  # noqa: ANN001
        extra = {"hooks": self.hooks.state(), "losses": list(self.losses), "recovery_start": self.recovery_start,
                 "planned": self.planned}
        save_checkpoint(path, module_state=self.module.state_dict(), optimizer_state=self.optimizer().state_dict(),
                        step=self.step, total=self.total, meta=self.meta(), extra=extra)

    def resume(self, path) -> None:  # noqa: ANN001
        payload = load_checkpoint(path)
        check_meta(path, payload["meta"], self.meta())
        self.module.load_state_dict(payload["module"])
        self.optimizer().load_state_dict(payload["optimizer"])
        extra = payload["extra"]
        self.step = int(payload["step"])
        self.losses = [float(v) for v in extra.get("losses", [])]
        self.recovery_start = int(extra.get("recovery_start", 0))
        # a method may have extended its run; a new planned length replaces the old one
        self.total = int(payload["total"]) if extra.get("planned") == self.planned else max(self.planned, self.step)
        self.hooks.load_state(extra.get("hooks", {}))
        restore_rng(payload["rng"])
        log.info("resumed %s from %s at step %d of %d", self.method, path, self.step, self.total)

    # -- the loop ----------------------------------------------------------------------------------
    def _batch(self, step: int):  # noqa: ANN202
        import torch

        idx = self.batches.indices(step)
        feeds = {k: torch.as_tensor(v[idx]).to(self.device) for k, v in self.data.inputs.items()}
        labels = None if self._labels is None else self._labels[torch.as_tensor(idx)].to(self.device)
        return idx, feeds, labels

    def train_step(self, step: int) -> float:
        import torch

        opt = self.optimizer()
        cfg = self.config
        factor = lr_factor(cfg.schedule, step, self.recovery_start, self.total)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        idx, feeds, labels = self._batch(step)
        self.hooks.before_step(self, step)
        out = self.module(**feeds)
        out = out if isinstance(out, tuple) else (out,)
        teacher_out = None
        if self.teacher is not None and self.weights.distill > 0:
            teacher_out = self.teacher.outputs(idx, feeds)
            self.teacher.check_outputs(teacher_out, out)
        loss, _ = self.loss_fn(out, teacher_out, labels)
        extra = self.hooks.extra_loss(self, step)
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {float(loss)} at step {step}; lower the learning rate (--lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        self.hooks.after_step(self, step, value)
        return value

    def run(self) -> None:
        cfg = self.config
        self.optimizer()
        if cfg.resume is not None:
            self.resume(cfg.resume)
        elif self.method == "finetune" and self.step == 0:
            self.recalibrate(default=False)
        with progress_bar(cfg.progress, self.description, self.total) as bar:
            while self.step < self.total:
                step = self.step
                value = self.train_step(step)
                self.losses.append(value)
                self.step = step + 1
                bar.update(self.step, self.total, value, self.hooks.note())
                if cfg.checkpoint is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(cfg.checkpoint)
                if self.on_step is not None:
                    self.on_step(step, value)
        if cfg.checkpoint is not None:
            self.save(cfg.checkpoint)

    def recalibrate(self, default: bool) -> int:
        """Re-estimate BatchNorm statistics when ``config.recalibrate_bn`` (None: ``default``) says so."""
        from onnxprune.train.batchnorm import recalibrate_batchnorm

        wanted = self.config.recalibrate_bn if self.config.recalibrate_bn is not None else default
        if not wanted:
            return 0
        return recalibrate_batchnorm(self.module, self.data.inputs, samples=self.config.bn_samples,
                                     seed=self.config.seed, device=self.device)
