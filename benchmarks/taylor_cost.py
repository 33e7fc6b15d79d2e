"""Cost of the Taylor calibration pass vs a plain forward+backward of the same network.

    python -m benchmarks.taylor_cost [--model resnet50] [--batch 32] [--size 96] [--batches 3] [--device cpu]

Plain: the zoo's torch module, forward + backward of cross-entropy w.r.t. all weights.
Taylor: onnxprune's calibration pass (torch execution of the exported ONNX graph with
per-example gates on every prunable unit, backward to the gates) for taylor-fo.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/taylor_cost.json"))
    args = ap.parse_args()
    from models import ZOO, export_onnx
    from onnxprune.analysis import analyze
    from onnxprune.api import load
    from onnxprune.scoring.calibrated import calibration_scores
    from onnxprune.io.calib_data import CalibrationData

    shape = (args.batch, 3, args.size, args.size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch * args.batches, *shape[1:])).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    module = ZOO[args.model].build().to(args.device)
    xt, yt = torch.from_numpy(x).to(args.device), torch.from_numpy(y).to(args.device)
    step = lambda i: torch.nn.functional.cross_entropy(  # noqa: E731
        module(xt[i * args.batch:(i + 1) * args.batch]), yt[i * args.batch:(i + 1) * args.batch]).backward()
    step(0)  # warm-up
    t = time.perf_counter()
    for i in range(args.batches):
        step(i)
    plain = (time.perf_counter() - t) / args.batches
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.model, Path(tmp) / "m.onnx", input_shapes={"input": (1, *shape[1:])},
                           dynamic_batch=True)
        model = load(path)
    analysis = analyze(model)
    data = CalibrationData({"input": x}, y)
    calibration_scores(model, analysis, data.take(args.batch), "taylor-fo", batch_size=args.batch,
                       device=args.device)  # warm-up
    t = time.perf_counter()
    calibration_scores(model, analysis, data, "taylor-fo", batch_size=args.batch, device=args.device)
    taylor = (time.perf_counter() - t) / args.batches
    result = {"model": args.model, "batch": args.batch, "input": list(shape[1:]), "device": args.device,
              "threads": torch.get_num_threads(), "plain_fwd_bwd_s": plain, "taylor_pass_s": taylor,
              "ratio": taylor / plain, "torch": torch.__version__}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
