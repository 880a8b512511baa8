"""The row-loss engine (categorical cross-entropy over the last axis of y_pred)
through the NumPy binding: against the float64 oracle (oracle.row_forward /
row_backward) on fresh random data, hand-computed examples, finite
differences, Keras's own losses, and its guarantees (masked rows never read,
out-of-range labels refused, one pass == two passes bit for bit, in place,
any thread count). Only the Keras comparison imports TensorFlow."""

import numpy as np
import oracle
import pytest
from kernels_module import load_kernels
from row_cases import DTYPES, LOSSES, bits, check_backward, check_forward, make_inputs, reference

kernels = load_kernels()

CLASSES = (1, 7, 33, 1000)
per_loss = pytest.mark.parametrize("name", LOSSES)


def kwargs(name, **extra):
    """The binding's loss= and from_logits= of a table name, plus extra options."""
    base = name.removesuffix("_from_logits")
    return dict(loss=base, from_logits=name.endswith("_from_logits"), **extra)


# ---------------------------------------------------------------------------
# Against the oracle.


def test_every_row_loss_has_an_oracle():
    assert tuple(kernels.row_losses) == LOSSES


@per_loss
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES)
def test_against_oracle(name, dtype, classes):
    """Forward, backward with random upstream gradients, the one-pass form (same
    bits as forward + backward, and in place), odd row counts and a boolean
    mask; V = 1, V below and off the vector width, V over a tile."""
    seed = [LOSSES.index(name), DTYPES.index(dtype), classes]
    rng = np.random.default_rng(seed)
    rows = 1 if classes == 33 else 13
    reduction = ("mean", "sum")[classes % 2]
    y_true, y_pred = make_inputs(rng, name, (rows,), classes, dtype)
    mask = rng.random(rows) < 0.8
    kw = kwargs(name, reduction=reduction)
    out = kernels.row_forward(y_true, y_pred, mask, **kw)
    ref = reference(name, y_true, y_pred, mask, dtype)
    check_forward(out, ref, dtype, reduction)
    stats_shape = (rows,) if name == "sparse_categorical_crossentropy" else (rows, 2)
    assert out[4].shape == stats_shape

    upstream = (float(rng.normal()), float(rng.normal()))
    grad = kernels.row_backward(
        y_true, y_pred, mask, out[4], out[0], out[2], grad_loss=upstream[0],
        grad_sum=upstream[1], **kw,
    )  # fmt: skip
    check_backward(grad, name, ref, y_pred, upstream, out, reduction, dtype)

    one = kernels.row_backward(y_true, y_pred, mask, out[4], out[0], out[2], **kw)
    fb = kernels.row_forward_backward(y_true, y_pred, mask, **kw)
    assert bits(*fb) == bits(*out, one)
    in_place = y_pred.copy()
    fb_in_place = kernels.row_forward_backward(y_true, in_place, mask, in_place=True, **kw)
    assert fb_in_place[5] is in_place
    assert bits(*fb_in_place) == bits(*out, one)


@per_loss
@pytest.mark.parametrize("scale", (1.0, 10.0))
def test_float32_accuracy(name, scale):
    """The accuracy target: float32 loss and gradient within 1e-6 (relative) of
    the float64 result on the same values, V = 1000, logits up to about 40."""
    rng = np.random.default_rng([7, LOSSES.index(name)])
    y_true, y64 = make_inputs(rng, name, (33,), 1000, "float64", scale=scale)
    y32 = y64.astype(np.float32)
    t32 = y_true if y_true.dtype.kind == "i" else y_true.astype(np.float32)
    kw = kwargs(name)
    exact = kernels.row_forward_backward(t32.astype(y_true.dtype), y32.astype(np.float64), **kw)
    got = kernels.row_forward_backward(t32, y32, **kw)
    assert abs(float(got[0]) - exact[0]) <= 1e-6 * abs(exact[0])
    g, g64 = got[5].astype(np.float64), exact[5]
    error = np.abs(g - g64)
    row_max = np.max(np.abs(g64), axis=-1, keepdims=True)
    assert np.all(error <= 1e-6 * row_max)
    # Elementwise too, relative to the terms of (p - z) / rows (p - z cancels
    # where the target is close to p), except for entries far below the row's
    # largest, which carry the rounding of x - max (relative 2^-24 |x - max|)
    # as any float32 softmax does.
    z = np.eye(1000)[y_true] if y_true.dtype.kind == "i" else y_true.astype(np.float64)
    terms = np.abs(g64) + 2 * z / len(z)
    large = np.abs(g64) >= 1e-3 * row_max
    assert np.all(error[large] <= 1e-6 * terms[large])


# ---------------------------------------------------------------------------
# Worked examples, computed by hand.


def test_worked_examples_from_logits():
    # lse([1, 2, 3]) = 3 + log(1 + e^-1 + e^-2) = 3.4076059644443806; label 2.
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    out = kernels.row_forward(np.array([2, 0]), x, from_logits=True, reduction="sum")
    assert out[0] == pytest.approx(0.4076059644443806 + np.log(3.0), rel=1e-14)
    # Row statistics: the max M and sum(exp(x - M)), lse = M + log(sum).
    np.testing.assert_allclose(out[4], [[3.0, 1 + np.exp(-1) + np.exp(-2)], [0.0, 3.0]])
    np.testing.assert_allclose(out[4][:, 0] + np.log(out[4][:, 1]), [3.4076059644443806, np.log(3)])
    # Gradient of the mean over 2 rows: (softmax - one-hot) / 2.
    g = kernels.row_forward_backward(np.array([2, 0]), x, from_logits=True)[5]
    soft = np.array([0.09003057317038046, 0.24472847105479764, 0.6652409557748219])
    np.testing.assert_allclose(g[0], (soft - [0, 0, 1]) / 2, rtol=1e-13)
    np.testing.assert_allclose(g[1], (np.full(3, 1 / 3) - [1, 0, 0]) / 2, rtol=1e-13)

    # Label smoothing 0.5 on t = [1, 0], x = [0, log 3]: softmax [1/4, 3/4],
    # z = [3/4, 1/4]: -(3/4 log(1/4) + 1/4 log(3/4)) = 1.1116414..., grad softmax - z.
    x = np.array([[0.0, np.log(3.0)]])
    fb = kernels.row_forward_backward(
        np.array([[1.0, 0.0]]), x, loss="categorical_crossentropy", from_logits=True,
        label_smoothing=0.5,
    )  # fmt: skip
    assert fb[0] == pytest.approx(-(0.75 * np.log(0.25) + 0.25 * np.log(0.75)), rel=1e-14)
    np.testing.assert_allclose(fb[5], [[-0.5, 0.5]], rtol=1e-14)


