"""Conversions between ONNX protobuf values and torch tensors (dtypes, tensors, attributes)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

# ONNX element type -> torch dtype (types torch lacks are left out and refused when met).
_ONNX_TO_TORCH: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
}
for _onnx_name, _torch_name in (("UINT16", "uint16"), ("UINT32", "uint32"), ("UINT64", "uint64"),
                                ("FLOAT8E4M3FN", "float8_e4m3fn"), ("FLOAT8E5M2", "float8_e5m2"),
                                ("FLOAT8E4M3FNUZ", "float8_e4m3fnuz"), ("FLOAT8E5M2FNUZ", "float8_e5m2fnuz")):
    if hasattr(TensorProto, _onnx_name) and hasattr(torch, _torch_name):
        _ONNX_TO_TORCH[getattr(TensorProto, _onnx_name)] = getattr(torch, _torch_name)

_TORCH_TO_ONNX = {v: k for k, v in _ONNX_TO_TORCH.items()}

# numpy cannot hold these natively (ml_dtypes does); they travel as raw bits.
_BIT_VIEWS = {torch.bfloat16: (np.int16, torch.int16)}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _BIT_VIEWS[getattr(torch, _name)] = (np.uint8, torch.uint8)


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type (``TensorProto.FLOAT`` -> ``torch.float32``)."""
    try:
        return _ONNX_TO_TORCH[onnx_type]
    except KeyError:
        name = TensorProto.DataType.Name(onnx_type) if onnx_type in TensorProto.DataType.values() else onnx_type
        raise NotImplementedError(f"ONNX element type {name} has no torch equivalent here") from None


def onnx_dtype(dtype: torch.dtype) -> int:
    return _TORCH_TO_ONNX[dtype]


def to_torch(value: np.ndarray, onnx_type: int | None = None) -> torch.Tensor:
    """A torch tensor (own memory) holding a numpy array decoded from ONNX."""
    target = torch_dtype(onnx_type) if onnx_type is not None else None
    if target in _BIT_VIEWS:
        bits = _BIT_VIEWS[target][0]
        raw = np.array(np.ascontiguousarray(value).view(bits), copy=True)
        return torch.from_numpy(raw).view(target)
    if value.dtype == np.object_:
        raise NotImplementedError("string tensors cannot be executed with torch")
    return torch.from_numpy(np.array(value, copy=True))


def to_numpy(tensor: torch.Tensor, onnx_type: int) -> np.ndarray:
    """A numpy array of ONNX element type ``onnx_type`` holding a torch tensor's values."""
    t = tensor.detach().cpu()
    np_dtype = helper.tensor_dtype_to_np_dtype(onnx_type)
    target = torch_dtype(onnx_type)
    if target in _BIT_VIEWS:
        tbits = _BIT_VIEWS[target][1]
        return t.to(target).contiguous().view(tbits).numpy().view(np_dtype)
    return t.to(target).numpy().astype(np_dtype, copy=False)


def tensor_from_proto(proto: onnx.TensorProto, base_dir: str = "") -> torch.Tensor:
    return to_torch(numpy_helper.to_array(proto, base_dir), proto.data_type)


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as plain Python values (strings decoded, tensors as torch tensors)."""
    out: dict[str, object] = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise NotImplementedError(f"node {node.name} ({node.op_type}): attribute references are not supported")
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8") for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = tensor_from_proto(value)
        out[a.name] = value
    return out


# -- float16 / bfloat16 models computed in float32 -------------------------------------------
LOW_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
LOW_TORCH_FLOATS = (torch.float16, torch.bfloat16)
_DTYPE_ATTRS = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
                "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Bernoulli": "dtype"}


def float32_node(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node`` producing float32 where it produces float16 / bfloat16 (a Cast to them, a
    ConstantOfShape of such a value, a dtype attribute); ``node`` itself when it does not.
    With float32 weights and inputs this runs a float16 graph in float32."""
    changed = None
    for i, a in enumerate(node.attribute):
        low_type = (a.name == _DTYPE_ATTRS.get(node.op_type) and a.type == onnx.AttributeProto.INT
                    and a.i in LOW_FLOATS)
        low_value = (node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type in LOW_FLOATS)
        if not (low_type or low_value):
            continue
        changed = changed or _copy(node)
        target = changed.attribute[i]
        if low_type:
            target.i = TensorProto.FLOAT
        else:
            value = tensor_from_proto(a.t).float().numpy()
            target.t.CopyFrom(numpy_helper.from_array(value, a.t.name))
    return changed or node


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
