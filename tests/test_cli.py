"""The command line: happy paths, and every bad input gets a clear one-line error, a
non-zero exit, and nothing written."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.cli import main
from tests.graphs import pass_fixture


def cli(monkeypatch, capsys, *args: object, columns: int = 200) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``onnxprune ARGS`` in a terminal ``columns`` wide."""
    monkeypatch.setattr(sys, "argv", ["onnxprune", *map(str, args)])
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(pass_fixture(), path)
    return path


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_analyze_prints_groups_and_blocked(monkeypatch, capsys, model_path):
    code, out, _ = cli(monkeypatch, capsys, "analyze", model_path)
    assert code == 0
    assert "Channel groups" in out and "graph output" in out


def test_analyze_json(monkeypatch, capsys, model_path):
    code, out, _ = cli(monkeypatch, capsys, "analyze", model_path, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["summary"]["prunable_groups"] == 4
    assert any("graph output" in b["reason"] for b in data["blocked"])


def test_prune_save_plan_and_replay(monkeypatch, capsys, model_path, tmp_path):
    out1, plan = tmp_path / "p1.onnx", tmp_path / "plan.json"
    code, out, _ = cli(monkeypatch, capsys, "prune", model_path, "-o", out1, "--ratio", "0.5", "--save-plan", plan)
    assert code == 0, out
    assert out1.exists() and plan.exists()
    out2 = tmp_path / "p2.onnx"
    code, _, _ = cli(monkeypatch, capsys, "prune", model_path, "-o", out2, "--plan", plan)
    assert code == 0
    assert onnx.load(out1).SerializeToString() == onnx.load(out2).SerializeToString()
    onnx.checker.check_model(onnx.load(out1), full_check=True)


def test_verify_writes_json(monkeypatch, capsys, model_path, tmp_path):
    pruned, report = tmp_path / "p.onnx", tmp_path / "r.json"
    assert cli(monkeypatch, capsys, "prune", model_path, "-o", pruned, "--ratio", "0.3")[0] == 0
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32))
    code, out, _ = cli(monkeypatch, capsys, "verify", model_path, pruned, "--inputs", inputs, "--runs", "3",
                       "--json", report)
    assert code == 0
    data = json.loads(report.read_text())
    assert data["pruned"]["params"] < data["original"]["params"]
    assert data["outputs"]["y"]["original_shape"] == data["outputs"]["y"]["pruned_shape"] == [1, 3]


def test_verify_refuses_a_model_that_is_not_a_pruned_copy(monkeypatch, capsys, model_path, tmp_path):
    other = tmp_path / "other.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), other)
    code, _, err = cli(monkeypatch, capsys, "verify", model_path, other, "--runs", "1")
    assert code != 0
    assert "graph inputs differ" in err and "other.onnx" in err and "unexpected" not in err


