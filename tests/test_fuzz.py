"""Fuzzed bad inputs through the command line (issue 16): byte truncations and flips of
model files, structural corruption, external-data faults, bad calibration / input .npz
files and bad plan JSON, each run in-process through ``onnxprune.cli.main``.

The invariant, for every case: exit 0 with a valid output that onnxruntime runs and that
keeps the model's interface (input and output names), or exit 1/2 with exactly one clean
line on stderr (``error: ...``, never "unexpected") and nothing written; the input files
never change. Cases are seeded per (family, index): a failing id reproduces alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import pass_fixture
from tests.test_cli import cli as run_cli

# a different seed or more cases per family, for a longer hunt: ONNXPRUNE_FUZZ_SEED=7 ONNXPRUNE_FUZZ_SCALE=10
SEED = int(os.environ.get("ONNXPRUNE_FUZZ_SEED", "1616"))
SCALE = float(os.environ.get("ONNXPRUNE_FUZZ_SCALE", "1"))
DIGITS = Path(__file__).parent.parent / "onnxprune" / "data" / "digits_cnn.onnx"
BASES = ("digits", "fixture", "shared")
NO_MEASURE = "--no-measure"  # the speed measurement runs each model thousands of times: not what is fuzzed here


@dataclass
class Run:
    """One CLI run: its arguments, the files it must not change, where it may write."""

    argv: list[str]
    model: Path  # the input model (its interface must survive a successful prune)
    watch: list[Path] = field(default_factory=list)
    out_dir: Path | None = None
    outputs: list[Path] = field(default_factory=list)  # models a successful run writes
    reference: Path | None = None  # the unmutated base: its input sizes stand in for symbolic ones


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """The base models, written once (each case mutates a copy)."""
    folder = tmp_path_factory.mktemp("bases")
    paths = {"digits": folder / "digits.onnx", "fixture": folder / "fixture.onnx", "shared": folder / "shared.onnx"}
    shutil.copy(DIGITS, paths["digits"])
    onnx.save(pass_fixture(), paths["fixture"])
    onnx.save(pass_fixture(shared_weight=True), paths["shared"])
    return paths


def _plan_dict(path: Path) -> dict:
    from onnxprune.analysis import analyze
    from onnxprune.api import load, plan_by_ratio

    model = load(path)
    analysis = analyze(model)
    return plan_by_ratio(model, analysis, ratio=0.3).to_dict()


# -- helpers --------------------------------------------------------------------------------------
def _copy_base(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> tuple[str, Path]:
    """A copy of a base model (chosen by ``rng``) in ``tmp/in``, for a case to mutate."""
    name = BASES[int(rng.integers(len(BASES)))]
    src = tmp / "in" / f"{name}.onnx"
    src.parent.mkdir(exist_ok=True)
    shutil.copy(bases[name], src)
    return name, src


def _out_dir(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    return out


def _command(rng: np.random.Generator, model: Path, tmp: Path, reference: Path, original: Path | None = None) -> Run:
    """prune ``model`` (60%), analyze it (25%) or verify it against ``original`` (15%, else analyze)."""
    out = _out_dir(tmp)
    pick = rng.random()
    if pick < 0.6:
        target = out / "pruned.onnx"
        budget = ["--ratio", "0.3"] if rng.random() < 0.7 else ["--target-flops", "0.6"]
        return Run(["prune", str(model), "-o", str(target), *budget, NO_MEASURE], model, [model], out, [target],
                   reference)
    if original is None or pick < 0.85:
        return Run(["analyze", str(model)], model, [model], out, reference=reference)
    return Run(["verify", str(original), str(model), "--runs", "1", "--warmup", "0", "--json", str(out / "r.json")],
               model, [model, original], out, reference=reference)


# -- families ------------------------------------------------------------------------------------
def bytes_case(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> Run:
    """A model file truncated, with flipped bytes, a zeroed span or a duplicated span."""
    name, src = _copy_base(rng, bases, tmp)
    original = tmp / "in" / "original.onnx"
    shutil.copy(src, original)
    data = bytearray(src.read_bytes())
    kind = ("truncate", "flip", "zero", "splice")[int(rng.integers(4))]
    if kind == "truncate":
        data = data[:int(rng.integers(1, len(data)))]
    elif kind == "flip":
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
            data[pos] ^= int(rng.integers(1, 256))
    elif kind == "zero":
        start = int(rng.integers(len(data)))
        n = min(int(rng.integers(1, 64)), len(data) - start)
        data[start:start + n] = bytes(n)
    else:
        a, b = sorted(int(v) for v in rng.integers(0, len(data), size=2))
        data = data[:b] + data[a:b] + data[b:]
    src.write_bytes(bytes(data))
    return _command(rng, src, tmp, bases[name], original)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:  # noqa: ANN001
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


BAD_ATTRS: dict[str, list[tuple[str, object]]] = {
    "Conv": [("group", 0), ("group", 3), ("group", -1), ("strides", [0, 0]), ("strides", [1]),
             ("pads", [-1, -1, -1, -1]), ("pads", [1, 1]), ("kernel_shape", [5, 5]), ("kernel_shape", [3]),
             ("dilations", [0, 0]), ("dilations", [1]), ("auto_pad", "SAME_LOWER"), ("auto_pad", "BOGUS"), ("strides", 2.5)],
    "Gemm": [("transB", 2), ("transA", 1), ("alpha", float("nan")), ("beta", 0.0)],
    "Flatten": [("axis", 9), ("axis", -9), ("axis", 0)],
    "MaxPool": [("kernel_shape", [9, 9]), ("kernel_shape", [0, 0]), ("strides", [0, 0]), ("ceil_mode", 7)],
    "BatchNormalization": [("epsilon", -1.0), ("momentum", float("inf")), ("training_mode", 1)],
    "Concat": [("axis", 5), ("axis", -7)],
    "Split": [("axis", 4)],
    "Slice": [("bogus", 1)],
    "Reshape": [("allowzero", 7)],
    "Mul": [("broadcast", 1)],
}


def _bad_attribute(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    nodes = [n for n in m.graph.node if n.op_type in BAD_ATTRS]
    node = nodes[int(rng.integers(len(nodes)))]
    name, value = BAD_ATTRS[node.op_type][int(rng.integers(len(BAD_ATTRS[node.op_type])))]
    _set_attr(node, name, value)


def _pick(rng: np.random.Generator, seq):  # noqa: ANN001, ANN202
    return seq[int(rng.integers(len(seq)))]


def _reshape_weight(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    t = _pick(rng, [t for t in m.graph.initializer if len(t.dims) >= 2])
    a = numpy_helper.to_array(t)
    shape = _pick(rng, [(a.shape[0], -1), (-1,), (*a.shape, 1), (1, *a.shape)])
    t.CopyFrom(numpy_helper.from_array(a.reshape(shape), t.name))


def _wrong_dims(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    t = _pick(rng, list(m.graph.initializer))
    dims = list(t.dims) or [1]
    change = int(rng.integers(4))
    if change == 0:
        dims[0] *= 2
    elif change == 1:
        dims = dims[::-1]
    elif change == 2:
        dims.append(3)
    else:
        dims[int(rng.integers(len(dims)))] = 0
    del t.dims[:]
    t.dims.extend(dims)


def _retype(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    if rng.random() < 0.5:
        m.graph.input[0].type.tensor_type.elem_type = _pick(rng, [TensorProto.INT64, TensorProto.DOUBLE,
                                                                  TensorProto.FLOAT16, TensorProto.BFLOAT16,
                                                                  TensorProto.STRING, TensorProto.UINT8, 99])
    else:
        t = _pick(rng, list(m.graph.initializer))
        t.data_type = _pick(rng, [TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16, 77])


def _truncate_raw(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    t = _pick(rng, [t for t in m.graph.initializer if t.HasField("raw_data") and len(t.raw_data) > 4])
    t.raw_data = t.raw_data[:int(rng.integers(0, len(t.raw_data)))]


def _input_shape(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    shape = m.graph.input[0].type.tensor_type
    if rng.random() < 0.4:
        shape.ClearField("shape")
    else:
        dim = shape.shape.dim[int(rng.integers(len(shape.shape.dim)))]
        choice = int(rng.integers(3))
        if choice == 0:
            dim.dim_value = -3
        elif choice == 1:
            dim.dim_value = 0
        else:
            dim.dim_value = 5  # a wrong fixed size


def _graph_edit(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    g = m.graph
    nodes = g.node
    kind = int(rng.integers(9))
    i = int(rng.integers(len(nodes)))
    if kind == 0:  # a dangling input
        node = nodes[i]
        node.input[int(rng.integers(len(node.input)))] = "ghost_tensor"
    elif kind == 1:  # a node removed
        del nodes[i]
    elif kind == 2:  # two nodes writing the same tensor
        j = (i + 1) % len(nodes)
        nodes[j].output[0] = nodes[i].output[0]
    elif kind == 3:  # a cycle
        nodes[0].input[0] = nodes[-1].output[0]
    elif kind == 4:  # nodes out of order
        a, b = nodes[0], nodes[-1]
        first, last = onnx.NodeProto(), onnx.NodeProto()
        first.CopyFrom(a)
        last.CopyFrom(b)
        nodes[0].CopyFrom(last)
        nodes[-1].CopyFrom(first)
    elif kind == 5:  # an unknown op in the default domain
        nodes[i].op_type = _pick(rng, ["Conv2", "", "Relu6", "conv"])
    elif kind == 6:  # an output that nothing produces
        g.output[0].name = "nowhere"
    elif kind == 7:  # an initializer removed
        del g.initializer[int(rng.integers(len(g.initializer)))]
    else:  # an initializer given twice
        g.initializer.add().CopyFrom(g.initializer[int(rng.integers(len(g.initializer)))])


def _opset(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    if rng.random() < 0.8:
        m.opset_import[0].version = _pick(rng, [1, 6, 9, 12, 21, 25, 99, 1000])
    else:
        m.ir_version = _pick(rng, [1, 2, 3, 99])


STRUCTURAL: list[Callable[[onnx.ModelProto, np.random.Generator], None]] = [
    _bad_attribute, _reshape_weight, _wrong_dims, _retype, _truncate_raw, _input_shape, _graph_edit, _opset]


def structural_case(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> Run:
    """A model with one structural fault: attribute, weight shape or type, graph wiring, opset."""
    name, src = _copy_base(rng, bases, tmp)
    original = tmp / "in" / "original.onnx"
    shutil.copy(src, original)
    m = onnx.load(src)
    STRUCTURAL[int(rng.integers(len(STRUCTURAL)))](m, rng)
    src.write_bytes(m.SerializeToString())
    return _command(rng, src, tmp, bases[name], original)


def external_case(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> Run:
    """A model with its weights in a .data file, and a fault in that file or its references."""
    name, src = _copy_base(rng, bases, tmp)
    folder = tmp / "ext"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(onnx.load(src), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=int(_pick(rng, [0, 256])))
    data = folder / "model.onnx.data"
    outside = tmp / "outside.data"
    fault = _pick(rng, ["none", "missing", "truncate", "empty", "flip", "dotdot", "absolute", "symlink_out",
                        "symlink_in", "directory", "offset", "length", "location"])
    refs = onnx.load(path, load_external_data=False)
    external = [t for t in refs.graph.initializer if t.data_location == TensorProto.EXTERNAL]

    def set_key(key: str, value: str) -> None:
        t = _pick(rng, external)
        for e in t.external_data:
            if e.key == key:
                e.value = value
                break
        else:
            t.external_data.add(key=key, value=value)
        onnx.save(refs, path)

    raw = data.read_bytes()
    if fault == "missing":
        data.unlink()
    elif fault == "truncate":
        data.write_bytes(raw[:int(rng.integers(len(raw)))])
    elif fault == "empty":
        data.write_bytes(b"")
    elif fault == "flip":  # other weights: a valid model
        flipped = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=4):
            flipped[pos] ^= 0x40
        data.write_bytes(bytes(flipped))
    elif fault in ("dotdot", "absolute", "symlink_out", "symlink_in"):
        target = outside if fault != "symlink_in" else folder / "real.data"
        shutil.move(data, target)
        if fault == "dotdot":
            set_key("location", "../outside.data")
        elif fault == "absolute":
            set_key("location", str(outside))
        else:
            os.symlink(target, data)
    elif fault == "directory":
        data.unlink()
        data.mkdir()
    elif fault == "offset":
        set_key("offset", _pick(rng, ["-8", "abc", str(len(raw) + 64), "1"]))
    elif fault == "length":
        set_key("length", _pick(rng, ["-1", "3", str(len(raw) * 2), "x"]))
    elif fault == "location":
        set_key("location", _pick(rng, ["", "nope.data", "model.onnx", ".", "sub/../../x"]))
    run = _command(rng, path, tmp, bases[name], src)
    run.watch += [p for p in (data, outside, folder / "real.data") if p.is_file()]
    return run


def _good_feeds(model: Path, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    from onnxprune.runtime.session import random_inputs

    feeds = random_inputs(onnx.load(model), seed=int(rng.integers(1000)))
    return {k: np.repeat(v, n, axis=0) if v.ndim and v.shape[0] == 1 and n > 1 else v for k, v in feeds.items()}


def npz_case(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> Run:
    """A calibration / inputs file (verify --calib / --inputs) that is not what it should be."""
    name, src = _copy_base(rng, bases, tmp)
    batch = 1 if name != "digits" else 4  # the fixtures have a fixed batch of 1
    feeds = _good_feeds(src, rng, batch)
    key = next(iter(feeds))
    f = tmp / "in" / "data.npz"
    fault = _pick(rng, ["none", "objects", "text", "truncate", "flip", "rank", "axis", "strings", "ints", "nan",
                        "empty", "missing", "scalar", "labels_len", "labels_str", "npy"])
    arrays: dict[str, np.ndarray] = dict(feeds)
    labels: list[str] = []
    if fault == "objects":
        arrays[key] = np.array([feeds[key], None], dtype=object)
    elif fault == "rank":
        arrays[key] = feeds[key][0]
    elif fault == "axis":
        arrays[key] = np.concatenate([feeds[key], feeds[key]], axis=1)
    elif fault == "strings":
        arrays[key] = np.array(["a"] * batch)
    elif fault == "ints":
        arrays[key] = feeds[key].astype(np.int64)
    elif fault == "nan":
        arrays[key] = feeds[key].copy()
        arrays[key].flat[0] = np.nan
    elif fault == "empty":
        arrays[key] = feeds[key][:0]
    elif fault == "missing":
        arrays = {"something_else": feeds[key]}
    elif fault == "scalar":
        arrays[key] = np.float32(1.0)
    elif fault in ("labels_len", "labels_str"):
        arrays["labels"] = np.arange(batch + 3) if fault == "labels_len" else np.array(["cat"] * batch)
        labels = ["--labels", "labels"]
    if fault == "text":
        f.write_text("input = 1, 2, 3\n")
    elif fault == "npy":
        np.save(f.with_suffix(".npy"), feeds[key])
        f.with_suffix(".npy").rename(f)
    else:
        np.savez(f, **arrays) if fault != "objects" else np.savez(f, allow_pickle=True, **arrays)
        if fault in ("truncate", "flip"):
            raw = bytearray(f.read_bytes())
            if fault == "truncate":
                raw = raw[:int(rng.integers(1, len(raw)))]
            else:
                for pos in rng.integers(0, len(raw), size=3):
                    raw[pos] ^= 0xA5
            f.write_bytes(bytes(raw))
    out = _out_dir(tmp)
    option = "--calib" if rng.random() < 0.5 else "--inputs"
    return Run(["verify", str(src), str(src), option, str(f), *labels, "--runs", "1", "--warmup", "0",
                "--json", str(out / "r.json")], src, [src, f], out, reference=bases[name])


def plan_case(rng: np.random.Generator, bases: dict[str, Path], tmp: Path) -> Run:
    """A --plan file that is not a plan, or not this model's."""
    name, src = _copy_base(rng, bases, tmp)
    plan = _plan_dict(src)
    text = json.dumps(plan)
    gid = next(iter(plan["groups"]))
    group = plan["groups"][gid]
    fault = _pick(rng, ["none", "truncate", "flip", "garbage", "scalar", "drop_key", "groups_list", "keep_str",
                        "keep_values", "size", "unknown_group", "fingerprint", "version", "merges", "criterion",
                        "options", "deep"])
    if fault == "truncate":
        text = text[:int(rng.integers(len(text)))]
    elif fault == "flip":
        chars = list(text)
        for pos in rng.integers(0, len(chars), size=2):
            chars[pos] = chr(int(rng.integers(32, 127)))
        text = "".join(chars)
    elif fault == "garbage":
        text = rng.bytes(64).decode("latin-1")
    elif fault == "scalar":
        text = _pick(rng, ["null", "[]", "42", '"plan"', "true"])
    elif fault == "deep":
        text = "[" * 100000 + "]" * 100000
    else:
        if fault == "drop_key":
            del plan[_pick(rng, ["format_version", "fingerprint", "groups"])]
        elif fault == "groups_list":
            plan["groups"] = list(plan["groups"].values())
        elif fault == "keep_str":
            group["keep"] = "0,1,2"
        elif fault == "keep_values":
            group["keep"] = _pick(rng, [[], [-1, 0], [0, 0, 1], [0, group["size"]], [0.5, 1], [None], [True, 2],
                                        [10**30], list(range(group["size"]))])
        elif fault == "size":
            group["size"] = _pick(rng, [group["size"] + 1, 0, -4, "8", None, 1.5])
        elif fault == "unknown_group":
            plan["groups"]["no_such_group"] = group
        elif fault == "fingerprint":
            plan["fingerprint"] = _pick(rng, ["0" * 32, "", None, 7])
        elif fault == "version":
            plan["format_version"] = _pick(rng, [2, 0, "1", None])
        elif fault == "merges":
            plan["merges"] = _pick(rng, [{gid: [[0, 1]]}, {gid: "x"}, [1], {gid: [[99, 0, 1.0]]}])
        elif fault == "criterion":
            plan["criterion"] = _pick(rng, [3, ["l2"], {"a": 1}])
        elif fault == "options":
            plan["options"] = _pick(rng, [[1, 2], "x", 5])
        text = json.dumps(plan)
    f = tmp / "in" / "plan.json"
    f.write_text(text, encoding="latin-1" if fault == "garbage" else "utf-8")
    out = _out_dir(tmp)
    target = out / "pruned.onnx"
    return Run(["prune", str(src), "-o", str(target), "--plan", str(f), NO_MEASURE], src, [src, f], out, [target],
               bases[name])


