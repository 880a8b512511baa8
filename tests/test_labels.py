"""y_true of its own dtype: bool, int32 and int64 labels are read by the
kernels as they are and converted to y_pred's dtype per element, exactly as
tf.cast would convert them, so the results equal those of casting y_true
first, bit for bit, without the full-size cast. Every loss, every float
dtype, eager, tf.function, XLA and the binding."""

import numpy as np
import pytest
import tensorflow as tf
from _helpers import DTYPE_IDS, DTYPES
from loss_cases import LOSS_CASES

import masked_ops
from masked_ops import _kernels, reference, specs
from masked_ops.ops import fused

SPECS = {spec.name: spec for spec in specs.LOSSES}
LABEL_DTYPES = (tf.bool, tf.int32, tf.int64)
per_case = pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.name)
per_label = pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: d.name)


def _data(case, dtype, label_dtype, seed=0):
    rng = np.random.default_rng([seed, DTYPES.index(dtype), LABEL_DTYPES.index(label_dtype)])
    shape = (9, 130)
    labels = rng.integers(0, 2, shape) if label_dtype == tf.bool else rng.integers(-3, 4, shape)
    y_true = tf.constant(labels.astype(label_dtype.as_numpy_dtype))
    y_pred = tf.cast(case.predictions(rng, shape), dtype)
    mask = tf.constant(rng.random(shape[:1]) < 0.8)
    return y_true, y_pred, mask


def _bits(results):
    return [np.asarray(x).tobytes() for x in results]


@per_case
@per_label
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_labels_give_the_bits_of_casting_them_first(case, dtype, label_dtype):
    y_true, y_pred, mask = _data(case, dtype, label_dtype)
    cast = tf.cast(y_true, dtype)
    spec = SPECS[case.spec]

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            out = fused(spec, t, p, mask, None, "mean", case.params)
        return [*out, tape.gradient(out[0], p)]

    expected = _bits(run(cast, y_pred))
    assert _bits(run(y_true, y_pred)) == expected
    assert _bits(tf.function(run)(y_true, y_pred)) == _bits(tf.function(run)(cast, y_pred))
    # The binding reads the same labels (NumPy bool/int arrays).
    kw = {"loss_name": case.spec, "params": list(case.params)}
    got = _kernels.forward(y_true.numpy(), y_pred.numpy(), mask.numpy(), **kw)
    want = _kernels.forward(cast.numpy(), y_pred.numpy(), mask.numpy(), **kw)
    assert _bits(got) == _bits(want)


@per_case
@per_label
def test_labels_under_xla_and_in_the_reference(case, label_dtype):
    y_true, y_pred, mask = _data(case, tf.float32, label_dtype, seed=1)
    spec = SPECS[case.spec]
    want = fused(spec, tf.cast(y_true, tf.float32), y_pred, mask, None, "mean", case.params)[0]

    def run(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = fused(spec, t, p, mask, None, "mean", case.params)[0]
        return loss, tape.gradient(loss, p)

    loss, grad = tf.function(run, jit_compile=True)(y_true, y_pred)
    _, want_grad = run(tf.cast(y_true, tf.float32), y_pred)
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=1e-5, atol=1e-9)
    ref = reference.masked_loss(spec, y_true, y_pred, mask, None, "mean", case.params)[0]
    np.testing.assert_allclose(ref.numpy(), want.numpy(), rtol=1e-5)


def test_labels_have_no_gradient_and_padding_compares_the_converted_label():
    y_true = tf.constant([[1, -1, 0], [-1, 1, 1]], tf.int32)
    y_pred = tf.Variable([[0.5, 9.0, 0.25], [9.0, 1.0, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y_true)
        loss = masked_ops.masked_mse(y_true, y_pred, padding_value=-1)
    assert tape.gradient(loss, y_true) is None
    # Kept: (1-0.5)^2, (0-0.25)^2, (1-1)^2, (1-3)^2 over 4.
    np.testing.assert_allclose(loss.numpy(), (0.25 + 0.0625 + 0.0 + 4.0) / 4, rtol=1e-6)
    g = tape.gradient(loss, y_pred).numpy()
    assert g[0, 1] == 0.0 and g[1, 0] == 0.0


def test_other_integer_labels_are_cast_and_the_binding_refuses_label_gradients():
    y_pred = np.array([0.2, 0.7, 0.9], np.float32)
    for labels in (np.array([0, 1, 1], np.uint8), np.array([0, 1, 1], np.int16)):
        np.testing.assert_allclose(
            masked_ops.masked_binary_crossentropy(labels, y_pred).numpy(),
            masked_ops.masked_binary_crossentropy(labels.astype(np.float32), y_pred).numpy(),
        )
    labels = np.array([False, True, True])
    loss, _, ws, _ = _kernels.forward(labels, y_pred, loss_name="squared_error")
    with pytest.raises(ValueError, match="labels have no gradient"):
        _kernels.backward(
            1.0, 0.0, 0.0, labels, y_pred, None, None, loss, ws, "mean", True, True, False
        )
    g_true, g_pred, _ = _kernels.backward(
        1.0, 0.0, 0.0, labels, y_pred, None, None, loss, ws, "mean", False, True, False
    )
    assert g_true is None
    np.testing.assert_allclose(g_pred, 2 * (y_pred - labels) / 3, rtol=1e-6)
