"""The shape of the system: one error hierarchy with an exit code per category, one
``Unsupported``, library code that does not reach into the tests, and docs that cite files
that exist."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import onnxprune
from onnxprune import errors
from onnxprune.errors import (CATEGORIES, EXIT_INTERNAL, EXIT_USER_ERROR, DataError, InternalError, ModelError,
                              OnnxPruneError, UsageError)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "onnxprune"
# modules that need an optional extra to import (skipped, not failed, where it is missing)
OPTIONAL = ("torch", "matplotlib", "onnxruntime", "transformers")


def _import_all() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(onnxprune.__path__, "onnxprune."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            if not any(o in str(exc) for o in OPTIONAL):
                raise
            continue
        names.append(info.name)
    return names


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_error_belongs_to_exactly_one_category():
    _import_all()
    ours = {c for c in _subclasses(OnnxPruneError) if c.__module__.startswith("onnxprune.")}
    assert len(ours) > 20
    for cls in ours - set(CATEGORIES):
        found = [cat.__name__ for cat in CATEGORIES if issubclass(cls, cat)]
        assert len(found) == 1, f"{cls.__module__}.{cls.__name__} is in categories {found or 'none'}"


def test_the_usage_errors_are_not_all_selection_errors():
    from onnxprune.errors import OptionError, OutputPathError, PlanError, ScoringError, SelectionError

    assert issubclass(ScoringError, SelectionError)  # choosing what to remove starts with the criterion
    for cls in (OptionError, OutputPathError, PlanError):
        assert issubclass(cls, UsageError) and not issubclass(cls, SelectionError)
    assert issubclass(errors.RewriteError, InternalError) and issubclass(errors.PipelineError, InternalError)


@pytest.mark.parametrize("exc, code, text", [
    (UsageError("--ratio must be in [0, 1)"), EXIT_USER_ERROR, "error: --ratio must be in [0, 1)"),
    (ModelError("m.onnx: not an ONNX model"), EXIT_USER_ERROR, "error: m.onnx: not an ONNX model"),
    (DataError("x.npz: no array 'input'"), EXIT_USER_ERROR, "error: x.npz: no array 'input'"),
    (InternalError("pass 'p' failed"), EXIT_INTERNAL, "error: internal error: pass 'p' failed"),
    (RuntimeError("boom"), EXIT_INTERNAL, "error: unexpected RuntimeError: boom"),
])
def test_cli_maps_each_category_to_its_exit_code(monkeypatch, capsys, exc, code, text):
    from onnxprune import cli

    def fail(**_kwargs):
        raise exc

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == code
    assert capsys.readouterr().err.strip() == text
    assert errors.exit_code(exc) == code


def test_exit_codes_are_documented(monkeypatch, capsys):
    from tests.test_cli import cli

    code, out, _ = cli(monkeypatch, capsys, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Exit status: 0 success; 1 an error in the options, the model or the data" in text
    assert "2 a command-line syntax error" in text and "70 an internal failure" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Exit status: 0 success; 1 an error in the options, the model or the data" in readme
    assert "70 an internal failure" in readme


def test_one_unsupported_class():
    names = _import_all()
    owners = {(cls.__module__, cls.__qualname__) for cls in _subclasses(Exception)
              if cls.__name__ == "Unsupported" and cls.__module__.startswith("onnxprune")}
    assert owners == {("onnxprune.errors", "Unsupported")}, owners
    assert "onnxprune.analysis.registry" in names and "onnxprune.recovery.layers" in names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_library_does_not_import_the_tests():
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                 if any(m == "tests" or m.startswith("tests.") for m in _imports(p))]
    assert not offenders
    # helpers only the tests use live in tests/
    from onnxprune.analysis import accounting
    from onnxprune.rewrite import masking

    assert not hasattr(masking, "random_masking_plan")
    assert not hasattr(accounting, "predicted_params") and not hasattr(accounting, "predicted_macs")


def test_recovery_reads_the_removal_from_the_analysis_layer():
    """What a plan removes (``Removal``) lives beside the analysis; recovery does not reach
    into the rewrite layer for it."""
    from onnxprune.analysis.removal import Removal
    from onnxprune.rewrite import PruneContext

    assert PruneContext is Removal
    for path in (PACKAGE / "recovery").rglob("*.py"):
        assert not any(m.startswith("onnxprune.rewrite") for m in _imports(path)), path


def test_generic_passes_do_not_see_the_pruning():
    from onnxprune.rewrite import ModelPass
    from onnxprune.rewrite.check_model import CheckModelPass
    from onnxprune.rewrite.refresh_shapes import RefreshShapesPass
    from onnxprune.rewrite.remove_dead_nodes import RemoveDeadNodesPass
    from onnxprune.rewrite.sort_topologically import SortTopologicallyPass

    for cls in (CheckModelPass, RefreshShapesPass, RemoveDeadNodesPass, SortTopologicallyPass):
        assert issubclass(cls, ModelPass)
        module = sys.modules[cls.__module__]
        assert "Removal" not in vars(module) and "PruneContext" not in vars(module), cls


def _cited_paths(text: str) -> set[str]:
    """Repository paths a document cites: `onnxprune/...`, `tests/...`, `docs/...` and the
    like anywhere, and any `a/b.py` in backquotes (relative to the root or to onnxprune/)."""
    pattern = r"(?<![\w/.-])((?:onnxprune|tests|docs|benchmarks|models)/[\w./-]*[\w/])"
    found = {m.rstrip("/").rstrip(".") for m in re.findall(pattern, text)}
    ours = {d.name for d in ROOT.iterdir() if d.is_dir()} | {d.name for d in PACKAGE.rglob("*") if d.is_dir()}
    found |= {p for p in re.findall(r"`([\w.-]+(?:/[\w.-]+)*/[\w.-]+\.py)`", text)
              if p.split("/")[0] in ours}  # not another project's files (torch_pruning/..., onnxsim/...)
    return found


def _exists(path: str) -> bool:
    return any((base / p).exists() for base in (ROOT, PACKAGE) for p in (path, f"{path}.py"))


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_docs_cite_files_that_exist(doc):
    cited = _cited_paths((ROOT / doc).read_text())
    assert cited or doc != "docs/design.md", f"{doc} cites no file"
    missing = sorted(p for p in cited if not _exists(p))
    assert not missing, f"{doc} cites files that do not exist: {missing}"


def test_design_names_each_stage_and_extension_point():
    text = (ROOT / "docs" / "design.md").read_text()
    for folder in ("io", "prepare", "analysis", "scoring", "selection", "rewrite", "recovery", "train", "verify",
                   "runtime"):
        assert f"`onnxprune/{folder}/`" in text, folder
        assert (PACKAGE / folder).is_dir()
    for point in ("**An op rule**", "**A criterion**", "**A recovery method**", "**A CLI option**"):
        assert point in text
