"""Training checkpoints: module state, optimiser state, step, RNG states and the method's
own state (masks, probabilities, thresholds), in one ``torch.save`` file written atomically.

Checkpoints are loaded with ``weights_only=True`` (no arbitrary pickles): every value is a
tensor, a number, a string or a container of those.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.train.errors import CheckpointError

FORMAT = "onnxprune-train-checkpoint"
VERSION = 1


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python's random."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python numbers and tensors, recursively (weights_only-loadable)."""
    import torch

    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: str | os.PathLike[str], *, module_state: dict, optimizer_state: dict, step: int,
                    total: int, meta: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically (a temporary file renamed over ``path``)."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "step": int(step), "total": int(total), "meta": plain(meta),
               "module": {k: v.detach().cpu() for k, v in module_state.items()},
               "optimizer": optimizer_state, "rng": capture_rng(), "extra": plain(extra or {})}
    tmp = p.with_name(p.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, p)
    return p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{p}: not a readable onnxprune checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an onnxprune training checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{p}: unsupported checkpoint version {payload.get('version')!r}")
    return payload


def check_meta(path: str | os.PathLike[str], saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a checkpoint made for another model, method or data order."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path}: checkpoint does not match this run ({'; '.join(diffs)})")
