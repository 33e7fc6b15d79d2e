"""The recipe: one frozen, validated value behind the CLI flags, recipe files and the API;
``auto`` resolves to what it says; bad recipe files are refused naming the key."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from onnxprune.recipe import (DATA_DRIVEN_CRITERIA, RECOVERY_METHODS, Context, Recipe, RecipeError, resolve)
from tests.test_cli import cli

DATA = __import__("pathlib").Path(__file__).parent.parent / "onnxprune" / "data"
DIGITS = DATA / "digits_cnn.onnx"


def test_criteria_and_methods_agree_with_the_implementations():
    pytest.importorskip("torch")
    from onnxprune.scoring.calibrated import DATA_DRIVEN
    from onnxprune.scoring.data_free import DATA_FREE
    from onnxprune.recipe import DATA_FREE_CRITERIA
    from onnxprune.recovery import METHODS

    assert tuple(DATA_DRIVEN) == DATA_DRIVEN_CRITERIA
    assert set(DATA_FREE) == set(DATA_FREE_CRITERIA)
    assert set(METHODS) == set(RECOVERY_METHODS)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_recipe_round_trips_through_a_file(tmp_path, suffix):
    r = Recipe(target_flops=0.5, criterion="taylor-so", loss="fisher", ranking="per-mac", round_to=8, align=16,
               ignore=("conv1", "head*"), recover=("lstsq", "bn"), ridge=0.01, augment=True, measure=False)
    path = r.save(tmp_path / f"r{suffix}")
    assert Recipe.load(path) == r
    assert "ratio" not in Recipe.load(path).to_dict() and "target_params" not in path.read_text()  # unset: left out


def test_auto_resolves_to_what_it_says():
    plain = Recipe(target_flops=0.5)
    free = resolve(plain, Context(has_calib=False, align_block=16))
    assert (free.criterion, free.ranking, free.align, free.recover, free.limits) == (
        "l2", "normalised", 16, (), "none")
    data = resolve(plain, Context(has_calib=True, align_block=8))
    assert (data.criterion, data.loss, data.ranking, data.align) == ("taylor-fo", "fisher", "per-mac", 8)
    assert data.recover == ("lstsq",) and data.limits == "sensitivity"
    assert resolve(Recipe(ratio=0.3), Context(has_calib=True)).limits == "none"  # limits serve budgets
    assert resolve(Recipe(ratio=0.3), Context()).mode == "per-group"
    assert resolve(Recipe(ratio=0.3), Context(has_calib=True)).mode == "global"
    # what the user set is kept
    mine = resolve(Recipe(target_flops=0.5, criterion="l1", align=1, recover="none"), Context(has_calib=True))
    assert (mine.criterion, mine.align, mine.recover, mine.ranking, mine.limits) == ("l1", 1, (), "normalised", "none")
    assert resolve(Recipe(target_flops=0.5, recover="all"), Context(has_calib=True)).recover == RECOVERY_METHODS
    assert "taylor-fo" in data.describe() and "align 8" in data.describe() and "recovery" in data.describe()
    assert "no alignment" in mine.describe() and "no recovery" in mine.describe()


@pytest.mark.parametrize("recipe, words", [
    (Recipe(target_flops=0.5, criterion="taylor-fo"), "taylor-fo needs calibration data"),
    (Recipe(target_flops=0.5, recover="lstsq"), "recovery needs calibration data"),
    (Recipe(target_flops=0.5, method="spp"), "spp training needs calibration data"),
])
def test_a_recipe_that_needs_data_says_so(recipe, words):
    with pytest.raises(RecipeError, match=words):
        resolve(recipe, Context(has_calib=False))


@pytest.mark.parametrize("text, key", [
    ("target_flops = 0.5\nbogus = 1\n", "unknown key 'bogus'"),
    ("target_flops = 'half'\n", "'target_flops' must be"),
    ("target_flops = 0.5\nround_to = 2.5\n", "'round_to' must be an integer"),
    ("target_flops = 0.5\nprune_hidden = 1\n", "'prune_hidden' must be true or false"),
    ("target_flops = 0.5\nignore = [1, 2]\n", "'ignore' must be a list"),
    ("target_flops = 0.5\nranking = 'best'\n", "unknown ranking 'best'"),
    ("target_flops = 0.5\nrecover = 'magic'\n", "unknown method"),
    ("ratio = 1.5\n", "'ratio' must be in"),
    ("this is not toml", "not a valid TOML"),
])
def test_bad_recipe_files_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=key) as exc:
        Recipe.load(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_recipe_file_from_the_cli(monkeypatch, capsys, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("target_flops = 0.5\ncriterion = 3\n")
    code, out, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "o.onnx", "--recipe", path)
    assert code == 1 and "'criterion' must be a string" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    code, _, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "o.onnx", "--target-flops", "0.5",
                       "--criterion", "taylor-fo")
    assert code == 1 and "needs calibration data" in err and "--calib" in err
    assert not (tmp_path / "o.onnx").exists()


def test_recipe_file_flags_override_and_replay(monkeypatch, capsys, tmp_path):
    """A recipe file gives the defaults, flags win; --save-recipe writes the resolved recipe, and
    running it again gives the same plan; the plan and --json record the recipe."""
    base = tmp_path / "base.toml"
    Recipe(ratio=0.3, criterion="l1", round_to=2, measure=False).save(base)
    code, out, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "a.onnx", "--recipe", base,
                         "--target-flops", "0.6", "--save-recipe", tmp_path / "saved.toml", "--save-plan",
                         tmp_path / "a.json", "--json", tmp_path / "result.json")
    assert code == 0, err
    saved = Recipe.load(tmp_path / "saved.toml")
    assert saved.ratio is None and saved.target_flops == 0.6  # the flag's budget replaced the file's
    assert saved.criterion == "l1" and saved.round_to == 2 and isinstance(saved.align, int)
    plan_a = json.loads((tmp_path / "a.json").read_text())
    assert plan_a["options"]["recipe"] == saved.to_dict()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["recipe"] == saved.to_dict() and result["macs"]["after"] <= 0.6 * result["macs"]["before"]
    code, _, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "b.onnx", "--recipe",
                       tmp_path / "saved.toml", "--save-plan", tmp_path / "b.json")
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["groups"] == plan_a["groups"]


def test_compress_from_python():
    import onnxprune
    from onnxprune.compress import compress

    model = onnxprune.load(DIGITS)
    result = compress(model, Recipe(target_flops=0.5, measure=False))
    assert result.changed and result.after.macs <= 0.5 * result.before.macs
    assert result.recipe.criterion == "l2" and result.plan.options["recipe"]["criterion"] == "l2"
    onnx.checker.check_model(result.model, full_check=True)
    with pytest.raises(RecipeError, match="exactly one budget"):
        compress(model, Recipe())


def test_no_change_says_so(monkeypatch, capsys, tmp_path):
    code, out, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "o.onnx", "--ratio", "0.3",
                         "--min-channels", "1000", "--no-measure")
    assert code == 0 and "nothing was removed" in err and "min-channels" in err


def test_paths_with_brackets_are_printed_exactly(monkeypatch, capsys, tmp_path):
    out_path = tmp_path / "out[small].onnx"
    code, out, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", out_path, "--ratio", "0.3", "--no-measure")
    assert code == 0, err
    assert f"wrote {out_path}" in out.replace("\n", "")


def test_version(monkeypatch, capsys):
    from onnxprune import __version__

    code, out, _ = cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"onnxprune {__version__}"


def test_default_command_with_calibration_keeps_a_trained_cnn(monkeypatch, capsys, tmp_path):
    """The plain command on the shipped trained digits CNN with --calib and nothing else: half
    the MACs, accuracy on held-out digits within 1 point of the original."""
    pytest.importorskip("torch")
    from onnxprune.runtime.session import run

    train, test = np.load(DATA / "digits_train.npz"), np.load(DATA / "digits_test.npz")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=train["input"][:256])  # unlabelled
    out = tmp_path / "half.onnx"
    code, text, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", out, "--target-flops", "0.5", "--calib",
                          calib, "--no-measure")
    assert code == 0, err
    assert "taylor-fo" in text and "recovery" in text

    def accuracy(path) -> float:
        logits = next(iter(run(onnx.load(path), {"input": test["input"]}).values()))
        return float((logits.argmax(1) == test["labels"]).mean())

    assert accuracy(out) >= accuracy(DIGITS) - 0.01
    assert sys.modules.get("onnxprune.compress") is not None


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """README's one-call example, run as written on the shipped digits model."""
    import re
    import shutil
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "compress(" in b)
    shutil.copy(DIGITS, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace("Recipe(target_flops=0.5)", "Recipe(target_flops=0.5, measure=False)"),
                 "README.md", "exec"), {})
    assert (tmp_path / "small.onnx").exists()
    onnx.checker.check_model(onnx.load(tmp_path / "small.onnx"), full_check=True)


def test_analyze_shows_what_the_recipe_would_do(monkeypatch, capsys, tmp_path):
    """`analyze` prints the recipe prune would run; with a budget it previews the plan, and
    the preview matches what prune then does."""
    code, out, err = cli(monkeypatch, capsys, "analyze", DIGITS)
    assert code == 0, err
    assert "without data: target flops 0.5; l2" in out and "with --calib" in out and "taylor-fo" in out
    code, out, err = cli(monkeypatch, capsys, "analyze", DIGITS, "--target-flops", "0.5", "--json")
    assert code == 0, err
    preview = json.loads(out)["preview"]
    assert preview["macs"]["after"] <= 0.5 * preview["macs"]["before"]
    code, _, err = cli(monkeypatch, capsys, "prune", DIGITS, "-o", tmp_path / "p.onnx", "--target-flops", "0.5",
                       "--no-measure", "--json", tmp_path / "r.json")
    assert code == 0, err
    done = json.loads((tmp_path / "r.json").read_text())
    assert done["macs"] == preview["macs"]
    assert {**done["recipe"], "measure": True} == preview["recipe"]
    path = tmp_path / "r.toml"
    Recipe(target_flops=0.5, criterion="taylor-fo").save(path)
    code, out, err = cli(monkeypatch, capsys, "analyze", DIGITS, "--recipe", path)
    assert code == 0 and "needs --calib" in out


