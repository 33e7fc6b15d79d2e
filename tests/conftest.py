import logging

import pytest

logging.getLogger("onnxprune").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """(model, analysis) of a random-weight LLaMA of SmolLM2's structure in small, exported by
    the dynamo exporter (``models.llm``); skipped without torch and transformers."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.llm import export_causal_lm, tiny_llama
    from onnxprune.analysis import analyze
    from onnxprune.api import load

    model = load(export_causal_lm(tiny_llama(), tmp_path_factory.mktemp("lm") / "gqa.onnx"))
    return model, analyze(model)
