"""Calibration data: arrays named after the model's inputs, optional labels.

Sources: a .npz file, a folder of .npy files (one per input name), an image folder with
the preprocessing given (size, mean, std, layout), or any iterable of input dicts (API).
Everything is validated against the model's inputs: a name, rank, static size or dtype
that does not match is refused with a message naming the input; an empty set is
refused; NaN or Inf values are reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import DataError
from onnxprune.io.fileutil import read_arrays
from onnxprune.graph import GraphIndex

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class CalibrationError(DataError):
    """Calibration data that does not fit the model."""


@dataclass(frozen=True)
class CalibrationData:
    """Arrays stacked along the batch axis, one per model input, and optional labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int | None) -> CalibrationData:
        if n is None or n >= len(self):
            return self
        return CalibrationData({k: v[:n] for k, v in self.inputs.items()},
                               None if self.labels is None else self.labels[:n])

    def shard(self, rank: int, world: int, batch_size: int) -> CalibrationData:
        """Rank r's part of every global batch of world * batch_size samples."""
        n = len(self)
        idx = np.concatenate([np.arange(n)[start + rank * batch_size: start + (rank + 1) * batch_size]
                              for start in range(0, n, world * batch_size)] or [np.zeros(0, int)])
        return CalibrationData({k: v[idx] for k, v in self.inputs.items()},
                               None if self.labels is None else self.labels[idx])

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield ({k: v[start:stop] for k, v in self.inputs.items()},
                   None if self.labels is None else self.labels[start:stop])


def load_calibration(source: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]], model: onnx.ModelProto,
                     *, labels: str | np.ndarray | None = None, samples: int | None = None,
                     image_size: Sequence[int] | None = None, mean: Sequence[float] = (0.0,),
                     std: Sequence[float] = (1.0,), layout: str = "NCHW") -> CalibrationData:
    """Load and validate calibration data for ``model``.

    ``labels`` names an array in the .npz (or a labels.npy in a folder), or gives the array.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CalibrationError(f"{path}: calibration data not found")
        if path.is_file() and path.suffix.lower() == ".npz":
            arrays = read_arrays(path, error=CalibrationError)
        elif path.is_dir() and any(p.suffix == ".npy" for p in path.iterdir()):
            arrays = {}
            for p in sorted(path.glob("*.npy")):
                arrays.update(read_arrays(p, error=CalibrationError))
        elif path.is_dir():
            arrays = _load_images(path, model, image_size, mean, std, layout)
        else:
            raise CalibrationError(f"{path}: expected a .npz file, a folder of .npy files or an image folder")
        origin = str(path)
    else:
        items = list(source)
        if not items:
            raise CalibrationError("calibration set is empty")
        arrays = {k: np.stack([np.asarray(it[k]) for it in items]) for k in items[0]}
        origin = "calibration iterable"
    label_arr = None
    if isinstance(labels, str):
        if labels not in arrays:
            raise CalibrationError(f"{origin}: no labels array '{labels}' (has: {', '.join(arrays)})")
        label_arr = arrays.pop(labels)
    elif labels is not None:
        label_arr = np.asarray(labels)
    if label_arr is not None and (label_arr.ndim == 0 or not np.issubdtype(label_arr.dtype, np.number)):
        raise CalibrationError(f"{origin}: labels must be an array of numbers, one per sample "
                               f"(got {label_arr.dtype.name}, shape {list(label_arr.shape)})")
    data = CalibrationData(_validate(arrays, model, origin), label_arr)
    if label_arr is not None and len(label_arr) != len(data):
        raise CalibrationError(f"{origin}: {len(label_arr)} labels for {len(data)} samples")
    return data.take(samples)


def _validate(arrays: Mapping[str, np.ndarray], model: onnx.ModelProto, origin: str) -> dict[str, np.ndarray]:
    index = GraphIndex(model)
    names = [vi.name for vi in model.graph.input if vi.name not in index.initializers]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise CalibrationError(f"{origin}: no data for model input(s) {', '.join(missing)} "
                               f"(arrays: {', '.join(arrays) or 'none'})")
    out = {}
    for name in names:
        arr = np.asarray(arrays[name])
        shape = index.shape(name) or ()
        if arr.ndim != len(shape):
            raise CalibrationError(f"{origin}: input '{name}' expects rank {len(shape)} {list(shape)}, "
                                   f"data has shape {list(arr.shape)}")
        for axis, (want, got) in enumerate(zip(shape, arr.shape)):
            if axis > 0 and isinstance(want, int) and want != got:
                raise CalibrationError(f"{origin}: input '{name}' axis {axis} must be {want}, data has {got}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(index.elem_type(name) or onnx.TensorProto.FLOAT)
        if arr.dtype != dtype:
            if np.issubdtype(dtype, np.floating) and np.issubdtype(arr.dtype, np.number):
                arr = arr.astype(dtype)
            else:
                raise CalibrationError(f"{origin}: input '{name}' expects {np.dtype(dtype).name}, data is "
                                       f"{arr.dtype.name}")
        if len(arr) == 0:
            raise CalibrationError(f"{origin}: calibration set is empty")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
            raise CalibrationError(f"{origin}: input '{name}' has NaN or Inf values in {bad} sample(s)")
        out[name] = arr
    sizes = {len(a) for a in out.values()}
    if len(sizes) > 1:
        raise CalibrationError(f"{origin}: inputs have different sample counts {sorted(sizes)}")
    return out


def _load_images(folder: Path, model: onnx.ModelProto, size: Sequence[int] | None, mean: Sequence[float],
                 std: Sequence[float], layout: str) -> dict[str, np.ndarray]:
    try:
        from PIL import Image
    except ImportError as exc:
        raise CalibrationError("reading an image folder needs Pillow: pip install pillow") from exc
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no .npy files")
    index = GraphIndex(model)
    names = [vi.name for vi in model.graph.input if vi.name not in index.initializers]
    if len(names) != 1:
        raise CalibrationError(f"{folder}: an image folder feeds one input; the model has {len(names)}")
    shape = index.shape(names[0]) or ()
    channels_last = layout.upper() == "NHWC"
    if size is None:
        hw = shape[1:3] if channels_last else shape[2:4]
        if not all(isinstance(d, int) for d in hw):
            raise CalibrationError("the model's input size is dynamic: give the image size (--image-size H,W)")
        size = hw
    c = shape[3] if channels_last else shape[1]
    images = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if c == 1 else "RGB").resize((int(size[1]), int(size[0])))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: unidentified, truncated or corrupt images
            raise CalibrationError(f"{f}: not a readable image ({' '.join(str(exc).split())[:160]})") from exc
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = arr[..., None] if arr.ndim == 2 else arr
        arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        images.append(arr if channels_last else arr.transpose(2, 0, 1))
    return {names[0]: np.stack(images)}
