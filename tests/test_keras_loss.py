"""MaskedMeanSquaredError against keras.losses.MeanSquaredError: reductions,
sample weights, Keras masks, padding, NaN under masks, serialization and mixed
precision inputs."""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

import masked_ops
from masked_ops.losses import MaskedMeanSquaredError, masked_mean_squared_error

REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None, "none"]
B, T, F = 4, 5, 3

# (y shape, sample_weight shape or None; () is a Python scalar)
WEIGHT_CASES = [
    ((B, F), None),
    ((B, F), ()),
    ((B, F), (B,)),
    ((B, F), (B, 1)),
    ((B, 1), (B, 1)),
    ((B, T, F), None),
    ((B, T, F), ()),
    ((B, T, F), (B, T)),
    ((B, T, F), (B, 1)),
    ((B, T, 1), (B, T)),
    ((B, T, 1), (B, T, 1)),
]


def _data(rng, shape, integer_targets=False):
    if integer_targets:
        y_true = rng.integers(-3, 4, size=shape).astype(np.int32)
    else:
        y_true = rng.normal(size=shape).astype(np.float32)
    y_pred = rng.normal(size=shape).astype(np.float32)
    return y_true, y_pred


def _weights(rng, shape):
    if shape is None:
        return None
    if shape == ():
        return 0.75
    return rng.uniform(0.0, 2.0, size=shape).astype(np.float32)


def _keras_reference(
    y_true, y_pred, sample_weight=None, mask=None, reduction="sum_over_batch_size"
):
    """Keras's own MSE in float64 on the same (float32) inputs."""
    y_pred = tf.constant(np.asarray(y_pred, np.float64))
    if mask is not None:
        y_pred._keras_mask = tf.constant(mask)
    loss = keras.losses.MeanSquaredError(reduction=reduction, dtype="float64")
    return loss(np.asarray(y_true, np.float64), y_pred, sample_weight=sample_weight).numpy()


def _with_mask(y_pred, mask):
    y_pred = tf.constant(y_pred)
    y_pred._keras_mask = tf.constant(mask)
    return y_pred


