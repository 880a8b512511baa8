"""The CUDA side's checks that need no GPU: the driver/runtime decision and the
GPU kernel registration that follows from it (with a stand-in libcuda.so.1
reporting an old or a new driver), the warning masked_ops gives, and the
binding's CUDA-path validation (streams, alignment, mask dtypes), which runs
before any CUDA call. Only the last test needs a GPU."""

import ctypes
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from masked_ops import _loader, kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _built_with_cuda():
    with open(_loader.BUILD_INFO_PATH) as f:
        return bool(json.load(f).get("cuda"))


def _library():
    lib = ctypes.CDLL(_loader.LIBRARY_PATH)  # the handle TensorFlow loaded
    try:
        lib.MaskedOpsCudaDriverProblem.restype = ctypes.c_int
    except AttributeError:
        pytest.fail(
            f"{_loader.LIBRARY_PATH} lacks the CUDA driver check (MaskedOpsCudaDriverProblem); "
            f"rebuild it: {_loader.REBUILD_HINT}"
        )
    lib.MaskedOpsGpuKernelsUnavailableReason.restype = ctypes.c_char_p
    return lib


def driver_problem(driver, runtime):
    lib = _library()
    size = lib.MaskedOpsCudaDriverProblem(driver, runtime, None, 0)
    buf = ctypes.create_string_buffer(size + 1)
    assert lib.MaskedOpsCudaDriverProblem(driver, runtime, buf, size + 1) == size
    return buf.value.decode()


# ---------------------------------------------------------------------------
# The decision: the static runtime needs a driver of at least its major version.


@pytest.mark.parametrize(
    "driver,runtime",
    [
        (13000, 13000),
        (13020, 13000),
        (13000, 13010),
        (12020, 12080),
        (12080, 12000),
        (13000, 12080),
    ],
)
def test_driver_supporting_the_runtime_major_runs_the_kernels(driver, runtime):
    # Minor-version compatibility: any 12.x runtime runs on any 12.x driver.
    assert driver_problem(driver, runtime) == ""


@pytest.mark.parametrize(
    "driver,runtime,release",
    [(12080, 13000, "580"), (12020, 13000, "580"), (11080, 12080, "525"), (12090, 13010, "580")],
)
def test_old_driver_message_names_the_driver_and_the_rebuild(driver, runtime, release):
    message = driver_problem(driver, runtime)
    major, minor = divmod(driver, 1000)
    assert f"built with CUDA {runtime // 1000}.{runtime % 1000 // 10}" in message
    assert f"release {release} or newer" in message
    assert f"supports CUDA {major}.{minor // 10} only" in message
    assert f"CUDA {major} toolkit" in message
    assert "CUDACXX=" in message and "CMAKE_CUDA_COMPILER" in message


def test_no_driver_is_named_as_such():
    assert "no NVIDIA driver was found" in driver_problem(0, 13000)


def test_loaded_library_reports_consistent_versions():
    lib = _library()
    runtime = lib.MaskedOpsCudaRuntimeVersion()
    driver = lib.MaskedOpsCudaDriverVersion()
    reason = lib.MaskedOpsGpuKernelsUnavailableReason().decode()
    if not _built_with_cuda():
        assert (runtime, driver, reason) == (0, 0, "")
        return
    assert runtime >= 11000
    # Kernels are withheld only when a driver is present and too old for them.
    expected = driver != 0 and driver_problem(driver, runtime) != ""
    assert bool(reason) == expected, (driver, runtime, reason)
    assert kernels.cuda_runtime_version == runtime


# ---------------------------------------------------------------------------
# Registration with a stand-in driver library, in a fresh process each.

FAKE_LIBCUDA = """
int cuDriverGetVersion(int* version) { *version = %d; return 0; }
int cuInit(unsigned flags) { (void)flags; return 100; /* CUDA_ERROR_NO_DEVICE */ }
"""

