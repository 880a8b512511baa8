"""Several masks in one pass (`mask` as a list or tuple): booleans AND-ed,
float weights multiplied, each of its own leading-prefix shape, combined in
the kernels without materializing the product. Every loss against the
float64 oracle, gradients (masks' included) against the analytic form and
the reference's autodiff, XLA, NaN under any mask's zero, and errors."""

import numpy as np
import oracle
import pytest
import tensorflow as tf
from _helpers import DTYPE_IDS, DTYPES, to_tensor
from loss_cases import LOSS_CASES
from tolerances import assert_close

import masked_ops
from masked_ops import reference, specs
from masked_ops.ops import fused

SPECS = {spec.name: spec for spec in specs.LOSSES}
SHAPE = (6, 5, 7)
per_case = pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.name)


def _bool(rng, shape, keep=0.7):
    return rng.random(shape) < keep


def _weights(rng, shape):
    return np.where(rng.random(shape) < 0.25, 0.0, rng.uniform(0.25, 2.0, shape))


# Each combination: masks drawn from a Generator, as NumPy arrays (float ones
# become tensors of the inputs' dtype in _masks).
COMBINATIONS = {
    # A padding mask and a float weight tensor, the common pair.
    "bool_and_weights": lambda rng: [_bool(rng, SHAPE[:2]), _weights(rng, SHAPE)],
    # Two boolean masks (AND): binary weights, weight_sum is the count.
    "two_bools": lambda rng: [_bool(rng, SHAPE), _bool(rng, SHAPE[:1], 0.8)],
    # Three masks of three shapes, an integer one among them.
    "three_shapes": lambda rng: [
        _weights(rng, SHAPE[:2]),
        rng.integers(0, 3, SHAPE[:1]).astype(np.int32),
        _weights(rng, SHAPE),
    ],
    # A 0-d weight with an elementwise boolean mask.
    "scalar_weight": lambda rng: [np.float64(0.75), _bool(rng, SHAPE)],
}


def _acc(dtype):
    return "float64" if dtype == tf.float64 else "float32"


def _masks(raw, dtype):
    """The masks as tensors (float ones in `dtype`) and as the oracle sees them."""
    tensors, arrays = [], []
    for m in raw:
        m = np.asarray(m)
        if m.dtype.kind == "f":
            tensor, values = to_tensor(m, dtype)
            tensors.append(tensor)
            arrays.append(values.astype(tf.as_dtype(dtype).as_numpy_dtype))
        else:
            tensors.append(tf.constant(m))
            arrays.append(m)
    return tensors, arrays


def _data(case, dtype, combination, seed=0, poison=True):
    rng = np.random.default_rng([seed, DTYPES.index(dtype), list(COMBINATIONS).index(combination)])
    t = case.targets(rng, SHAPE)
    p = case.predictions(rng, SHAPE)
    masks, arrays = _masks(COMBINATIONS[combination](rng), dtype)
    w = oracle.combined_weights(arrays, tf.as_dtype(dtype).name, SHAPE)
    if poison:
        # NaN/Inf wherever any mask keeps nothing: must never reach the results.
        t = np.where(w == 0, np.nan, t)
        p = np.where(w == 0, np.inf, p)
    y_true, t64 = to_tensor(t, dtype)
    y_pred, p64 = to_tensor(p, dtype)
    return y_true, y_pred, masks, t64, p64, w


def _run(case, y_true, y_pred, mask, reduction="mean"):
    return fused(SPECS[case.spec], y_true, y_pred, mask, None, reduction, case.params)


def _reference(case, y_true, y_pred, mask, reduction="mean"):
    spec = SPECS[case.spec]
    return reference.masked_loss(spec, y_true, y_pred, mask, None, reduction, case.params)


