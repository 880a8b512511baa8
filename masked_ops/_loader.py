"""Loads the compiled TensorFlow op library, refusing a missing or stale build,
and tells whether its GPU kernels can run here."""

import ctypes
import json
import os
import threading
import warnings

import tensorflow as tf

_HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_HERE, "_masked_ops_tf.so")
BUILD_INFO_PATH = os.path.join(_HERE, "_build_info.json")
REBUILD_HINT = "pip install --no-build-isolation -e .  (or `make build`) in the masked_ops checkout"


def _read_build_info():
    try:
        with open(BUILD_INFO_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def load_op_library():
    if not os.path.exists(LIBRARY_PATH):
        raise ImportError(
            f"masked_ops: the compiled op library {os.path.basename(LIBRARY_PATH)} is missing "
            f"next to {__file__}. Build it with: {REBUILD_HINT}"
        )
    built_for = _read_build_info().get("tensorflow_version")
    if built_for != tf.__version__:
        raise ImportError(
            f"masked_ops: the op library was built against TensorFlow {built_for or 'unknown'} "
            f"but TensorFlow {tf.__version__} is installed. Rebuild it with: {REBUILD_HINT}"
        )
    try:
        return tf.load_op_library(LIBRARY_PATH)
    except tf.errors.NotFoundError as e:
        raise ImportError(
            f"masked_ops: loading {LIBRARY_PATH} failed ({e}). Rebuild it with: {REBUILD_HINT}"
        ) from e


op_library = load_op_library()

_gpu_lock = threading.Lock()
_gpu_reason = []  # [reason or None] once decided


def _library_gpu_reason():
    """The library's own decision, made when it loaded: "" when its GPU kernels
    are registered (or it has none), else why they are not."""
    try:
        lib = ctypes.CDLL(LIBRARY_PATH)  # the handle TensorFlow already loaded
        reason = lib.MaskedOpsGpuKernelsUnavailableReason
    except (OSError, AttributeError):  # a library built before the check existed
        return ""
    reason.restype = ctypes.c_char_p
    return (reason() or b"").decode()


def gpu_kernels_unavailable_reason():
    """None when the fused ops run wherever TensorFlow puts them; otherwise the
    reason their GPU kernels cannot run (an NVIDIA driver too old for the CUDA
    runtime they were built with), warned about once per process.

    In that case the library registered no GPU kernels and TensorFlow sees a
    GPU, so masked losses must go to the pure-TF formula (masked_ops.reference),
    which runs on the GPU; without a visible GPU the CPU kernels serve and this
    is None."""
    if _gpu_reason:  # decided: every fused op call reads it, without the lock
        return _gpu_reason[0]
    with _gpu_lock:
        if not _gpu_reason:
            reason = _library_gpu_reason() or None
            if reason is not None and not tf.config.list_physical_devices("GPU"):
                reason = None
            if reason is not None:
                warnings.warn(reason, RuntimeWarning, stacklevel=2)
            _gpu_reason.append(reason)
        return _gpu_reason[0]
