"""Timing of the CPU row-loss engine through the binding against the TF peers
of the same run: sparse categorical cross-entropy from logits, float32, a
padding mask over the rows. Medians of --repeat calls.

    python benchmarks/row_timing.py --rows 4096 --classes 32768 --padding 0.3

The engine: forward, and the one-pass forward_backward into a new NumPy array
(which includes the page faults of a fresh allocation as large as the logits,
which TensorFlow's allocator does not pay) and in place (over a copy of the
logits that the timed calls keep overwriting: the time does not depend on
the values). Peers (with --peers, the default),
each in `tf.function` and XLA: `tf.nn.sparse_softmax_cross_entropy_with_logits`
masked with `tf.where`, the pure-TF formula (`reduce_logsumexp` minus the
label's logit), and Keras's `SparseCategoricalCrossentropy(from_logits=True)`
with the mask as `sample_weight`. Forward+backward consumes the loss and the
gradient of the logits.
"""

import argparse
import time

import numpy as np

from masked_ops import kernels


def median_of(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        if isinstance(out, (list, tuple)):
            for x in out:
                np.asarray(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peer_paths(logits, labels, mask):
    import keras
    import tensorflow as tf

    x, y, m = tf.constant(logits), tf.constant(labels), tf.constant(mask)
    weights = tf.cast(m, tf.float32)

    def tf_nn(x, y, m):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(m, y, 0), logits=x)
        return tf.reduce_sum(tf.where(m, ce, 0.0)) / tf.reduce_sum(weights)

    def formula(x, y, m):
        picked = tf.gather(x, tf.where(m, y, 0), axis=1, batch_dims=1)
        per_row = tf.reduce_logsumexp(x, axis=-1) - picked
        return tf.reduce_sum(tf.where(m, per_row, 0.0)) / tf.reduce_sum(weights)

    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def keras_sample_weight(x, y, m):
        return keras_loss(y, x, sample_weight=weights)

    def with_gradient(loss_fn):
        def step(x, y, m):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = loss_fn(x, y, m)
            return loss, tape.gradient(loss, x)

        return step

    paths = {}
    for name, fn in (("tf.nn", tf_nn), ("formula", formula), ("keras", keras_sample_weight)):
        for mode in ("graph", "xla"):
            jit = mode == "xla"
            fwd = tf.function(fn, jit_compile=jit)
            both = tf.function(with_gradient(fn), jit_compile=jit)
            paths[f"{name}/{mode}"] = (
                lambda f=fwd: f(x, y, m),
                lambda f=both: f(x, y, m),
            )
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--padding", type=float, default=0.3, help="fraction of rows masked out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    args = parser.parse_args()
    kernels.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.rows).astype(np.int32)
    mask = rng.random(args.rows) >= args.padding
    scratch = logits.copy()
    paths = {
        "engine (binding)": (
            lambda: kernels.row_forward(labels, logits, mask, from_logits=True),
            lambda: kernels.row_forward_backward(labels, logits, mask, from_logits=True),
        ),
        "engine (binding, in place)": (
            None,
            lambda: kernels.row_forward_backward(
                labels, scratch, mask, from_logits=True, in_place=True
            ),
        ),
    }
    if args.peers:
        paths.update(peer_paths(logits, labels, mask))
    print(
        f"rows {args.rows} x classes {args.classes}, float32, {args.padding:.0%} of rows masked,"
        f" engine on {args.threads} thread(s) ({kernels.cpu_isa()})"
    )
    print(f"  {'path':28s} {'fwd':>10s} {'fwd+bwd':>10s}")
    for name, (fwd, both) in paths.items():
        cells = [
            f"{median_of(fn, args.repeat) * 1e3:8.1f} ms" if fn else f"{'-':>11s}"
            for fn in (fwd, both)
        ]
        print(f"  {name:28s} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