PROBE = """
import importlib.util, json, sys, warnings
# The masked_ops package the test runs against, whatever else is installed.
spec = importlib.util.spec_from_file_location(
    "masked_ops", PACKAGE + "/__init__.py", submodule_search_locations=[PACKAGE])
sys.modules["masked_ops"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["masked_ops"])
import tensorflow as tf
from tensorflow.python.framework import kernels as tf_kernels
from masked_ops import _loader

def devices(op):
    return sorted(k.device_type for k in tf_kernels.get_registered_kernels_for_op(op).kernel)

ops = [op for op in ("MaskedOps>SquaredError", "MaskedSquaredError")
       if tf_kernels.get_registered_kernels_for_op(op).kernel]
library_reason = _loader._library_gpu_reason()
no_gpu_reason = _loader.gpu_kernels_unavailable_reason()
# As if TensorFlow saw a GPU: the hook must now report (and warn) once.
_loader._gpu_reason.clear()
tf.config.list_physical_devices = lambda kind=None: ["/physical_device:GPU:0"]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = _loader.gpu_kernels_unavailable_reason()
    second = _loader.gpu_kernels_unavailable_reason()
import masked_ops
y = tf.constant([[1.0, 2.0], [3.0, 5.0]])
loss = float(masked_ops.masked_mse(y, tf.zeros_like(y), tf.constant([True, False])))
print(json.dumps({
    "devices": {op: devices(op) for op in ops},
    "library_reason": library_reason,
    "no_gpu_reason": no_gpu_reason,
    "first": first,
    "second": second,
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
    "loss": loss,
}))
"""


def _c_compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang", "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no C compiler found to build the stand-in libcuda.so.1 (set CC)")