def test_long_steps_report_counts(tmp_path):
    """Scoring reports batches and recovery reports layers as (done, total) counts, which the
    CLI shows with a bar and an ETA."""
    pytest.importorskip("torch")
    import onnxprune
    from onnxprune.io.calib_data import load_calibration
    from onnxprune.compress import compress

    model = onnxprune.load(DIGITS)
    calib = load_calibration(DATA / "digits_train.npz", model, samples=96)
    calls: list[tuple[str, int | None, int | None]] = []
    result = compress(model, Recipe(target_flops=0.5, measure=False), calib=calib, batch_size=32,
                      progress=lambda label, done=None, total=None: calls.append((label, done, total)))
    assert result.recovery is not None
    for step in ("scoring channels", "recovering"):
        counted = [(d, t) for label, d, t in calls if label.startswith(step) and d is not None]
        assert counted, f"no counts for {step}: {calls}"
        assert all(t and 0 < d <= t for d, t in counted) and counted[-1][0] == counted[-1][1]


def test_no_convolution_hint_on_a_transformer(monkeypatch, capsys, tmp_path):
    from tests.zoo_cache import zoo_path

    code, out, err = cli(monkeypatch, capsys, "prune", zoo_path("bert"), "-o", tmp_path / "b.onnx", "--ratio",
                         "0.3", "--no-measure")
    assert code == 0, err
    text = (out + err).replace(str(tmp_path), "").lower()
    assert "convolution" not in text and "hint" not in text


def test_auto_gives_transformers_kwon_et_al_recipe():
    from onnxprune.recipe import is_transformer
    from tests.zoo_cache import zoo_path

    bert = onnx.load(zoo_path("bert"))
    assert is_transformer(bert) and not is_transformer(onnx.load(DIGITS))
    r = resolve(Recipe(target_flops=0.67), Context(has_calib=True, transformer=True))
    assert (r.criterion, r.loss, r.projections, r.recovery_weighting, r.recover, r.ranking) == (
        "taylor-so", "fisher", 8, "fisher", ("lstsq", "scale"), "per-mac")
    cnn = resolve(Recipe(target_flops=0.67), Context(has_calib=True))
    assert (cnn.criterion, cnn.projections, cnn.recovery_weighting) == ("taylor-fo", 1, "uniform")
    free = resolve(Recipe(target_flops=0.67), Context(transformer=True))
    assert free.criterion == "l2" and free.recover == ()


def test_refits_match_the_residual_stream_unless_asked_otherwise(tmp_path):
    """``refit_target``: auto resolves to 'stream' (recovery's ``residual``) and the recipe
    line says so; 'layer' turns it off; anything else is refused naming the key; a recipe
    file round-trips it."""
    from onnxprune.compress import _recovery_options

    auto = resolve(Recipe(target_flops=0.5), Context(has_calib=True))
    assert auto.refit_target == "stream" and _recovery_options(auto)["residual"] is True
    assert "refits to the stream" in auto.describe()
    layer = resolve(Recipe(target_flops=0.5, refit_target="layer"), Context(has_calib=True))
    assert _recovery_options(layer)["residual"] is False and "refits to the layer" in layer.describe()
    assert "refits to" not in resolve(Recipe(target_flops=0.5), Context()).describe()  # no recovery, no target
    with pytest.raises(RecipeError, match="unknown refit target .output. .--refit-target"):
        Recipe(target_flops=0.5, refit_target="output")
    path = tmp_path / "r.toml"
    Recipe(target_flops=0.5, refit_target="layer").save(path)
    assert Recipe.load(path).refit_target == "layer"
