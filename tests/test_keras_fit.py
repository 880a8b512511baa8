"""model.compile(loss=MaskedMeanSquaredError()) + fit/evaluate: eager, graph
and XLA (the op's lowering and the forced pure-TF fallback) against Keras's
MeanSquaredError, mixed precision, and the add_loss layer."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

from masked_ops import _xla, reference, specs
from masked_ops.layers import MaskedMeanSquaredErrorLoss
from masked_ops.losses import MaskedMeanSquaredError

B, T, IN, F = 16, 6, 2, 3
MODES = {
    "eager": dict(run_eagerly=True),
    "graph": dict(jit_compile=False),
    "xla": dict(jit_compile=True),
    "xla_fallback": dict(jit_compile=True),
}


def _data(seed=0, representable=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    valid = np.arange(T)[None, :] < lengths[:, None]
    x = np.where(valid[..., None], rng.normal(size=(B, T, IN)), 0.0).astype(np.float32)
    y = rng.normal(size=(B, T, F))
    if representable:  # exact in float16 and bfloat16
        y = np.clip(np.round(y * 8) / 8, -2, 2)
    sample_weight = rng.uniform(0.5, 1.5, size=(B, T)).astype(np.float32)
    return x, y.astype(np.float32), valid, sample_weight


def _model(masking=True, seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((T, IN))
    x = keras.layers.Masking(0.0)(inputs) if masking else inputs
    x = keras.layers.Dense(8, activation="tanh")(x)
    outputs = keras.layers.Dense(F)(x)
    return keras.Model(inputs, outputs)


def _train(loss, mode, sample_weight=None, policy=None):
    x, y, _, _ = _data(representable=policy is not None)
    forced = _xla.force_fallback() if mode == "xla_fallback" else contextlib.nullcontext()
    with _policy(policy):
        model = _model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, **MODES[mode])
        with forced:
            history = model.fit(
                x, y, sample_weight=sample_weight, batch_size=8, epochs=2, shuffle=False, verbose=0
            )
            evaluated = model.evaluate(x, y, sample_weight=sample_weight, verbose=0)
    return history.history["loss"], evaluated, [w.numpy() for w in model.weights]


@contextlib.contextmanager
def _policy(name):
    previous = keras.config.dtype_policy()
    if name is not None:
        keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _assert_same_training(got, expected, dtype=tf.float32):
    losses, evaluated, weights = got
    e_losses, e_evaluated, e_weights = expected
    assert np.all(np.isfinite(losses))
    assert_close(losses, e_losses, dtype)
    assert_close(evaluated, e_evaluated, dtype)
    for w, e in zip(weights, e_weights, strict=False):
        assert_close(w, e, dtype)


@pytest.fixture(scope="module")
def keras_reference():
    _, _, _, sample_weight = _data()
    return {
        "plain": _train(keras.losses.MeanSquaredError(), "graph"),
        "weighted": _train(keras.losses.MeanSquaredError(), "graph", sample_weight),
    }


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("weighted", [False, True])
def test_fit_matches_keras(keras_reference, mode, weighted):
    _, _, _, sample_weight = _data()
    got = _train(MaskedMeanSquaredError(), mode, sample_weight if weighted else None)
    _assert_same_training(got, keras_reference["weighted" if weighted else "plain"])


@pytest.mark.parametrize("forced", [False, True])
def test_fit_under_jit_uses_the_lowering_when_built(monkeypatch, forced):

    calls = []
    original = reference.masked_loss
    monkeypatch.setattr(reference, "masked_loss", lambda *args: calls.append(1) or original(*args))
    x, y, _, _ = _data()
    model = _model()
    model.compile(optimizer="sgd", loss=MaskedMeanSquaredError(), jit_compile=True)
    with _xla.force_fallback() if forced else contextlib.nullcontext():
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    lowered = _xla.has_lowering(specs.SQUARED_ERROR)
    assert bool(calls) == (forced or not lowered)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_matches_keras(policy):
    dtype = tf.float16 if policy == "mixed_float16" else tf.bfloat16
    x, y, _, _ = _data(representable=True)
    with _policy(policy):
        model = _model()
        y_pred = model(x)
        assert y_pred.dtype == dtype
        loss = MaskedMeanSquaredError()(y, y_pred)
        assert loss.dtype == tf.float32
        assert_close(loss, keras.losses.MeanSquaredError()(y, y_pred), dtype)
    got = _train(MaskedMeanSquaredError(), "graph", policy=policy)
    expected = _train(keras.losses.MeanSquaredError(), "graph", policy=policy)
    # Gradients w.r.t. the predictions are rounded to 16 bits in both.
    _assert_same_training(got, expected, dtype)


def _add_loss_model(**layer_kwargs):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((T, IN))
    targets = keras.Input((T, F))
    mask = keras.Input((T,), dtype="bool")
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    y_pred = keras.layers.Dense(F)(x)
    outputs = MaskedMeanSquaredErrorLoss(**layer_kwargs)([targets, y_pred, mask])
    return keras.Model([inputs, targets, mask], outputs)


def test_add_loss_layer_matches_compiled_loss(keras_reference):
    x, y, valid, _ = _data()
    model = _add_loss_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit([x, y, valid], batch_size=8, epochs=2, shuffle=False, verbose=0)
    evaluated = model.evaluate([x, y, valid], verbose=0)
    weights = [w.numpy() for w in model.weights]
    # Same data and weights as the Masking model: the mask is Masking's.
    _assert_same_training((history.history["loss"], evaluated, weights), keras_reference["plain"])


def test_add_loss_layer_serializes():
    layer = MaskedMeanSquaredErrorLoss(padding_value=-1.0, reduction="sum", global_mean=True)
    restored = MaskedMeanSquaredErrorLoss.from_config(layer.get_config())
    assert restored.loss_fn.get_config()["padding_value"] == -1.0
    assert restored.loss_fn.reduction == "sum" and restored.loss_fn.global_mean
    rng = np.random.default_rng(3)
    y_true = rng.normal(size=(2, T, F)).astype(np.float32)
    y_pred = rng.normal(size=(2, T, F)).astype(np.float32)
    restored([y_true, y_pred])
    (loss,) = restored.losses
    assert_close(loss, MaskedMeanSquaredError(reduction="sum")(y_true, y_pred), tf.float32)
    with pytest.raises(ValueError, match="expects"):
        restored(y_pred)
