"""Regression tests for the defects an adversarial pass found: one test (or a
small group) per defect, named after it."""

import contextlib
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

import masked_ops
from masked_ops import _xla, kernels
from masked_ops.losses import MaskedMeanSquaredError

# ---------------------------------------------------------------------------
# 1. The binding must not abort the process when a worker thread cannot start.

_THREADS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, resource, sys
    import numpy as np

    spec = importlib.util.spec_from_file_location("masked_ops._kernels", sys.argv[1])
    k = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(k)
    rng = np.random.default_rng(0)
    n = 1 << 24
    t = rng.standard_normal(n, dtype=np.float32)
    p = rng.standard_normal(n, dtype=np.float32)
    k.set_num_threads(1)
    expected = [float(x) for x in k.forward(t, p)]
    # Room for the process as it is plus 64 MiB: 63 thread stacks of 8 MiB do not fit.
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (64 << 20), vm + (64 << 20)))
    k.set_num_threads(64)
    got = [float(x) for x in k.forward(t, p)]
    print(json.dumps({"expected": expected, "got": got}))
    """
)


def test_binding_thread_that_cannot_start_runs_its_work_on_the_calling_thread():
    path = kernels.module().__file__
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, path],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # Same bits as one thread: the work was done, whatever the split.
    assert result["got"] == result["expected"]


# ---------------------------------------------------------------------------
# 2. NumPy inputs keep their dtype, with the same rules as tensors.


def test_numpy_float64_inputs_are_computed_in_float64():
    loss = masked_ops.masked_mse(np.array([1e20, 0.0]), np.zeros(2))
    assert loss.dtype == tf.float64
    assert float(loss) == pytest.approx(5e39)
    sums = masked_ops.masked_squared_error_sums(np.array([1e20, 0.0]), np.zeros(2))
    assert sums.sum.dtype == tf.float64 and float(sums.sum) == pytest.approx(1e40)


def test_numpy_float16_and_python_lists_keep_their_documented_dtypes():
    assert masked_ops.masked_mse(np.ones(3, np.float16), np.zeros(3, np.float16)).dtype == (
        tf.float32
    )
    assert masked_ops.masked_mse([1.0, 2.0], [0.0, 0.0]).dtype == tf.float32


@pytest.mark.parametrize("make", [np.array, tf.constant], ids=["numpy", "tensor"])
def test_int64_y_pred_is_refused_as_numpy_and_as_tensor(make):
    with pytest.raises(TypeError, match="y_pred must be float16, bfloat16, float32 or float64"):
        masked_ops.masked_mse(make([1, 2], dtype=np.int64), make([1, 3], dtype=np.int64))


# ---------------------------------------------------------------------------
# 3. Misaligned buffers are refused with a clear error.


def _misaligned(n, dtype=np.float32):
    buf = bytearray(np.dtype(dtype).itemsize * (n + 1))
    a = np.frombuffer(buf, dtype, n, offset=1)
    assert a.ctypes.data % np.dtype(dtype).itemsize != 0
    return a


@pytest.mark.parametrize("arg", ["y_true", "y_pred", "mask"])
def test_binding_refuses_misaligned_host_buffers_naming_the_argument(arg):
    args = {"y_true": np.zeros(8, np.float32), "y_pred": np.ones(8, np.float32), "mask": None}
    args[arg] = _misaligned(8)
    with pytest.raises(ValueError, match=f"{arg}'s buffer is not aligned to its 4-byte elements"):
        kernels.forward(args["y_true"], args["y_pred"], args["mask"])


def test_op_refuses_misaligned_dlpack_tensors_naming_the_argument():
    t = tf.experimental.dlpack.from_dlpack(_misaligned(8).__dlpack__())
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred's buffer is not aligned"):
        masked_ops.masked_mse(tf.zeros([8]), t)


# ---------------------------------------------------------------------------
# 4. Float weights are read in the accumulator precision, not y_pred's dtype.


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_tiny_float64_weights_with_16bit_predictions_are_not_rounded_to_zero(dtype):
    y_true = tf.constant([1.0, 2.0], dtype)
    y_pred = tf.constant([0.0, 0.0], dtype)
    sums = masked_ops.masked_squared_error_sums(
        y_true, y_pred, tf.constant([1e-8, 1e-8], tf.float64)
    )
    assert int(sums.count) == 2
    assert_close(sums.weight_sum, np.float32(1e-8) * 2, tf.float32)
    assert_close(sums.sum, np.float32(1e-8) * 5, tf.float32)
    loss = masked_ops.masked_mse(y_true, y_pred, tf.constant([1e-8, 1e-8], tf.float64))
    assert_close(loss, 2.5, tf.float32)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_huge_float64_weights_with_16bit_predictions_stay_finite_with_finite_gradients(dtype):
    y_true = tf.constant([1.0, 2.0], dtype)
    y_pred = tf.constant([0.0, 0.0], dtype)
    w = tf.constant([1e5, 3e5], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = masked_ops.masked_mse(y_true, y_pred, w)
    grad_w = tape.gradient(loss, w)
    expected = (1e5 * 1 + 3e5 * 4) / 4e5
    assert_close(loss, expected, tf.float32)
    # d/dw_i of sum(w v) / sum(w) = (v_i - loss) / sum(w)
    assert grad_w.dtype == tf.float64
    np.testing.assert_allclose(grad_w.numpy(), (np.array([1.0, 4.0]) - expected) / 4e5, rtol=1e-5)


# ---------------------------------------------------------------------------
# 5. padding_value that overflows the dtype is an error, NaN at run time too.


def test_padding_value_overflowing_float16_is_a_value_error_in_eager():
    y = tf.constant([1.0, np.inf], tf.float16)
    with pytest.raises(ValueError, match="overflows float16"):
        masked_ops.masked_mse(y, y, padding_value=1e5)


def test_padding_value_overflowing_float32_is_a_value_error_while_tracing():
    @tf.function
    def f(y):
        return masked_ops.masked_mse(y, y, padding_value=1e300)

    with pytest.raises(ValueError, match="overflows float32"):
        f(tf.constant([1.0, np.inf]))


@pytest.mark.parametrize(
    "value, match", [(1e300, "overflows float"), (np.nan, "padding_value is NaN")]
)
def test_padding_value_known_only_at_run_time_is_checked_by_the_op(value, match):
    @tf.function(input_signature=[tf.TensorSpec([], tf.float64)])
    def f(padding):
        y = tf.constant([1.0, np.inf])
        return masked_ops.masked_mse(y, tf.zeros([2]), padding_value=padding)

    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        f(tf.constant(value, tf.float64))
    # Control: a representable run-time value masks as usual.
    assert float(f(tf.constant(1.0, tf.float64))) == np.inf


@pytest.mark.parametrize("forced", [False, True], ids=["lowering", "pure_tf"])
@pytest.mark.parametrize("value", [np.nan, 1e300])
def test_padding_value_refused_at_run_time_under_xla_makes_the_outputs_nan(value, forced):
    # XLA cannot raise at run time: the outputs become NaN instead of masking nothing.
    @tf.function(jit_compile=True)
    def f(padding):
        y = tf.constant([1.0, np.inf])
        return masked_ops.masked_squared_error_sums(y, tf.zeros([2]), padding_value=padding)

    with _xla.force_fallback() if forced else contextlib.nullcontext():
        bad = f(tf.constant(value, tf.float64))
        good = f(tf.constant(np.inf, tf.float64))
    assert np.isnan(float(bad.sum)) and np.isnan(float(bad.weight_sum))
    assert (float(good.sum), float(good.weight_sum), int(good.count)) == (1.0, 1.0, 1)


def test_padding_value_at_the_dtype_limit_is_accepted_and_masks_it():
    top = float(np.finfo(np.float16).max)
    y = tf.constant([top, 2.0], tf.float16)
    assert float(masked_ops.masked_mse(y, tf.zeros([2], tf.float16), padding_value=top)) == 4.0


def test_binding_refuses_overflowing_padding_value():
    y = np.array([1.0, np.inf], np.float16)
    with pytest.raises(ValueError, match="overflows float16"):
        kernels.forward(y, y, None, 1e5)


# ---------------------------------------------------------------------------
# 6. Subnormal weights are kept, by the TF op and the binding alike.


@pytest.mark.parametrize(
    "dtype, tiny", [(np.float32, 1e-45), (np.float64, 5e-324), (np.float32, 1e-40)]
)
def test_subnormal_weights_are_kept_and_op_and_binding_agree_bitwise(dtype, tiny):
    t = np.array([1.0, 2.0, 3.0], dtype)
    p = np.zeros(3, dtype)
    w = np.array([tiny, tiny, 0.0], dtype)
    op = [x.numpy() for x in masked_ops.masked_squared_error_sums(t, p, w)]
    loss_op = masked_ops.masked_mse(t, p, w).numpy()
    loss_b, s_b, w_b, c_b = kernels.forward(t, p, w, None, "mean")
    assert int(op[2]) == 2 == c_b
    assert op[1] > 0 and op[1] == w_b
    assert op[0] == s_b and loss_op == loss_b
    grads_op = [g.numpy() for g in _grads(t, p, w)]
    grads_b = kernels.backward(1.0, 0.0, 0.0, t, p, w, None, loss_b, w_b, "mean", True, True, True)
    for a, b in zip(grads_op, grads_b, strict=True):
        np.testing.assert_array_equal(a, b)


def _grads(t, p, w):
    t, p, w = (tf.constant(x) for x in (t, p, w))
    with tf.GradientTape() as tape:
        tape.watch([t, p, w])
        loss = masked_ops.masked_mse(t, p, w)
    return tape.gradient(loss, [t, p, w])


# ---------------------------------------------------------------------------
# 7. The Keras loss never leaks NaN from positions its mask removes.


def test_keras_mask_over_squeezed_predictions_does_not_leak_nan():
    y_pred = tf.Variable([[[0.5], [2.0]]])
    mask = tf.constant([[True, False]])
    loss_fn = MaskedMeanSquaredError()
    with tf.GradientTape() as tape:
        masked = tf.identity(y_pred)
        masked._keras_mask = mask
        loss = loss_fn(tf.constant([[1.0, np.nan]]), masked)
    grad = tape.gradient(loss, y_pred).numpy()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    assert grad[0, 1, 0] == 0.0
    # Keras on NaN-free data whose masked target equals its prediction (so the
    # masked element contributes 0 there too) gives the same loss.
    clean = tf.identity(y_pred)
    clean._keras_mask = mask
    expected = keras.losses.MeanSquaredError()(tf.constant([[1.0, 2.0]]), clean)
    assert_close(loss, expected, tf.float32)


# ---------------------------------------------------------------------------
# 8. Error messages name the problem; Keras's accepted forms are accepted.


@pytest.mark.parametrize("value, what", [("a", "'a'"), (1 + 2j, "complex128")])
def test_string_or_complex_padding_value_is_a_type_error_naming_it(value, what):
    with pytest.raises(TypeError, match=f"padding_value must be a real number.*{what}"):
        masked_ops.masked_mse([1.0], [2.0], padding_value=value)


def test_mask_shape_error_while_tracing_names_the_mask_and_the_prefix_rule():
    @tf.function
    def f(y, mask):
        return masked_ops.masked_mse(y, y, mask)

    with pytest.raises(ValueError, match=r"mask shape \[2,4\].*leading prefix"):
        f(tf.zeros([2, 3, 5]), tf.ones([2, 4], tf.bool))


def test_keras_loss_with_unknown_rank_names_the_problem():
    loss_fn = MaskedMeanSquaredError()

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)] * 2)
    def f(y_true, y_pred):
        return loss_fn(y_true, y_pred)

    with pytest.raises(ValueError, match="y_true has an unknown rank"):
        f.get_concrete_function()


def test_keras_loss_accepts_numpy_scalar_padding_value_and_serializes_it():
    loss_fn = MaskedMeanSquaredError(padding_value=np.float32(0))
    assert loss_fn.get_config()["padding_value"] == 0.0
    y_true = tf.constant([[1.0, 0.0]])
    y_pred = tf.constant([[0.0, 5.0]])
    assert_close(loss_fn(y_true, y_pred), 1.0, tf.float32)
    with pytest.raises(TypeError, match="padding_value must be a real number"):
        MaskedMeanSquaredError(padding_value=np.bool_(True))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
@pytest.mark.parametrize("shapes", [((4, 1), (4, 3)), ((4, 3), (4, 1))])
def test_keras_loss_broadcasts_targets_as_keras_does(shapes, reduction):
    rng = np.random.default_rng(8)
    y_true = rng.normal(size=shapes[0]).astype(np.float32)
    y_pred = tf.Variable(rng.normal(size=shapes[1]).astype(np.float32))
    ours, theirs = (
        MaskedMeanSquaredError(reduction=reduction),
        keras.losses.MeanSquaredError(reduction=reduction),
    )
    results = []
    for fn in (ours, theirs):
        with tf.GradientTape() as tape:
            loss = fn(y_true, y_pred)
        results.append((loss, tape.gradient(loss, y_pred)))
    assert_close(results[0][0], results[1][0], tf.float32)
    assert_close(results[0][1], results[1][1], tf.float32)


def test_keras_loss_refuses_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match="neither equal nor broadcastable"):
        MaskedMeanSquaredError()(tf.zeros([4, 2]), tf.zeros([4, 3]))


# ---------------------------------------------------------------------------
# 9. Documented corners.


def test_weights_that_cancel_give_a_mean_of_exactly_zero():
    # weight_sum == 0: the mean is defined as 0 (nothing to average over),
    # even though the weighted sum is not 0.
    t, p = tf.constant([1.0, 3.0]), tf.constant([0.0, 0.0])
    w = tf.constant([1.0, -1.0])
    sums = masked_ops.masked_squared_error_sums(t, p, w)
    assert float(sums.weight_sum) == 0.0 and float(sums.sum) == -8.0
    assert float(masked_ops.masked_mse(t, p, w)) == 0.0
    _, grad_p, grad_w = _grads(t.numpy(), p.numpy(), w.numpy())
    assert np.all(grad_p.numpy() == 0.0) and np.all(grad_w.numpy() == 0.0)


def test_mask_gradient_at_weight_exactly_zero_is_zero():
    # A position of weight exactly 0 is not part of the loss (its values are
    # never read into it, so NaN there cannot leak): its weight gets gradient
    # 0, although the derivative of sum(w v) / sum(w) there would be (v - loss) / sum(w).
    t = np.array([1.0, 2.0, np.nan], np.float32)
    p = np.zeros(3, np.float32)
    w = np.array([1.0, 1.0, 0.0], np.float32)
    _, grad_p, grad_w = _grads(t, p, w)
    assert grad_w.numpy()[2] == 0.0 and grad_p.numpy()[2] == 0.0
    assert_close(grad_w.numpy()[:2], (np.array([1.0, 4.0]) - 2.5) / 2, tf.float32, "elementwise")


# ---------------------------------------------------------------------------
# Found by the fuzz suite.


@pytest.mark.parametrize("dtype, tiny", [(tf.float32, 1e-40), (tf.float64, 1e-310)])
def test_gradients_stay_finite_when_weight_sum_is_subnormal(dtype, tiny):
    # 1 / weight_sum overflows; every w / weight_sum does not.
    t, p = tf.constant([1.0, 3.0], dtype), tf.constant([0.0, 0.0], dtype)
    w = tf.constant([tiny, tiny], dtype)
    with tf.GradientTape() as tape:
        tape.watch([t, p, w])
        loss = masked_ops.masked_mse(t, p, w)
    g_t, g_p, g_w = (g.numpy() for g in tape.gradient(loss, [t, p, w]))
    assert float(loss) == pytest.approx(5.0)
    np.testing.assert_allclose(g_t, [1.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(g_p, [-1.0, -3.0], rtol=1e-6)
    # d/dw_i = (v_i - loss) / weight_sum: +-4 / (2 tiny), beyond float range in float32.
    assert g_w[0] < 0 < g_w[1] and np.all(~np.isnan(g_w))


def test_long_prefix_row_mask_gradient_is_accurate():
    rng = np.random.default_rng(0)
    n = 1 << 20
    t = (rng.standard_normal(n) * 3).astype(np.float32)
    p = (t * (1 + 1e-3 * rng.standard_normal(n))).astype(np.float32)
    p[0] = 100
    w = tf.constant(1.0)
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = masked_ops.masked_mse(tf.constant(t), tf.constant(p), w)
    got = float(tape.gradient(loss, w))
    d = t.astype(np.float64) - p.astype(np.float64)
    v = d * d
    exact = float(np.sum(v - v.mean()))  # d loss / d w of a 0-d weight
    # Relative to the terms' size, as the forward's float32 blocks bound it.
    assert abs(got - exact) <= 1e-6 * float(np.sum(np.abs(v)))


@pytest.mark.parametrize("jit", [False, True], ids=["op", "xla"])
@pytest.mark.parametrize("mask_shape", [(), (4,)], ids=["0-d", "prefix"])
def test_row_mask_gradient_is_finite_when_weight_sum_is_subnormal(mask_shape, jit):
    """A row's mask gradient with subnormal weights: weight_sum is rescaled by
    2^64, and each element's term scaled back alone overflows float32 (+-inf,
    NaN once summed) although the row's sum of them does not; the terms are
    summed first."""
    rng = np.random.default_rng(5)
    # Every row holds the same values (shuffled): each row's terms, up to
    # +-3e39, add up to about 0.
    row = 100.0 * rng.standard_normal(250)
    t = np.stack([rng.permutation(row) for _ in range(4)]).astype(np.float32)
    p = np.zeros_like(t)
    w = np.full(mask_shape, 3.2e-39, np.float32)

    def mask_gradient(t, p, w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = masked_ops.masked_mse(t, p, w)
        return tape.gradient(loss, w)

    fn = tf.function(mask_gradient, jit_compile=True) if jit else mask_gradient
    got = fn(tf.constant(t), tf.constant(p), tf.constant(w)).numpy().astype(np.float64)
    v = t.astype(np.float64) ** 2
    w64 = np.broadcast_to(
        w.astype(np.float64).reshape(mask_shape + (1,) * (2 - len(mask_shape))), v.shape
    )
    weight_sum = w64.sum()
    terms = (v - (w64 * v).sum() / weight_sum) / weight_sum
    exact = terms.sum() if mask_shape == () else terms.sum(axis=1)
    assert np.all(np.isfinite(got)), got
    # Relative to the terms' size, as float32 sums bound it.
    assert np.all(np.abs(got - exact) <= 1e-5 * np.abs(terms).sum())
