"""The Keras drop-ins of every loss against Keras's own classes: every
constructor argument, reduction and sample-weight form, Keras masks, the
fused op in the graph, serialization, jit_compile fit, mixed precision and
the add_loss layer. (MSE's larger matrix: test_keras_loss.py.)"""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

from masked_ops import losses
from masked_ops.layers import MaskedLossLayer

B, T, F = 4, 5, 3
REDUCTIONS = ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None]
WEIGHT_CASES = [
    ((B, F), None),
    ((B, F), (B,)),
    ((B, T, F), ()),
    ((B, T, F), (B, T)),
    ((B, T, F), (B, 1)),
    ((B, T, 1), (B, T)),
]

# (id, our class, Keras's class, constructor kwargs, prediction kind)
CLASSES = [
    ("mse", losses.MaskedMeanSquaredError, keras.losses.MeanSquaredError, {}, "normal"),
    ("mae", losses.MaskedMeanAbsoluteError, keras.losses.MeanAbsoluteError, {}, "normal"),
    ("huber", losses.MaskedHuber, keras.losses.Huber, {}, "normal"),
    ("huber_delta", losses.MaskedHuber, keras.losses.Huber, {"delta": 0.4}, "normal"),
    ("bce", losses.MaskedBinaryCrossentropy, keras.losses.BinaryCrossentropy, {}, "prob"),
    (
        "bce_smoothed",
        losses.MaskedBinaryCrossentropy,
        keras.losses.BinaryCrossentropy,
        {"label_smoothing": 0.2},
        "prob",
    ),
    (
        "bce_logits",
        losses.MaskedBinaryCrossentropy,
        keras.losses.BinaryCrossentropy,
        {"from_logits": True, "label_smoothing": 0.1},
        "logit",
    ),
    (
        "bce_axis0",
        losses.MaskedBinaryCrossentropy,
        keras.losses.BinaryCrossentropy,
        {"axis": 0},
        "prob",
    ),
]
per_class = pytest.mark.parametrize(
    "name, ours, theirs, kwargs, kind", CLASSES, ids=[c[0] for c in CLASSES]
)


def _data(rng, shape, kind):
    if kind == "normal":
        return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    y_true = rng.integers(0, 2, size=shape).astype(np.float32)
    if kind == "prob":
        return y_true, rng.uniform(0.01, 0.99, size=shape).astype(np.float32)
    return y_true, (3 * rng.normal(size=shape)).astype(np.float32)


def _weights(rng, shape):
    if shape is None:
        return None
    if shape == ():
        return 0.75
    return rng.uniform(0.0, 2.0, size=shape).astype(np.float32)


@per_class
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, weight_shape", WEIGHT_CASES)
def test_drop_in_matches_keras(name, ours, theirs, kwargs, kind, shape, weight_shape, reduction):
    rng = np.random.default_rng(zlib.crc32(repr((name, shape, weight_shape, reduction)).encode()))
    y_true, y_pred = _data(rng, shape, kind)
    sample_weight = _weights(rng, weight_shape)
    _same_as_keras(
        lambda: ours(reduction=reduction, **kwargs)(y_true, y_pred, sample_weight),
        lambda: theirs(reduction=reduction, **kwargs)(y_true, y_pred, sample_weight),
    )


def _same_as_keras(ours, theirs):
    """Equal results, or an error from both where Keras refuses the shapes
    (e.g. weights that do not broadcast to a loss reduced over axis 0)."""
    errors = (ValueError, tf.errors.InvalidArgumentError)
    try:
        expected = theirs()
    except errors:
        with pytest.raises(errors):
            ours()
        return
    got = ours()
    assert got.shape == expected.shape
    assert_close(got, expected, tf.float32)


@per_class
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", None])
def test_keras_mask_matches_keras(name, ours, theirs, kwargs, kind, reduction):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y_true, y_pred = _data(rng, (B, T, F), kind)
    mask = rng.random((B, T)) < 0.6

    def run(cls):
        masked = tf.constant(y_pred)
        masked._keras_mask = tf.constant(mask)
        return cls(reduction=reduction, **kwargs)(y_true, masked)

    _same_as_keras(lambda: run(ours), lambda: run(theirs))


@per_class
def test_gradients_match_keras(name, ours, theirs, kwargs, kind):
    rng = np.random.default_rng(3)
    y_true, y_pred = _data(rng, (B, T, F), kind)
    # Axis 0 leaves a (T, F) per-sample loss, which (T, F) weights fit.
    sample_weight = _weights(rng, (T, F) if kwargs.get("axis", -1) == 0 else (B, T))
    y_pred = tf.Variable(y_pred)
    grads = []
    for cls in (ours, theirs):
        with tf.GradientTape() as tape:
            loss = cls(**kwargs)(y_true, y_pred, sample_weight)
        grads.append(tape.gradient(loss, y_pred).numpy())
    # Both in float32 by different formulas: elements that nearly cancel
    # (p close to the smoothed target) differ relative to themselves, so the
    # absolute tolerance follows the largest element.
    scale = np.abs(grads[1]).max()
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6 * scale)


