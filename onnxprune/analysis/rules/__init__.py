"""Per-op channel rules. Importing this package registers all of them."""

from onnxprune.analysis.rules import elementwise, layout, norm, spatial, weighted  # noqa: F401
