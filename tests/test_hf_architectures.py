"""Architectures as Hugging Face transformers writes them (small random-weight models built
from configs, offline), exported with torch.onnx.export: analyze finds their prunable groups
and a random pruning equals the masked reference. Skipped without transformers."""

from __future__ import annotations

import os
import warnings

import pytest

from onnxprune.analysis import analyze
from onnxprune.api import load
from tests.equivalence import prune_randomly_and_check

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT, IMAGE = "text", "image"
# name -> (builder, input kind, smallest number of prunable groups expected)
ARCHITECTURES = {
    "distilbert": (lambda T: T.DistilBertModel(T.DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128)), TEXT, 4),
    "roberta": (lambda T: T.RobertaModel(T.RobertaConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64)), TEXT, 4),
    "albert": (lambda T: T.AlbertModel(T.AlbertConfig(
        vocab_size=100, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128)), TEXT, 2),
    "t5_encoder": (lambda T: T.T5EncoderModel(T.T5Config(
        vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)), TEXT, 2),
    # Conv1D layers (x.view(-1, x.size(-1)) @ W), one fused c_attn split three ways, a KV-cache
    # Concat in front of the attention MatMuls: heads and FFN neurons of both layers
    "gpt2": (lambda T: T.GPT2Model(T.GPT2Config(
        vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)), TEXT, 4),
    "opt": (lambda T: T.OPTModel(T.OPTConfig(
        vocab_size=100, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=64)), TEXT, 4),
    # SwiGLU FFNs; RMSNorm written out; grouped-query attention with rotary embeddings (a unit is
    # one key / value head with its query heads)
    "llama": (lambda T: T.LlamaModel(T.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)), TEXT, 4),
    "vit": (lambda T: T.ViTModel(T.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
        patch_size=8), add_pooling_layer=False), IMAGE, 4),
    "swin": (lambda T: T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
        num_labels=10)), IMAGE, 2),
    "convnext": (lambda T: T.ConvNextForImageClassification(T.ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10, image_size=64)), IMAGE, 4),
    "resnet": (lambda T: T.ResNetForImageClassification(T.ResNetConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], embedding_size=16, num_labels=10)), IMAGE, 8),
    # TF-style "same" padding: Pad amounts built from constants by Reshape / Slice / Transpose
    "mobilenet_v2": (lambda T: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
        image_size=64, depth_multiplier=0.35, num_labels=10)), IMAGE, 20),
    # BatchNorm1d on flattened tokens: bn(y.flatten(0, 1)).reshape_as(y), [b*16, C] -> [b, 16, C]
    "levit": (lambda T: T.LevitForImageClassification(T.LevitConfig(
        image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8], num_labels=10)), IMAGE, 10),
    "mobilevit": (lambda T: T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 160],
        num_labels=10)), IMAGE, 8),
    # F.interpolate(x, size=skip.size()[2:]): Resize sizes built from Shape(x)[:2]
    "segformer": (lambda T: T.SegformerForSemanticSegmentation(T.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        decoder_hidden_size=32, num_labels=5)), IMAGE, 6),
}


class _FirstOutput(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, *args):  # noqa: ANN002, ANN201
        if self.kind == TEXT:
            return self.model(input_ids=args[0], attention_mask=args[1])[0]
        return self.model(pixel_values=args[0])[0]


def _export(name: str, path) -> None:  # noqa: ANN001
    build, kind, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = _FirstOutput(build(transformers).eval(), kind).eval()
    if kind == TEXT:
        args = (torch.randint(0, 100, (1, 12)), torch.ones(1, 12, dtype=torch.long))
        names, axes = ["input_ids", "attention_mask"], {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    else:
        size = 32 if name in ("vit", "swin") else 64
        args, names, axes = (torch.randn(1, 3, size, size),), ["pixel_values"], {"pixel_values": {0: "b"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["out"], dynamic_axes=axes)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_hf_architecture_prunes_exactly(tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    try:
        _export(name, path)
    except (TypeError, ValueError, AttributeError) as exc:  # another transformers version's config API
        pytest.skip(f"{name} cannot be built with transformers {transformers.__version__}: {exc}")
    model = load(path)
    analysis = analyze(model)
    assert len(analysis.prunable_groups) >= ARCHITECTURES[name][2], [b.reason for b in analysis.blocked][:5]
    assert all(b.reason for b in analysis.blocked)
    prune_randomly_and_check(model, seed=0)