@per_case
@pytest.mark.parametrize("combination", COMBINATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_matches_the_float64_oracle(case, dtype, combination):
    y_true, y_pred, masks, t64, p64, w = _data(case, dtype, combination)
    ref = oracle.forward(case.math(_acc(dtype)), t64, p64, w)
    assert ref.count > 0
    for fn in (_run, tf.function(_run)):
        loss, s, ws, count = fn(case, y_true, y_pred, masks)
        assert int(count) == ref.count
        assert_close(s, ref.sum, dtype)
        assert_close(ws, ref.weight_sum, dtype)
        assert_close(loss, ref.loss("mean"), dtype)
    # The pure-TF reference (what XLA compiles without a lowering) agrees.
    loss, s, ws, count = _reference(case, y_true, y_pred, masks)
    assert int(count) == ref.count
    assert_close(loss, ref.loss("mean"), dtype)


def _grads(fn, case, y_true, y_pred, masks, jit=False):
    floats = [m for m in masks if m.dtype.is_floating]

    def compute(y_true, y_pred, *floats):
        it = iter(floats)
        full = [next(it) if m.dtype.is_floating else m for m in masks]
        with tf.GradientTape() as tape:
            tape.watch([y_true, y_pred, *floats])
            loss = fn(case, y_true, y_pred, full)[0]
        return tape.gradient(loss, [y_true, y_pred, *floats])

    if jit:
        compute = tf.function(compute, jit_compile=True)
    return compute(y_true, y_pred, *floats)


@per_case
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_float64_gradients_match_the_analytic_oracle_and_reference_autodiff(case, combination):
    dtype = tf.float64
    y_true, y_pred, masks, t64, p64, w = _data(case, dtype, combination, seed=1)
    math = case.math()
    ref = oracle.forward(math, t64, p64, w)
    inv = 1.0 / ref.weight_sum
    with np.errstate(invalid="ignore"):
        g_true = np.where(ref.keep, w * math.grad_true(t64, p64) * inv, 0.0)
        g_pred = np.where(ref.keep, w * math.grad_pred(t64, p64) * inv, 0.0)
        # d loss / d W for the combined weight W, then each mask's share.
        g_combined = np.where(ref.keep, (ref.value - ref.loss("mean")) * inv, 0.0)
    full = [oracle.full_weights(oracle.kernel_weights(m.numpy(), "float64"), SHAPE) for m in masks]
    g_masks = []
    for i, m in enumerate(masks):
        if m.dtype.is_floating:
            others = np.prod([f for j, f in enumerate(full) if j != i], axis=0)
            g_masks.append(oracle.reduce_to_mask(g_combined * others, tuple(m.shape)))
    grads = _grads(_run, case, y_true, y_pred, masks)
    expected = [g_true, g_pred, *g_masks]
    assert len(grads) == len(expected)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-13)
    # The reference's autodiff, and the XLA lowering, on NaN-free data.
    y_true, y_pred, masks, *_ = _data(case, dtype, combination, seed=1, poison=False)
    want = _grads(_reference, case, y_true, y_pred, masks)
    for got in (
        _grads(_run, case, y_true, y_pred, masks),
        _grads(_run, case, y_true, y_pred, masks, jit=True),
    ):
        for g, r in zip(got, want, strict=True):
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-10, atol=1e-13)


@per_case
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_xla_matches_the_op(case, combination):
    y_true, y_pred, masks, t64, p64, w = _data(case, tf.float32, combination, seed=2)
    ref = oracle.forward(case.math("float32"), t64, p64, w)
    jitted = tf.function(lambda t, p, *m: _run(case, t, p, list(m)), jit_compile=True)
    loss, s, ws, count = jitted(y_true, y_pred, *masks)
    assert int(count) == ref.count
    assert_close(loss, ref.loss("mean"), tf.float32)
    assert_close(ws, ref.weight_sum, tf.float32)


def test_nan_weights_under_another_masks_zero_do_not_leak():
    """0 * NaN is NaN: a weight that another mask zeroes is not kept at all,
    whichever comes first, and its gradient stays finite."""
    weights = tf.Variable([[np.nan, 1.0], [np.inf, 2.0]])
    keep = tf.constant([[False, True], [False, True]])
    y_pred = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    y_true = tf.zeros([2, 2])
    for masks in ([weights, keep], [keep, weights]):
        with tf.GradientTape() as tape:
            loss = masked_ops.masked_mse(y_true, y_pred, masks)
        g_pred, g_w = tape.gradient(loss, [y_pred, weights])
        # (1 * 4 + 2 * 16) / 3
        np.testing.assert_allclose(loss.numpy(), 12.0, rtol=1e-6)
        assert np.all(np.isfinite(g_pred.numpy())) and np.all(np.isfinite(g_w.numpy()))
        np.testing.assert_array_equal(g_pred.numpy()[:, 0], [0.0, 0.0])
        np.testing.assert_array_equal(g_w.numpy()[:, 0], [0.0, 0.0])
    with tf.GradientTape() as tape:
        loss = reference.masked_mse(y_true, y_pred, [weights, keep])
    np.testing.assert_allclose(loss.numpy(), 12.0, rtol=1e-6)


def test_a_list_of_one_mask_is_that_mask_bit_for_bit():
    rng = np.random.default_rng(3)
    t, p = rng.standard_normal((2, 3000)), rng.standard_normal((2, 3000))
    for m in (rng.random((2, 3000)) < 0.6, rng.random(2) < 2.0, rng.uniform(0, 1, (2, 3000))):
        one = masked_ops.masked_huber_sums(t, p, m)
        listed = masked_ops.masked_huber_sums(t, p, [m])
        for a, b in zip(one, listed, strict=True):
            assert a.numpy().tobytes() == b.numpy().tobytes()


def test_several_masks_are_deterministic_across_threads_and_repeats():
    """Masks combined per block: same bits for any thread count (the op
    runs on TF's intra-op pool; the binding with 1 and 4 threads is in the
    binding tests) and on every repeat, over several chunks."""
    rng = np.random.default_rng(4)
    shape = (300, 700)
    t = tf.constant(rng.standard_normal(shape), tf.float32)
    p = tf.constant(rng.standard_normal(shape), tf.float32)
    masks = [
        tf.constant(rng.random(shape[:1]) < 0.9),
        tf.constant(rng.uniform(0, 2, shape), tf.float32),
    ]
    first = [x.numpy().tobytes() for x in masked_ops.masked_absolute_error_sums(t, p, masks)]
    for _ in range(3):
        again = [x.numpy().tobytes() for x in masked_ops.masked_absolute_error_sums(t, p, masks)]
        assert again == first


