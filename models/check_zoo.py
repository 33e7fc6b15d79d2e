"""Verify every zoo model exports to ONNX and matches torch in ONNX Runtime.

Usage::

    python -m models.check_zoo                       # legacy exporter, widths 1.0 and 0.5
    python -m models.check_zoo --dynamo --widths 0.5  # also try the dynamo exporter
    python -m models.check_zoo --models vgg yolo --dynamic-batch --fold-bn

Prints a table (name, width, exporter mode, #nodes, #BatchNormalization
nodes, #params, opset, max |onnx - torch|) and exits non-zero if any model
fails. Exporter modes: ``legacy`` (BN kept), ``+fold`` (legacy, Conv+BN fused),
``+dyn`` (dynamic batch, checked at batch 3), ``dynamo``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from .zoo import ZOO, _flatten, export_onnx, make_inputs

TOL = 1e-4


@dataclass
class Result:
    """Outcome of one export + compare run."""

    name: str
    width: float
    exporter: str
    nodes: int = 0
    bn_nodes: int = 0
    params: int = 0
    opset: int = 0
    max_diff: float = float("nan")
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.max_diff <= TOL


def _torch_outputs(name: str, width: float, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = ZOO[name].build(width=width)
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[k]) for k in feeds))
    return [t.numpy() for t in _flatten(out)]


def check(name: str, width: float, workdir: Path, *, dynamo: bool = False, dynamic_batch: bool = False,
          keep_bn: bool = True, batch: int | None = None) -> Result:
    """Export ``name`` at ``width``, run it in ORT and compare with torch (on ``batch`` samples if set)."""
    label = ("dynamo" if dynamo else "legacy") + ("+fold" if not (keep_bn or dynamo) else "")
    res = Result(name, width, label + ("+dyn" if dynamic_batch else ""))
    t0 = time.perf_counter()
    try:
        path = export_onnx(name, workdir / f"{name}_{width}_{res.exporter}.onnx", width=width, dynamo=dynamo,
                           dynamic_batch=dynamic_batch, keep_bn=keep_bn)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        res.nodes = len(proto.graph.node)
        res.bn_nodes = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        res.opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        res.params = int(sum(np.prod(t.dims) for t in proto.graph.initializer))
        feeds = make_inputs(name, batch=batch)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)
        ref = _torch_outputs(name, width, feeds)
        if len(got) != len(ref):
            raise RuntimeError(f"{len(got)} ONNX outputs vs {len(ref)} torch outputs")
        for g, r in zip(got, ref):
            if g.shape != r.shape:
                raise RuntimeError(f"shape mismatch {g.shape} vs {r.shape}")
        res.max_diff = float(max(np.abs(g - r).max() for g, r in zip(got, ref)))
    except Exception as exc:  # noqa: BLE001 - report and continue
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        if "--verbose" in sys.argv:
            traceback.print_exc()
    res.seconds = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--widths", nargs="*", type=float, default=[1.0, 0.5])
    ap.add_argument("--dynamo", action="store_true", help="also check the dynamo exporter")
    ap.add_argument("--dynamic-batch", action="store_true", help="also check dynamic batch export (batch 3)")
    ap.add_argument("--fold-bn", action="store_true", help="also check legacy export with Conv+BN fused")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    modes = [dict(dynamo=False, dynamic_batch=False, keep_bn=True)]
    if args.fold_bn:
        modes.append(dict(dynamo=False, dynamic_batch=False, keep_bn=False))
    if args.dynamic_batch:
        modes.append(dict(dynamo=False, dynamic_batch=True, keep_bn=True))
    if args.dynamo:
        modes.append(dict(dynamo=True, dynamic_batch=False, keep_bn=True))
        if args.dynamic_batch:
            modes.append(dict(dynamo=True, dynamic_batch=True, keep_bn=True))

    header = (f"{'model':<22}{'width':>6} {'exporter':<12}{'nodes':>6}{'BN':>5}{'params':>12}{'opset':>6}"
              f"{'max_diff':>10}{'sec':>6}  status")
    print(header)
    print("-" * len(header))
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for width in args.widths:
                for mode in modes:
                    r = check(name, width, Path(tmp), batch=3 if mode["dynamic_batch"] else None, **mode)
                    results.append(r)
                    status = "ok" if r.ok else ("FAIL " + r.error if r.error else "FAIL tolerance")
                    if r.ok and r.opset != 17:
                        status += f" (opset {r.opset}, not 17)"
                    print(f"{r.name:<22}{r.width:>6.2f} {r.exporter:<12}{r.nodes:>6}{r.bn_nodes:>5}{r.params:>12,}"
                          f"{r.opset:>6}{r.max_diff:>10.2e}{r.seconds:>6.1f}  {status}", flush=True)
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} passed (tolerance {TOL:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
