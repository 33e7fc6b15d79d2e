"""More calibration rows from the same images (``recover(..., augment=True)``): horizontal
flips and shifted crops of NCHW image inputs.

Recovery fits the pruned model to the original's outputs on whatever inputs it is given,
so a flipped or shifted photo is as good a calibration sample as the photo itself (no
label has to stay right). Each sample gives four: itself, its mirror image, the image
shifted by ``s`` pixels right and down (a crop of the edge-padded image), and the mirror
image shifted left and up; ``s`` is 1/16 of the smaller side (at least 1 pixel).
Only the samples fitted on are augmented, never the held-out ones.
"""

from __future__ import annotations

import numpy as np

from onnxprune.io.calib_data import CalibrationData
from onnxprune.recovery.errors import RecoveryError

VIEWS = 4


def check_images(calib: CalibrationData) -> None:
    """Refuse inputs that are not batches of NCHW floating images, naming the input."""
    for name, arr in calib.inputs.items():
        arr = np.asarray(arr)
        if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
            raise RecoveryError(f"augment: input '{name}' is not a batch of NCHW images "
                                f"(shape {list(arr.shape)}, {arr.dtype}); flips and crops need NCHW float inputs")
        if arr.shape[1] not in (1, 2, 3, 4) and arr.shape[3] in (1, 3, 4):
            raise RecoveryError(f"augment: input '{name}' of shape {list(arr.shape)} looks NHWC; "
                                "flips and crops need NCHW images")


def _shift(x: np.ndarray, s: int) -> np.ndarray:
    """The image moved by ``s`` pixels along both spatial axes (right / down for s > 0),
    the uncovered border filled by edge replication."""
    h, w = x.shape[2], x.shape[3]
    padded = np.pad(x, ((0, 0), (0, 0), (abs(s), abs(s)), (abs(s), abs(s))), mode="edge")
    start = abs(s) - s
    return padded[:, :, start:start + h, start:start + w]


def augment_images(calib: CalibrationData) -> CalibrationData:
    """The set followed by its flipped, shifted, and flipped-and-shifted copies (4x the samples)."""
    check_images(calib)
    views: dict[str, np.ndarray] = {}
    for name, arr in calib.inputs.items():
        x = np.asarray(arr)
        s = max(1, min(x.shape[2], x.shape[3]) // 16)
        flipped = x[:, :, :, ::-1]
        views[name] = np.ascontiguousarray(np.concatenate([x, flipped, _shift(x, s), _shift(flipped, -s)]))
    labels = None if calib.labels is None else np.concatenate([calib.labels] * VIEWS)
    return CalibrationData(views, labels)
