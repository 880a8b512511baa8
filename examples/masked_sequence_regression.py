"""Sequence regression on variable-length padded sequences, trained with the
fused masked loss and with a hand-written masked MSE side by side.

Each sequence holds token ids 1..VOCAB-1 followed by padding (id 0); the model
predicts, at every step, the running mean of the token values so far and the
current token's value. `Embedding(mask_zero=True)` gives Keras a mask over the
padded steps, and padded targets hold PAD. The two losses see the same model,
data and initial weights, so their training curves agree:

    python examples/masked_sequence_regression.py --epochs 5
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

from masked_ops.losses import MaskedMeanSquaredError

VOCAB, MAX_LEN, FEATURES = 12, 20, 2
PAD = -1.0


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, MAX_LEN + 1, size=n)
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    tokens = np.where(valid, rng.integers(1, VOCAB, size=(n, MAX_LEN)), 0).astype(np.int32)
    values = tokens / VOCAB
    running_mean = np.cumsum(values, axis=1) / np.arange(1, MAX_LEN + 1)
    targets = np.stack([running_mean, values], axis=-1)
    targets[~valid] = PAD
    return tokens, targets.astype(np.float32)


def handwritten_masked_mse(y_true, y_pred):
    """The loss users write by hand: per-step MSE over the steps whose
    targets are not padding, averaged over those steps."""
    keep = tf.reduce_all(tf.not_equal(y_true, PAD), axis=-1)
    per_step = tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)
    per_step = tf.where(keep, per_step, tf.zeros_like(per_step))
    steps = tf.reduce_sum(tf.cast(keep, per_step.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(per_step), steps)


def build_model(seed):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((MAX_LEN,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 16, mask_zero=True)(tokens)
    x = keras.layers.LSTM(16, return_sequences=True)(x)
    return keras.Model(tokens, keras.layers.Dense(FEATURES)(x))


def train(loss, epochs, batches, batch_size=32, seed=0):
    x, y = make_data(batches * batch_size, seed)
    model = build_model(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return history.history["loss"]


def main(epochs=5, batches=8):
    fused = train(MaskedMeanSquaredError(padding_value=PAD), epochs, batches)
    reference = train(handwritten_masked_mse, epochs, batches)
    print(f"{'epoch':>5} {'fused':>12} {'hand-written':>12}")
    for epoch, (a, b) in enumerate(zip(fused, reference, strict=False), 1):
        print(f"{epoch:>5} {a:>12.6f} {b:>12.6f}")
    return fused, reference


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="batches per epoch")
    args = parser.parse_args()
    main(args.epochs, args.batches)
