"""Training-time pruning: fine-tuning an ONNX model in torch (distillation and/or labels,
checkpoints, exact resume) and pruning methods that train while they prune:

- ``finetune``: train the weights of any ONNX model, write them back into the same graph;
- ``oneshot_prune``: score once, prune to the FLOPs budget, fine-tune the pruned model;
- ``iterative_prune``: Molchanov et al. 2016 (score with taylor-act, remove a few, fine-tune, repeat);
- ``spp_prune``: Wang et al. 2017, structured probabilistic pruning;
- ``learned_threshold_prune``: Manessi et al. 2017, learned per-group thresholds on channel saliency.

Every method returns a ``TrainPruneResult`` whose model was rewritten by
``onnxprune.api.apply_plan`` from a ``Plan`` (so ``onnxprune.verify.compare`` works on it).
Needs torch.
"""

from onnxprune.train.config import TrainConfig
from onnxprune.train.errors import CheckpointError, TeacherMismatchError, TrainingError
from onnxprune.train.finetune import FinetuneResult, finetune
from onnxprune.train.iterative import iterative_prune
from onnxprune.train.learned_threshold import learned_threshold_prune
from onnxprune.train.oneshot import oneshot_prune
from onnxprune.train.session import TrainPruneResult
from onnxprune.train.spp import spp_increment, spp_prune

METHODS = {
    "oneshot": oneshot_prune,
    "iterative": iterative_prune,
    "spp": spp_prune,
    "learned-threshold": learned_threshold_prune,
}


def train_prune(method: str, model, data, *, target_flops: float, **options) -> TrainPruneResult:  # noqa: ANN001
    """Run one of ``METHODS`` by name (what the CLI's --schedule / --method options call)."""
    fn = METHODS.get(method)
    if fn is None:
        raise TrainingError(f"unknown training method '{method}' (choose from {', '.join(METHODS)})")
    return fn(model, data, target_flops=target_flops, **options)


__all__ = ["METHODS", "CheckpointError", "FinetuneResult", "TeacherMismatchError", "TrainConfig",
           "TrainPruneResult", "TrainingError", "finetune", "iterative_prune", "learned_threshold_prune",
           "oneshot_prune", "spp_increment", "spp_prune", "train_prune"]