def test_worked_examples_from_probabilities():
    # Keras's docstring example: per-row [0.0513, 2.303], mean 1.177. Sparse
    # re-normalizes after clipping: row 0 is log(0.95 + 0.05 + 1e-7) - log(0.95).
    p = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    out = kernels.row_forward(np.array([1, 2]), p)
    row0 = np.log(1.0 + 1e-7) - np.log(0.95)
    assert out[0] == pytest.approx((row0 - np.log(0.1)) / 2, rel=1e-14)
    assert round(float(out[0]), 3) == 1.177
    # Not normalized first: p = [0.2, 0.2], label 0 -> log(0.4) - log(0.2) = log 2;
    # d/dp = 1 / 0.4 - [j == 0] / 0.2 = [-2.5, 2.5].
    fb = kernels.row_forward_backward(np.array([0]), np.array([[0.2, 0.2]]))
    assert fb[0] == pytest.approx(np.log(2.0), rel=1e-14)
    np.testing.assert_allclose(fb[5], [[-2.5, 2.5]], rtol=1e-14)

    # Keras's categorical docstring example: [0.10536, 0.11653, 0.06188].
    q = np.array([[0.9, 0.05, 0.05], [0.05, 0.89, 0.06], [0.05, 0.01, 0.94]])
    out = kernels.row_forward(np.eye(3), q, loss="categorical_crossentropy", reduction="sum")
    assert out[0] == pytest.approx(-np.log([0.9, 0.89, 0.94]).sum(), rel=1e-14)
    # Normalized by the row sum first: p = [2, 6] is q = [1/4, 3/4]; target
    # [0, 1]: -log(3/4); d/dp = 1 / 8 - [0, 1/6] (L = log(p1 + p2) - log p2).
    fb = kernels.row_forward_backward(
        np.array([[0.0, 1.0]]), np.array([[2.0, 6.0]]), loss="categorical_crossentropy"
    )
    assert fb[0] == pytest.approx(-np.log(0.75), rel=1e-14)
    np.testing.assert_allclose(fb[5], [[0.125, 0.125 - 1 / 6]], rtol=1e-14)
    # Clipped: q = [1, 0] -> c = [1 - 1e-7, 1e-7], value -log(1 - 1e-7); no
    # gradient through the clipped entries, so none at all.
    fb = kernels.row_forward_backward(
        np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), loss="categorical_crossentropy"
    )
    assert fb[0] == pytest.approx(-np.log1p(-1e-7), rel=1e-12)
    assert np.array_equal(fb[5], np.zeros((1, 2)))


def test_worked_example_ignore_class():
    # Rows with label -1 drop out of the mean: (lse - x_y) of rows 0 and 2 over 2.
    x = np.array([[0.0, 0.0], [5.0, np.nan], [0.0, np.log(3.0)]])
    out = kernels.row_forward(np.array([0, -1, 1]), x, from_logits=True, ignore_class=-1)
    assert out[2:4] == (2.0, 2)
    assert out[0] == pytest.approx((np.log(2.0) + np.log(4.0 / 3.0)) / 2, rel=1e-14)


# ---------------------------------------------------------------------------
# Masks: kept rows only, never read where dropped.


@per_loss
def test_all_rows_masked(name):
    rng = np.random.default_rng(3)
    y_true, y_pred = make_inputs(rng, name, (5,), 7, "float32")
    y_pred[:] = np.nan
    if y_true.dtype.kind == "i":
        y_true[:] = -100  # padding labels, never read
    for mask in (np.zeros(5, bool), np.zeros(5, np.float32), np.zeros((), bool)):
        fb = kernels.row_forward_backward(y_true, y_pred, mask, **kwargs(name))
        assert [float(v) for v in fb[:3]] == [0.0, 0.0, 0.0] and fb[3] == 0
        assert np.array_equal(fb[4], np.zeros_like(fb[4]))
        assert np.array_equal(fb[5], np.zeros_like(y_pred))


@per_loss
def test_masked_rows_are_not_read(name):
    """NaN/Inf logits and out-of-range labels where the mask drops the row:
    the result equals the oracle's on the kept rows, exact zeros elsewhere."""
    rng = np.random.default_rng([4, LOSSES.index(name)])
    y_true, y_pred = make_inputs(rng, name, (9,), 33, "float32")
    mask = np.arange(9) % 3 != 1
    y_pred[~mask] = np.array([np.nan, np.inf, -np.inf])[np.arange(33) % 3]
    if y_true.dtype.kind == "i":
        y_true[~mask] = [-100, 33, 10**6]
    else:
        y_true[~mask] = np.nan
    fb = kernels.row_forward_backward(y_true, y_pred, mask, **kwargs(name))
    ref = reference(name, y_true, y_pred, mask, "float32")
    check_forward(fb[:5], ref, "float32", "mean")
    assert np.all(fb[5][~mask] == 0) and np.all(np.isfinite(fb[5]))
    assert np.all(fb[4][~mask] == 0)


