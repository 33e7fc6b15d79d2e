"""Decoders exported with a KV cache (``past_key_values.{i}.key/value`` in, ``present.{i}.key/value``
out, as Hugging Face's exporters write them): query heads and FFN neurons prune without
touching the interface; KV heads change the cache's shapes, refused without the flag (naming
the inputs and outputs), allowed and reported with it. The pruned model equals the masked
original over a prefill and a decode step, its cache being the original's restricted to the
kept KV heads. Skipped without transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.analysis import analyze
from onnxprune.analysis.query_heads import repair_keep
from onnxprune.api import apply_plan, load
from onnxprune.errors import PlanError
from onnxprune.interface import interface_changes, kept_indices
from onnxprune.plan import Plan
from onnxprune.rewrite.masking import masked_model
from onnxprune.runtime.session import run
from tests.equivalence import check_pruned_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.llm import (
    TINY_VOCAB,
    empty_past,
    export_causal_lm_with_cache,
    kv_cache_names,
    tiny_llama,
)

OPTIONS = {"hidden": 96, "heads": 6, "kv_heads": 2}  # 2 KV heads, each read by 3 query heads
LAYERS = 2


@pytest.fixture(scope="module")
def kv_export(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("llm_kv")
    return str(export_causal_lm_with_cache(tiny_llama(**OPTIONS), folder / "kv.onnx"))


def _kinds(analysis):
    """(KV-head groups, query-head groups, FFN groups) of a KV-cache export: every group, prunable or not."""
    kv = [g for g in analysis.groups if len(g.producers) == 2 and not g.consumers]
    queries = [g for g in analysis.groups if len(g.producers) == 1 and len(g.consumers) == 1 and g.size == 6]
    ffn = [g for g in analysis.groups if len(g.producers) == 2 and g.consumers]
    return kv, queries, ffn


def _plan(analysis, groups, seed: int) -> Plan:
    rng = np.random.default_rng(seed)
    keep = {g.id: tuple(sorted(rng.choice(g.size, size=max(1, g.size // 2), replace=False).tolist())) for g in groups}
    keep = repair_keep(analysis, keep)
    return Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion="test")


def _generate(model: onnx.ModelProto, ids: np.ndarray, prompt: int, past_feeds: dict[str, np.ndarray]) -> list[dict]:
    """Prefill ``ids[:, :prompt]`` on an empty cache, then decode the next token from the
    returned cache: the outputs of both runs."""
    past_names, present_names = kv_cache_names(LAYERS)
    batch = ids.shape[0]
    first = run(model, {"input_ids": ids[:, :prompt], "attention_mask": np.ones((batch, prompt), np.int64),
                        **past_feeds})
    cache = {p: first[q] for p, q in zip(past_names, present_names)}
    second = run(model, {"input_ids": ids[:, prompt:prompt + 1],
                         "attention_mask": np.ones((batch, prompt + 1), np.int64), **cache})
    return [first, second]


def _empty_cache(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    """Zero-length past feeds shaped as the model declares its cache inputs."""
    feeds = {}
    for vi in model.graph.input:
        if vi.name.startswith("past_key_values."):
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.zeros((batch, dims[1], 0, dims[3]), np.float32)
    return feeds


def assert_cache_model_matches_masked(model, analysis, plan, pruned, *, batch: int = 2, seed: int = 0) -> None:
    """Prefill + one decode step: the pruned model's logits equal the masked original's, and its
    cache equals the masked original's on the kept KV heads."""
    ids = np.random.default_rng(seed).integers(0, TINY_VOCAB, (batch, 7)).astype(np.int64)
    reference = _generate(masked_model(model, analysis, plan), ids, 6, _empty_cache(model, batch))
    got = _generate(pruned, ids, 6, _empty_cache(pruned, batch))
    kept = kept_indices(analysis, plan)
    for ref, out in zip(reference, got):
        scale = float(np.abs(ref["logits"]).max())
        np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-4, atol=1e-4 * scale)
        for name in kv_cache_names(LAYERS)[1]:
            axis, index = kept.get(name, (1, np.arange(ref[name].shape[1])))
            np.testing.assert_allclose(out[name], np.take(ref[name], index, axis=axis), rtol=1e-4, atol=1e-5)


