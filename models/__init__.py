"""onnxprune model zoo: small, deterministic torch models and ONNX export helpers.

Usage::

    from models import ZOO, export_onnx
    path = export_onnx("resnet18", "/tmp/r18.onnx", width=0.5)
"""

from .zoo import ZOO, ZooModel, export_all, export_onnx, make_inputs, output_names

__all__ = ["ZOO", "ZooModel", "export_all", "export_onnx", "make_inputs", "output_names"]
