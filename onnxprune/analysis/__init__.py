"""Channel-dependency analysis: which channels must be removed together, and which cannot be."""

from onnxprune.analysis.build import analyze
from onnxprune.analysis.result import Analysis, BlockedRegion, Group

__all__ = ["Analysis", "BlockedRegion", "Group", "analyze"]
