"""Shape probing: resolve what static shape inference leaves unknown by running the model.

Exporters often leave intermediate dimensions unknown (a Reshape to ``[b, s, -1, 64]``
gives ``unk__18`` heads). The model is run twice in onnxruntime on random inputs with
different sizes for the dynamic input axes; a dimension equal in both runs is static,
one that varies is dynamic and is named after its two values (``d3_2``), so dimensions
that vary together (batch, sequence) share a name across the graph. Only unknown or
symbolic dimensions are replaced; static shapes from inference are kept.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnxprune.graph import GraphIndex

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 512 * 2**20  # skip models whose weights exceed this (probing runs them twice)
PROBES = ({"batch": 3, "spatial": 96, "seq": 11}, {"batch": 2, "spatial": 160, "seq": 13})


def probe_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor name -> probed shape (ints for static dims, 'dA_B' for dynamic ones); {} if not possible."""
    from onnxprune.modelio import weight_bytes

    if weight_bytes(model) > MAX_PROBE_BYTES or not _has_unknown(model):
        return {}
    try:
        runs = [_run(model, sizes, seed=i) for i, sizes in enumerate(PROBES)]
    except Exception as exc:  # noqa: BLE001 - probing is best effort; inference results stand
        log.info("shape probing skipped: %s", exc)
        return {}
    shapes = {}
    for name, a in runs[0].items():
        b = runs[1].get(name)
        if b is None or len(a) != len(b):
            continue
        shapes[name] = tuple(x if x == y else f"d{x}_{y}" for x, y in zip(a, b))
    return shapes


def annotate(model: onnx.ModelProto, shapes: dict[str, tuple]) -> int:
    """Fill unknown/symbolic dims of value_info (adding entries where missing) from probed shapes."""
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name for vi in model.graph.input}
    changed = 0
    for name, shape in shapes.items():
        if name in inits or name in inputs:
            continue
        vi = known.get(name)
        if vi is None:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or len(tt.shape.dim) != len(shape):
            tt.ClearField("shape")
            for d in shape:
                tt.shape.dim.add()
        for dim, value in zip(tt.shape.dim, shape):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value
            changed += 1
    return changed


def _has_unknown(model: onnx.ModelProto) -> bool:
    for vi in model.graph.value_info:
        if not vi.type.HasField("tensor_type"):
            continue
        if not vi.type.tensor_type.HasField("shape"):
            return True
        if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            return True
    return False


def _run(model: onnx.ModelProto, sizes: dict[str, int], seed: int) -> dict[str, tuple[int, ...]]:
    from onnxprune.runtime import session

    index = GraphIndex(model)
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in index.initializers:
            continue
        dims = index.shape(vi.name) or ()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        floating = np.issubdtype(dtype, np.floating)
        shape = [d if isinstance(d, int) else sizes["batch"] if i == 0 else
                 sizes["spatial"] if floating and len(dims) >= 3 else sizes["seq"] for i, d in enumerate(dims)]
        if floating:
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in vi.name.lower() or dtype == np.bool_:
            feeds[vi.name] = np.ones(shape, dtype=dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, size=shape).astype(dtype)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [o for n in model.graph.node for o in n.output if o and _is_tensor(index, o)]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    sess = session(probe, quiet=True)  # a failed probe is expected and handled: no log
    values = sess.run(names, feeds)
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(names, values)}


def _is_tensor(index: GraphIndex, name: str) -> bool:
    vi_type = index.elem_type(name)
    return vi_type is None or vi_type != 0
