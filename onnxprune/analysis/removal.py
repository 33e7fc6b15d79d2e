"""What a plan removes, resolved against the analysis: which channels stay.

``Removal`` is what the rewrite passes apply (``onnxprune.rewrite``), and what the masked
reference (``rewrite.masking``) and recovery (``recovery.channels``) read: the analysis of
the model and the units a plan removes, with the kept mask of any channel space. It depends
on the analysis alone, so every later stage can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.result import Analysis


@dataclass
class Removal:
    """The analysis of a model and the units a plan removes (``Plan.removed_units``)."""

    analysis: Analysis
    removed_units: np.ndarray
    _removed_root: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mask = np.zeros(len(self.analysis.roots), dtype=bool)
        mask[self.removed_units] = True
        self._removed_root = mask

    def kept(self, elems: np.ndarray) -> np.ndarray:
        """Boolean mask over ``elems``: True where the channel stays."""
        return ~self._removed_root[self.analysis.roots[elems]]

    def kept_count(self, elems: np.ndarray) -> int:
        return int(self.kept(elems).sum())