def _bad_model_files(tmp_path, model_path):
    text = tmp_path / "text.onnx"
    text.write_text("this is not an onnx model\n" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    broken = tmp_path / "broken.onnx"
    m = pass_fixture()
    m.graph.node[0].input[1] = "does_not_exist"
    onnx.save(m, broken)
    noshape = tmp_path / "noshape.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), noshape)
    return {
        "missing": (tmp_path / "missing.onnx", "not found"),
        "text": (text, "not"),
        "truncated": (truncated, "not"),
        "checker": (broken, "checker"),
        "no-shape": (noshape, "no shape information"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "checker", "no-shape"])
@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_bad_model_files(monkeypatch, capsys, tmp_path, model_path, case, command):
    path, fragment = _bad_model_files(tmp_path, model_path)[case]
    before = _files(tmp_path)
    args = [command, path] + (["-o", tmp_path / "out.onnx", "--ratio", "0.5"] if command == "prune" else [])
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code != 0
    assert "error:" in err and fragment in err
    assert str(path.name) in err
    assert len(err.strip().splitlines()) <= 2  # one line (rich may wrap a long one)
    assert _files(tmp_path) == before


def test_usage_errors_are_reported_as_such(monkeypatch, capsys, model_path, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", "--ratio")
    assert code == 2 and "--ratio" in err and "unexpected" not in err
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", "--no-such-option")
    assert code == 2 and "no-such-option" in err and "unexpected" not in err


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_ratio_out_of_range(monkeypatch, capsys, tmp_path, model_path, ratio):
    before = _files(tmp_path)
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", f"--ratio={ratio}")
    assert code != 0 and "ratio" in err
    assert _files(tmp_path) == before


def test_plan_for_another_model(monkeypatch, capsys, tmp_path, model_path):
    other = tmp_path / "other.onnx"
    onnx.save(pass_fixture(shared_weight=True), other)
    plan = tmp_path / "plan.json"
    assert cli(monkeypatch, capsys, "prune", other, "-o", tmp_path / "o1.onnx", "--ratio", "0.5",
               "--save-plan", plan)[0] == 0
    before = _files(tmp_path)
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o2.onnx", "--plan", plan)
    assert code != 0 and "another model" in err
    assert _files(tmp_path) == before


def test_output_equal_to_input_is_refused(monkeypatch, capsys, tmp_path, model_path):
    original = model_path.read_bytes()
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", model_path, "--ratio", "0.5")
    assert code != 0 and "input model" in err
    assert model_path.read_bytes() == original
    alias = tmp_path / "." / "model.onnx"
    assert cli(monkeypatch, capsys, "prune", model_path, "-o", alias, "--ratio", "0.5")[0] != 0


def test_ratio_and_plan_are_exclusive(monkeypatch, capsys, tmp_path, model_path):
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx")
    assert code != 0 and "exactly one" in err
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", "--ratio", "0.5",
                       "--target-flops", "0.5")
    assert code != 0 and "exactly one" in err and "--target-flops" in err


def test_input_shape_option_rescues_shapeless_model(monkeypatch, capsys, tmp_path, model_path):
    m = pass_fixture()
    m.graph.input[0].type.tensor_type.ClearField("shape")
    del m.graph.value_info[:]
    path = tmp_path / "noshape.onnx"
    onnx.save(m, path)
    code, out, _ = cli(monkeypatch, capsys, "analyze", path, "--input-shape", "x=1,4,6,6", "--json")
    assert code == 0
    assert json.loads(out)["summary"]["prunable_groups"] == 4


def test_unknown_criterion(monkeypatch, capsys, tmp_path, model_path):
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", "--ratio", "0.5",
                       "--criterion", "nope")
    assert code != 0 and "unknown criterion" in err
    assert not (tmp_path / "o.onnx").exists()


def test_prune_with_recovery(monkeypatch, capsys, tmp_path):
    import os

    data = os.path.join(os.path.dirname(__file__), "..", "onnxprune", "data")
    out, report = tmp_path / "r.onnx", tmp_path / "recovery.json"
    code, text, err = cli(monkeypatch, capsys, "prune", os.path.join(data, "digits_cnn.onnx"), "-o", out,
                          "--target-flops", "0.5", "--calib", os.path.join(data, "digits_train.npz"),
                          "--calib-samples", "128", "--recover", "all", "--recovery-report", report)
    assert code == 0, err
    assert "recovery: output MSE" in text
    rep = json.loads(report.read_text())
    assert rep["updated"]["lstsq"] and rep["mse"]["recovered"] < rep["mse"]["pruned"]
    code, _, err = cli(monkeypatch, capsys, "prune", os.path.join(data, "digits_cnn.onnx"), "-o", tmp_path / "x.onnx",
                       "--ratio", "0.3", "--recover", "bias")
    assert code != 0 and "--calib" in err


@pytest.mark.parametrize("flag", [["--method", "spp"], ["--method", "learned-threshold"], ["--schedule", "iterative"]])
def test_prune_with_training_methods(monkeypatch, capsys, tmp_path, flag):
    import os

    pytest.importorskip("torch")
    data = os.path.join(os.path.dirname(__file__), "..", "onnxprune", "data")
    model = os.path.join(data, "digits_cnn.onnx")
    out, plan = tmp_path / "t.onnx", tmp_path / "plan.json"
    code, text, err = cli(monkeypatch, capsys, "prune", model, "-o", out, *flag, "--target-flops", "0.5",
                          "--calib", os.path.join(data, "digits_train.npz"), "--calib-samples", "128",
                          "--train-steps", "12", "--batch-size", "32", "--save-plan", plan)
    assert code == 0, err
    assert "achieved" in text and out.exists()
    options = json.loads(plan.read_text())["options"]
    assert options["method"] == options["schedule"] == flag[1]  # the method asked for is the one that ran
    onnx.checker.check_model(onnx.load(out), full_check=True)
    code, _, err = cli(monkeypatch, capsys, "prune", model, "-o", tmp_path / "x.onnx", *flag, "--ratio", "0.3")
    assert code != 0 and "--calib" in err


