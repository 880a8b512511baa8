"""GPU kernel registration of the fused ops, checked without a GPU.

TensorFlow's kernel registry lists GPU kernels whether or not a GPU is present,
so a CPU-only machine can check that a CUDA build registered every
(T, mask dtype) pair. A build without CUDA fails here unless MASKED_OPS_CUDA=OFF
says it was meant; then no GPU kernel may be registered.
"""

import json
import os

import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import kernels

from masked_ops import _loader, specs

OPS = [spec.op_type + suffix for spec in specs.LOSSES for suffix in ("", "Grad")]
INPUT_DTYPES = ("DT_HALF", "DT_BFLOAT16", "DT_FLOAT", "DT_DOUBLE")
# The kernels take boolean masks and masks of the input dtype; Python converts others.
# Masks: bool, the input dtype, and float32 weights for 16-bit inputs.
EXPECTED_PAIRS = {(t, m) for t in INPUT_DTYPES for m in ("DT_BOOL", t)} | {
    ("DT_HALF", "DT_FLOAT"),
    ("DT_BFLOAT16", "DT_FLOAT"),
}


def _built_with_cuda():
    with open(_loader.BUILD_INFO_PATH) as f:
        info = json.load(f)
    assert isinstance(info.get("cuda"), bool), (
        f"{_loader.BUILD_INFO_PATH} must record whether the CUDA kernels were built "
        f'("cuda": true/false), got {info!r}; rebuild with: {_loader.REBUILD_HINT}'
    )
    return info["cuda"]


def _cuda_disabled_on_purpose():
    return os.environ.get("MASKED_OPS_CUDA", "").strip().upper() == "OFF"


def _gpu_kernels(op):
    """{(T, M): kernel_def} of the GPU kernels registered for op."""
    registered = {}
    for kernel in kernels.get_registered_kernels_for_op(op).kernel:
        if kernel.device_type != "GPU":
            continue
        allowed = {c.name: list(c.allowed_values.list.type) for c in kernel.constraint}
        assert set(allowed) == {"T", "M"}, f"{op}: unexpected constraints {allowed}"
        assert len(allowed["T"]) == 1 and len(allowed["M"]) == 1, f"{op}: {allowed}"
        pair = (types_pb2.DataType.Name(allowed["T"][0]), types_pb2.DataType.Name(allowed["M"][0]))
        assert pair not in registered, f"{op}: GPU kernel for {pair} registered twice"
        registered[pair] = kernel
    return registered


def test_build_info_records_cuda():
    built = _built_with_cuda()
    if not built and not _cuda_disabled_on_purpose():
        pytest.fail(
            "masked_ops was built without its CUDA kernels. Install the CUDA toolkit (nvcc) and "
            f"rebuild ({_loader.REBUILD_HINT}), or set MASKED_OPS_CUDA=OFF to state that a "
            "CPU-only build is intended."
        )


@pytest.mark.parametrize("op", OPS)
def test_gpu_kernels_registered_for_every_dtype(op):
    registered = _gpu_kernels(op)
    if not _built_with_cuda():
        assert _cuda_disabled_on_purpose(), (
            "built without CUDA kernels and MASKED_OPS_CUDA is not OFF; "
            "see test_build_info_records_cuda"
        )
        assert registered == {}, f"{op}: GPU kernels registered by a build without CUDA"
        return
    assert set(registered) == EXPECTED_PAIRS, (
        f"{op}: missing GPU kernels for {sorted(EXPECTED_PAIRS - set(registered))}, "
        f"unexpected {sorted(set(registered) - EXPECTED_PAIRS)}"
    )
    for pair, kernel in registered.items():
        # The scalar padding value is read on the host when the kernels are launched.
        assert list(kernel.host_memory_arg) == ["padding_value", "params"], f"{op} {pair}"
