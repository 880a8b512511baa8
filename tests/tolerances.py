"""Per-dtype tolerances: the one place tests take them from."""

import numpy as np
import tensorflow as tf

# (rtol, atol) for results of a fused kernel compared with a float64 reference
# on the same (already rounded) inputs. 16-bit inputs accumulate in float32, so
# the reduction is float32-accurate; gradients are rounded to the input dtype.
_REDUCTION = {
    tf.float16: (1e-5, 1e-6),
    tf.bfloat16: (1e-5, 1e-6),
    tf.float32: (1e-5, 1e-6),
    tf.float64: (1e-12, 1e-14),
}
_ELEMENTWISE = {
    tf.float16: (1e-3, 1e-6),
    tf.bfloat16: (8e-3, 1e-6),
    tf.float32: (1e-6, 1e-9),
    tf.float64: (1e-13, 1e-15),
}


def tolerance(dtype, kind="reduction"):
    """(rtol, atol) for `dtype`; kind is "reduction" (loss, sums) or
    "elementwise" (gradients, stored in the input dtype)."""
    table = _REDUCTION if kind == "reduction" else _ELEMENTWISE
    return table[tf.as_dtype(dtype)]


def assert_close(actual, expected, dtype, kind="reduction"):
    rtol, atol = tolerance(dtype, kind)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )
