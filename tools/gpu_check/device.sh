#!/usr/bin/env bash
# One device call of the GPU check (docs/gpu.md, "The device run"): `bash tools/gpu_check/device.sh N`.
#
# Call N carries .cache/gpu-wheels/carry/call-NN (made by `make gpu-wheels`) and stashes its
# verified parts under $GPU_STASH (outside the checkout: it lives while the machine stays warm).
# Call 1 also prints what the machine has. The last call (the manifest's count) also carries
# the gRPC stubs and the base model version, joins and installs the wheels into
# $GPU_STASH/site and runs `python -m tools.gpu_check --require-cuda` with that folder first on
# the path; the JSON and the log go to $OUT (the device's return folder) when it is set.
# Rehearse it here with GPU_STASH=/tmp/fake GPU_REHEARSAL=1 (make gpu-device-rehearsal).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=$(printf '%02d' "$((10#$1))")
PYTHON=${PYTHON:-python3}
GPU_STASH=${GPU_STASH:-/tmp/recgen-gpu}
OUT_DIR=${OUT:-var/gpu-check-out}
mkdir -p "$OUT_DIR"
src=.cache/gpu-wheels/carry/call-$n
if [ "$n" = 01 ]; then
    { command -v nvidia-smi >/dev/null && nvidia-smi -L; } || echo "no nvidia-smi"
    $PYTHON -c 'import sys, torch, transformers, onnx, onnxruntime as o; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.is_available(), "transformers", transformers.__version__, "onnx", onnx.__version__, "ort", o.__version__, o.get_available_providers())' || true
    echo "make: $(command -v make || echo none); pip: $($PYTHON -m pip --version 2>/dev/null || echo none)"
fi
$PYTHON -m tools.gpu_check.wheels stash --from "$src" --stash "$GPU_STASH"
last=$($PYTHON -c 'import json, sys; print(json.load(open(sys.argv[1]))["calls"])' "$src/manifest.json")
if [ "$((10#$n))" -lt "$last" ]; then
    exit 0
fi
if [ -n "${GPU_REHEARSAL:-}" ]; then
    # Here the interpreter is not the device's 3.12: install the cp312 files as they are, then stop.
    $PYTHON -m tools.gpu_check.wheels install --stash "$GPU_STASH" --target "$GPU_STASH/site" --cross
    ls "$GPU_STASH/site" | head -40
    exit 0
fi
$PYTHON -m tools.gpu_check.wheels install --stash "$GPU_STASH" --target "$GPU_STASH/site"
export PYTHONPATH="$GPU_STASH/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PYTHON -m tools.gpu_check --require-cuda --out "$GPU_STASH/work" --json "$OUT_DIR/gpu_check.json" \
    ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
