"""Give freed memory back to the system between the steps of a long run.

After a step that allocated gigabytes (a torch pass over a decoder LM, an onnxruntime
session over its weights) the Python objects are gone but the C allocator may keep the
pages: the process's resident size stays at the step's peak, and the next step's peak
comes on top of it. ``release`` collects garbage (reference cycles keep torch modules and
their weights alive) and asks glibc to return free heap pages (``malloc_trim``); elsewhere
it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release() -> None:
    """Collect garbage and return the allocator's free pages to the system (where it can)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
