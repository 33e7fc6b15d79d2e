"""Files: atomic writes for every file onnxprune produces (plans, reports, JSON), and
arrays read from .npz / .npy files without ever unpickling."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from onnxprune.errors import DataError, OnnxPruneError, OutputPathError


def read_arrays(path: str | os.PathLike[str], *, error: type[OnnxPruneError] = DataError) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (or the one array of an .npy file, under the file's stem),
    read without unpickling. Any failure (not found, not an npz, object arrays, a truncated
    or corrupt archive) raises ``error`` naming the file, on one line."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {'not a file' if p.exists() else 'file not found'}")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise error(f"{p}: cannot read it ({exc.strerror or exc})") from exc
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise error(f"{p}: not an .npz or .npy file (np.savez / np.save write those)")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {p.stem: loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except Exception as exc:  # numpy, zipfile and zlib raise many types; all mean "unreadable"
        text = " ".join(str(exc).split())
        if "pickle" in text or "Object arrays" in text:
            raise error(f"{p}: holds Python objects (object arrays), not plain arrays; onnxprune never unpickles "
                        "data files") from exc
        reason = f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
        raise error(f"{p}: not a readable .npz/.npy file ({reason})") from exc


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write text to a temporary file beside ``path``, then rename it into place."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to a temporary file beside ``path``, then rename it into place.

    Raises OutputPathError naming the path when it cannot be written (missing or
    read-only directory, a directory in its place, a full disk)."""
    out = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", dir=out.parent if str(out.parent) else ".")
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write to directory {out.parent} ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputPathError(f"{out}: cannot write it ({exc.strerror or exc})") from exc
        raise
    return out
