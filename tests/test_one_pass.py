"""Loss and gradient in one pass: when a gradient tape records y_true or
y_pred, the public loss functions emit the one-pass op (OP "WithGrad"), whose
forward writes the gradient of the loss; the backward only scales it by the
upstream gradient (nothing at all for exactly 1). Same bits as the two-pass
path (forward op + gradient op) for every loss and dtype; every case it does
not cover (padding, float or several masks, gradients through the sums, XLA)
falls back to the two-pass path."""

import numpy as np
import pytest
import tensorflow as tf
from _helpers import DTYPE_IDS, DTYPES
from loss_cases import LOSS_CASES

import masked_ops
from masked_ops import specs
from masked_ops.ops import fused

SPECS = {spec.name: spec for spec in specs.LOSSES}
per_case = pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.name)
MASKS = ("none", "elementwise", "prefix_short", "prefix_long", "scalar")


def _mask(rng, kind, shape):
    if kind == "none":
        return None
    if kind == "scalar":
        return tf.constant(True)
    if kind == "elementwise":
        return tf.constant(rng.random(shape) < 0.7)
    return tf.constant(rng.random(shape[:1]) < 0.7)


def _data(case, dtype, kind, seed=0):
    rng = np.random.default_rng([seed, DTYPES.index(dtype), MASKS.index(kind)])
    # Long rows span chunks (65536 elements) mid-row; short rows cross blocks.
    shape = (3, 70001) if kind == "prefix_long" else (1500, 7)
    t = tf.cast(case.targets(rng, shape), dtype)
    p = tf.cast(case.predictions(rng, shape), dtype)
    mask = _mask(rng, kind, shape)
    if mask is not None and kind != "scalar":
        keep = tf.reshape(mask, mask.shape + (1,) * (len(shape) - mask.shape.rank))
        # NaN/Inf where nothing is kept: never in the loss or the gradients.
        t = tf.where(keep, t, tf.constant(np.nan, dtype))
        p = tf.where(keep, p, tf.constant(np.inf, dtype))
    return t, p, mask


def _public(case):
    spec = SPECS[case.spec]
    return lambda t, p, m, reduction: fused(
        spec, t, p, m, None, reduction, case.params, loss_only=True
    )[0]


def _two_pass(case):
    spec = SPECS[case.spec]
    return lambda t, p, m, reduction: fused(spec, t, p, m, None, reduction, case.params)[0]


def _loss_and_grads(loss_fn, t, p, mask, reduction, scale=None, watch_true=True):
    with tf.GradientTape() as tape:
        tape.watch([t, p] if watch_true else [p])
        loss = loss_fn(t, p, mask, reduction)
        scaled = loss if scale is None else loss * scale
    return [loss, *tape.gradient(scaled, [t, p] if watch_true else [p])]


def _bits(xs):
    return [np.asarray(x).tobytes() for x in xs]


def _op_types(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations() if op.type.startswith("MaskedOps>")}


@per_case
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_pass_gives_the_bits_of_the_two_pass_path(case, dtype, kind):
    t, p, mask = _data(case, dtype, kind)
    for reduction in ("mean", "sum"):
        got = _loss_and_grads(_public(case), t, p, mask, reduction)
        want = _loss_and_grads(_two_pass(case), t, p, mask, reduction)
        assert _bits(got) == _bits(want)
        assert np.isfinite(got[0].numpy())
        if mask is not None and kind != "scalar":
            # The NaN/Inf under the mask reach no gradient.
            dropped = ~np.isfinite(tf.cast(p, tf.float64).numpy())
            for g in got[1:]:
                assert np.all(tf.cast(g, tf.float64).numpy()[dropped] == 0)


@per_case
def test_the_op_is_chosen_only_when_a_tape_records_and_falls_back_otherwise(case):
    t, p, mask = _data(case, tf.float32, "elementwise")
    loss = _public(case)

    def training(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = loss(t, p, mask, "mean")
        return value, tape.gradient(value, p)

    types = _op_types(training, t, p)
    one_pass = SPECS[case.spec].op_type + "WithGrad"
    assert one_pass in types and "MaskedOps>ScaleGradient" in types
    assert not any(x.endswith("Grad") and not x.endswith("WithGrad") for x in types)
    # evaluate/predict: no tape, the forward-only op.
    assert _op_types(lambda t, p: loss(t, p, mask, "mean"), t, p) == {SPECS[case.spec].op_type}


def test_upstream_gradients_other_than_one_scale_the_written_gradient():
    """Mixed precision's loss scaling (powers of two: the same bits as the
    two-pass path) and any other factor (the same up to one rounding)."""
    case = LOSS_CASES[0]
    t, p, mask = _data(case, tf.float32, "elementwise", seed=3)
    for scale in (1024.0, 0.5, 3.0):
        got = _loss_and_grads(_public(case), t, p, mask, "mean", scale=scale)
        want = _loss_and_grads(_two_pass(case), t, p, mask, "mean", scale=scale)
        if scale in (1024.0, 0.5):
            assert _bits(got) == _bits(want)
        else:
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-7, atol=1e-30)


