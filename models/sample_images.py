"""ImageNet-style crops of the sample photographs that ship with scikit-image
(``skimage.data``), scikit-learn (``load_sample_images``) and matplotlib (its sample
data), for calibrating and evaluating pruned image classifiers without a data set download.

Calibration and evaluation crops come from disjoint images. The evaluation images
(``EVAL_IMAGES``) are photographs of things an ImageNet classifier has classes for (a cat,
a rocket, a flower, a clock, a person in uniform, a motorcycle), so that "agrees with the
original's top-1" measures something: on textures, text or microscopy the original's
prediction is a near-tie between arbitrary classes (median top-1 probability 0.21 on
the earlier evaluation set of that kind, 0.41 on these photographs). The calibration
images (``CALIB_IMAGES``) are the other photographs and textures; ``LEGACY_EVAL_IMAGES`` is
that earlier evaluation set, kept for comparison (``crops("legacy-eval", ...)``).
Each crop is a random resized crop (area 25-100% of the image, aspect 3/4-4/3, as
torchvision's ``RandomResizedCrop`` with a narrower scale), flipped left-right with
probability 1/2, resized bilinearly to the model's size; ``crops`` returns uint8
[N, size, size, 3] RGB (grey images are repeated over the three channels).
"""

from __future__ import annotations

import importlib.util

import numpy as np

# chelsea and cat are the same photograph: only chelsea is used; stereo_motorcycle is two
# views of one scene: only the left one, and only for evaluation
CALIB_IMAGES = ("astronaut", "coffee", "china", "camera", "coins", "moon", "brick", "gravel", "grass",
                "immunohistochemistry", "hubble_deep_field")
EVAL_IMAGES = ("chelsea", "rocket", "flower", "clock", "grace_hopper", "motorcycle")
LEGACY_EVAL_IMAGES = ("chelsea", "flower", "rocket", "clock", "retina", "colorwheel", "gravel", "grass", "cell",
                      "page", "text", "logo")
SPLITS = {"calib": CALIB_IMAGES, "eval": EVAL_IMAGES, "legacy-eval": LEGACY_EVAL_IMAGES}


def available() -> bool:
    """Whether scikit-image (the larger source) is installed."""
    return importlib.util.find_spec("skimage") is not None


def image(name: str) -> np.ndarray:
    """One sample image as uint8 [H, W, 3] RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            img = Image.open(f).convert("RGB")
    elif name == "motorcycle":
        import skimage.data

        img = skimage.data.stereo_motorcycle()[0]
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of [H, W, 3] to [size, size, 3] (pixel centres aligned, as PIL and
    torchvision's antialias-free resize do)."""
    h, w = img.shape[:2]

    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    f = img.astype(np.float32)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bottom = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """One random crop of ``img`` (area fraction in ``scale``, aspect in ``ratio``), flipped
    left-right with probability 1/2, resized to [size, size, 3]."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:  # the centre square
        cw = ch = min(h, w)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = img[top: top + ch, left: left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize(crop, size)


def crops(split: str, n: int, *, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` crops (uint8 [n, size, size, 3]) of the ``split`` images ('calib', 'eval' or
    'legacy-eval'), the images taken in turn so each contributes about equally;
    deterministic in ``seed``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    images = [image(name) for name in SPLITS[split]]
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    return np.stack([random_resized_crop(images[i % len(images)], size, rng) for i in range(n)])