@pytest.mark.parametrize("external", [False, True])
def test_prune_of_a_mapped_model_matches_the_in_memory_api(monkeypatch, capsys, tmp_path, external):
    """`prune` without calibration loads the model mapped (weights stay in the file); it
    writes what the in-memory API writes for the same plan, and leaves the input alone."""
    import onnxprune
    from onnxprune.analysis import analyze
    from onnxprune.plan import Plan
    from tests.test_mapped import _big_model

    src = tmp_path / "big.onnx"
    onnx.save_model(_big_model(shared=True), str(src), save_as_external_data=external,
                    all_tensors_to_one_file=True, location="big.onnx.data", size_threshold=0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out, plan = tmp_path / "out.onnx", tmp_path / "plan.json"
    code, text, _ = cli(monkeypatch, capsys, "prune", src, "-o", out, "--ratio", "0.4", "--save-plan", plan)
    assert code == 0, text
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    model = onnxprune.load(src)
    api = tmp_path / "api.onnx"
    onnxprune.save_model(onnxprune.apply_plan(model, analyze(model), Plan.load(plan)).model, api)
    assert (tmp_path / "out.onnx.data").exists() == external
    assert onnx.load(str(out)).SerializeToString() == onnx.load(str(api)).SerializeToString()


def test_prune_transformer_post_training_recipe(monkeypatch, capsys, tmp_path):
    """Kwon et al.'s recipe from the command line: Fisher scores with several projections,
    a FLOPs budget allocated by score per MAC, Fisher-weighted least-squares / scale refits."""
    pytest.importorskip("torch")
    from tests.zoo_cache import zoo_path

    rng = np.random.default_rng(0)
    mask = np.ones((48, 16), dtype=np.int64)
    mask[:, 12:] = 0  # padded tokens: Fisher weighting gives them no weight
    data = tmp_path / "tokens.npz"
    np.savez(data, ids=rng.integers(0, 1000, (48, 16)).astype(np.int64), attention_mask=mask)
    out, report = tmp_path / "bert.onnx", tmp_path / "recovery.json"
    args = ["prune", zoo_path("bert"), "-o", out, "--criterion", "taylor-so", "--loss", "fisher", "--projections", "2",
            "--calib", data, "--batch-size", "16", "--target-flops", "0.7", "--ranking", "per-mac",
            "--recover", "lstsq,scale", "--recovery-weighting", "fisher", "--recovery-report", report]
    code, text, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "achieved" in text and "recovery: output MSE" in text
    rep = json.loads(report.read_text())
    assert rep["weighting"] == "fisher" and rep["methods"] == ["lstsq", "scale"]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    code, _, err = cli(monkeypatch, capsys, *args[:-4], "--recovery-weighting", "heavy")
    assert code != 0 and "--recovery-weighting" in err
    code, _, err = cli(monkeypatch, capsys, *args[:8], "--projections", "0", *args[10:16])
    assert code != 0 and "projections" in err


def test_alignment_is_on_by_default_and_can_be_switched_off(monkeypatch, capsys, model_path, tmp_path):
    """The default recipe aligns kept counts to the CPU's channel block (printed in the recipe
    line); --align 1 switches it off and keeps the plain rounding."""
    from onnxprune.selection.latency import channel_block

    block = channel_block("cpu")
    code, out, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "a.onnx", "--ratio", "0.3",
                         "--save-plan", tmp_path / "a.json", "--no-measure")
    assert code == 0, err
    assert f"align {block}" in out
    aligned = json.loads((tmp_path / "a.json").read_text())
    assert aligned["options"]["recipe"]["align"] == block
    code, out, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "b.onnx", "--ratio", "0.3",
                         "--align", "1", "--save-plan", tmp_path / "b.json", "--no-measure")
    assert code == 0, err
    assert "no alignment" in out
    plain = json.loads((tmp_path / "b.json").read_text())
    assert plain["options"]["recipe"]["align"] == 1
    sizes = {gid: len(g["keep"]) for gid, g in plain["groups"].items()}
    assert any(n % block for n in sizes.values()), "the unaligned plan should keep some count off the block"
    for gid, g in aligned["groups"].items():
        n = len(g["keep"])
        assert n % block == 0 or n == g["size"] or n < block, (gid, n)


