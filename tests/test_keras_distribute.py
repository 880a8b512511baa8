"""MaskedMeanSquaredError under tf.distribute.MirroredStrategy on two logical
CPU devices: the default follows Keras's per-replica reduction and 1/replicas
scaling; global_mean=True gives the whole-batch masked mean, so two replicas
with uneven masks train exactly like one replica on the whole batch.

Logical devices must be configured before TensorFlow starts, so the checks run
in a fresh interpreter that prints (got, expected) pairs for the tests here."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

SCRIPT = textwrap.dedent(
    """
    import json

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras

    from masked_ops.losses import MaskedMeanSquaredError

    B, T, IN, F = 8, 5, 2, 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, IN)).astype(np.float32)
    y = rng.normal(size=(B, T, F)).astype(np.float32)
    # Uneven masks: the first replica's half keeps far more steps than the second's.
    mask = np.zeros((B, T), bool)
    mask[: B // 2] = rng.random((B // 2, T)) < 0.9
    mask[B // 2 :] = rng.random((B // 2, T)) < 0.2
    mask[B // 2, 0] = True
    sample_weight = rng.uniform(0.5, 1.5, size=(B, T)).astype(np.float32)
    w0 = rng.normal(size=(IN, F)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}


    def step(loss, kernel, x, y, mask, sample_weight):
        with tf.GradientTape() as tape:
            y_pred = tf.einsum("bti,if->btf", x, kernel)
            y_pred._keras_mask = mask
            value = loss(y, y_pred, sample_weight=sample_weight)
        return value, tape.gradient(value, kernel)


    def distributed(loss):
        with strategy.scope():
            kernel = tf.Variable(w0)

        def shard(ctx):
            i = ctx.replica_id_in_sync_group
            part = slice(i * B // 2, (i + 1) * B // 2)
            return x[part], y[part], mask[part], sample_weight[part]

        values = strategy.experimental_distribute_values_from_function(shard)

        @tf.function
        def run():
            value, grad = strategy.run(lambda v: step(loss, kernel, *v), args=(values,))
            return value, strategy.reduce("SUM", grad, axis=None)

        value, grad = run()
        return [float(v) for v in strategy.experimental_local_results(value)], grad.numpy()


    def single(loss):
        kernel = tf.Variable(w0)
        value, grad = step(loss, kernel, x, y, tf.constant(mask), sample_weight)
        return float(value), grad.numpy()


    for reduction in ["sum_over_batch_size", "sum", "mean_with_sample_weight"]:
        ours = distributed(MaskedMeanSquaredError(reduction=reduction))
        theirs = distributed(keras.losses.MeanSquaredError(reduction=reduction))
        results[f"keras_{reduction}_loss"] = (ours[0], theirs[0])
        results[f"keras_{reduction}_grad"] = (ours[1].tolist(), theirs[1].tolist())

        glob = distributed(MaskedMeanSquaredError(reduction=reduction, global_mean=True))
        whole = single(MaskedMeanSquaredError(reduction=reduction))
        results[f"global_{reduction}_grad"] = (glob[1].tolist(), whole[1].tolist())
        # Keras reports sum over replicas of the (1/replicas-scaled) losses.
        results[f"global_{reduction}_loss"] = (sum(glob[0]), whole[0])
        results[f"perreplica_{reduction}_grad"] = (ours[1].tolist(), whole[1].tolist())


    def fit(loss, distribute):
        scope = strategy.scope() if distribute else tf.name_scope("single")
        with scope:
            keras.utils.set_random_seed(1)
            inputs = keras.Input((T, IN))
            hidden = keras.layers.Masking(0.0)(inputs)
            hidden = keras.layers.Dense(4, activation="tanh")(hidden)
            model = keras.Model(inputs, keras.layers.Dense(F)(hidden))
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        xm = np.where(mask[..., None], x, 0.0).astype(np.float32)
        history = model.fit(xm, y, batch_size=B, epochs=3, shuffle=False, verbose=0)
        weights = np.concatenate([w.numpy().ravel() for w in model.weights])
        return history.history["loss"], weights.tolist()


    ours = fit(MaskedMeanSquaredError(), True)
    theirs = fit(keras.losses.MeanSquaredError(), True)
    results["fit_keras_loss"] = (ours[0], theirs[0])
    results["fit_keras_weights"] = (ours[1], theirs[1])
    glob = fit(MaskedMeanSquaredError(global_mean=True), True)
    whole = fit(MaskedMeanSquaredError(), False)
    results["fit_global_loss"] = (glob[0], whole[0])
    results["fit_global_weights"] = (glob[1], whole[1])
    print("RESULTS" + json.dumps(results))
    """
)

REDUCTIONS = ["sum_over_batch_size", "sum", "mean_with_sample_weight"]


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-4000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("RESULTS")]
    return json.loads(line[len("RESULTS") :])


def _close(pair):
    got, expected = pair
    assert np.all(np.isfinite(got))
    assert_close(np.asarray(got), np.asarray(expected), tf.float32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_default_follows_keras(results, reduction):
    _close(results[f"keras_{reduction}_loss"])
    _close(results[f"keras_{reduction}_grad"])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_global_mean_equals_one_replica(results, reduction):
    _close(results[f"global_{reduction}_loss"])
    _close(results[f"global_{reduction}_grad"])


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_uneven_masks_make_per_replica_means_differ(results, reduction):
    """The data are uneven enough that the Keras-style per-replica mean is not
    the whole-batch mean: the global-mean check above is not vacuous."""
    got, expected = (np.asarray(v) for v in results[f"perreplica_{reduction}_grad"])
    assert np.max(np.abs(got - expected)) > 1e-2 * np.max(np.abs(expected))


def test_fit_follows_keras(results):
    _close(results["fit_keras_loss"])
    _close(results["fit_keras_weights"])


def test_fit_global_mean_equals_one_replica(results):
    _close(results["fit_global_loss"])
    _close(results["fit_global_weights"])