@pytest.mark.parametrize("name", LOSSES[:2])
def test_out_of_range_label_at_a_kept_row(name):
    rng = np.random.default_rng(5)
    y_true, y_pred = make_inputs(rng, name, (2, 3), 7, "float64", label_dtype=np.int32)
    y_true[1, 2] = 7
    mask = np.ones(2, bool)
    kw = kwargs(name)
    match = r"y_true holds label 7 at index \(1, 2\), outside \[0, 7\)"
    with pytest.raises(ValueError, match=match):
        kernels.row_forward(y_true, y_pred, mask, **kw)
    stats = np.zeros((2, 3) if name == "sparse_categorical_crossentropy" else (2, 3, 2))
    with pytest.raises(ValueError, match=match):
        kernels.row_backward(y_true, y_pred, mask, stats, 1.0, 6.0, **kw)
    before = y_pred.copy()
    with pytest.raises(ValueError, match=match):
        kernels.row_forward_backward(y_true, y_pred, mask, in_place=True, **kw)
    assert np.array_equal(y_pred, before)  # checked before anything is written
    y_true[1, 2] = -1
    with pytest.raises(ValueError, match="label -1"):
        kernels.row_forward(y_true, y_pred, **kw)
    # The same label is fine where the mask drops its row, or as ignore_class.
    kernels.row_forward(y_true, y_pred, np.array([True, False]), **kw)
    kernels.row_forward(y_true, y_pred, ignore_class=-1, **kw)


@pytest.mark.parametrize("name", LOSSES[:2])
def test_ignore_class(name):
    """ignore_class drops rows as a mask does (same bits as the mask of
    labels != ignore_class), combined with a float mask."""
    rng = np.random.default_rng(6)
    y_true, y_pred = make_inputs(rng, name, (4, 5), 33, "float32")
    y_true[rng.random((4, 5)) < 0.3] = 255
    weights = rng.random(4).astype(np.float32)
    kw = kwargs(name)
    fb = kernels.row_forward_backward(y_true, y_pred, weights, ignore_class=255, **kw)
    ref = reference(name, y_true, y_pred, weights, "float32", ignore_class=255)
    check_forward(fb[:5], ref, "float32", "mean")
    as_mask = np.where(y_true != 255, weights[:, None], np.float32(0))
    assert bits(*fb) == bits(*kernels.row_forward_backward(y_true, y_pred, as_mask, **kw))


@pytest.mark.parametrize("name", LOSSES[2:])
@pytest.mark.parametrize("smoothing", (0.1, 1.0))
def test_label_smoothing(name, smoothing):
    rng = np.random.default_rng(8)
    y_true, y_pred = make_inputs(rng, name, (11,), 33, "float32")
    kw = kwargs(name, label_smoothing=smoothing)
    fb = kernels.row_forward_backward(y_true, y_pred, **kw)
    ref = reference(name, y_true, y_pred, None, "float32", smoothing=smoothing)
    check_forward(fb[:5], ref, "float32", "mean")
    check_backward(fb[5], name, ref, y_pred, (1.0, 0.0), fb, "mean", "float32")


MASKS = {
    "bool": lambda rng, shape: rng.random(shape) < 0.7,
    "int32": lambda rng, shape: rng.integers(0, 3, shape).astype(np.int32),
    "uint8": lambda rng, shape: rng.integers(0, 2, shape).astype(np.uint8),
    "weights": None,  # y_pred's dtype (float32 for bfloat16)
}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("mask_rank", (0, 1, 2))
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_dtypes_and_prefix_masks(mask_kind, mask_rank, dtype):
    """Each mask dtype as a mask of the rows (4, 3) or a leading prefix of it."""
    name = LOSSES[(mask_rank + DTYPES.index(dtype)) % len(LOSSES)]
    rng = np.random.default_rng([9, mask_rank, DTYPES.index(dtype)])
    y_true, y_pred = make_inputs(rng, name, (4, 3), 7, dtype)
    shape = (4, 3)[:mask_rank]
    if mask_kind == "weights":
        w_dtype = "float32" if dtype == "bfloat16" else dtype
        mask = np.where(rng.random(shape) < 0.3, 0, rng.random(shape)).astype(w_dtype)
    else:
        mask = MASKS[mask_kind](rng, shape)
    fb = kernels.row_forward_backward(y_true, y_pred, mask, **kwargs(name))
    ref = reference(name, y_true, y_pred, mask, dtype)
    check_forward(fb[:5], ref, dtype, "mean")
    check_backward(fb[5], name, ref, y_pred, (1.0, 0.0), fb, "mean", dtype)