def test_the_export_has_the_hugging_face_cache_interface(kv_export):
    model = onnx.load(kv_export)
    past, present = kv_cache_names(LAYERS)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", *past]
    assert [o.name for o in model.graph.output] == ["logits", *present]
    ids = np.random.default_rng(0).integers(0, TINY_VOCAB, (2, 7)).astype(np.int64)
    first, second = _generate(model, ids, 6, empty_past(tiny_llama(**OPTIONS).config, batch=2))
    with torch.no_grad():
        full = tiny_llama(**OPTIONS)(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(first["logits"], full[:, :6], atol=1e-4)
    np.testing.assert_allclose(second["logits"], full[:, 6:], atol=1e-4)
    assert second["present.0.key"].shape == (2, 2, 7, 16)


def test_without_the_flag_kv_heads_stay_and_a_plan_removing_one_is_refused(kv_export):
    model = load(kv_export)
    analysis = analyze(model)
    kv, queries, ffn = _kinds(analysis)
    assert len(kv) == len(queries) == len(ffn) == LAYERS
    assert all(g.prunable for g in queries + ffn) and not any(g.prunable for g in kv)
    layer0 = " ".join(kv[0].reasons)
    for name in ("past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value"):
        assert f"'{name}' would change shape" in layer0, kv[0].reasons
    assert "--allow-interface-change" in layer0
    plan = Plan(fingerprint=analysis.fingerprint, keep={kv[0].id: (1,)}, sizes={kv[0].id: 2}, criterion="test")
    with pytest.raises(PlanError, match=r"past_key_values\.0\.key' would change shape.*--allow-interface-change") as exc:
        apply_plan(model, analysis, plan)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", ["queries", "ffn", "both", "every_query_of_a_kv_head"])
def test_query_heads_and_neurons_keep_the_interface(kv_export, kind):
    """No flag needed: the cache keeps every KV head, even one whose query heads all go (it is
    still written to the cache; without the flag it is not removed)."""
    model = load(kv_export)
    analysis = analyze(model)
    _, queries, ffn = _kinds(analysis)
    groups = {"queries": queries, "ffn": ffn, "both": queries + ffn, "every_query_of_a_kv_head": queries}[kind]
    kept_queries = (3, 4, 5) if kind == "every_query_of_a_kv_head" else (0, 2, 3, 5)  # KV head 0: 0, 1, 2
    keep = {g.id: (kept_queries if g in queries else tuple(range(0, g.size, 2))) for g in groups}
    plan = Plan(fingerprint=analysis.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion="test")
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    assert interface_changes(onnx.load(kv_export), result.model) == []
    assert_cache_model_matches_masked(model, analysis, plan, result.model)


@pytest.mark.parametrize("kind", ["kv", "kv_and_queries", "all"])
def test_with_the_flag_kv_heads_go_and_the_cache_shrinks(kv_export, kind):
    model = load(kv_export)
    analysis = analyze(model, allow_interface_change=True)
    kv, queries, ffn = _kinds(analysis)
    assert all(g.prunable for g in kv + queries + ffn)
    groups = {"kv": kv, "kv_and_queries": kv + queries, "all": kv + queries + ffn}[kind]
    plan = _plan(analysis, groups, seed=len(kind))
    result = apply_plan(model, analysis, plan)
    onnx.checker.check_model(result.model, full_check=True)
    fresh = onnx.ModelProto()
    fresh.CopyFrom(result.model)
    del fresh.graph.value_info[:]
    onnx.shape_inference.infer_shapes(fresh, check_type=True, strict_mode=True, data_prop=True)
    changes = interface_changes(onnx.load(kv_export), result.model)
    past, present = kv_cache_names(LAYERS)
    assert sorted(c.split(":")[0] for c in changes) == sorted(past + present), changes
    assert "past_key_values.0.key: ['batch', 2, 'past', 16] -> ['batch', 1, 'past', 16]" in changes
    for batch in (1, 2):
        assert_cache_model_matches_masked(model, analysis, plan, result.model, batch=batch, seed=batch)


# -- through the CLI: the flag, the report, the configuration files beside the model -----------

def _folder_with_config(tmp_path, kv_export, **overrides) -> Path:
    """The export in its own folder with a config.json and a genai_config.json as the
    exporters write them (``overrides``: wrong values)."""
    import shutil

    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(kv_export, folder / "model.onnx")
    config = {"model_type": "llama", "num_hidden_layers": LAYERS, "hidden_size": 96, "num_attention_heads": 6,
              "num_key_value_heads": 2, "intermediate_size": 128, **overrides}
    (folder / "config.json").write_text(json.dumps(config))
    genai = {"model": {"type": "llama", "decoder": {"num_attention_heads": 6, "num_key_value_heads": 2,
                                                    "hidden_size": 96, "head_size": 16, "num_hidden_layers": LAYERS}}}
    (folder / "genai_config.json").write_text(json.dumps(genai))
    return folder


def test_cli_refuses_kv_heads_without_the_flag_and_reports_them_with_it(kv_export, tmp_path, monkeypatch, capsys):
    from tests.test_cli import cli

    folder = _folder_with_config(tmp_path, kv_export)
    model = load(folder / "model.onnx")
    analysis = analyze(model, allow_interface_change=True)
    kv, _, _ = _kinds(analysis)
    plan = Plan(fingerprint=analysis.fingerprint, keep={kv[0].id: (1,), kv[1].id: (0,)},
                sizes={kv[0].id: 2, kv[1].id: 2}, criterion="test")
    plan.save(tmp_path / "plan.json")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = cli(monkeypatch, capsys, "prune", folder / "model.onnx", "-o", out_dir / "model.onnx",
                         "--plan", tmp_path / "plan.json", "--no-measure")
    assert code == 1, out + err
    assert "error:" in err and "past_key_values.0.key' would change shape" in err and "--allow-interface-change" in err
    assert not (out_dir / "model.onnx").exists() and not (out_dir / "config.json").exists()

    code, out, err = cli(monkeypatch, capsys, "prune", folder / "model.onnx", "-o", out_dir / "model.onnx",
                         "--plan", tmp_path / "plan.json", "--no-measure", "--allow-interface-change")
    assert code == 0, out + err
    assert "interface changed: past_key_values.0.key axis 1 keeps 1" in out and "present.1.value axis 1 keeps 1" in out
    written = json.loads((out_dir / "config.json").read_text())
    assert (written["num_key_value_heads"], written["num_attention_heads"]) == (1, 3)  # every layer alike
    assert written["intermediate_size"] == 128 and written["model_type"] == "llama"
    genai = json.loads((out_dir / "genai_config.json").read_text())["model"]["decoder"]
    assert (genai["num_key_value_heads"], genai["num_attention_heads"], genai["head_size"]) == (1, 3, 16)
    pruned = onnx.load(out_dir / "model.onnx")
    assert [d.dim_value for d in pruned.graph.input[2].type.tensor_type.shape.dim][1:2] == [1]


def test_cli_query_heads_per_layer_lists_and_a_disagreeing_config(kv_export, tmp_path, monkeypatch, capsys):
    """Layers keeping different counts get per-layer lists; a key the graph contradicts is
    reported, naming it, and left as it is; no flag needed for query heads."""
    from tests.test_cli import cli

    folder = _folder_with_config(tmp_path, kv_export, intermediate_size=100)
    model = load(folder / "model.onnx")
    analysis = analyze(model)
    _, queries, _ = _kinds(analysis)
    plan = Plan(fingerprint=analysis.fingerprint, keep={queries[0].id: (0, 1, 3, 4)}, sizes={queries[0].id: 6},
                criterion="test")
    plan.save(tmp_path / "plan.json")
    code, out, err = cli(monkeypatch, capsys, "prune", folder / "model.onnx", "-o", folder / "pruned.onnx",
                         "--plan", tmp_path / "plan.json", "--no-measure")
    assert code == 0, out + err
    assert "interface changed" not in out
    assert "config.json: 'intermediate_size' is 100 but the graph has 128" in err.replace("\n", " ")
    assert json.loads((folder / "config.json").read_text())["num_attention_heads"] == 6  # the input's: untouched
    written = json.loads((folder / "pruned.config.json").read_text())  # beside the output, not over the input's
    assert written["num_attention_heads"] == [4, 6] and written["num_key_value_heads"] == 2
    assert written["intermediate_size"] == 100


def test_uniform_heads_keeps_equal_counts_in_every_layer(kv_export, tmp_path, monkeypatch, capsys):
    """--uniform-heads: every layer keeps as many KV heads and query heads per KV head, so the
    KV repeat stays an Expand (no Gather) and one config value fits all layers."""
    from onnxprune.compress import compress
    from onnxprune.io.hf_config import layer_counts
    from onnxprune.recipe import Recipe

    model = load(kv_export)
    for allow in (False, True):
        recipe = Recipe(target_params=0.6, criterion="l2", uniform_heads=True, allow_interface_change=allow,
                        measure=False)
        result = compress(load(kv_export), recipe)
        counts = layer_counts(model, result.analysis, result.plan)
        assert len(set(counts["num_attention_heads"])) == 1 and len(set(counts["num_key_value_heads"])) == 1, counts
        assert counts["num_attention_heads"][0] < 6 or counts["num_key_value_heads"][0] < 2, counts
        if not allow:
            assert counts["num_key_value_heads"] == [2, 2]
        assert not [n for n in result.model.graph.node if n.name.endswith("__kept_heads")]
        assert_cache_model_matches_masked(model, result.analysis, result.plan, result.model)
