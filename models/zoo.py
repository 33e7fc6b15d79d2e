"""Model registry (``ZOO``) and ONNX export helpers."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from .cnn import build_densenet, build_resnet18, build_resnet50, build_resnext, build_vgg
from .detect import build_unet, build_yolo
from .misc import (build_conv_lstm, build_folded_bn, build_mlp, build_nhwc, build_squeeze_excite_small,
                   build_super_resolution)
from .mobile import build_mobilenetv2, build_mobilenetv3, build_shufflenetv2
from .transformers import build_bert, build_bert_decomposed_ln, build_vit

__all__ = ["ZooModel", "ZOO", "export_onnx", "export_all", "make_inputs", "output_names"]


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: ``build(width=1.0, seed=0)`` returns a deterministic eval-mode module."""

    name: str
    build: Callable[..., torch.nn.Module]
    input_shapes: dict[str, tuple[int, ...]] = field(hash=False)
    description: str


SEQUENCE_INPUTS = ("ids", "attention_mask")  # dynamic_batch also makes their axis 1 dynamic


def _img(*shape: int) -> dict[str, tuple[int, ...]]:
    return {"input": tuple(shape)}


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel("vgg", build_vgg, _img(1, 3, 32, 32),
                 "VGG-11-style: 8 conv-BN-ReLU, 4 MaxPool, flatten(512x2x2) -> FC-ReLU-Dropout-FC"),
        ZooModel("resnet18", build_resnet18, _img(1, 3, 64, 64),
                 "ResNet-18: BasicBlocks [2,2,2,2], 1x1-conv+BN downsample shortcuts, avgpool, fc"),
        ZooModel("resnet50", build_resnet50, _img(1, 3, 64, 64),
                 "ResNet-50: Bottlenecks [3,4,6,3], expansion 4"),
        ZooModel("mobilenetv2", build_mobilenetv2, _img(1, 3, 64, 64),
                 "MobileNetV2: inverted residuals, depthwise 3x3, ReLU6, linear bottlenecks"),
        ZooModel("mobilenetv3", build_mobilenetv3, _img(1, 3, 64, 64),
                 "MobileNetV3-Small: SE (conv 1x1, Hardsigmoid, Mul), Hardswish, depthwise 3x3/5x5"),
        ZooModel("densenet", build_densenet, _img(1, 3, 64, 64),
                 "DenseNet-121: dense blocks 6/12/24/16 (BN-ReLU-1x1-BN-ReLU-3x3, cat chains), transitions"),
        ZooModel("resnext", build_resnext, _img(1, 3, 64, 64),
                 "ResNeXt-50 32x4d: bottlenecks with grouped 3x3 conv (groups=32)"),
        ZooModel("shufflenetv2", build_shufflenetv2, _img(1, 3, 64, 64),
                 "ShuffleNetV2 x1.0: chunk(2) split, branches, cat, channel shuffle (view/transpose/view)"),
        ZooModel("unet", build_unet, _img(1, 3, 64, 64),
                 "UNet (4 levels): ConvTranspose2d + bilinear/nearest Upsample decoders, skip cats, 1x1 out"),
        ZooModel("yolo", build_yolo, _img(1, 3, 64, 64),
                 "YOLOv8n-style: Conv-BN-SiLU, C2f, SPPF, PAN neck (Upsample+cat), 3-scale Detect (3 outputs)"),
        ZooModel("nhwc", build_nhwc, _img(1, 32, 32, 3),
                 "NHWC input; Transpose around each conv, per-channel add/mul in NHWC, mean(H,W) -> Linear"),
        ZooModel("folded_bn", build_folded_bn, _img(1, 3, 32, 32),
                 "Conv(bias)-ReLU residual net with BN folded into the convs, GAP, Linear"),
        ZooModel("conv_lstm", build_conv_lstm, _img(1, 3, 32, 32),
                 "Conv-BN-ReLU-Pool x2 -> sequence [B,8,C*8] -> LSTM -> Linear (LSTM blocks pruning)"),
        ZooModel("mlp", build_mlp, {"input": (1, 64)}, "MLP 64-128-64-10 (Linear-ReLU-Linear-ReLU-Linear)"),
        ZooModel("bert", build_bert, {"ids": (1, 16), "attention_mask": (1, 16)},
                 "BERT-style encoder: embeddings, 2 post-LN layers (4 heads, GELU FFN), tanh pooler"),
        ZooModel("vit", build_vit, _img(1, 3, 32, 32),
                 "ViT: 4x4 patch conv, class token, 2 pre-LN layers (4 heads), linear head"),
        ZooModel("bert_decomposed_ln", build_bert_decomposed_ln, {"ids": (1, 16), "attention_mask": (1, 16)},
                 "The BERT-style encoder with LayerNorm in primitive ops (ReduceMean/Sub/Pow/Sqrt/Div), as Paddle "
                 "writes it"),
        ZooModel("squeeze_excite_small", build_squeeze_excite_small, _img(1, 3, 32, 32),
                 "Small SE-ResNet with Linear-layer SE (GAP, Gemm, Sigmoid, Reshape, Mul)"),
        ZooModel("super_resolution", build_super_resolution, _img(1, 3, 16, 16),
                 "EDSR-style x4 super-resolution: residual blocks, global skip, conv + PixelShuffle "
                 "(DepthToSpace) upsampler x2, RGB tail"),
    )
}


