"""Packaging: passes/ installs as onnxprune.passes (no second top-level copy), and every
subpackage and data file is part of the distribution."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_passes_is_imported_as_onnxprune_passes_only():
    import onnxprune.passes as p

    assert Path(p.__file__).resolve().parent == ROOT / "passes"
    importlib.import_module("onnxprune.api")
    assert "passes" not in sys.modules  # nothing imports the source folder as a top-level package
    for path in (ROOT / "passes").glob("*.py"):
        text = path.read_text()
        assert "from passes" not in text and "import passes" not in text, path.name


def test_every_subpackage_is_listed():
    listed = set(_config()["packages"])
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "onnxprune").rglob("__init__.py")}
    assert found | {"onnxprune.passes"} <= listed
    assert _config()["package-dir"]["onnxprune.passes"] == "passes"


def test_demo_data_is_package_data():
    patterns = _config()["package-data"]["onnxprune"]
    for f in (ROOT / "onnxprune" / "data").iterdir():
        if f.suffix in (".onnx", ".npz"):
            assert any(f.match(p) for p in patterns), f.name