FAMILIES: dict[str, tuple[Callable[..., Run], int]] = {
    "bytes": (bytes_case, 40),
    "structural": (structural_case, 60),
    "external": (external_case, 30),
    "npz": (npz_case, 30),
    "plan": (plan_case, 30),
}
CASES = [(family, i) for family, (_, n) in FAMILIES.items() for i in range(max(1, round(n * SCALE)))]


# -- the invariant ---------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interface(path: Path) -> tuple[list[str], list[str]]:
    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [vi.name for vi in m.graph.input if vi.name not in inits], [vi.name for vi in m.graph.output]


def _feeds(path: Path, reference: Path) -> dict[str, np.ndarray]:
    """Random inputs for ``path``: its static sizes; for a symbolic one, the reference
    model's size on that axis (else 1)."""
    from onnxprune.runtime.session import random_inputs

    def dims(m: onnx.ModelProto) -> dict[str, list]:
        return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
                for vi in m.graph.input}

    model = onnx.load(path, load_external_data=False)
    ref = dims(onnx.load(reference))
    shapes = {}
    for name, own in dims(model).items():
        other = ref.get(name, [])
        shapes[name] = [d if d else (other[i] if i < len(other) and other[i] else 1) for i, d in enumerate(own)]
    return random_inputs(model, shapes=shapes)


