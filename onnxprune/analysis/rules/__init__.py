"""Per-op channel rules. Importing this package registers all of them."""

from onnxprune.analysis.rules import elementwise, fused, layout, norm, spatial, weighted  # noqa: F401
from onnxprune.analysis.rules import quant  # noqa: F401,E402 - QDQ, MatMulNBits, QOperator forms
