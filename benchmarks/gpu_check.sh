#!/usr/bin/env bash
# One command on a GPU machine: builds the CUDA kernels and the pybind11 binding
# for the local GPU only (no TensorFlow needed), then runs benchmarks/gpu_check.py
# (correctness against float64, timing against PyTorch/JAX peers). Extra
# arguments go to gpu_check.py; PYTHON picks the interpreter (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
BUILD="${MASKED_OPS_GPU_CHECK_BUILD:-$ROOT/build/gpu_check}"

"$PYTHON" -c "import torch" 2>/dev/null || {
  echo "gpu_check: PyTorch is not installed for $PYTHON" >&2
  exit 1
}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: torch.cuda.is_available() is False: no usable CUDA GPU" >&2
  exit 1
}

cmake -S "$ROOT" -B "$BUILD" \
  -DMASKED_OPS_BINDING_ONLY=ON \
  -DMASKED_OPS_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=native \
  -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$(command -v "$PYTHON")" \
  -DMASKED_OPS_OUTPUT_DIR="$BUILD/out"
cmake --build "$BUILD" --target masked_ops_kernels --parallel "$(nproc)"

exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --module-dir "$BUILD/out" "$@"
