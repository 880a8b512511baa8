"""Gradients of the fused masked squared error: numeric checks in float64,
agreement with autodiff through masked_ops.reference and with analytic float64
NumPy gradients, gradients of the sum/weight_sum outputs, and which inputs get
gradients at all."""

import numpy as np
import pytest
import tensorflow as tf
from _helpers import (
    BIG_SHAPE,
    DTYPE_IDS,
    DTYPES,
    LONG_ROWS_SHAPE,
    MASK_KINDS,
    PAD,
    SMALL_SHAPES,
    as_f64,
    assert_close_with_scale,
    make_case,
    np_case_sums,
    np_gradients,
    reduce_to_mask,
    shape_id,
)
from tolerances import assert_close, tolerance

import masked_ops
from masked_ops import reference, specs
from masked_ops.ops import fused

MODES = ("eager", "function")
REDUCTIONS = ("mean", "sum")

# ---------------------------------------------------------------------------
# Theoretical vs numeric Jacobians in float64.

# Central differences of a quadratic are exact up to rounding; the mean is a
# ratio in the weights, so keep the step small there.
DELTA = 2.0**-14
NUMERIC_RTOL = 1e-7
NUMERIC_ATOL = 1e-9


def float64_data(rng, shape, prefix, padding):
    t = rng.standard_normal(shape)
    p = t + rng.standard_normal(shape)
    if padding:
        t = np.where(rng.random(shape) < 0.3, PAD, t)
    mshape = shape[:-1] if prefix else shape
    # Weights away from 0, so a perturbation never changes which positions are kept.
    w = rng.uniform(0.5, 2.0, mshape) * rng.choice([-1.0, 1.0, 1.0], mshape)
    return (tf.constant(x, tf.float64) for x in (t, p, w))


def check_jacobians(f, xs, mode):
    if mode == "function":
        f = tf.function(f)
    theoretical, numeric = tf.test.compute_gradient(f, xs, delta=DELTA)
    assert len(theoretical) == len(xs)
    for th, nu, x in zip(theoretical, numeric, xs, strict=False):
        assert th.shape == (1, int(np.prod(x.shape)))
        assert np.any(th != 0)
        np.testing.assert_allclose(th, nu, rtol=NUMERIC_RTOL, atol=NUMERIC_ATOL)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mask_shape", ["full", "prefix"])
