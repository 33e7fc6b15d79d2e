"""The global numbering of the prunable units lives in ``onnxprune.units`` (shared by scoring's
gates and training); re-exported here for the training modules."""

from __future__ import annotations

from onnxprune.units import UnitIndex

__all__ = ["UnitIndex"]
