#!/usr/bin/env bash
# One command on a GPU machine: builds the CUDA kernels and the pybind11 binding
# for the local GPU only (no TensorFlow needed), then runs benchmarks/gpu_check.py
# on every loss of the loss table (correctness against the float64 oracle of
# tests/oracle.py, timing against PyTorch/JAX peers). Extra arguments go to
# gpu_check.py; PYTHON picks the interpreter (default python3), CMAKE the cmake
# binary (default cmake), CUDACXX the nvcc (default: the one on PATH; a CUDA 12
# nvcc for drivers older than R580).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CMAKE="${CMAKE:-cmake}"
BUILD="${MASKED_OPS_GPU_CHECK_BUILD:-$ROOT/build/gpu_check}"

die() {
  echo "gpu_check: $*" >&2
  exit 1
}

command -v "$PYTHON" >/dev/null || die "no Python interpreter '$PYTHON' (set PYTHON)"
"$PYTHON" -c "import numpy" 2>/dev/null || die "NumPy is not installed for $PYTHON: $PYTHON -m pip install numpy"
"$PYTHON" -c "import torch" 2>/dev/null || die "PyTorch is not installed for $PYTHON"
# tests/oracle.py (the float64 reference) needs ml_dtypes; JAX brings it.
"$PYTHON" -c "import ml_dtypes" 2>/dev/null || die "ml_dtypes is not installed for $PYTHON: $PYTHON -m pip install ml_dtypes"
# CuPy runs the reference on the GPU; without it the reference runs on the host
# and cases above 2^26 elements are reported as not run (gpu_check.py also falls
# back when CuPy is installed but cannot run).
"$PYTHON" -c "import cupy" 2>/dev/null ||
  echo "gpu_check: CuPy is not installed for $PYTHON: the float64 reference runs on the host (slower; cases above 2^26 elements not run)" >&2
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
  die "torch.cuda.is_available() is False: no usable CUDA GPU"
# Without pybind11 or the Python headers CMake only warns and skips the binding,
# and the build then fails on a missing target: check both here.
"$PYTHON" -m pybind11 --cmakedir >/dev/null 2>&1 ||
  die "pybind11 is not installed for $PYTHON: $PYTHON -m pip install pybind11"
"$PYTHON" - <<'EOF' || die "no Python development headers (Python.h) for $PYTHON: install python3-dev or the matching package"
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
# CMAKE_CUDA_ARCHITECTURES=native needs CMake 3.24.
command -v "$CMAKE" >/dev/null || die "CMake is not installed: $PYTHON -m pip install 'cmake>=3.24' (or set CMAKE)"
CMAKE_VERSION="$("$CMAKE" --version | head -n1 | sed -E 's/[^0-9]*([0-9]+\.[0-9]+(\.[0-9]+)?).*/\1/')"
"$PYTHON" -c "import sys; v = tuple(int(x) for x in sys.argv[1].split('.')[:2]); sys.exit(0 if v >= (3, 24) else 1)" "$CMAKE_VERSION" ||
  die "CMake $CMAKE_VERSION is too old: CMAKE_CUDA_ARCHITECTURES=native needs 3.24 or newer ($PYTHON -m pip install 'cmake>=3.24', or set CMAKE)"
if [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null; then
  die "nvcc is not on PATH: install the CUDA toolkit or set CUDACXX to its nvcc"
fi

"$CMAKE" -S "$ROOT" -B "$BUILD" \
  -DMASKED_OPS_BINDING_ONLY=ON \
  -DMASKED_OPS_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=native \
  -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$(command -v "$PYTHON")" \
  -DMASKED_OPS_OUTPUT_DIR="$BUILD/out"
"$CMAKE" --build "$BUILD" --target masked_ops_kernels --parallel "$(nproc)"

exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --module-dir "$BUILD/out" "$@"
