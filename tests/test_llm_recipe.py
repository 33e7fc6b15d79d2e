"""The auto recipe for decoder language models (``recipe.is_causal_lm``, ``recipe.resolve``):
detected on a LLaMA export, and the plain command with calibration windows beats the
data-free default on held-out perplexity (a tiny LLaMA trained briefly on English text)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402

from models.llm import export_causal_lm, tiny_llama  # noqa: E402
from onnxprune.recipe import Context, Recipe, is_causal_lm, is_transformer, resolve  # noqa: E402
from onnxprune.selection.standardised import standardise  # noqa: E402
from tests.test_cli import cli  # noqa: E402

SEQ = 64
STEPS = 80  # AdamW steps of 8 windows: enough for the text's structure
TEXT = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and to permit "
    "persons to whom the software is furnished to do so, subject to the following conditions: the above "
    "copyright notice and this permission notice shall be included in all copies or substantial portions "
    "of the software. The software is provided as is, without warranty of any kind, express or implied, "
    "including but not limited to the warranties of merchantability, fitness for a particular purpose and "
    "noninfringement. In no event shall the authors or copyright holders be liable for any claim, damages "
    "or other liability, whether in an action of contract, tort or otherwise, arising from, out of or in "
    "connection with the software or the use or other dealings in the software. "
)


def _byte_stream() -> np.ndarray:
    """English text as byte tokens (a 256-word vocabulary), the paragraph in shuffled sentence orders."""
    sentences = [s.strip() + ". " for s in TEXT.split(". ") if s.strip()]
    rng = np.random.default_rng(0)
    text = "".join("".join(sentences[i] for i in rng.permutation(len(sentences))) for _ in range(12))
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, np.ndarray, np.ndarray]:
    """(export path, calibration windows, held-out windows): a tiny LLaMA trained for a few
    dozen steps on the first part of the stream; the held-out windows come from its end."""
    stream = _byte_stream()
    split = int(len(stream) * 0.8)
    train, held = stream[:split], stream[split:]
    model = tiny_llama(seed=0, layers=2, hidden=64, heads=4, kv_heads=2, ffn=192)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        starts = rng.integers(0, len(train) - SEQ - 1, 8)
        ids = torch.from_numpy(np.stack([train[s:s + SEQ] for s in starts]))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("lm") / "lm.onnx"
    export_causal_lm(model, path)
    calib = np.stack([train[i * SEQ:(i + 1) * SEQ] for i in range(32)])
    evals = np.stack([held[i * SEQ:(i + 1) * SEQ] for i in range(len(held) // SEQ)][:16])
    return str(path), calib, evals


def test_a_decoder_export_gets_the_decoder_recipe(trained):
    """``is_causal_lm`` finds input_ids read by the embedding and logits over its rows; with
    calibration windows ``resolve`` gives the decoder rule (``recipe.DECODER_LM``), without
    them the data-free default (l2, no depth, no recovery)."""
    from onnxprune.recipe import DECODER_LM

    model = onnx.load(trained[0])
    assert is_causal_lm(model) and is_transformer(model)
    ctx = Context(has_calib=True, transformer=True, causal_lm=True)
    r = resolve(Recipe(target_params=0.8), ctx)
    assert (r.criterion, r.loss, r.ranking, r.recover, r.depth) == (
        DECODER_LM["criterion"], "next-token", DECODER_LM["ranking"], DECODER_LM["recover"], DECODER_LM["depth"])
    assert (r.criterion, r.ranking, r.recover, r.depth, r.refit_target) == (
        "taylor-so", "per-mac", ("lstsq", "bias", "temperature"), 0.25, "stream")
    from onnxprune.compress import _recovery_options

    assert _recovery_options(r)["held_metric"] == "kl" and "judged on next-token KL" in r.describe()
    # no group loses more than DECODER_LM's cap, unless the user says otherwise; other models: no cap
    assert r.max_ratio == DECODER_LM["max_ratio"] < 1 and f"at most {r.max_ratio:.0%} of a group" in r.describe()
    assert resolve(Recipe(target_params=0.8, max_ratio=1.0), ctx).max_ratio == 1.0
    assert resolve(Recipe(target_params=0.8), Context(has_calib=True, transformer=True)).max_ratio == 1.0
    assert resolve(Recipe(target_params=0.8), Context(has_calib=False, transformer=True, causal_lm=True)).max_ratio == 1.0
    encoder = resolve(Recipe(target_params=0.8), Context(has_calib=True, transformer=True))
    assert "held_metric" not in _recovery_options(encoder) and "KL" not in encoder.describe()
    free = resolve(Recipe(target_params=0.8), Context(has_calib=False, transformer=True, causal_lm=True))
    assert (free.criterion, free.recover, free.depth) == ("l2", (), "off")
    # what the user sets stays; a ratio gets no depth
    mine = resolve(Recipe(target_params=0.8, criterion="flap", ranking="standardised", depth=0.5), ctx)
    assert (mine.criterion, mine.ranking, mine.depth, mine.recover) == ("flap", "standardised", 0.5,
                                                                         ("lstsq", "bias", "temperature"))
    assert resolve(Recipe(ratio=0.2), ctx).depth == "off"
    # an encoder keeps Kwon et al.'s rule
    assert resolve(Recipe(target_params=0.8), Context(has_calib=True, transformer=True)).criterion == "taylor-so"


def test_a_transformer_without_token_input_is_not_a_causal_lm():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                               helper.make_node("Softmax", ["h"], ["y"], axis=-1)], "g", [x], [y], [w])
    model = helper.make_model(graph)
    assert is_transformer(model) and not is_causal_lm(model)


def test_standardised_order_ranks_layers_on_one_scale_and_kv_heads_last(trained):
    """FLAP's allocation: each layer's scores standardised, one global order; a KV head is
    never ranked on its own (it goes when its query heads have gone)."""
    from onnxprune.analysis import analyze
    from onnxprune.analysis.query_heads import links
    from onnxprune.api import load
    from onnxprune.selection.standardised import standardised_order

    analysis = analyze(load(trained[0]))
    groups = analysis.prunable_groups
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) * (10.0 ** k) for k, g in enumerate(groups)}  # scales apart
    standard = standardise(groups, scores)
    for g in groups:
        if g.size > 1:
            assert abs(standard[g.id].mean()) < 1e-9 and abs(standard[g.id].std() - 1) < 1e-9
    order = standardised_order(groups, scores, analysis)
    assert sorted(order) == sorted((g.id, i) for g in groups for i in range(g.size))
    parents = {int(p) for _, ps in links(analysis) for p in ps.tolist()}
    kv = {g.id for g in groups if set(np.asarray(g.units).tolist()) <= parents}
    assert kv and all(gid in kv for gid, _ in order[-sum(analysis.group(k).size for k in kv):])
    ranked = [(gid, i) for gid, i in order if gid not in kv]
    values = [standard[gid][i] for gid, i in ranked]
    assert values == sorted(values)
    # every group of a different scale contributes early units: no layer is ranked wholesale first
    first = {gid for gid, _ in ranked[:len(ranked) // 2]}
    assert first == {g.id for g in groups if g.id not in kv}


def test_plain_command_with_calibration_beats_the_data_free_default(trained, tmp_path, monkeypatch, capsys):
    """``prune --target-params 0.8 --calib windows.npz`` on a decoder runs the decoder rule and
    its held-out perplexity (text never calibrated on) is lower than the data-free default's."""
    from onnxprune.verify.lm_eval import perplexity

    path, calib, evals = trained
    windows = tmp_path / "windows.npz"
    np.savez(windows, input_ids=calib)
    auto, free = tmp_path / "auto.onnx", tmp_path / "free.onnx"
    code, out, err = cli(monkeypatch, capsys, "prune", path, "-o", auto, "--target-params", "0.8", "--calib", windows,
                         "--no-measure")
    assert code == 0, out + err
    assert "taylor-so (next-token loss)" in out and "recovery lstsq+bias+temperature" in out, out
    assert "judged on next-token KL" in out and "next-token KL" in out.split("judged on next-token KL")[1], out
    code, out, err = cli(monkeypatch, capsys, "prune", path, "-o", free, "--target-params", "0.8", "--no-measure")
    assert code == 0, out + err
    original, with_data, data_free = (perplexity(p, evals) for p in (path, auto, free))
    assert original < with_data < data_free, (original, with_data, data_free)
