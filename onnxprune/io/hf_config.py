"""The model's configuration files, updated for the pruned model.

Beside a decoder's ONNX file often lies Hugging Face's ``config.json`` or onnxruntime-genai's
``genai_config.json`` (its ``model.decoder`` section): runtimes read the head counts and sizes
from them (the KV cache's shape, the attention kernel's head count). When the input model
has one, ``write_configs`` writes an updated copy beside the output: ``num_attention_heads``,
``num_key_value_heads``, ``intermediate_size`` and ``hidden_size`` as the plan keeps them (a
per-layer list where layers keep different counts). A key whose value disagrees with the
graph before pruning is reported and left as it is, never silently rewritten. A config file
is never written over the input's: beside an output in the input's folder the copy is named
``<output stem>.config.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from onnxprune.analysis import Analysis
from onnxprune.analysis.query_heads import group_parents
from onnxprune.graph import GraphIndex
from onnxprune.plan import Plan

CONFIG_FILES = ("config.json", "genai_config.json")
KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size", "hidden_size")


def _order(positions: dict[str, int], nodes: tuple[str, ...]) -> int:
    """A group's place in the graph: its first producer's."""
    return min((positions.get(n, 1 << 30) for n in nodes), default=1 << 30)


def layer_counts(model: onnx.ModelProto, analysis: Analysis, plan: Plan | None = None) -> dict[str, list[int]]:
    """Per configuration key, its value in each layer (in graph order) before ``plan`` (None)
    or after it. Keys the analysis cannot tell are absent."""
    index = GraphIndex(model)
    positions = {n.name: i for i, n in enumerate(model.graph.node)}
    removed = set(plan.removed_units(analysis).tolist()) if plan is not None else set()

    def kept(group_id: str) -> int:
        return sum(int(r) not in removed for r in analysis.group(group_id).units.tolist())

    out: dict[str, list[int]] = {}
    layers = group_parents(analysis)  # query-head group -> KV-head group (grouped-query attention)
    if layers:
        ordered = sorted(layers, key=lambda q: _order(positions, analysis.group(q).producers))
        out["num_attention_heads"] = [kept(q) for q in ordered]
        out["num_key_value_heads"] = [kept(layers[q]) for q in ordered]
    else:  # one group per layer: a head is q, k and v rows
        mha = sorted((g for g in analysis.groups if len(g.producers) == 3 and g.size > 1),
                     key=lambda g: _order(positions, g.producers))
        if mha:
            out["num_attention_heads"] = out["num_key_value_heads"] = [kept(g.id) for g in mha]
    attention = {p for g in analysis.groups if g.id in layers or g.id in layers.values() for p in g.producers}
    ffn = sorted((g for g in analysis.groups if len(g.producers) == 2 and g.consumers and g.unit_width == 1
                  and not set(g.producers) & attention), key=lambda g: _order(positions, g.producers))
    if ffn:
        out["intermediate_size"] = [kept(g.id) for g in ffn]
    hidden = [g for g in analysis.groups if any(n in index.nodes and index.nodes[n].op_type == "Gather"
                                                 for n in g.producers)]
    if len(hidden) == 1:
        out["hidden_size"] = [kept(hidden[0].id) * hidden[0].unit_width]
    return out


def _value(counts: list[int]) -> int | list[int]:
    return counts[0] if len(set(counts)) == 1 else counts


def _section(data: dict, name: str) -> dict | None:
    """The table holding the keys: the top level of config.json, ``model.decoder`` of genai_config.json."""
    if name == "genai_config.json":
        decoder = data.get("model", {}).get("decoder") if isinstance(data.get("model"), dict) else None
        return decoder if isinstance(decoder, dict) else None
    return data


def updated_config(data: dict, name: str, before: dict[str, list[int]],
                   after: dict[str, list[int]]) -> tuple[dict, list[str]]:
    """A copy of a config's data with the pruned counts, and the warnings (keys that disagree
    with the graph before pruning, left as they are)."""
    out = json.loads(json.dumps(data))
    section = _section(out, name)
    warnings: list[str] = []
    if section is None:
        where = "model.decoder section" if name == "genai_config.json" else "settings"
        return out, [f"{name}: no {where} to update"]
    for key in KEYS:
        if key not in section or key not in before:
            continue
        expected = _value(before[key])
        if section[key] != expected:
            warnings.append(f"{name}: '{key}' is {section[key]!r} but the graph has {expected!r}: left as it is")
            continue
        section[key] = _value(after[key])
    return out, warnings


def write_configs(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], model: onnx.ModelProto,
                  analysis: Analysis, plan: Plan) -> tuple[list[Path], list[str]]:
    """Write updated copies of the configuration files beside ``input_path`` next to
    ``output_path``; returns (written paths, warnings)."""
    from onnxprune.io.fileutil import write_text_atomic

    src, dst = Path(input_path), Path(output_path)
    found = [src.parent / name for name in CONFIG_FILES if (src.parent / name).is_file()]
    if not found:
        return [], []
    before, after = layer_counts(model, analysis), layer_counts(model, analysis, plan)
    written, warnings = [], []
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.append(f"{path}: not read ({exc}): no updated copy written")
            continue
        if not isinstance(data, dict):
            warnings.append(f"{path}: not a JSON object: no updated copy written")
            continue
        new, problems = updated_config(data, path.name, before, after)
        warnings += problems
        same_folder = dst.parent.resolve() == src.parent.resolve()
        target = dst.parent / (f"{dst.stem}.{path.name}" if same_folder else path.name)
        written.append(write_text_atomic(target, json.dumps(new, indent=2) + "\n"))
    return written, warnings


def counts_summary(counts: dict[str, list[int]]) -> dict[str, int | list[int]]:
    """The counts as they go into a config (one value when every layer has it)."""
    return {k: _value(v) for k, v in counts.items()}


__all__ = ["CONFIG_FILES", "counts_summary", "layer_counts", "updated_config", "write_configs"]