def make_inputs(name: str, input_shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0,
                batch: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic float32 standard-normal inputs for a zoo model (optionally overriding the batch)."""
    shapes = dict(input_shapes or ZOO[name].input_shapes)
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in shapes.items():
        s = (batch, *s[1:]) if batch is not None else tuple(s)
        if k == "ids":  # token ids of the transformer models
            out[k] = rng.integers(0, 1000, size=s).astype(np.int64)
        elif k == "attention_mask":
            mask = np.ones(s, dtype=np.int64)
            mask[..., s[-1] * 3 // 4:] = 0  # padded tail
            out[k] = mask
        else:
            out[k] = rng.standard_normal(s).astype(np.float32)
    return out


def _flatten(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"unsupported model output type {type(out)!r}")


def output_names(n: int) -> list[str]:
    """``["output"]`` for one output, else ``["output0", "output1", ...]``."""
    return ["output"] if n == 1 else [f"output{i}" for i in range(n)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings, log records and progress prints."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "torch._dynamo",
                                              "torch._guards", "torch._export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def export_onnx(name: str, path: str | os.PathLike, *, width: float = 1.0,
                input_shapes: Mapping[str, tuple[int, ...]] | None = None, opset: int = 17,
                dynamic_batch: bool = False, dynamo: bool = False, seed: int = 0,
                keep_bn: bool = True) -> pathlib.Path:
    """Build zoo model ``name`` and export it to ``path`` as a single-file ONNX model.

    Inputs are named as in ``input_shapes`` (default: the registry's), outputs
    ``output`` / ``output0..N``. ``dynamic_batch`` marks axis 0 of every input
    and output as dynamic (``dynamic_axes`` for the legacy exporter,
    ``dynamic_shapes`` for dynamo).

    ``keep_bn`` (legacy exporter only): the legacy exporter in its default
    ``TrainingMode.EVAL`` fuses every Conv->BatchNorm pair into the Conv. With
    ``keep_bn=True`` (default) the export uses ``TrainingMode.PRESERVE`` on the
    eval-mode module, so ``BatchNormalization`` nodes stay in the graph (Dropout
    is still dropped). ``keep_bn=False`` gives the plain fused export. The dynamo
    exporter's optimiser always fuses Conv+BN, whatever ``keep_bn`` says.
    """
    entry = ZOO[name]
    shapes = dict(input_shapes or entry.input_shapes)
    model = entry.build(width=width, seed=seed)
    feeds = make_inputs(name, shapes, seed=seed)
    args = tuple(torch.from_numpy(feeds[k]) for k in shapes)
    with torch.no_grad():
        n_out = len(_flatten(model(*args)))
    in_names, out_names = list(shapes), output_names(n_out)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        if dynamo:
            dyn = None
            if dynamic_batch:
                # Trace with batch 2: a batch-1 example makes torch.export specialise the dim to 1.
                batch = torch.export.Dim("batch", min=1, max=1024)
                dyn = tuple({0: batch} for _ in args)
                args = tuple(torch.cat([a, a]) for a in args)
            prog = torch.onnx.export(model, args, dynamo=True, opset_version=opset, input_names=in_names,
                                     output_names=out_names, dynamic_shapes=dyn, external_data=False)
            prog.save(str(path), external_data=False)
        else:
            dyn_axes = {k: {0: "batch", **({1: "seq"} if k in SEQUENCE_INPUTS else {})}
                        for k in in_names + out_names} if dynamic_batch else None
            mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
                              input_names=in_names, output_names=out_names, dynamic_axes=dyn_axes, training=mode)
    return path


def export_all(directory: str | os.PathLike, **kwargs) -> dict[str, pathlib.Path]:
    """Export every zoo model to ``directory/<name>.onnx``; ``kwargs`` go to :func:`export_onnx`."""
    directory = pathlib.Path(directory)
    return {name: export_onnx(name, directory / f"{name}.onnx", **kwargs) for name in ZOO}
