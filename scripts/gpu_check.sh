#!/usr/bin/env bash
# The device check, as one short run: GPU tests and the GPU benchmark, results as files.
#
#   OUT=some/dir bash scripts/gpu_check.sh
#
# Written for the lent GPU machines (torch, torchvision, scikit-image preinstalled; no
# napari, no pymmcore-plus, no network): it runs from the source tree with PYTHONPATH=src
# and only needs what the classifier and the benchmark import.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" \
    > "$OUT/torch.txt" 2>&1
# GPU tests only (the rest of the suite needs napari and pymmcore-plus).
"$PY" -m pytest tests/test_classify.py -m gpu -q -p no:xvfb -p no:cacheprovider \
    > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests exit $?" >> "$OUT/gpu_tests.txt"
"$PY" - > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.err" <<'PYEOF'
import json
from napari_foram.bench import run_benchmarks
print(json.dumps(run_benchmarks(device="cuda", quick=False), indent=2))
PYEOF
cat "$OUT/gpu.csv" "$OUT/gpu_tests.txt" "$OUT/bench_gpu.json"