@pytest.mark.parametrize(
    "mask_kind, padding",
    [("float", None), ("list", None), ("bool", 0.0)],
)
def test_cases_the_one_pass_does_not_cover_use_the_two_pass_ops(mask_kind, padding):
    rng = np.random.default_rng(4)
    t = tf.constant(rng.standard_normal((50, 8)), tf.float32)
    p = tf.constant(rng.standard_normal((50, 8)), tf.float32)
    keep = tf.constant(rng.random((50, 8)) < 0.7)
    mask = {
        "float": tf.cast(keep, tf.float32),
        "list": [keep, tf.constant(rng.random(50) < 0.5)],
        "bool": keep,
    }[mask_kind]

    def training(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = masked_ops.masked_mse(t, p, mask, padding_value=padding)
        return value, tape.gradient(value, p)

    types = _op_types(training, t, p)
    assert "MaskedOps>SquaredErrorGrad" in types
    assert "MaskedOps>SquaredErrorWithGrad" not in types
    loss, grad = training(t, p)
    with tf.GradientTape() as tape:
        tape.watch(p)
        ref = masked_ops.reference.masked_loss(specs.SQUARED_ERROR, t, p, mask, padding, "mean")[0]
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), tape.gradient(ref, p).numpy(), rtol=1e-5, atol=1e-9)


def test_gradients_through_the_sums_or_of_an_input_not_written_fall_back():
    """The one-pass op's gradient takes the two-pass gradient op when the
    upstream reaches sum or weight_sum, or when the tape asks for an input
    whose gradient the forward did not write."""
    rng = np.random.default_rng(5)
    t = tf.constant(rng.standard_normal((40, 9)), tf.float32)
    p = tf.constant(rng.standard_normal((40, 9)), tf.float32)
    mask = tf.constant(rng.random((40, 9)) < 0.6)
    spec = specs.HUBER
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(p)
        loss, total, weight_sum, _ = fused(spec, t, p, mask, None, "mean", (1.0,), loss_only=True)
        mixed = loss + 0.25 * total + 0.5 * weight_sum
    got = tape.gradient(mixed, p)
    with tf.GradientTape() as tape2:
        tape2.watch(p)
        loss, total, weight_sum, _ = fused(spec, t, p, mask, None, "mean", (1.0,))
        mixed = loss + 0.25 * total + 0.5 * weight_sum
    assert got.numpy().tobytes() == tape2.gradient(mixed, p).numpy().tobytes()
    # y_true was not recorded at the forward: its gradient comes from the two-pass op.
    with tf.GradientTape() as tape3:
        loss = fused(spec, t, p, mask, None, "mean", (1.0,), loss_only=True)[0]
    assert tape3.gradient(loss, t) is None
    with tf.GradientTape(persistent=True) as tape4:
        tape4.watch(p)
        loss = fused(spec, t, p, mask, None, "mean", (1.0,), loss_only=True)[0]
        tape4.watch(t)
    with tf.GradientTape(persistent=True) as tape5:
        tape5.watch([t, p])
        ref = fused(spec, t, p, mask, None, "mean", (1.0,))[0]
    assert tape4.gradient(loss, t).numpy().tobytes() == tape5.gradient(ref, t).numpy().tobytes()


def test_labels_xla_and_keras_keep_their_paths():
    rng = np.random.default_rng(6)
    labels = tf.constant(rng.random((30, 5)) < 0.5)
    probs = tf.constant(rng.uniform(0.05, 0.95, (30, 5)), tf.float32)
    mask = tf.constant(rng.random((30,)) < 0.8)

    def training(y, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = masked_ops.masked_binary_crossentropy(y, p, mask)
        return value, tape.gradient(value, p)

    assert "MaskedOps>BinaryCrossentropyWithGrad" in _op_types(training, labels, probs)
    eager = training(labels, probs)
    compiled = tf.function(training, jit_compile=True)(labels, probs)
    for a, b in zip(eager, compiled, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-9)


@per_case
@pytest.mark.parametrize("kind", ("none", "elementwise", "prefix_long"))
def test_binding_forward_backward_gives_the_bits_of_forward_then_backward(case, kind):
    """The TF-free binding's one-pass call (what the GPU check runs on the
    device) against its own two calls and the op, on 1 and 3 threads."""
    from masked_ops import _kernels

    t, p, mask = _data(case, tf.float32, kind, seed=7)
    t, p = t.numpy(), p.numpy()
    m = None if mask is None else mask.numpy()
    kw = {"loss_name": case.spec, "params": list(case.params)}
    loss, total, ws, count = _kernels.forward(t, p, m, None, "mean", **kw)
    g_true, g_pred, _ = _kernels.backward(
        1.0, 0.0, 0.0, t, p, m, None, loss, ws, "mean", True, True, False, **kw
    )
    want = _bits([np.asarray(x) for x in (loss, total, ws, count, g_true, g_pred)])
    previous = _kernels.get_num_threads()
    try:
        for threads in (1, 3):
            _kernels.set_num_threads(threads)
            got = _kernels.forward_backward(t, p, m, "mean", True, True, **kw)
            assert _bits([np.asarray(x) for x in got]) == want
    finally:
        _kernels.set_num_threads(previous)
    op = _loss_and_grads(_public(case), tf.constant(t), tf.constant(p), mask, "mean")
    assert _bits(op) == _bits([tf.constant(x) for x in (loss, g_true, g_pred)])


def test_binding_forward_backward_refuses_what_it_does_not_cover():
    from masked_ops import _kernels

    x = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="one boolean mask"):
        _kernels.forward_backward(x, x, np.ones(8, np.float32))
    with pytest.raises(ValueError, match="one boolean mask"):
        _kernels.forward_backward(x, x, [np.ones(8, bool), np.ones(8, bool)])
    with pytest.raises(ValueError, match="labels have no gradient"):
        _kernels.forward_backward(np.zeros(8, np.int32), x, None, "mean", True, True)
    loss, _, _, count, g_true, g_pred = _kernels.forward_backward(
        np.ones(8, bool), x, None, "sum", False, True
    )
    assert g_true is None and count == 8 and float(loss) == 8.0
    np.testing.assert_array_equal(g_pred, np.full(8, -2.0, np.float32))
