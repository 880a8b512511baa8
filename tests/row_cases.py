"""Row-loss cases shared by the tests of the engine (test_row_kernels.py,
through the binding) and of the TensorFlow ops (test_row_ops.py): random
inputs of each loss and the checks against the float64 oracle."""

import numpy as np
import oracle
from tolerances import allowed_error, assert_within, tolerance

LOSSES = oracle.ROW_LOSSES
DTYPES = ("float64", "float32", "bfloat16", "float16")


def make_inputs(rng, name, rows_shape, classes, dtype, label_dtype=np.int64, scale=3.0):
    """(y_true, y_pred) NumPy arrays of one loss: logits of scale `scale`, or
    probabilities with zeros (clipped) among them; int labels or dense targets
    that sum to 1 per row."""
    sparse, logits = oracle.row_loss_kind(name)
    shape = (*rows_shape, classes)
    if logits:
        y_pred = rng.normal(0.0, scale, shape)
    else:
        y_pred = rng.random(shape) ** 2
        y_pred[rng.random(shape) < 0.1] = 0.0
        y_pred[..., 0] += 0.01  # no all-zero row
        if sparse:  # Keras does not normalize these: leave some rows off 1
            y_pred /= np.where(rng.random((*rows_shape, 1)) < 0.7, y_pred.sum(-1, keepdims=True), 1)
    if sparse:
        y_true = rng.integers(0, classes, rows_shape).astype(label_dtype)
    else:
        y_true = rng.dirichlet(np.ones(classes), rows_shape).astype(oracle.np_dtype(dtype))
    return y_true, np.ascontiguousarray(y_pred.astype(oracle.np_dtype(dtype)))


def rows_of(y_true, y_pred, mask, dtype):
    """2-D float64 views of what the kernels read, and each row's weight."""
    classes = y_pred.shape[-1]
    rows_shape = y_pred.shape[:-1]
    p64 = y_pred.astype(np.float64).reshape(-1, classes)
    if y_true.dtype.kind in "iu":
        t = y_true.reshape(-1)
    else:
        t = y_true.astype(np.float64).reshape(-1, classes)
    weights = oracle.kernel_weights(mask, dtype)
    w = None if weights is None else np.asarray(oracle.full_weights(weights, rows_shape)).ravel()
    return t, p64, w


def reference(name, y_true, y_pred, mask, dtype, ignore_class=None, smoothing=0.0):
    t, p64, w = rows_of(y_true, y_pred, mask, dtype)
    return oracle.row_forward(name, t, p64, w, ignore_class, smoothing, oracle.accumulator(dtype))


def check_forward(out, ref, dtype, reduction):
    loss, total, weight_sum, count, _ = out
    rtol, _ = tolerance(dtype, "row")
    assert count == ref.count
    assert_within(total, ref.sum, allowed_error(ref.sum, ref.sum_scale, dtype, "row"), "sum")
    assert_within(weight_sum, ref.weight_sum, rtol * ref.weight_scale, "weight_sum")
    expected = ref.loss(reduction)
    if reduction == "sum" or ref.weight_sum == 0:
        bound = allowed_error(expected, ref.sum_scale, dtype, "row")
    else:
        # sum / weight_sum: both relative errors.
        bound = rtol * (ref.sum_scale + abs(expected) * ref.weight_scale) / abs(ref.weight_sum)
        bound += rtol * abs(expected)
    assert_within(loss, expected, bound, "loss")


def check_backward(grad, name, ref, y_pred, upstream, out, reduction, dtype):
    coeffs = oracle.coefficients((*upstream, 0.0), float(out[0]), float(out[2]), reduction)
    p64 = y_pred.astype(np.float64).reshape(-1, y_pred.shape[-1])
    expected, scale = oracle.row_backward(name, ref, p64, coeffs, oracle.accumulator(dtype))
    assert grad.dtype == y_pred.dtype and grad.shape == y_pred.shape
    g = grad.astype(np.float64).reshape(expected.shape)
    bound = allowed_error(expected, scale, dtype, "elementwise")
    # Beyond the dtype's range (float16: 1 / p of a tiny probability) the gradient is inf.
    beyond = np.isinf(oracle.round_to(expected, dtype))
    assert np.array_equal(g[beyond], oracle.round_to(expected, dtype)[beyond])
    assert_within(g[~beyond], expected[~beyond], bound[~beyond], "grad")


def bits(*arrays):
    return [np.asarray(a).tobytes() for a in arrays]
