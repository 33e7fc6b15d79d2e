"""Optional dependencies: torch is imported only by the features that need it.

Data-free work (analyze, a data-free prune, verify, l2 scores) never imports torch;
calibration scoring, Fisher-weighted recovery and training call ``require_torch`` so a
set-up without it fails with one line naming the extra to install.
"""

from __future__ import annotations

from types import ModuleType

from onnxprune.errors import RuntimeUnavailableError

TORCH_EXTRA = "pip install -c constraints.txt 'onnxprune[torch]'"


def require_torch(feature: str) -> ModuleType:
    """The ``torch`` module, or RuntimeUnavailableError saying that ``feature`` needs it."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeUnavailableError(f"{feature} needs torch: {TORCH_EXTRA}") from exc
    return torch