@per_class
def test_graph_runs_the_fused_op_and_config_round_trips(name, ours, theirs, kwargs, kind):
    loss = ours(**kwargs)
    rng = np.random.default_rng(4)
    y_true, y_pred = _data(rng, (B, T, F), kind)
    graph = tf.function(lambda t, p: loss(t, p)).get_concrete_function(y_true, y_pred).graph
    types = {op.type for op in graph.get_operations()}
    fused = any(t.startswith("MaskedOps>") for t in types)
    assert fused == (kwargs.get("axis", -1) == -1)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is ours and restored.get_config() == loss.get_config()
    theirs_config = theirs(**kwargs).get_config()
    for key, value in theirs_config.items():
        if key not in ("name", "fn"):
            assert restored.get_config()[key] == value, key


def test_sigmoid_output_is_taken_as_logits_as_keras_does():
    x = np.random.default_rng(5).normal(size=(8, 3)).astype(np.float32) * 30
    y = (np.random.default_rng(6).random((8, 3)) < 0.5).astype(np.float32)

    @tf.function
    def both(x):
        p = tf.sigmoid(x)
        return losses.MaskedBinaryCrossentropy()(y, p), keras.losses.BinaryCrossentropy()(y, p)

    got, expected = both(x)
    # Saturated sigmoids: the probabilities path would clip to 1e-7.
    assert_close(got, expected, tf.float32)
    ours_probabilities = losses.MaskedBinaryCrossentropy()(y, tf.sigmoid(x))  # eager: no op
    keras_probabilities = keras.losses.BinaryCrossentropy()(y, tf.sigmoid(x))
    assert_close(ours_probabilities, keras_probabilities, tf.float32)


@pytest.mark.parametrize(
    "loss",
    [losses.MaskedMeanAbsoluteError(), losses.MaskedHuber(0.5), losses.MaskedBinaryCrossentropy()],
)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_matches_keras(loss, jit_compile):
    keras_loss = {
        losses.MaskedMeanAbsoluteError: keras.losses.MeanAbsoluteError(),
        losses.MaskedHuber: keras.losses.Huber(0.5),
        losses.MaskedBinaryCrossentropy: keras.losses.BinaryCrossentropy(),
    }[type(loss)]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (rng.random((32, 2)) < 0.5).astype(np.float32)
    histories = []
    for fn in (loss, keras_loss):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="sigmoid")])
        model.compile(optimizer="sgd", loss=fn, jit_compile=jit_compile)
        histories.append(model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_predictions_reach_the_kernel_uncast(policy):
    dtype = tf.float16 if policy == "mixed_float16" else tf.bfloat16
    rng = np.random.default_rng(8)
    y_true, y_pred = _data(rng, (B, T, F), "prob")
    y_pred = tf.cast(y_pred, dtype)
    for ours, theirs in [
        (losses.MaskedHuber(), keras.losses.Huber()),
        (losses.MaskedBinaryCrossentropy(), keras.losses.BinaryCrossentropy()),
    ]:
        got = ours(y_true, y_pred)
        assert got.dtype == tf.float32
        assert_close(got, theirs(y_true, y_pred), dtype)


def test_masked_loss_layer_adds_the_loss_of_any_masked_loss():
    rng = np.random.default_rng(9)
    y_true, y_pred = _data(rng, (B, T, F), "prob")
    mask = rng.random((B, T)) < 0.6
    loss = losses.MaskedBinaryCrossentropy(label_smoothing=0.1)
    layer = MaskedLossLayer(loss)
    out = layer(y_true, y_pred, tf.constant(mask))
    np.testing.assert_array_equal(out, y_pred)
    masked = tf.constant(y_pred)
    masked._keras_mask = tf.constant(mask)
    assert_close(layer.losses[0], loss(y_true, masked), tf.float32)
    restored = MaskedLossLayer.from_config(layer.get_config())
    assert restored.loss_fn.get_config() == loss.get_config()
    with pytest.raises(TypeError, match="masked_ops Keras loss"):
        MaskedLossLayer(keras.losses.MeanSquaredError())


def test_per_sample_functions_match_keras():
    rng = np.random.default_rng(10)
    y_true, y_pred = _data(rng, (B, T, F), "prob")
    pairs = [
        (losses.masked_mean_absolute_error(y_true, y_pred), keras.losses.mean_absolute_error),
        (
            losses.masked_huber(y_true, y_pred, delta=0.3),
            lambda t, p: keras.losses.huber(t, p, 0.3),
        ),
        (losses.masked_binary_crossentropy(y_true, y_pred), keras.losses.binary_crossentropy),
    ]
    for got, fn in pairs:
        assert_close(got, fn(y_true, y_pred), tf.float32)