def test_demo_prunes_aligned_and_reports(monkeypatch, capsys, tmp_path):
    """README's first command: the demo prunes the shipped digits CNN with aligned channel
    counts, writes the model and verifies it (accuracy table and speedup line)."""
    code, out, err = cli(monkeypatch, capsys, "demo", "--output-dir", tmp_path)
    assert code == 0, err
    assert (tmp_path / "digits_cnn_pruned.onnx").exists()
    assert "prunable channels removed" in out and "aligned to" in out
    assert "top-1" in out and "speedup (p50)" in out
    onnx.checker.check_model(onnx.load(tmp_path / "digits_cnn_pruned.onnx"), full_check=True)


def test_refit_target_flag_reaches_the_recipe(monkeypatch, capsys, tmp_path):
    """``--refit-target layer`` shows in the recipe line (the default says stream); an unknown
    value is a one-line error and writes nothing."""
    import os

    data = os.path.join(os.path.dirname(__file__), "..", "onnxprune", "data")
    args = ("prune", os.path.join(data, "digits_cnn.onnx"), "--target-flops", "0.5", "--criterion", "l2",
            "--calib", os.path.join(data, "digits_train.npz"), "--calib-samples", "64", "--recover", "lstsq",
            "--no-measure")
    for flag, said in (([], "refits to the stream"), (["--refit-target", "layer"], "refits to the layer")):
        code, text, err = cli(monkeypatch, capsys, *args, "-o", tmp_path / "r.onnx", *flag)
        assert code == 0, err
        assert said in next(line for line in text.splitlines() if line.startswith("recipe:")), text
    code, text, err = cli(monkeypatch, capsys, *args, "-o", tmp_path / "bad.onnx", "--refit-target", "output")
    assert code == 1 and "unknown refit target 'output'" in text + err
    assert not (tmp_path / "bad.onnx").exists()


def test_prune_without_a_terminal_logs_long_runs_steps(monkeypatch, capsys, model_path, tmp_path):
    """stderr not a terminal (a log file): a step starting after PLAIN_STEPS_AFTER_S is one plain
    line with the elapsed time, user text (a path with brackets) printed as it is; a quick run
    prints no step line."""
    from onnxprune import cli as cli_module

    out = tmp_path / "[b]x[red].onnx"
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", out, "--ratio", "0.5")
    assert code == 0 and "] rewriting the graph" not in err
    monkeypatch.setattr(cli_module, "PLAIN_STEPS_AFTER_S", 0)
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", out, "--ratio", "0.5")
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("[0:")]
    assert lines[0] == "[0:00] loading and inferring shapes"
    assert any(line.endswith("] rewriting the graph") for line in lines)
    assert any(line.endswith(f"] writing {out}") for line in lines), err


def test_steps_before_the_threshold_are_printed_with_the_first_late_one(monkeypatch, capsys):
    """A run that passes PLAIN_STEPS_AFTER_S prints the earlier steps' lines too (the whole log),
    each with the time it started; [brackets] in a step's text are printed, not read as markup."""
    import itertools

    from onnxprune import cli as cli_module

    clock = itertools.count(0, 4)  # the start, then every step 4 s later
    monkeypatch.setattr(cli_module.time, "monotonic", lambda: float(next(clock)))
    steps = cli_module._Steps(debug=False)
    steps._lines = True  # as without a terminal
    steps("loading [x].onnx")
    steps("scoring")
    assert capsys.readouterr().err == ""  # 4 s and 8 s: held
    steps("rewriting")
    steps("rewriting", 1, 2)  # counts of the same step: no new line
    assert capsys.readouterr().err.splitlines() == ["[0:04] loading [x].onnx", "[0:08] scoring", "[0:12] rewriting"]
    steps("writing")
    assert capsys.readouterr().err.splitlines() == ["[0:16] writing"]


def test_a_full_disk_is_one_clear_line_and_exit_1(monkeypatch, capsys, model_path, tmp_path):
    """No space left (the output's disk, or the temporary files a large model's sessions read):
    a one-line error naming the file and TMPDIR, exit 1, not an 'unexpected' failure."""
    import errno

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/onnxprune-session-x/weights.bin")

    monkeypatch.setattr("onnxprune.api.apply_plan", full)  # compress imports it when it runs
    code, _, err = cli(monkeypatch, capsys, "prune", model_path, "-o", tmp_path / "o.onnx", "--ratio", "0.5")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No space left on device: /tmp/onnxprune-session-x")
    assert "TMPDIR" in lines[0] and "unexpected" not in lines[0]
    assert not (tmp_path / "o.onnx").exists()
