#!/usr/bin/env bash
# CI: the README's first set-up, alone in a fresh virtual environment ('.[cpu]': no torch),
# runs every data-free command on the shipped digits model; what needs torch names the extra.
# Usage: .ci/fresh_setup.sh [VENV_DIR]   (default /tmp/fresh; recreated)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/fresh}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e '.[cpu]'
if "$venv/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    echo "fresh set-up: torch is installed by '.[cpu]'; it must not be" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp onnxprune/data/digits_cnn.onnx onnxprune/data/digits_test.npz "$work/"
cd "$work"
run() {
    echo "fresh set-up: onnxprune $*"
    "$venv/bin/onnxprune" "$@" >"$work/log" 2>&1 || { cat "$work/log" >&2; echo "fresh set-up: FAILED: onnxprune $*" >&2; exit 1; }
}
run prune digits_cnn.onnx -o small.onnx --ratio 0.3
run prune digits_cnn.onnx -o half.onnx --target-flops 0.5
run analyze digits_cnn.onnx
run verify digits_cnn.onnx small.onnx
run demo --output-dir "$work/demo"   # README's first command

# calibration scoring needs torch: one clean line naming the extra, exit 1, nothing written
set +e
"$venv/bin/onnxprune" prune digits_cnn.onnx -o calib.onnx --ratio 0.3 --calib digits_test.npz \
    --criterion taylor-fo >/dev/null 2>"$work/err"
code=$?
set -e
if [ "$code" -ne 1 ] || ! grep -q "needs torch: pip install -c constraints.txt 'onnxprune\[torch\]'" "$work/err" \
        || [ -e calib.onnx ]; then
    cat "$work/err" >&2
    echo "fresh set-up: FAILED: prune --calib without torch must exit 1 naming onnxprune[torch] (got $code)" >&2
    exit 1
fi
echo "fresh set-up: OK (prune --ratio, prune --target-flops, analyze, verify, demo; --calib names the torch extra)"
