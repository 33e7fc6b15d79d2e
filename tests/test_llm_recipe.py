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
    hundred steps on the first part of the stream; the held-out windows come from its end."""
    stream = _byte_stream()
    split = int(len(stream) * 0.8)
    train, held = stream[:split], stream[split:]
    model = tiny_llama(seed=0, layers=2, hidden=64, heads=4, kv_heads=2, ffn=192)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(1)
    for _ in range(150):
        starts = rng.integers(0, len(train) - SEQ - 1, 16)
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
