"""Training-time pruning (onnxprune.train): fine-tuning and write-back, checkpoints with
exact resume, the distillation teacher, and the methods (one-shot + fine-tune, iterative
Molchanov 2016, SPP, learned thresholds) meeting their FLOPs budgets on a network trained
here (scikit-learn digits)."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from onnxprune.analysis import analyze  # noqa: E402
from onnxprune.api import load  # noqa: E402
from onnxprune.io.calib_data import load_calibration  # noqa: E402
from onnxprune.errors import OnnxPruneError, SelectionError  # noqa: E402
from onnxprune.analysis.flops import model_cost  # noqa: E402
from onnxprune.rewrite.masking import masked_model  # noqa: E402
from onnxprune.runtime.session import run  # noqa: E402
from onnxprune.torchexec import OnnxModule  # noqa: E402
from onnxprune.train import (  # noqa: E402
    METHODS,
    TeacherMismatchError,
    TrainingError,
    finetune,
    iterative_prune,
    learned_threshold_prune,
    oneshot_prune,
    spp_increment,
    spp_prune,
)
from onnxprune.train.batchnorm import recalibrate_batchnorm  # noqa: E402
from onnxprune.train.costs import UnitCosts  # noqa: E402
from onnxprune.train.units import UnitIndex  # noqa: E402
from onnxprune.verify.compare import verify  # noqa: E402
from tests.trained import digits_split, trained_residual_cnn  # noqa: E402

TARGET = 1 / 3  # 3x fewer FLOPs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: one torch thread is faster than two, and immune to busy machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A residual CNN with BatchNorm trained here on digits, its analysis and training data."""
    path = tmp_path_factory.mktemp("train") / "residual.onnx"
    trained_residual_cnn(path, epochs=10)
    model = load(path)
    (x_train, y_train), _ = digits
    data = load_calibration([{"input": x} for x in x_train], model, labels=y_train)
    return model, analyze(model), data


@pytest.fixture(scope="module")
def oneshot_pruned(trained):
    model, analysis, data = trained
    return oneshot_prune(model, data, target_flops=TARGET, analysis=analysis, steps=0)


def accuracy(model, digits) -> float:  # noqa: ANN001
    _, (x, y) = digits
    return float((run(model, {"input": x})["logits"].argmax(-1) == y).mean())


def structure(model: onnx.ModelProto):  # noqa: ANN201
    nodes = [(n.name, n.op_type, tuple(n.input), tuple(n.output), n.SerializeToString(deterministic=True) if
              n.op_type == "Constant" else b"") for n in model.graph.node]
    inits = [(t.name, tuple(t.dims), t.data_type) for t in model.graph.initializer]
    io = [vi.SerializeToString(deterministic=True) for vi in [*model.graph.input, *model.graph.output]]
    return nodes, inits, io


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


# -- fine-tuning and write-back ---------------------------------------------------------------------

def test_finetuned_model_keeps_its_graph_and_matches_torch(trained, oneshot_pruned, digits):
    model, _, data = trained
    pruned = oneshot_pruned.model
    result = finetune(pruned, data, teacher=model, steps=15, batch_size=32, lr=1e-3)
    out = result.model
    assert structure(out) == structure(pruned)
    onnx.checker.check_model(out, full_check=True)
    before, after = weights(pruned), weights(out)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    _, (x, _) = digits
    ort = run(out, {"input": x[:64]})["logits"]
    with torch.no_grad():
        ref = OnnxModule(out)(input=torch.as_tensor(x[:64])).numpy()
    np.testing.assert_allclose(ort, ref, atol=1e-4, rtol=1e-4)
    assert result.steps == 15 and len(result.losses) == 15


def test_finetune_at_3x_fewer_flops_improves_heldout_accuracy(trained, oneshot_pruned, digits):
    model, analysis, data = trained
    tuned = oneshot_prune(model, data, target_flops=TARGET, analysis=analysis, steps=120, lr=2e-3)
    assert tuned.plan == oneshot_pruned.plan
    assert tuned.achieved_flops <= tuned.target_flops <= TARGET * tuned.original_flops
    assert model_cost(tuned.model).flops <= tuned.target_flops
    plain, trained_acc = accuracy(oneshot_pruned.model, digits), accuracy(tuned.model, digits)
    print(f"\none-shot taylor-fo at 1/3 FLOPs: held-out {plain:.3f} -> {trained_acc:.3f} after 120 steps")
    assert trained_acc > plain + 0.2


def test_labels_only_and_both_losses(trained, oneshot_pruned):
    model, _, data = trained
    ce = finetune(oneshot_pruned.model, data, steps=3, batch_size=32)  # labels, no teacher
    both = finetune(oneshot_pruned.model, data, teacher=model, steps=3, batch_size=32, ce_weight=0.5)
    assert ce.steps == both.steps == 3
    unlabeled = load_calibration([{"input": x} for x in data.inputs["input"][:64]], model)
    with pytest.raises(TrainingError, match="nothing to train on"):
        finetune(oneshot_pruned.model, unlabeled, steps=1)
    with pytest.raises(TrainingError, match="needs labels"):
        finetune(oneshot_pruned.model, unlabeled, teacher=model, ce_weight=1.0, steps=1)
    with pytest.raises(TrainingError, match="optimizer"):
        finetune(oneshot_pruned.model, data, teacher=model, optimizer="lion", steps=1)


def test_batchnorm_recalibration_sets_input_statistics(trained):
    model, _, data = trained
    module = OnnxModule(model)
    x = data.inputs["input"]
    assert recalibrate_batchnorm(module, {"input": x}, samples=len(x)) > 0
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    with torch.no_grad(), module.capture([bn.input[0]]) as seen:
        module(input=torch.as_tensor(x))
    stem = seen[bn.input[0]]  # the first BatchNorm: its input does not depend on other statistics
    np.testing.assert_allclose(module.parameter(bn.input[3]).detach().numpy(), stem.mean((0, 2, 3)).numpy(),
                               rtol=1e-4, atol=1e-5)


# -- checkpoints ----------------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def interrupt_at(step: int):  # noqa: ANN201
    def fn(s: int, loss: float) -> None:
        if s == step:
            raise Interrupt

    return fn


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, trained, oneshot_pruned):
    model, _, data = trained
    options = dict(teacher=model, steps=24, batch_size=64, lr=1e-3, seed=3)
    full = finetune(oneshot_pruned.model, data, **options)
    ckpt = tmp_path / "ft.ckpt"
    with pytest.raises(Interrupt):  # dies after step 13; the last checkpoint is at step 10
        finetune(oneshot_pruned.model, data, checkpoint=ckpt, checkpoint_every=5, on_step=interrupt_at(13),
                 **options)
    resumed = finetune(oneshot_pruned.model, data, resume=ckpt, **options)
    assert resumed.steps == 24 and resumed.losses == full.losses
    for name, value in weights(full.model).items():
        np.testing.assert_array_equal(weights(resumed.model)[name], value, err_msg=name)


@pytest.mark.parametrize("method, options", [
    ("spp", dict(update_every=1, A=0.2)),
    ("iterative", dict(steps_per_round=3, channels_per_round=6)),
    ("learned-threshold", {}),
])
def test_pruning_methods_resume_equals_uninterrupted_run(tmp_path, trained, method, options):
    """The methods' own state (SPP probabilities and random masks, removed units, thresholds)
    resumes exactly too."""
    model, analysis, data = trained
    options = dict(target_flops=TARGET, analysis=analysis, steps=30, batch_size=64, seed=1, **options)
    full = METHODS[method](model, data, **options)
    ckpt = tmp_path / f"{method}.ckpt"
    with pytest.raises(Interrupt):
        METHODS[method](model, data, checkpoint=ckpt, checkpoint_every=4, on_step=interrupt_at(21), **options)
    resumed = METHODS[method](model, data, resume=ckpt, **options)
    assert resumed.plan == full.plan and resumed.notes == full.notes
    for name, value in weights(full.model).items():
        np.testing.assert_array_equal(weights(resumed.model)[name], value, err_msg=name)


def test_checkpoint_of_another_run_is_refused(tmp_path, trained, oneshot_pruned):
    model, _, data = trained
    ckpt = tmp_path / "a.ckpt"
    finetune(oneshot_pruned.model, data, teacher=model, steps=2, checkpoint=ckpt)
    with pytest.raises(OnnxPruneError, match="does not match"):
        finetune(oneshot_pruned.model, data, teacher=model, steps=4, batch_size=16, resume=ckpt)
    with pytest.raises(OnnxPruneError, match="does not match"):
        finetune(model, data, teacher=model, steps=4, resume=ckpt)  # the unpruned model
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(OnnxPruneError, match="not a readable"):
        finetune(model, data, teacher=model, steps=1, resume=tmp_path / "junk.ckpt")


# -- teacher and bad input ----------------------------------------------------------------------------------

def _tiny_classifier(classes: int, output: str = "logits") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((64, classes)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
         helper.make_node("MatMul", ["flat", "w"], [output], name="matmul")], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", classes])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("teacher, fragment", [
    (_tiny_classifier(5), "'logits' has shape"),
    (_tiny_classifier(10, "scores"), "outputs differ"),
])
def test_mismatched_teacher_is_refused(trained, teacher, fragment):
    model, _, data = trained
    with pytest.raises(TeacherMismatchError, match=fragment):
        finetune(model, data, teacher=teacher, steps=1)
    with pytest.raises(TeacherMismatchError):
        spp_prune(model, data, target_flops=TARGET, teacher=teacher, steps=1)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unreachable_budget_says_so(trained, method):
    model, analysis, data = trained
    with pytest.raises(SelectionError, match="cannot be reached"):
        METHODS[method](model, data, target_flops=0.001, analysis=analysis, steps=1)


# -- the methods ------------------------------------------------------------------------------------------------

def _check_pruned(result, model, analysis, digits) -> float:  # noqa: ANN001
    """Budget met, masked-and-fine-tuned == pruned, verify works; returns held-out accuracy."""
    assert result.achieved_flops <= result.target_flops <= TARGET * result.original_flops + 1e-6
    assert model_cost(result.model).flops == result.achieved_flops
    _, (x, _) = digits
    feeds = {"input": x[:200]}
    masked = masked_model(result.finetuned, analysis, result.plan)
    np.testing.assert_allclose(run(result.model, feeds)["logits"], run(masked, feeds)["logits"], atol=1e-4,
                               rtol=1e-4)
    report = verify(result.finetuned, result.model, feeds, runs=1)
    assert report["macs_ratio"] <= TARGET
    onnx.checker.check_model(result.model, full_check=True)
    return accuracy(result.model, digits)


@pytest.mark.parametrize("method", ["iterative", "spp", "learned-threshold"])
def test_training_methods_meet_the_budget_and_recover(trained, oneshot_pruned, digits, method):
    model, analysis, data = trained
    common = dict(target_flops=TARGET, analysis=analysis, steps=100, batch_size=64, lr=2e-3, ce_weight=0.0)
    if method == "iterative":
        result = iterative_prune(model, data, steps_per_round=4, channels_per_round=4, **common)
        assert result.plan.options["rounds"] >= 2
    elif method == "spp":
        result = spp_prune(model, data, update_every=1, A=0.1, **common)
    else:
        result = learned_threshold_prune(model, data, **common)
    acc = _check_pruned(result, model, analysis, digits)
    print(f"\n{method}: held-out {acc:.3f} at {result.achieved_flops / result.original_flops:.1%} FLOPs "
          f"(one-shot, no training: {accuracy(oneshot_pruned.model, digits):.3f}); notes: {result.notes}")
    assert acc > accuracy(oneshot_pruned.model, digits) + 0.2


def test_iterative_respects_round_to(trained, digits):
    model, analysis, data = trained
    result = iterative_prune(model, data, target_flops=0.5, analysis=analysis, steps=12, steps_per_round=3,
                             channels_per_round=2, round_to=4, batch_size=64)
    sizes = {g.id: g.size for g in analysis.prunable_groups}
    assert result.plan.keep and all(len(k) % 4 == 0 or len(k) == sizes[g] for g, k in result.plan.keep.items())
    assert result.achieved_flops <= result.target_flops


# -- pieces -------------------------------------------------------------------------------------------------------

def test_spp_increment_is_centre_symmetric_and_crosses_zero_at_the_target():
    n, ratio, A, u = 40, 0.25, 0.05, 0.25
    r = np.arange(n, dtype=float)
    d = spp_increment(r, n, ratio, A, u)
    assert d[0] == pytest.approx(A)
    assert (d[: int(ratio * n)] > 0).all() and (d[int(ratio * n) + 1:] < 0).all()
    assert spp_increment(np.array([ratio * n]), n, ratio, A, u)[0] == pytest.approx(0.0, abs=1e-12)
    alpha = np.log(2 / u) / (ratio * n)
    n_c = -np.log(u) / alpha
    for x in (0.5, 1.0, 2.0, 3.0):  # symmetric about (N_c, u A)
        lo, hi = spp_increment(np.array([n_c - x, n_c + x]), n, ratio, A, u)
        assert lo + hi == pytest.approx(2 * u * A)
    assert np.all(np.diff(d) < 0)


def test_soft_flops_are_exact_for_hard_masks(trained):
    model, analysis, _ = trained
    units = UnitIndex(analysis)
    costs = UnitCosts(model, analysis, units)
    rng = np.random.default_rng(0)
    for _ in range(5):
        removed = rng.random(units.n_units) < 0.4
        soft = costs.soft_flops(torch.as_tensor((~removed).astype(np.float32)).double())
        assert float(soft) == pytest.approx(costs.flops(removed), rel=1e-9)


def test_cli_finetune(tmp_path, monkeypatch, capsys, trained, oneshot_pruned):
    from onnxprune.cli import main
    from onnxprune.io.modelio import save_model

    model, _, data = trained
    pruned_path, teacher_path, out = tmp_path / "pruned.onnx", tmp_path / "teacher.onnx", tmp_path / "tuned.onnx"
    save_model(oneshot_pruned.model, pruned_path)
    save_model(model, teacher_path)
    np.savez(tmp_path / "data.npz", input=data.inputs["input"][:256], labels=data.labels[:256])
    args = ["onnxprune", "finetune", str(pruned_path), "--teacher", str(teacher_path), "--calib",
            str(tmp_path / "data.npz"), "--labels", "labels", "--steps", "6", "--batch-size", "32",
            "--checkpoint", str(tmp_path / "c.ckpt"), "-o", str(out)]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    assert exc.value.code in (0, None), capsys.readouterr().err
    assert "fine-tuned 6 steps" in capsys.readouterr().out
    assert structure(onnx.load(out)) == structure(onnx.load(pruned_path))
    assert (tmp_path / "c.ckpt").exists()
    bad = tmp_path / "bad_teacher.onnx"
    onnx.save(_tiny_classifier(5), bad)
    monkeypatch.setattr(sys, "argv", [*args[:3], "--teacher", str(bad), *args[5:-1], str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    assert "teacher does not match" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
