"""Packaging: the whole library lives in onnxprune/ (the passes in onnxprune/rewrite/), so a
fresh clone imports and tests without an install, and every subpackage and data file ships."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_a_plain_checkout_imports_without_an_install(tmp_path: Path) -> None:
    """A copy of the source tree (no editable install pointing at it) imports every stage."""
    shutil.copytree(ROOT / "onnxprune", tmp_path / "onnxprune", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import onnxprune, onnxprune.api, onnxprune.rewrite, onnxprune.compress, onnxprune.cli; "
            "print(onnxprune.__file__, onnxprune.rewrite.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    files = [Path(p) for p in out.stdout.split()]
    assert all(tmp_path in p.parents for p in files), out.stdout


def test_every_subpackage_is_found() -> None:
    """setuptools' package discovery covers every folder with an __init__.py; no folder maps elsewhere."""
    from setuptools import find_packages

    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "onnxprune").rglob("__init__.py")}
    include = _config()["packages"]["find"]["include"]
    assert "package-dir" not in _config()
    assert found == set(find_packages(str(ROOT), include=include))
    assert not (ROOT / "passes").exists()


def test_demo_data_is_package_data() -> None:
    patterns = _config()["package-data"]["onnxprune"]
    for f in (ROOT / "onnxprune" / "data").iterdir():
        if f.suffix in (".onnx", ".npz"):
            assert any(f.match(p) for p in patterns), f.name
