#!/bin/sh
# The GPU check: correctness of `integrad serve --device cuda` against the CPU, and
# its speed (Explain latency at 50 and 300 steps, throughput at 8 concurrent, Captum on the
# same GPU when PyTorch + Captum are there). One command, no Rust, no network; see
# docs/devices.md and scripts/gpu_check.py --help.
#
#   scripts/gpu_check.sh --binary PATH/integrad --ort-dir DIR_WITH_ORT_GPU_LIBS [--out DIR]
#   scripts/gpu_check.sh --cpu-only --steps 8 --large-steps 16 --runs 2   # no GPU: the flow only
#
# Environment instead of flags: INTEGRAD_BIN, INTEGRAD_ORT_GPU_DIR, OUT; PYTHON picks the
# Python (default: python3 in PATH, whose site-packages/nvidia/*/lib go on LD_LIBRARY_PATH).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if ! "$python" -c "import numpy" 2>/dev/null; then
    echo "gpu_check: $python cannot import numpy; set PYTHON to a Python with numpy" >&2
    exit 2
fi
# A hard bound, well inside the 8 minutes the check is sized for.
exec timeout --signal=TERM 470 "$python" "$here/gpu_check.py" "$@"