def test_masks_combine_in_every_public_function():
    rng = np.random.default_rng(5)
    labels = (rng.random((4, 6)) < 0.5).astype(np.float32)
    probs = rng.uniform(0.05, 0.95, (4, 6)).astype(np.float32)
    keep = rng.random((4, 6)) < 0.7
    rows = np.array([True, True, False, True])
    expected = masked_ops.masked_binary_crossentropy(labels, probs, keep & rows[:, None])
    got = masked_ops.masked_binary_crossentropy(labels, probs, (keep, rows))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)
    w = rng.uniform(0.5, 1.5, (4, 6)).astype(np.float32)
    for fn in (masked_ops.masked_mse, masked_ops.masked_mae, masked_ops.masked_huber):
        want = fn(labels, probs, np.where(keep, w, 0.0).astype(np.float32))
        np.testing.assert_allclose(fn(labels, probs, [keep, w]).numpy(), want.numpy(), rtol=1e-6)


def test_a_nested_list_of_numbers_is_one_mask():
    """Only a list holding a tensor or array is several masks."""
    y_true = np.zeros((2, 2), np.float32)
    y_pred = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    nested = [[True, False], [False, True]]
    np.testing.assert_allclose(masked_ops.masked_mse(y_true, y_pred, nested).numpy(), 8.5)
    several = [np.array(nested[0]), np.array([True, True])]
    np.testing.assert_allclose(masked_ops.masked_mse(y_true, y_pred, several).numpy(), 2.5)


@pytest.mark.parametrize(
    "masks, error, message",
    [
        ([tf.constant(True)] * 6, ValueError, "at most 5 masks"),
        ([None, tf.constant(True)], ValueError, r"mask\[0\] is None"),
        ([True, np.array(["a"])], TypeError, r"mask\[1\] must be boolean, integer or floating"),
        ([True, np.ones(5, bool)], (ValueError, tf.errors.InvalidArgumentError), r"mask\[1\]"),
    ],
)
def test_bad_mask_lists_are_refused_with_a_message(masks, error, message):
    y = np.zeros((4, 5), np.float32)
    with pytest.raises(error, match=message):
        masked_ops.masked_mse(y, y, masks)
    with pytest.raises(error, match=message):
        tf.function(lambda: masked_ops.masked_mse(y, y, masks))()


def test_binding_combines_masks_as_the_op_bit_for_bit_on_any_thread_count():
    """The TF-free binding (NumPy) takes the same lists: same bits as the op,
    for 1 and 4 threads, over several chunks and prefix rows."""
    from masked_ops import _kernels

    rng = np.random.default_rng(6)
    shape = (3, 50000)
    t = rng.standard_normal(shape).astype(np.float32)
    p = rng.standard_normal(shape).astype(np.float32)
    cases = (
        [rng.random(shape[:1]) < 0.9, rng.uniform(0, 2, shape).astype(np.float32)],
        [rng.random(shape) < 0.5, rng.random(shape) < 0.5],
        [rng.uniform(0, 2, shape[:1]).astype(np.float32), np.array(True), rng.random(shape) < 0.7],
    )
    previous = _kernels.get_num_threads()
    try:
        for masks in cases:
            op = [x.numpy().tobytes() for x in masked_ops.masked_huber_sums(t, p, masks)][:2]
            for threads in (1, 4):
                _kernels.set_num_threads(threads)
                _, s, ws, count = _kernels.forward(
                    t, p, masks, reduction="sum", loss_name="huber", params=[1.0]
                )
                assert [np.float32(s).tobytes(), np.float32(ws).tobytes()] == op
                g_true, g_pred, _ = _kernels.backward(
                    1.0,
                    0.0,
                    0.0,
                    t,
                    p,
                    masks,
                    None,
                    s,
                    ws,
                    "sum",
                    True,
                    True,
                    False,
                    loss_name="huber",
                    params=[1.0],
                )
                with tf.GradientTape() as tape:
                    tp = tf.constant(p)
                    tape.watch(tp)
                    loss = masked_ops.masked_huber(t, tp, masks, reduction="sum")
                assert g_pred.tobytes() == tape.gradient(loss, tp).numpy().tobytes()
    finally:
        _kernels.set_num_threads(previous)
    w = rng.uniform(0, 2, shape).astype(np.float32)
    with pytest.raises(ValueError, match="several masks"):
        _kernels.backward(1.0, 0.0, 0.0, t, p, [w, w], None, 1.0, 1.0, "sum", False, False, True)
    with pytest.raises(ValueError, match=r"mask\[1\] shape"):
        _kernels.forward(t, p, [w, np.ones(7, bool)])
