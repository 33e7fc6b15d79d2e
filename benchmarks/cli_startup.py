"""Whole-process cost of the ``onnxprune`` command line: CPU time and peak memory of a
data-free ``prune`` and of ``analyze`` on ResNet-50, and of ``import onnxprune.cli``.

    python -m benchmarks.cli_startup [--model resnet50.onnx] [--runs 3] [--out benchmarks/results/cli_startup.json]

Without ``--model`` the zoo's ResNet-50 (full width, 1x3x224x224, dynamic batch axis) is
exported first (needs torch, in a separate process). Each command runs ``--runs`` times,
each in a fresh process started by a small wrapper process that reports the command's
``getrusage(RUSAGE_CHILDREN)``: user + system CPU seconds and peak RSS (ru_maxrss). The
wrapper imports nothing heavy, so the RSS a child inherits from its parent at exec time
(Linux counts the forked image in the child's high-water mark) is the wrapper's ~10 MiB.
Medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# run argv in a child; print its CPU seconds, peak RSS (bytes) and wall seconds as JSON
WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss": ru.ru_maxrss * 1024, "wall_s": wall}))
"""

EXPORT = """
import sys
from models import export_onnx
export_onnx("resnet50", sys.argv[1], input_shapes={"input": (1, 3, 224, 224)}, dynamic_batch=True)
"""


def onnxprune_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m onnxprune.cli``."""
    script = Path(sys.executable).with_name("onnxprune")
    if script.exists():
        return [str(script)]
    found = shutil.which("onnxprune")
    return [found] if found else [sys.executable, "-m", "onnxprune.cli"]


def measure(argv: list[str], runs: int) -> dict[str, float]:
    """Median (and all values) of CPU seconds, peak RSS (MiB) and wall seconds over ``runs`` processes."""
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, check=True)
        sample = json.loads(out.stdout)
        if sample["rc"] != 0:
            raise SystemExit(f"{' '.join(argv)} failed (exit {sample['rc']})")
        samples.append(sample)
    cpu = [s["cpu_s"] for s in samples]
    rss = [s["peak_rss"] / 2**20 for s in samples]
    wall = [s["wall_s"] for s in samples]
    return {"cpu_s": statistics.median(cpu), "peak_rss_mib": statistics.median(rss),
            "wall_s": statistics.median(wall), "cpu_s_all": cpu, "peak_rss_mib_all": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="ONNX model (default: export the zoo's ResNet-50)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_startup.json"))
    args = ap.parse_args()
    cli = onnxprune_command()
    with tempfile.TemporaryDirectory(prefix="onnxprune-cli-bench-") as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "resnet50.onnx"
            subprocess.run([sys.executable, "-c", EXPORT, str(model)], check=True)
        model_mib = model.stat().st_size / 2**20
        out = Path(tmp) / "out.onnx"
        prune = [*cli, "prune", str(model), "-o", str(out), "--ratio", "0.5", "--round-to", "8"]
        cases = {
            "import onnxprune.cli": [sys.executable, "-c", "import onnxprune.cli"],
            "prune --ratio 0.5 --round-to 8": prune,
            "analyze": [*cli, "analyze", str(model)],
        }
        if "--no-measure" in subprocess.run([*cli, "prune", "--help"], capture_output=True, text=True, check=False,
                                            env={**os.environ, "COLUMNS": "200"}).stdout:
            # prune ends with a speed measurement by default (both models run in onnxruntime)
            cases["prune ... --no-measure"] = [*prune, "--no-measure"]
        results = {name: measure(argv, args.runs) for name, argv in cases.items()}
    versions = {name: _version(name) for name in ("onnx", "ml_dtypes", "onnxruntime", "numpy", "typer")}
    print(f"model: {model.name}, {model_mib:.1f} MiB; median of {args.runs} processes; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"{'command':34} {'CPU s':>7} {'peak RSS MiB':>13} {'x model':>8} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:34} {r['cpu_s']:7.2f} {r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] / model_mib:8.2f} "
              f"{r['wall_s']:7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model.name), "model_mib": model_mib, "runs": args.runs,
                                    "command": cli, "versions": versions, "results": results}, indent=1))


def _version(dist: str) -> str:
    """Installed version of a distribution (import time depends on some: ml_dtypes 0.7.0's
    extension takes ~0.55 s of CPU to import, 0.6.0's ~5 ms; onnx imports it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    main()
