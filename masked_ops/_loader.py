"""Loads the compiled TensorFlow op library, refusing a missing or stale build."""

import json
import os

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