def _probe_with_driver(tmp_path, version):
    src = tmp_path / "fake_libcuda.c"
    src.write_text(FAKE_LIBCUDA % version)
    lib = tmp_path / "libcuda.so.1"
    subprocess.run(
        [_c_compiler(), "-x", "c", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True
    )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(tmp_path), env.get("LD_LIBRARY_PATH")) if p
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    package = os.path.dirname(os.path.abspath(_loader.__file__))
    done = subprocess.run(
        [sys.executable, "-c", f"PACKAGE = {package!r}\n" + PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_old_driver_withholds_the_gpu_kernels_and_warns_once(tmp_path):
    result = _probe_with_driver(tmp_path, 12020)  # an R535 driver: CUDA 12.2
    assert result["devices"], "no masked-loss op is registered"
    assert result["loss"] == pytest.approx(2.5)  # the op still runs (on the CPU here)
    if not _built_with_cuda():
        # Nothing to withhold: no GPU kernels exist and nothing is reported.
        assert result["library_reason"] == "" and result["first"] is None
        for devices in result["devices"].values():
            assert "GPU" not in devices
        return
    runtime = kernels.cuda_runtime_version
    if runtime < 13000:
        pytest.fail(f"this check assumes kernels built with CUDA 13 (got {runtime})")
    reason = result["library_reason"]
    assert reason.startswith("masked_ops: GPU kernels not registered; masked losses run on the")
    assert "The masked_ops CUDA kernels were built with CUDA 13." in reason
    assert "release 580 or newer" in reason and "supports CUDA 12.2 only" in reason
    assert "CUDACXX=/usr/local/cuda-12/bin/nvcc" in reason
    assert "pure-TensorFlow ops" in reason
    for op, devices in result["devices"].items():
        assert "GPU" not in devices, op
        assert "CPU" in devices, op
    assert result["no_gpu_reason"] is None  # no GPU visible: the CPU kernels serve
    assert result["first"] == result["second"] == reason
    assert result["warnings"] == [reason]


def test_new_enough_driver_registers_the_gpu_kernels(tmp_path):
    result = _probe_with_driver(tmp_path, 13000)
    assert result["library_reason"] == "" and result["first"] is None
    assert result["warnings"] == []
    for op, devices in result["devices"].items():
        assert ("GPU" in devices) == _built_with_cuda(), (op, devices)


def test_hook_warns_once_only_when_a_gpu_is_visible(monkeypatch):
    text = "masked_ops: stand-in reason"
    monkeypatch.setattr(_loader, "_library_gpu_reason", lambda: text)
    monkeypatch.setattr(_loader, "_gpu_reason", [])
    monkeypatch.setattr(_loader.tf.config, "list_physical_devices", lambda kind=None: [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _loader.gpu_kernels_unavailable_reason() is None
    monkeypatch.setattr(_loader, "_gpu_reason", [])
    monkeypatch.setattr(_loader.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    with pytest.warns(RuntimeWarning, match="stand-in reason"):
        assert _loader.gpu_kernels_unavailable_reason() == text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _loader.gpu_kernels_unavailable_reason() == text


# ---------------------------------------------------------------------------
# The binding's CUDA path: validation happens before any CUDA call.


class FakeCudaArray:
    """Carries a __cuda_array_interface__ without any GPU: validation only."""

    def __init__(self, shape, typestr="<f4", *, ptr=1 << 20, stream=None, version=3):
        self.__cuda_array_interface__ = {
            "version": version,
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": None,
            "stream": stream,
        }


def fake_forward(y_true=None, y_pred=None, mask=None, **kwargs):
    x = FakeCudaArray((4, 3))
    kernels.forward_cuda(
        y_true or x,
        y_pred or x,
        mask,
        None,
        "mean",
        kwargs.pop("out", FakeCudaArray((3,))),
        kwargs.pop("count", FakeCudaArray((1,), "<i8")),
        kwargs.pop("workspace", FakeCudaArray((1024,), "|u1")),  # above any plan of 12 elements
        **kwargs,
    )


def past_validation(call):
    """Runs a CUDA-path call whose arguments are valid. Without a GPU it then
    fails at the first CUDA step (driver, device memory); returns that error."""
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    message = str(info.value)
    if not kernels.with_cuda:
        assert "built without CUDA" in message
    else:
        assert "stream" not in message and "aligned" not in message and "dtype" not in message, (
            message
        )
    return message


def test_cuda_calls_without_a_named_stream_need_stream():
    if not kernels.with_cuda:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            fake_forward()
        return
    with pytest.raises(ValueError, match="no stream to launch on.*pass stream="):
        fake_forward()
    three = FakeCudaArray((3,))
    x = FakeCudaArray((4, 3))
    with pytest.raises(ValueError, match="backward_cuda: no stream to launch on"):
        kernels.backward_cuda(three, three, x, x, None, None, "mean", grad_y_pred=x)


@pytest.mark.parametrize(
    "stream",
    [7, 1, type("TorchStream", (), {"cuda_stream": 9})(), type("CupyStream", (), {"ptr": 11})()],
    ids=["int", "legacy", "torch-like", "cupy-like"],
)
def test_stream_argument_or_named_stream_is_enough(stream):
    past_validation(lambda: fake_forward(stream=stream))


def test_a_stream_named_by_the_arrays_is_enough():
    named = FakeCudaArray((4, 3), stream=5)
    past_validation(lambda: fake_forward(y_true=named, y_pred=named))


def test_stream_argument_of_another_type_is_refused():
    with pytest.raises(TypeError, match="stream must be a cudaStream_t handle"):
        fake_forward(stream="default")


@pytest.mark.parametrize(
    "name,array,item",
    [
        ("y_pred", FakeCudaArray((4, 3), ptr=(1 << 20) + 2), 4),
        ("y_true", FakeCudaArray((4, 3), "<f2", ptr=(1 << 20) + 1), 2),
        ("mask", FakeCudaArray((4,), "<f4", ptr=(1 << 20) + 6), 4),
        ("out", FakeCudaArray((3,), ptr=(1 << 20) + 1), 4),
        ("count", FakeCudaArray((1,), "<i8", ptr=(1 << 20) + 4), 8),
    ],
)
def test_element_misaligned_buffers_are_refused(name, array, item):
    kwargs = {name: array, "stream": 1}
    if name == "y_true":
        kwargs["y_pred"] = FakeCudaArray((4, 3), "<f2")
    with pytest.raises(
        ValueError, match=f"{name}'s device buffer is not aligned to its {item}-byte element size"
    ):
        fake_forward(**kwargs)


def test_misaligned_gradient_is_refused():
    three = FakeCudaArray((3,))
    x = FakeCudaArray((4, 3))
    bad = FakeCudaArray((4, 3), ptr=(1 << 20) + 2)
    with pytest.raises(ValueError, match="grad_y_true's device buffer is not aligned"):
        kernels.backward_cuda(three, three, x, x, None, None, "mean", grad_y_true=bad, stream=1)


def test_vector_misaligned_but_element_aligned_views_pass():
    # Offset views (t[1:], p[2:]) are fine: they take the scalar head or path.
    t = FakeCudaArray((4, 3), ptr=(1 << 20) + 4)
    p = FakeCudaArray((4, 3), ptr=(1 << 20) + 8)
    past_validation(lambda: fake_forward(y_true=t, y_pred=p, stream=1))


@pytest.mark.parametrize(
    "typestr,dtype",
    [("<i2", "bfloat16"), ("<f2", None)],
)
def test_float32_weights_for_16bit_inputs(typestr, dtype):
    x = FakeCudaArray((4, 3), typestr)
    past_validation(
        lambda: fake_forward(y_true=x, y_pred=x, mask=FakeCudaArray((4,)), dtype=dtype, stream=1)
    )


def test_float64_mask_for_16bit_inputs_is_refused():
    x = FakeCudaArray((4, 3), "<f2")
    with pytest.raises(TypeError, match="float64"):
        fake_forward(y_true=x, y_pred=x, mask=FakeCudaArray((4,), "<f8"), stream=1)


def test_grad_mask_takes_the_mask_dtype():
    three = FakeCudaArray((3,))
    x = FakeCudaArray((4, 3), "<f2")
    mask = FakeCudaArray((4,), "<f4")
    with pytest.raises(TypeError, match="grad_mask has dtype float16 but mask has float32"):
        kernels.backward_cuda(
            three, three, x, x, mask, None, "mean", grad_mask=FakeCudaArray((4,), "<f2"), stream=1
        )


def test_workspace_sizes_depend_on_the_arguments_only():
    if not kernels.with_cuda:
        with pytest.raises(RuntimeError, match="built without CUDA"):
            kernels.forward_workspace_bytes(10)
        return
    sizes = [kernels.forward_workspace_bytes(n) for n in (0, 1, 1024, 1025, 2**20, 2**31, 2**40)]
    assert sizes[0] == 0 and sizes[1] == sizes[2] == 24 and sizes[3] == 48
    assert max(sizes) == 16384 * 24  # at most 16384 tiles, whatever the device
    assert kernels.backward_workspace_bytes(2**20, 2**20, True) == 0  # elementwise mask
    assert kernels.backward_workspace_bytes(2**22, 1, True) == 2048 * 8  # 0-d mask: 2048 segments


# ---------------------------------------------------------------------------
# On a GPU: an element-misaligned view of real device memory is refused before
# the kernels could fault, and the context stays usable.


def test_misaligned_device_view_is_refused_on_a_gpu():
    if not kernels.with_cuda:
        pytest.skip("masked_ops._kernels was built without CUDA")
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    base = torch.zeros(4 * 13 + 1, dtype=torch.uint8, device="cuda")
    good = torch.ones(12, device="cuda")
    view = FakeCudaArray((12,), ptr=base.data_ptr() + 1)
    out = torch.empty(3, device="cuda")
    count = torch.empty(1, dtype=torch.int64, device="cuda")
    ws = torch.empty(kernels.forward_workspace_bytes(12), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="y_pred's device buffer is not aligned"):
        kernels.forward_cuda(good, view, None, None, "mean", out, count, ws, stream=stream)
    kernels.forward_cuda(good, good, None, None, "mean", out, count, ws, stream=stream)
    torch.cuda.synchronize()
    assert out.tolist() == [0.0, 0.0, 12.0] and int(count) == 12
    assert np.isfinite(out.cpu().numpy()).all()