def _op_types(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape,weight_shape", WEIGHT_CASES)
def test_drop_in_matches_keras(shape, weight_shape, reduction):
    rng = np.random.default_rng(zlib.crc32(repr((shape, weight_shape, reduction)).encode()))
    y_true, y_pred = _data(rng, shape)
    sample_weight = _weights(rng, weight_shape)
    got = MaskedMeanSquaredError(reduction=reduction)(y_true, y_pred, sample_weight=sample_weight)
    expected = _keras_reference(y_true, y_pred, sample_weight, reduction=reduction)
    assert got.dtype == tf.float32
    assert got.shape == expected.shape
    assert_close(got, expected, tf.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_integer_targets(reduction):
    rng = np.random.default_rng(1)
    y_true, y_pred = _data(rng, (B, T, F), integer_targets=True)
    sample_weight = _weights(rng, (B, T))
    got = MaskedMeanSquaredError(reduction=reduction)(y_true, y_pred, sample_weight=sample_weight)
    expected = _keras_reference(y_true, y_pred, sample_weight, reduction=reduction)
    assert_close(got, expected, tf.float32)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_reductions_run_the_fused_op(reduction):
    rng = np.random.default_rng(2)
    y_true, y_pred = _data(rng, (B, T, F))
    sample_weight = _weights(rng, (B, T))
    loss = MaskedMeanSquaredError(reduction=reduction)
    types = _op_types(lambda t, p, w: loss(t, p, sample_weight=w), y_true, y_pred, sample_weight)
    assert "MaskedOps>SquaredError" in types
    # The per-position weights broadcast inside the kernel: no full-size tile.
    assert "Tile" not in types and "BroadcastTo" not in types


def test_worked_example():
    y_true = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    y_pred = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    # Per-sample losses: mean((0, 1)^2) = 0.5 and mean((2, 3)^2) = 6.5.
    np.testing.assert_allclose(masked_mean_squared_error(y_true, y_pred), [0.5, 6.5])
    assert MaskedMeanSquaredError()(y_true, y_pred).numpy() == pytest.approx(3.5)
    assert MaskedMeanSquaredError(reduction="sum")(y_true, y_pred).numpy() == pytest.approx(7.0)
    weighted = MaskedMeanSquaredError(reduction="mean_with_sample_weight")
    assert weighted(y_true, y_pred, sample_weight=[1.0, 0.0]).numpy() == pytest.approx(0.5)
    assert MaskedMeanSquaredError()(y_true, y_pred, [1.0, 0.0]).numpy() == pytest.approx(0.25)
    # Keras mask on the second sample: the mean is over the one valid sample.
    masked = _with_mask(y_pred, [True, False])
    assert MaskedMeanSquaredError()(y_true, masked).numpy() == pytest.approx(0.5)
    # padding_value=4 drops one element of the second sample: (4 + 0) / 2 = 2.
    padded = MaskedMeanSquaredError(padding_value=4.0, reduction="none")
    np.testing.assert_allclose(padded(y_true, y_pred), [0.5, 2.0])
    # Mean over the three kept elements: (0 + 1 + 4) / 3.
    mean = MaskedMeanSquaredError(padding_value=4.0)(y_true, y_pred).numpy()
    assert mean == pytest.approx(5.0 / 3.0)


MASK_WEIGHT_SHAPES = [None, (), (B, T), (B, 1)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", MASK_WEIGHT_SHAPES)
def test_keras_mask_matches_keras(weight_shape, reduction):
    rng = np.random.default_rng(3)
    y_true, y_pred = _data(rng, (B, T, F))
    mask = rng.random((B, T)) < 0.6
    sample_weight = _weights(rng, weight_shape)
    got = MaskedMeanSquaredError(reduction=reduction)(
        y_true, _with_mask(y_pred, mask), sample_weight=sample_weight
    )
    expected = _keras_reference(y_true, y_pred, sample_weight, mask, reduction)
    assert_close(got, expected, tf.float32)


def test_all_masked_is_zero():
    rng = np.random.default_rng(4)
    y_true, y_pred = _data(rng, (B, T, F))
    mask = np.zeros((B, T), bool)
    for reduction in ["sum_over_batch_size", "sum", "mean_with_sample_weight"]:
        got = MaskedMeanSquaredError(reduction=reduction)(y_true, _with_mask(y_pred, mask))
        assert got.numpy() == 0.0
        assert _keras_reference(y_true, y_pred, mask=mask, reduction=reduction) == 0.0


def _masking_model(embedding):
    if embedding:
        inputs = keras.Input((T,), dtype="int32")
        x = keras.layers.Embedding(6, 4, mask_zero=True)(inputs)
    else:
        inputs = keras.Input((T, 2))
        x = keras.layers.Masking(mask_value=0.0)(inputs)
    x = keras.layers.LSTM(4, return_sequences=True)(x)
    outputs = keras.layers.Dense(F)(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("embedding", [False, True])
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_masks_from_layers(embedding, reduction):
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    model = _masking_model(embedding)
    lengths = np.array([5, 3, 1, 4])
    valid = np.arange(T)[None, :] < lengths[:, None]
    if embedding:
        x = np.where(valid, rng.integers(1, 6, size=(B, T)), 0).astype(np.int32)
    else:
        x = np.where(valid[..., None], rng.normal(size=(B, T, 2)), 0.0).astype(np.float32)
    y_pred = model(x)
    np.testing.assert_array_equal(y_pred._keras_mask.numpy(), valid)
    y_true = rng.normal(size=(B, T, F)).astype(np.float32)
    sample_weight = _weights(rng, (B, T))
    got = MaskedMeanSquaredError(reduction=reduction)(y_true, y_pred, sample_weight)
    expected = _keras_reference(y_true, y_pred.numpy(), sample_weight, valid, reduction)
    assert_close(got, expected, tf.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_padding_value_equals_the_keras_mask(reduction):
    """Whole padded time steps: padding_value gives what Keras gives with the
    equivalent mask."""
    rng = np.random.default_rng(6)
    y_true, y_pred = _data(rng, (B, T, F))
    valid = rng.random((B, T)) < 0.6
    y_true[~valid] = -1.0
    sample_weight = _weights(rng, (B, T)) if reduction != "mean_with_sample_weight" else None
    got = MaskedMeanSquaredError(padding_value=-1.0, reduction=reduction)(
        y_true, y_pred, sample_weight
    )
    expected = _keras_reference(y_true, y_pred, sample_weight, valid, reduction)
    assert_close(got, expected, tf.float32)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
@pytest.mark.parametrize("weighted", [False, True])
def test_padding_combined_with_mask_and_weights(reduction, weighted):
    """Element-level padding with a Keras mask and sample weights, against a
    float64 NumPy formula."""
    rng = np.random.default_rng(7)
    y_true, y_pred = _data(rng, (B, T, F))
    y_true[rng.random((B, T, F)) < 0.3] = 9.0
    mask = rng.random((B, T)) < 0.7
    sample_weight = _weights(rng, (B, T)) if weighted else None
    got = MaskedMeanSquaredError(padding_value=9.0, reduction=reduction)(
        y_true, _with_mask(y_pred, mask), sample_weight
    )
    keep = (y_true != 9.0) & mask[..., None]
    sw = np.ones((B, T)) if sample_weight is None else sample_weight
    w = np.broadcast_to(sw[..., None], keep.shape)
    w = np.where(keep, w, 0.0)
    sq = (y_true.astype(np.float64) - y_pred) ** 2
    total = np.sum(w * sq)
    if reduction == "sum":
        expected = total / F
    elif reduction == "mean_with_sample_weight":
        expected = total / np.sum(w)
    else:
        expected = total / np.sum(keep)
    assert_close(got, expected, tf.float32)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_nan_under_mask_does_not_leak(reduction):
    rng = np.random.default_rng(8)
    y_true, y_pred = _data(rng, (B, T, F))
    mask = rng.random((B, T)) < 0.6
    mask[0, 0] = False
    y_true[0, 1] = 5.0  # whole padded step
    dirty_pred = y_pred.copy()
    dirty_pred[~mask] = np.nan
    dirty_pred[0, 0, 0] = np.inf
    sample_weight = _weights(rng, (B, T))
    loss = MaskedMeanSquaredError(padding_value=5.0, reduction=reduction)
    pred = tf.Variable(dirty_pred)
    with tf.GradientTape() as tape:
        masked = tf.identity(pred)
        masked._keras_mask = tf.constant(mask)
        value = loss(y_true, masked, sample_weight)
    grad = tape.gradient(value, pred).numpy()
    assert np.isfinite(value.numpy())
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~mask] == 0.0)
    assert np.all(grad[0, 1] == 0.0)
    clean = np.where(mask[..., None], y_pred, 0.0)
    valid = mask & ~(y_true == 5.0).all(-1)
    expected = _keras_reference(y_true, clean, sample_weight, valid, reduction)
    assert_close(value, expected, tf.float32)
    # Keras multiplies by the mask, so the same inputs give NaN there.
    assert np.isnan(_keras_reference(y_true, dirty_pred, sample_weight, mask, reduction))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_gradients_match_keras(reduction):
    rng = np.random.default_rng(9)
    y_true, y_pred = _data(rng, (B, T, F))
    mask = rng.random((B, T)) < 0.6
    sample_weight = _weights(rng, (B, T))

    def grad(loss, dtype):
        pred = tf.Variable(y_pred.astype(dtype))
        with tf.GradientTape() as tape:
            masked = tf.identity(pred)
            masked._keras_mask = tf.constant(mask)
            value = loss(y_true.astype(dtype), masked, sample_weight.astype(dtype))
        return tape.gradient(value, pred)

    got = grad(MaskedMeanSquaredError(reduction=reduction), np.float32)
    expected = grad(keras.losses.MeanSquaredError(reduction=reduction, dtype="float64"), np.float64)
    assert_close(got, expected, tf.float32, "elementwise")


def test_serialization_round_trip():
    loss = MaskedMeanSquaredError(padding_value=-1.0, reduction="sum", name="mm", global_mean=True)
    config = loss.get_config()
    assert config["padding_value"] == -1.0 and config["global_mean"] is True
    again = MaskedMeanSquaredError.from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, MaskedMeanSquaredError)
    assert restored.get_config() == config
    rng = np.random.default_rng(10)
    y_true, y_pred = _data(rng, (B, T, F))
    assert_close(restored(y_true, y_pred), loss(y_true, y_pred), tf.float32)


def test_saved_model_loads_back(tmp_path):
    keras.utils.set_random_seed(11)
    model = _masking_model(embedding=False)
    model.compile(optimizer="sgd", loss=MaskedMeanSquaredError(padding_value=-1.0))
    rng = np.random.default_rng(11)
    x = rng.normal(size=(B, T, 2)).astype(np.float32)
    y = rng.normal(size=(B, T, F)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, MaskedMeanSquaredError)
    assert loaded.loss.padding_value == -1.0
    assert_close(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), tf.float32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="padding_value=NaN"):
        MaskedMeanSquaredError(padding_value=float("nan"))
    with pytest.raises(TypeError, match="padding_value"):
        MaskedMeanSquaredError(padding_value="x")
    with pytest.raises(ValueError, match="reduction"):
        MaskedMeanSquaredError(reduction="average")
    with pytest.raises(ValueError, match="rank"):
        MaskedMeanSquaredError()(1.0, 2.0)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_16_bit_predictions_go_to_the_kernel_uncast(dtype):
    rng = np.random.default_rng(12)
    # Targets exactly representable in both 16-bit types, as are the weights.
    y_true = (rng.integers(-16, 17, size=(B, T, F)) / 8.0).astype(np.float32)
    y_pred = tf.cast(rng.normal(size=(B, T, F)), dtype)
    mask = rng.random((B, T)) < 0.6
    sample_weight = rng.integers(0, 5, size=(B, T)).astype(np.float32) / 4.0
    loss = MaskedMeanSquaredError()

    def fn(t, p, w):
        return loss(t, _keep_mask(p, mask), w)

    graph = tf.function(fn).get_concrete_function(y_true, y_pred, sample_weight).graph
    (op,) = [op for op in graph.get_operations() if op.type == "MaskedOps>SquaredError"]
    assert op.get_attr("T") == dtype
    source = op.inputs[1].op  # y_pred itself, no Cast on the way
    while source.type == "Identity":
        source = source.inputs[0].op
    assert source.type == "Placeholder"
    got = fn(y_true, y_pred, sample_weight)
    assert got.dtype == tf.float32
    expected = _keras_reference(y_true, tf.cast(y_pred, tf.float64), sample_weight, mask)
    assert_close(got, expected, dtype)


def _keep_mask(y_pred, mask):
    y_pred = tf.identity(y_pred)
    y_pred._keras_mask = tf.constant(mask)
    return y_pred


def test_exports():
    assert masked_ops.losses.MaskedMeanSquaredError is MaskedMeanSquaredError
    assert masked_ops.layers.MaskedMeanSquaredErrorLoss is not None