@pytest.mark.parametrize("wrt", ["y_pred", "y_true", "mask", "all"])
def test_numeric_gradient_float64(wrt, mask_shape, reduction, mode):
    rng = np.random.default_rng([19, len(wrt), len(mask_shape), len(reduction), len(mode)])
    # Padding only where y_true stays fixed (a perturbed padding value would
    # stop being padding).
    padding = wrt in ("y_pred", "mask")
    t, p, w = float64_data(rng, (2, 3, 4), mask_shape == "prefix", padding)
    kw = {"padding_value": PAD if padding else None, "reduction": reduction}
    if wrt == "y_pred":
        check_jacobians(lambda p: masked_ops.masked_mse(t, p, w, **kw), [p], mode)
    elif wrt == "y_true":
        check_jacobians(lambda t: masked_ops.masked_mse(t, p, w, **kw), [t], mode)
    elif wrt == "mask":
        check_jacobians(lambda w: masked_ops.masked_mse(t, p, w, **kw), [w], mode)
    else:
        check_jacobians(lambda t, p, w: masked_ops.masked_mse(t, p, w, **kw), [t, p, w], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("output", ["sum", "weight_sum"])
@pytest.mark.parametrize("mask_shape", ["full", "prefix"])
def test_numeric_gradient_float64_of_sums(output, mask_shape, mode):
    rng = np.random.default_rng([23, len(output), len(mask_shape), len(mode)])
    t, p, w = float64_data(rng, (3, 2, 4), mask_shape == "prefix", padding=True)

    def of(p, w):
        sums = masked_ops.masked_squared_error_sums(t, p, w, padding_value=PAD)
        return getattr(sums, output)

    if output == "sum":
        check_jacobians(of, [p, w], mode)
    else:
        # weight_sum does not depend on y_pred: the fused gradient is exactly 0.
        check_jacobians(lambda w: of(p, w), [w], mode)
        f = tf.function(of) if mode == "function" else of
        theoretical, _ = tf.test.compute_gradient(lambda p: f(p, w), [p], delta=DELTA)
        assert np.all(theoretical[0] == 0)


# ---------------------------------------------------------------------------
# Every dtype: fused gradients vs autodiff through the pure-TF reference and
# vs analytic float64 gradients.

UPSTREAM = 0.75


def tape_gradients(loss_fn, case, reduction, mode, watch=("y_true", "y_pred", "mask")):
    """Gradients of UPSTREAM * loss w.r.t. the watched inputs (dict name -> grad)."""
    inputs = {"y_true": case.y_true, "y_pred": case.y_pred, "mask": case.mask}
    names = [n for n in watch if n != "mask" or case.mask_is_float]

    def compute(*sources):
        values = dict(inputs, **dict(zip(names, sources, strict=False)))
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = loss_fn(
                values["y_true"],
                values["y_pred"],
                values["mask"],
                padding_value=case.padding_value,
                reduction=reduction,
            )
        out_grad = tf.constant(UPSTREAM, loss.dtype)
        return tape.gradient(loss, sources, output_gradients=out_grad)

    if mode == "function":
        compute = tf.function(compute)
    return dict(zip(names, compute(*[inputs[n] for n in names]), strict=False))


def check_gradients(case, reduction, mode, watch=("y_true", "y_pred", "mask")):
    fused_grads = tape_gradients(masked_ops.masked_mse, case, reduction, mode, watch)
    ref_grads = tape_gradients(reference.masked_mse, case, reduction, "eager", watch)
    g_true, g_pred, g_mask, scale = np_gradients(case, reduction, UPSTREAM)
    expected = {"y_true": g_true, "y_pred": g_pred, "mask": g_mask}
    rtol, atol = tolerance(case.dtype, "elementwise")
    for name, g in fused_grads.items():
        x = {"y_true": case.y_true, "y_pred": case.y_pred, "mask": case.mask}[name]
        assert g is not None, name
        assert g.dtype == x.dtype and g.shape == x.shape, (name, g.dtype, g.shape)
        if name == "mask":
            # A sum of terms (value - loss) / weight_sum of either sign: the
            # error is relative to the terms, not to the cancelled result.
            assert_close_with_scale(g, ref_grads[name], scale, rtol, atol, "mask vs reference")
            assert_close_with_scale(g, expected[name], scale, rtol, atol, "mask vs numpy")
        else:
            assert_close(g, ref_grads[name], case.dtype, "elementwise")
            assert_close(g, expected[name], case.dtype, "elementwise")
    return fused_grads


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=shape_id)
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_reference_eager(dtype, kind, shape, reduction):
    rng = np.random.default_rng([29, DTYPES.index(dtype), MASK_KINDS.index(kind), *shape])
    check_gradients(make_case(rng, dtype, shape, kind), reduction, "eager")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_match_reference_in_function(dtype, kind, reduction):
    rng = np.random.default_rng([31, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    check_gradients(make_case(rng, dtype, (5, 9, 4), kind), reduction, "function")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["prefix_bool", "prefix_float", "prefix_and_padding"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_long_prefix_rows(dtype, kind, reduction, mode):
    rng = np.random.default_rng([37, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    check_gradients(make_case(rng, dtype, LONG_ROWS_SHAPE, kind), reduction, mode)


@pytest.mark.parametrize("kind", ["none", "bool", "float", "mask_and_padding"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_big(dtype, kind):
    rng = np.random.default_rng([41, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    check_gradients(make_case(rng, dtype, BIG_SHAPE, kind), "mean", "eager")


# ---------------------------------------------------------------------------
# Gradients of the sum and weight_sum outputs (and of all outputs together).


def np_sums_gradients(case, g_loss, g_sum, g_ws, reduction):
    """Analytic float64 gradients of g_loss*loss + g_sum*sum + g_ws*weight_sum."""
    total, ws, _, keep, w, value = np_case_sums(case)
    if reduction == "sum":
        a, b = g_loss + g_sum, g_ws
    else:
        inv = 1.0 / ws if ws != 0 else 0.0
        a, b = g_loss * inv + g_sum, g_ws - g_loss * total * inv * inv
    d = case.t64 - case.p64
    g_pred = np.where(keep, a * w * -2.0 * d, 0.0)
    g_true = -g_pred
    g_mask = scale = None
    if case.mask64 is not None:
        g_mask = reduce_to_mask(np.where(keep, a * value + b, 0.0), case.mask64.shape)
        scale = reduce_to_mask(np.where(keep, np.abs(a * value) + abs(b), 0.0), case.mask64.shape)
    return g_true, g_pred, g_mask, scale


def check_sources(grads, sources, expected, case):
    rtol, atol = tolerance(case.dtype, "elementwise")
    g_true, g_pred, g_mask, scale = expected
    assert grads[0].dtype == case.dtype and grads[0].shape == case.y_true.shape
    assert_close(grads[0], g_true, case.dtype, "elementwise")
    assert_close(grads[1], g_pred, case.dtype, "elementwise")
    if len(sources) > 2:
        assert grads[2].dtype == case.mask.dtype and grads[2].shape == case.mask.shape
        assert_close_with_scale(grads[2], g_mask, scale, rtol, atol, "mask")


SUMS_KINDS = ["bool", "float", "prefix_float", "prefix_and_padding", "padding"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("output", ["sum", "weight_sum", "both"])
@pytest.mark.parametrize("kind", SUMS_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_of_sums_outputs(dtype, kind, output, mode):
    rng = np.random.default_rng([43, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    case = make_case(rng, dtype, (6, 5, 7), kind)
    sources = [case.y_true, case.y_pred] + ([case.mask] if case.mask_is_float else [])
    g_sum, g_ws = {"sum": (1.0, 0.0), "weight_sum": (0.0, 1.0), "both": (0.5, -2.0)}[output]

    def compute(*sources):
        mask = sources[2] if len(sources) > 2 else case.mask
        with tf.GradientTape() as tape:
            tape.watch(sources)
            sums = masked_ops.masked_squared_error_sums(
                sources[0], sources[1], mask, padding_value=case.padding_value
            )
            if output == "sum":
                target = sums.sum
            elif output == "weight_sum":
                target = sums.weight_sum
            else:
                target = g_sum * sums.sum + g_ws * sums.weight_sum
        return tape.gradient(target, sources)

    if mode == "function":
        compute = tf.function(compute)
    grads = compute(*sources)
    expected = np_sums_gradients(case, 0.0, g_sum, g_ws, "sum")
    check_sources(grads, sources, expected, case)
    if output == "weight_sum":
        assert np.all(as_f64(grads[0]) == 0) and np.all(as_f64(grads[1]) == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["float", "prefix_and_padding", "mask_and_padding"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradient_of_all_outputs_of_one_op(dtype, kind, reduction):
    """Upstream gradients on loss, sum and weight_sum of one op at once."""
    rng = np.random.default_rng([47, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    case = make_case(rng, dtype, (6, 5, 7), kind)
    sources = [case.y_true, case.y_pred] + ([case.mask] if case.mask_is_float else [])
    g_loss, g_sum, g_ws = 1.5, -0.25, 0.5
    with tf.GradientTape() as tape:
        tape.watch(sources)
        mask = sources[2] if len(sources) > 2 else case.mask
        loss, s, ws, _ = fused(
            specs.SQUARED_ERROR,
            sources[0],
            sources[1],
            mask,
            case.padding_value,
            reduction,
        )
        target = g_loss * loss + g_sum * s + g_ws * ws
    grads = tape.gradient(target, sources)
    check_sources(grads, sources, np_sums_gradients(case, g_loss, g_sum, g_ws, reduction), case)


# ---------------------------------------------------------------------------
# Which inputs get gradients.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mask_dtype", [tf.bool, tf.int32, tf.int64])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bool_and_int_masks_get_no_gradient(dtype, mask_dtype, mode):
    rng = np.random.default_rng(53)
    case = make_case(rng, dtype, (5, 9, 4), "bool")
    mask = tf.cast(case.mask, mask_dtype)

    def compute(y_true, y_pred, mask):
        with tf.GradientTape() as tape:
            tape.watch([y_true, y_pred, mask])
            loss = masked_ops.masked_mse(y_true, y_pred, mask)
        return tape.gradient(loss, [y_true, y_pred, mask])

    if mode == "function":
        compute = tf.function(compute)
    g_true, g_pred, g_mask = compute(case.y_true, case.y_pred, mask)
    assert g_mask is None
    e_true, e_pred, _, _ = np_gradients(case, "mean")
    assert_close(g_true, e_true, dtype, "elementwise")
    assert_close(g_pred, e_pred, dtype, "elementwise")


@pytest.mark.parametrize("mode", MODES)
def test_bool_mask_gets_no_gradient_in_graph_gradients(mode):
    """tf.gradients in a graph: the registered gradient returns None for the mask."""
    y_true = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    y_pred = tf.constant([[0.0, 0.0], [0.0, 1.0]])
    mask = tf.constant([True, False])

    @tf.function
    def compute(y_true, y_pred, mask):
        loss = masked_ops.masked_mse(y_true, y_pred, mask)
        return tf.gradients(loss, [y_true, y_pred, mask])

    g_true, g_pred, g_mask = compute(y_true, y_pred, mask)
    assert g_mask is None
    np.testing.assert_array_equal(g_pred.numpy(), [[-1.0, -2.0], [0.0, 0.0]])
    np.testing.assert_array_equal(g_true.numpy(), [[1.0, 2.0], [0.0, 0.0]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "kind, watch",
    [
        (kind, watch)
        for kind in ("bool", "float", "prefix_and_padding")
        for watch in (("y_pred",), ("y_true",), ("mask",), ("y_pred", "mask"))
        if not (kind == "bool" and "mask" in watch)
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradient_of_a_subset_of_inputs(dtype, kind, watch, reduction, mode):
    """Only the watched inputs get gradients, and they are still correct (y_true
    not watched: the fused kernel skips its gradient)."""
    rng = np.random.default_rng([59, DTYPES.index(dtype), MASK_KINDS.index(kind), len(watch)])
    case = make_case(rng, dtype, (5, 9, 4), kind)
    grads = check_gradients(case, reduction, mode, watch)
    assert set(grads) == {n for n in watch if n != "mask" or case.mask_is_float}


@pytest.mark.parametrize("mode", MODES)
def test_gradient_with_constant_python_y_true(mode):
    """y_true given as a Python list (not a watched tensor): gradient w.r.t.
    y_pred only, in float16 with float32 weights (cast, gradient cast back)."""
    y_true = [[1.0, 2.0, 0.0], [4.0, 0.0, 6.0]]
    y_pred = tf.constant([[1.5, 1.0, 0.5], [3.0, 0.25, 8.0]], tf.float16)
    w = tf.constant([[1.0, 0.5, 2.0], [0.25, 4.0, 1.0]], tf.float32)

    def compute(y_pred, w):
        with tf.GradientTape() as tape:
            tape.watch([y_pred, w])
            loss = masked_ops.masked_mse(y_true, y_pred, w, padding_value=0)
        return loss, tape.gradient(loss, [y_pred, w])

    if mode == "function":
        compute = tf.function(compute)
    loss, (g_pred, g_w) = compute(y_pred, w)
    # Kept: w (1, .5, .25, 1), d = t - p = (-.5, 1, 1, -2), d^2 = (.25, 1, 1, 4);
    # sum = .25 + .5 + .25 + 4 = 5, weight_sum = 2.75.
    assert_close(loss, 5 / 2.75, tf.float32)
    assert g_pred.dtype == tf.float16 and g_w.dtype == tf.float32
    expected_pred = np.array([[0.5 * 2 * 1, 0.5 * 2 * -1, 0], [0.25 * 2 * -1, 0, 1 * 2 * 2]])
    assert_close(g_pred, expected_pred / 2.75, tf.float16, "elementwise")
    d2 = np.array([[0.25, 1, 0], [1, 0, 4]])
    keep = np.array([[1, 1, 0], [1, 0, 1]])
    assert_close(g_w, keep * (d2 - 5 / 2.75) / 2.75, tf.float16, "elementwise")
