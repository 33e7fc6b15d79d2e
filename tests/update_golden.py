"""Golden hashes of data-free plans and pruned models on the whole zoo (no behaviour change).

``python -m tests.update_golden`` rewrites ``tests/data/zoo_golden.json`` from the current
code; ``tests/test_byte_identical.py`` compares against it. Regenerate only for an intended
change of plans or pruned models, and say why in the commit.

Per model and configuration the file records:

- ``input``: SHA-256 of the exported zoo model (the test's input);
- ``plan``: SHA-256 of the plan's JSON (``Plan.to_dict``, keys sorted);
- ``model``: SHA-256 of the pruned model's serialized bytes;
- ``structure``: SHA-256 of what does not depend on float summation order: each group's
  kept count, and the pruned graph's nodes (op, names, attributes) and tensor names, types
  and shapes (no weight values).

The exported zoo models come from torch; on another CPU or library build their float bytes
may differ, and so may near-tied channel scores. Where the input hash matches, the test
asserts plan and model bytes exactly; where it does not, it asserts the structure hash only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

GOLDEN = Path(__file__).parent / "data" / "zoo_golden.json"

# (key, plan_by_ratio keyword arguments): one per-group plan at the API's default alignment
# and one global plan aligned to a hardware block of 8.
CONFIGS: dict[str, dict[str, Any]] = {
    "l2-0.3": {"ratio": 0.3, "criterion": "l2"},
    "l1-0.5-global-align8": {"ratio": 0.5, "criterion": "l1", "mode": "global", "align": 8},
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _value_info(vi: onnx.ValueInfoProto) -> list[Any]:
    t = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    return [vi.name, t.elem_type, dims]


def _attribute(a: onnx.AttributeProto) -> list[Any]:
    if a.type == onnx.AttributeProto.TENSOR:
        return [a.name, "tensor", a.t.data_type, list(a.t.dims)]
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.name, "graph", _graph(a.g)]
    value = onnx.helper.get_attribute_value(a)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, list):
        value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return [a.name, value]


def _graph(g: onnx.GraphProto) -> dict[str, Any]:
    return {
        "nodes": [[n.op_type, n.domain, n.name, list(n.input), list(n.output),
                   [_attribute(a) for a in n.attribute]] for n in g.node],
        "initializers": [[t.name, t.data_type, list(t.dims)] for t in g.initializer],
        "inputs": [_value_info(v) for v in g.input],
        "outputs": [_value_info(v) for v in g.output],
        "value_info": sorted(_value_info(v) for v in g.value_info),
    }


def structure(plan_dict: Mapping[str, Any], model: onnx.ModelProto) -> dict[str, Any]:
    """What the hashes compare when float bytes may differ: kept counts and graph structure."""
    counts = {gid: [g["size"], len(g["keep"])] for gid, g in plan_dict["groups"].items()}
    return {"kept": counts, "graph": _graph(model.graph)}


def hashes(input_path: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """The four hashes for one zoo model file and one ``plan_by_ratio`` configuration."""
    from onnxprune.analysis import analyze
    from onnxprune.api import apply_plan, load, plan_by_ratio

    model = load(input_path)
    analysis = analyze(model)
    plan = plan_by_ratio(model, analysis, **config)
    result = apply_plan(model, analysis, plan)
    plan_dict = plan.to_dict()
    return {
        "input": _sha(Path(input_path).read_bytes()),
        "plan": _sha(json.dumps(plan_dict, sort_keys=True).encode()),
        "model": _sha(result.model.SerializeToString(deterministic=True)),
        "structure": _sha(json.dumps(structure(plan_dict, result.model), sort_keys=True).encode()),
    }


def compute_all() -> dict[str, dict[str, dict[str, str]]]:
    from tests.zoo_cache import ZOO_NAMES, zoo_path

    return {name: {key: hashes(zoo_path(name), cfg) for key, cfg in CONFIGS.items()} for name in ZOO_NAMES}


def main() -> int:
    golden = compute_all()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(golden)} models x {len(CONFIGS)} plans)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