# ---------------------------------------------------------------------------
# Gradients: finite differences, Keras, determinism.


@per_loss
def test_gradient_matches_finite_differences(name):
    """float64: the analytic gradient (row_backward, for a weight mask, sum of
    loss and sum upstream) against central differences of row_forward."""
    sparse, logits = oracle.row_loss_kind(name)
    rng = np.random.default_rng([10, LOSSES.index(name)])
    rows, classes = 3, 5
    y_true, y_pred = make_inputs(rng, name, (rows,), classes, "float64")
    if not logits:  # inside the clipping bounds, away from them
        y_pred = 0.05 + 0.85 * rng.random((rows, classes))
    mask = np.array([0.5, 0.0, 2.0])
    kw = kwargs(name, label_smoothing=0.0 if sparse else 0.1)
    out = kernels.row_forward(y_true, y_pred, mask, **kw)
    grad = kernels.row_backward(
        y_true, y_pred, mask, out[4], out[0], out[2], grad_loss=1.0, grad_sum=0.25, **kw
    )

    def objective(p):
        o = kernels.row_forward(y_true, p, mask, **kw)
        return float(o[0]) + 0.25 * float(o[1])

    fd = np.zeros_like(y_pred)
    for i in np.ndindex(y_pred.shape):
        h = 1e-6 * max(1.0, abs(y_pred[i]))
        up, down = y_pred.copy(), y_pred.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (objective(up) - objective(down)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert np.array_equal(grad[1], np.zeros(classes))


@per_loss
def test_same_bits_for_any_thread_count(name):
    rng = np.random.default_rng(11)
    # 129 rows of 1000 classes: several tasks of 65 rows.
    y_true, y_pred = make_inputs(rng, name, (129,), 1000, "float32")
    mask = rng.random(129) < 0.9
    before = kernels.get_num_threads()
    results = []
    try:
        for n in (1, 4):
            kernels.set_num_threads(n)
            results.append(
                bits(*kernels.row_forward_backward(y_true, y_pred, mask, **kwargs(name)))
            )
    finally:
        kernels.set_num_threads(before)
    assert results[0] == results[1]


@pytest.mark.parametrize("dtype", ("float64", "float32"))
@per_loss
def test_matches_keras(name, dtype):
    """keras.losses (TensorFlow backend) on a small case: the loss of the mean
    reduction and its gradient from a GradientTape, ignore_class and label
    smoothing included. float64 runs Keras in float64 (tight), float32 in its
    default dtype."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    sparse, logits = oracle.row_loss_kind(name)
    rng = np.random.default_rng([12, LOSSES.index(name)])
    y_true, y_pred = make_inputs(rng, name, (6,), 9, dtype)
    if sparse:
        y_true[[1, 4]] = -1
        options = dict(from_logits=logits, ignore_class=-1)
        keras_loss = keras.losses.SparseCategoricalCrossentropy(dtype=dtype, **options)
    else:
        options = dict(from_logits=logits, label_smoothing=0.2)
        keras_loss = keras.losses.CategoricalCrossentropy(dtype=dtype, **options)
    p = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(p)
        expected = keras_loss(tf.constant(y_true), p)
    expected_grad = tape.gradient(expected, p).numpy()
    base = name.removesuffix("_from_logits")
    fb = kernels.row_forward_backward(y_true, y_pred, loss=base, **options)
    rtol = 1e-12 if dtype == "float64" else 2e-6
    assert float(fb[0]) == pytest.approx(float(expected), rel=rtol)
    np.testing.assert_allclose(
        fb[5], expected_grad, rtol=rtol, atol=rtol * np.abs(expected_grad).max()
    )


# ---------------------------------------------------------------------------
# Argument errors name the argument.


def test_argument_errors():
    x = np.zeros((3, 4), np.float32)
    labels = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="loss must be 'sparse_categorical_crossentropy'"):
        kernels.row_forward(labels, x, loss="huber")
    with pytest.raises(TypeError, match="y_true of sparse_categorical_crossentropy must hold"):
        kernels.row_forward(labels.astype(np.float32), x)
    with pytest.raises(ValueError, match=r"y_true \(labels\) must have y_pred's shape without"):
        kernels.row_forward(np.zeros(4, np.int64), x)
    with pytest.raises(ValueError, match=r"y_true \(dense targets\) and y_pred must have the same"):
        kernels.row_forward(x[:, :3].copy(), x, loss="categorical_crossentropy")
    with pytest.raises(TypeError, match="y_true has dtype float64 but y_pred has float32"):
        kernels.row_forward(x.astype(np.float64), x, loss="categorical_crossentropy")
    with pytest.raises(TypeError, match="y_pred must be float16, bfloat16, float32 or float64"):
        kernels.row_forward(labels, x.astype(np.int32))
    with pytest.raises(ValueError, match="y_pred's last axis holds the classes"):
        kernels.row_forward(labels, np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match=r"mask shape \(4,\) must equal the rows' shape"):
        kernels.row_forward(labels, x, np.ones(4, bool))
    with pytest.raises(TypeError, match="mask must be bool, y_pred's dtype"):
        kernels.row_forward(labels, x, np.ones(3, np.float64))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        kernels.row_forward(x, x, loss="categorical_crossentropy", label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing applies to categorical_crossentropy"):
        kernels.row_forward(labels, x, label_smoothing=0.1)
    with pytest.raises(ValueError, match="ignore_class applies to sparse_categorical"):
        kernels.row_forward(x, x, loss="categorical_crossentropy", ignore_class=0)
    with pytest.raises(TypeError, match="ignore_class must be an integer"):
        kernels.row_forward(labels, x, ignore_class=0.5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        kernels.row_forward(labels, x, reduction="none")
    with pytest.raises(ValueError, match=r"row_stats must have shape \(3,\)"):
        kernels.row_backward(labels, x, None, np.zeros(4, np.float32), 0.0, 3.0)
    with pytest.raises(TypeError, match=r"row_stats must be the forward's row_stats array"):
        kernels.row_backward(labels, x, None, np.zeros(3), 0.0, 3.0)
    with pytest.raises(ValueError, match="y_pred must be C-contiguous"):
        kernels.row_forward(labels, np.zeros((4, 3), np.float32).T)
    read_only = x.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="in_place=True needs a writeable y_pred"):
        kernels.row_forward_backward(labels, read_only, in_place=True)
    with pytest.raises(TypeError, match="in_place=True needs y_pred to be a NumPy array"):
        kernels.row_forward_backward(labels, x.tolist(), in_place=True)


def test_upstream_scales_the_one_pass_gradient():
    rng = np.random.default_rng(13)
    y_true, y_pred = make_inputs(rng, LOSSES[1], (5,), 7, "float32")
    one = kernels.row_forward_backward(y_true, y_pred, from_logits=True)
    scaled = kernels.row_forward_backward(y_true, y_pred, from_logits=True, upstream=-2.5)
    assert np.array_equal(scaled[5], (one[5] * np.float32(-2.5)).astype(np.float32))
    assert bits(*scaled[:5]) == bits(*one[:5])
