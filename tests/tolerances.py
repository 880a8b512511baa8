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
# Sums of many terms of either sign (the forward's sum and weight_sum, prefix
# rows of the mask gradient): rtol is relative to the sum of the terms'
# magnitudes, since the result may have cancelled; atol is per term and covers
# subnormal terms, whose rounding error is absolute (a few of the accumulator's
# smallest subnormals).
_ACCUMULATION = {
    "float16": (1e-5, 2.0**-147),
    "bfloat16": (1e-5, 2.0**-147),
    "float32": (1e-5, 2.0**-147),
    "float64": (1e-12, 2.0**-1071),
}
# Row losses (cross-entropy over a class axis): each row's value is formed in
# double from float32 lane sums of at most one tile per lane, so the loss and
# the per-row statistics are float32-accurate relative to the terms of the
# row's value (a bound for 16-bit inputs too: they are exact in float32).
_ROW = {
    "float16": (1e-6, 0.0),
    "bfloat16": (1e-6, 0.0),
    "float32": (1e-6, 0.0),
    "float64": (1e-13, 0.0),
}
_KINDS = {
    "reduction": _REDUCTION,
    "elementwise": _ELEMENTWISE,
    "accumulation": _ACCUMULATION,
    "row": _ROW,
}


def _name(dtype):
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else np.dtype(dtype).name


def tolerance(dtype, kind="reduction"):
    """(rtol, atol) for `dtype`; kind is "reduction" (loss, sums),
    "elementwise" (gradients, stored in the input dtype), "accumulation"
    (see allowed_error) or "row" (row losses: loss, sums, row statistics)."""
    return _KINDS[kind][_name(dtype)]


def allowed_error(expected, scale, dtype, kind="accumulation", terms=1):
    """Elementwise bound on |actual - expected|: atol * terms + rtol * (|expected|
    + scale), where scale is the sum of the magnitudes of the terms the result
    is made of and terms their number."""
    rtol, atol = tolerance(dtype, kind)
    expected = np.abs(np.asarray(expected, np.float64))
    with np.errstate(over="ignore"):
        return atol * np.asarray(terms, np.float64) + rtol * (
            expected + np.asarray(scale, np.float64)
        )


def assert_within(actual, expected, bound, what=""):
    """|actual - expected| <= bound elementwise (NaN is never within)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    bound = np.broadcast_to(np.asarray(bound, np.float64), e.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~(np.abs(a - e) <= bound)
    if np.any(bad):
        i = np.flatnonzero(bad.ravel())[:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} out of tolerance; at {i}: actual "
            f"{a.ravel()[i]}, expected {e.ravel()[i]}, allowed error {bound.ravel()[i]}"
        )


def assert_close(actual, expected, dtype, kind="reduction"):
    rtol, atol = tolerance(dtype, kind)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol, atol=atol
    )