def _check_output(path: Path, model: Path, reference: Path) -> None:
    """A written model: passes the full checker, runs in onnxruntime, keeps the interface."""
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    assert _interface(path) == _interface(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, _feeds(path, reference))
    assert [o.name for o in sess.get_outputs()] == _interface(model)[1] and len(outs) == len(_interface(model)[1])


def cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str, str]:
    return run_cli(monkeypatch, capsys, *argv, columns=1000)


@pytest.mark.parametrize(("family", "index"), CASES, ids=[f"{f}-{i}" for f, i in CASES])
def test_fuzzed_input_is_refused_cleanly_or_pruned_correctly(monkeypatch, capsys, tmp_path, bases, family, index):
    make, _ = FAMILIES[family]
    rng = np.random.default_rng([SEED, list(FAMILIES).index(family), index])
    run = make(rng, bases, tmp_path)
    before = {p: _digest(p) for p in run.watch}
    code, _, err = cli(monkeypatch, capsys, run.argv)
    for p, digest in before.items():
        assert p.is_file() and _digest(p) == digest, f"{p} changed"
    written = sorted(p.name for p in run.out_dir.iterdir()) if run.out_dir else []
    assert not [n for n in written if n.startswith(".")], f"temporary files left: {written}"
    if code == 0:
        for out in run.outputs:
            _check_output(out, run.model, run.reference)
        return
    lines = err.strip().splitlines()
    assert code in (1, 2), err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0], err
    assert not written, f"failed run wrote {written}"
