"""Per-dtype tolerances: the one place tests (and the GPU check, which runs
without TensorFlow) take them from. Dtypes may be given as names, NumPy dtypes
or tf.DType objects."""

import numpy as np

# (rtol, atol) for results of a fused kernel compared with a float64 reference
# on the same (already rounded) inputs. 16-bit inputs accumulate in float32, so
# the reduction is float32-accurate; gradients are rounded to the input dtype.
_REDUCTION = {
    "float16": (1e-5, 1e-6),
    "bfloat16": (1e-5, 1e-6),
    "float32": (1e-5, 1e-6),
    "float64": (1e-12, 1e-14),
}
_ELEMENTWISE = {
    "float16": (1e-3, 1e-6),
    "bfloat16": (8e-3, 1e-6),
    "float32": (1e-6, 1e-9),
    "float64": (1e-13, 1e-15),
}


def _name(dtype):
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else np.dtype(dtype).name


def tolerance(dtype, kind="reduction"):
    """(rtol, atol) for `dtype`; kind is "reduction" (loss, sums) or
    "elementwise" (gradients, stored in the input dtype)."""
    table = _REDUCTION if kind == "reduction" else _ELEMENTWISE
    return table[_name(dtype)]


def assert_close(actual, expected, dtype, kind="reduction"):
    rtol, atol = tolerance(dtype, kind)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )
