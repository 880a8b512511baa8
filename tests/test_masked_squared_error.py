"""Forward results of the fused masked squared error (masked_mse and
masked_squared_error_sums) against a float64 NumPy reference and against the
pure-TF masked_ops.reference, plus worked examples and NaN/Inf masking."""

import numpy as np
import pytest
import tensorflow as tf
from _helpers import (
    BIG_SHAPE,
    DTYPE_IDS,
    DTYPES,
    LONG_ROWS_SHAPE,
    MASK_KINDS,
    PAD,
    SMALL_SHAPES,
    as_f64,
    assert_bitwise_equal,
    make_case,
    np_case_sums,
    np_loss,
    shape_id,
    to_tensor,
)
from tolerances import assert_close

import masked_ops
from masked_ops import reference

MODES = ("eager", "function")


def run_fused(case, mode):
    """(sums, mean loss, sum loss) of the fused op, eagerly or in a tf.function."""

    def compute(y_true, y_pred):
        sums = masked_ops.masked_squared_error_sums(y_true, y_pred, **case.kwargs)
        mean = masked_ops.masked_mse(y_true, y_pred, reduction="mean", **case.kwargs)
        total = masked_ops.masked_mse(y_true, y_pred, reduction="sum", **case.kwargs)
        return tuple(sums), mean, total

    if mode == "function":
        compute = tf.function(compute)
    (s, w, c), mean, total = compute(case.y_true, case.y_pred)
    return masked_ops.MaskedSums(s, w, c), mean, total


def check_against_numpy(case, sums, mean, total):
    acc = tf.float64 if case.dtype == tf.float64 else tf.float32
    ref_sum, ref_ws, ref_count, _, _, _ = np_case_sums(case)
    for out in (sums.sum, sums.weight_sum, mean, total):
        assert out.dtype == acc
        assert out.shape == ()
    assert sums.count.dtype == tf.int64 and sums.count.shape == ()
    assert int(sums.count) == ref_count
    assert_close(sums.sum, ref_sum, case.dtype)
    assert_close(sums.weight_sum, ref_ws, case.dtype)
    assert_close(mean, np_loss(ref_sum, ref_ws, "mean"), case.dtype)
    assert_close(total, np_loss(ref_sum, ref_ws, "sum"), case.dtype)
    # The sum reduction is the sum output itself.
    assert_bitwise_equal(total, sums.sum, "loss(reduction='sum') vs sums.sum")
    if ref_ws == 0:
        assert float(mean) == 0.0 and not np.isnan(float(mean))


def check_against_reference(case, sums, mean, total):
    ref = reference.masked_squared_error_sums(case.y_true, case.y_pred, **case.kwargs)
    ref_mean = reference.masked_mse(case.y_true, case.y_pred, reduction="mean", **case.kwargs)
    ref_total = reference.masked_mse(case.y_true, case.y_pred, reduction="sum", **case.kwargs)
    assert ref.sum.dtype == sums.sum.dtype and ref_mean.dtype == mean.dtype
    assert int(sums.count) == int(ref.count)
    assert_close(sums.sum, ref.sum, case.dtype)
    assert_close(sums.weight_sum, ref.weight_sum, case.dtype)
    assert_close(mean, ref_mean, case.dtype)
    assert_close(total, ref_total, case.dtype)


# ---------------------------------------------------------------------------
# Every dtype x mask kind x small shape, eagerly and in a tf.function.


# tf.function (graph) on a subset of the shapes: tracing dominates the run time.
FUNCTION_SHAPES = ((), (3, 0, 2), (7,), (5, 9, 4))


@pytest.mark.parametrize(
    "shape, mode",
    [(s, "eager") for s in SMALL_SHAPES] + [(s, "function") for s in FUNCTION_SHAPES],
    ids=lambda x: shape_id(x) if isinstance(x, tuple) else x,
)
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_numpy_and_reference(dtype, kind, shape, mode):
    rng = np.random.default_rng([DTYPES.index(dtype), MASK_KINDS.index(kind), len(shape), *shape])
    case = make_case(rng, dtype, shape, kind)
    sums, mean, total = run_fused(case, mode)
    check_against_numpy(case, sums, mean, total)
    check_against_reference(case, sums, mean, total)


# More than one chunk (65536) of elements: fewer combinations.
@pytest.mark.parametrize("kind", ["none", "bool", "float", "mask_and_padding"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_big_matches_numpy_and_reference(dtype, kind):
    rng = np.random.default_rng([7, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    case = make_case(rng, dtype, BIG_SHAPE, kind)
    sums, mean, total = run_fused(case, "eager")
    check_against_numpy(case, sums, mean, total)
    check_against_reference(case, sums, mean, total)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["prefix_bool", "prefix_float", "prefix_and_padding"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_long_prefix_rows_match_numpy_and_reference(dtype, kind, mode):
    """Prefix rows longer than a block, some of weight 0, crossing chunk edges."""
    rng = np.random.default_rng([11, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    case = make_case(rng, dtype, LONG_ROWS_SHAPE, kind)
    sums, mean, total = run_fused(case, mode)
    check_against_numpy(case, sums, mean, total)
    check_against_reference(case, sums, mean, total)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_d_float_mask_weights_everything(dtype):
    """A 0-d mask is a rank-0 prefix: its weight applies to every element."""
    rng = np.random.default_rng(5)
    y_true, t64 = to_tensor(rng.standard_normal((4, 6)), dtype)
    y_pred, p64 = to_tensor(rng.standard_normal((4, 6)), dtype)
    mask, w = to_tensor(0.75, dtype)
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, mask)
    ref = float(np.sum(w * (t64 - p64) ** 2))
    assert_close(sums.sum, ref, dtype)
    assert_close(sums.weight_sum, 24 * w, dtype)
    assert int(sums.count) == 24
    assert_close(masked_ops.masked_mse(y_true, y_pred, mask), ref / (24 * w), dtype)
    zero = masked_ops.masked_squared_error_sums(y_true, y_pred, tf.zeros([], dtype))
    assert float(zero.sum) == 0.0 and float(zero.weight_sum) == 0.0 and int(zero.count) == 0


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32], ids=lambda d: d.name)
def test_float_mask_of_another_dtype_is_read_in_the_accumulator_dtype(dtype):
    rng = np.random.default_rng(6)
    y_true, t64 = to_tensor(rng.standard_normal((50,)), dtype)
    y_pred, p64 = to_tensor(rng.standard_normal((50,)), dtype)
    raw = rng.uniform(0.1, 2.0, size=(50,))
    # float64 weights are rounded to the accumulator dtype (float32 for 16-bit
    # and float32 predictions), never to a 16-bit y_pred dtype.
    _, w = to_tensor(raw, tf.float64 if dtype == tf.float64 else tf.float32)
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, tf.constant(raw, tf.float64))
    assert_close(sums.sum, np.sum(w * (t64 - p64) ** 2), dtype)
    assert_close(sums.weight_sum, np.sum(w), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_integer_y_true_is_cast_to_y_pred_dtype(dtype, int_dtype, mode):
    rng = np.random.default_rng([3, DTYPES.index(dtype)])
    t_int = rng.integers(0, 9, size=(6, 5)).astype(int_dtype)
    y_pred, p64 = to_tensor(rng.uniform(0, 9, size=(6, 5)), dtype)
    mask = rng.random((6,)) < 0.7
    t64 = t_int.astype(np.float64)
    w = np.broadcast_to(mask[:, None], (6, 5)).astype(np.float64)
    keep = (w != 0) & (t64 != 0)
    ref_sum = np.sum(np.where(keep, (t64 - p64) ** 2, 0.0))
    ref_ws = np.sum(keep)

    def compute(y_pred):
        sums = masked_ops.masked_squared_error_sums(
            tf.constant(t_int), y_pred, tf.constant(mask), padding_value=0
        )
        mean = masked_ops.masked_mse(tf.constant(t_int), y_pred, mask, padding_value=0)
        return tuple(sums), mean

    if mode == "function":
        compute = tf.function(compute)
    (s, ws, c), mean = compute(y_pred)
    assert int(c) == int(ref_ws)
    assert_close(s, ref_sum, dtype)
    assert_close(ws, ref_ws, dtype)
    assert_close(mean, ref_sum / ref_ws, dtype)
    # A NumPy integer array and a Python list behave the same as the tensor.
    assert_close(masked_ops.masked_mse(t_int, y_pred, mask, padding_value=0), mean, dtype)
    assert_close(masked_ops.masked_mse(t_int.tolist(), y_pred, mask, padding_value=0), mean, dtype)


# ---------------------------------------------------------------------------
# Worked examples (values computed by hand).


@pytest.mark.parametrize("mode", MODES)
def test_worked_example_padding_value(mode):
    # Kept: (1, 1.2), (2, 1.8), (4, 3.9), (6, 6.3); squared errors
    # 0.04 + 0.04 + 0.01 + 0.09 = 0.18 over 4 positions -> 0.045.
    y_true = [[1, 2, 0], [4, 0, 6]]
    y_pred = [[1.2, 1.8, 0.1], [3.9, 0.2, 6.3]]

    def compute(y_pred):
        sums = masked_ops.masked_squared_error_sums(y_true, y_pred, padding_value=0)
        mean = masked_ops.masked_mse(y_true, y_pred, padding_value=0)
        total = masked_ops.masked_mse(y_true, y_pred, padding_value=0, reduction="sum")
        return tuple(sums), mean, total

    if mode == "function":
        compute = tf.function(compute)
    for dtype in (tf.float64, tf.float32):
        (s, w, c), mean, total = compute(tf.constant(y_pred, dtype))
        rtol = 1e-14 if dtype == tf.float64 else 1e-6
        np.testing.assert_allclose(float(mean), 0.045, rtol=rtol)
        np.testing.assert_allclose(float(s), 0.18, rtol=rtol)
        np.testing.assert_allclose(float(total), 0.18, rtol=rtol)
        assert float(w) == 4.0
        assert int(c) == 4


def test_worked_example_float_weights():
    # Weights 0.5, 2, 0 (dropped even though its error is 100), -1 (negative
    # weights are weights too), 0.25; errors d = t - p:
    #   0.5*1^2 + 2*(-2)^2 + (-1)*3^2 + 0.25*4^2 = 0.5 + 8 - 9 + 4 = 3.5
    #   weight_sum = 0.5 + 2 - 1 + 0.25 = 1.75, count = 4, mean = 2.
    y_true = tf.constant([1.0, 0.0, 10.0, 3.0, 4.0], tf.float64)
    y_pred = tf.constant([0.0, 2.0, 0.0, 0.0, 0.0], tf.float64)
    w = tf.constant([0.5, 2.0, 0.0, -1.0, 0.25], tf.float64)
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, w)
    assert float(sums.sum) == 3.5
    assert float(sums.weight_sum) == 1.75
    assert int(sums.count) == 4
    assert float(masked_ops.masked_mse(y_true, y_pred, w)) == 2.0
    assert float(masked_ops.masked_mse(y_true, y_pred, w, reduction="sum")) == 3.5
    # Same in float32 (all values exact there too) and float16.
    for dtype in (tf.float32, tf.float16, tf.bfloat16):
        args = [tf.cast(x, dtype) for x in (y_true, y_pred, w)]
        assert float(masked_ops.masked_mse(*args)) == 2.0
        assert float(masked_ops.masked_squared_error_sums(*args).sum) == 3.5


def test_worked_example_prefix_mask_with_padding():
    # y (2, 2, 2); prefix mask (2, 2) keeps rows [0,0], [1,1] with weights 1 and 3;
    # padding_value=-1 drops y_true[1,1,0].
    #   row [0,0]: t=(1,2), p=(0,0): 1 + 4 = 5, weight 1 each -> sum 5, ws 2
    #   row [1,1]: t=(-1,5), p=(9,3): padded, 3*(2^2) = 12, ws 3
    # sum = 17, weight_sum = 5, count = 3, mean = 3.4
    y_true = tf.constant([[[1, 2], [7, 7]], [[7, 7], [-1, 5]]], tf.float32)
    y_pred = tf.constant([[[0, 0], [0, 0]], [[0, 0], [9, 3]]], tf.float32)
    mask = tf.constant([[1.0, 0.0], [0.0, 3.0]])
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, mask, padding_value=-1)
    assert float(sums.sum) == 17.0
    assert float(sums.weight_sum) == 5.0
    assert int(sums.count) == 3
    np.testing.assert_allclose(
        float(masked_ops.masked_mse(y_true, y_pred, mask, padding_value=-1)), 3.4, rtol=1e-7
    )
    bool_mask = tf.constant([[True, False], [False, True]])
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, bool_mask, padding_value=-1)
    assert (float(sums.sum), float(sums.weight_sum), int(sums.count)) == (9.0, 3.0, 3)


# ---------------------------------------------------------------------------
# NaN / Inf under the mask and at padding positions never reach the results.

POISON = (np.nan, np.inf, -np.inf)


def poisoned(case):
    """Copies of y_true / y_pred with NaN/+Inf/-Inf wherever the element is not
    kept: both at weight-0 positions, y_pred only at padding positions (y_true
    must stay equal to the padding value there)."""
    _, _, _, keep, w, _ = np_case_sums(case)
    n = case.t64.size
    poison = np.resize(np.array(POISON), n).reshape(case.t64.shape)
    t = np.where(w == 0, poison, case.t64)
    p = np.where(keep, case.p64, np.roll(poison, 1))
    assert np.all(np.isfinite(t[keep])) and np.sum(~np.isfinite(p)) == np.sum(~keep)
    y_true, _ = to_tensor(t, case.dtype)
    y_pred, _ = to_tensor(p, case.dtype)
    return y_true, y_pred


def fused_results(y_true, y_pred, mask, padding_value, reduction):
    """Forward outputs and gradients w.r.t. y_true, y_pred and a float mask."""
    sources = [y_true, y_pred] + ([mask] if mask is not None and mask.dtype.is_floating else [])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        loss = masked_ops.masked_mse(
            y_true, y_pred, mask, padding_value=padding_value, reduction=reduction
        )
    grads = tape.gradient(loss, sources)
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, mask, padding_value=padding_value)
    return [loss, *sums], grads


NAN_KINDS = [
    "bool",
    "int32",
    "float",
    "padding",
    "prefix_bool",
    "prefix_float",
    "mask_and_padding",
    "prefix_and_padding",
]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", NAN_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_and_inf_under_mask_do_not_leak(dtype, kind, reduction):
    rng = np.random.default_rng([13, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    case = make_case(rng, dtype, (6, 7, 5), kind)
    clean_out, clean_grads = fused_results(
        case.y_true, case.y_pred, case.mask, case.padding_value, reduction
    )
    y_true, y_pred = poisoned(case)
    out, grads = fused_results(y_true, y_pred, case.mask, case.padding_value, reduction)
    for name, a, e in zip(["loss", "sum", "weight_sum", "count"], out, clean_out, strict=False):
        assert np.all(np.isfinite(as_f64(a))), name
        assert_bitwise_equal(a, e, name)
    for name, a, e in zip(["d/dy_true", "d/dy_pred", "d/dmask"], grads, clean_grads, strict=False):
        assert np.all(np.isfinite(as_f64(a))), name
        assert_bitwise_equal(a, e, name)
    # And the clean results are right.
    ref_sum, ref_ws, ref_count, _, _, _ = np_case_sums(case)
    assert_close(clean_out[0], np_loss(ref_sum, ref_ws, reduction), dtype)
    assert int(clean_out[3]) == ref_count


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["bool", "int32", "float", "padding", "prefix_float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_masked_gives_exact_zeros(dtype, kind, reduction, mode):
    shape = (4, 3, 5)
    rng = np.random.default_rng(17)
    t = rng.standard_normal(shape)
    t.ravel()[::3] = np.nan
    p = rng.standard_normal(shape)
    p.ravel()[::4] = np.inf
    p.ravel()[1::4] = -np.inf
    p.ravel()[2::5] = np.nan
    mask, padding_value = None, None
    if kind == "bool":
        mask = tf.zeros(shape, tf.bool)
    elif kind == "int32":
        mask = tf.zeros(shape, tf.int32)
    elif kind == "float":
        mask = tf.zeros(shape, dtype)
    elif kind == "prefix_float":
        mask = tf.zeros(shape[:2], dtype)
    else:
        t = np.full(shape, PAD)
        padding_value = PAD
    y_true, _ = to_tensor(t, dtype)
    y_pred, _ = to_tensor(p, dtype)
    sources = [y_true, y_pred] + ([mask] if mask is not None and mask.dtype.is_floating else [])

    def compute(*sources):
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = masked_ops.masked_mse(
                sources[0],
                sources[1],
                sources[2] if len(sources) > 2 else mask,
                padding_value=padding_value,
                reduction=reduction,
            )
        sums = masked_ops.masked_squared_error_sums(
            y_true, y_pred, mask, padding_value=padding_value
        )
        return loss, tuple(sums), tape.gradient(loss, sources)

    if mode == "function":
        compute = tf.function(compute)
    loss, (s, w, c), grads = compute(*sources)
    assert float(loss) == 0.0 and not np.isnan(float(loss))
    assert float(s) == 0.0 and float(w) == 0.0 and int(c) == 0
    for g, x in zip(grads, sources, strict=False):
        assert g is not None and g.shape == x.shape and g.dtype == x.dtype
        g64 = as_f64(g)
        assert np.all(g64 == 0.0), g64


# ---------------------------------------------------------------------------
# Accuracy of long float32 reductions and exact counts.


def test_float32_sum_accuracy_at_2_pow_26_elements():
    n = 2**26
    # Generated by TF (fewer large copies than NumPy + tf.constant); t - p has
    # both signs. The reference reads the same values back.
    y_true = tf.random.stateless_normal([n], seed=[20, 26], stddev=2.0)
    y_pred = tf.random.stateless_normal([n], seed=[26, 20])
    t, p = y_true.numpy(), y_pred.numpy()
    assert t.dtype == np.float32 and np.any(t < p) and np.any(t > p)
    ref_sum = 0.0
    for i in range(0, n, 2**22):  # float64 reference in slices to bound memory
        ref_sum += float(np.sum((t[i : i + 2**22].astype(np.float64) - p[i : i + 2**22]) ** 2))
    del t, p

    sums = masked_ops.masked_squared_error_sums(y_true, y_pred)
    assert int(sums.count) == n and float(sums.weight_sum) == float(n)
    assert abs(float(sums.sum) - ref_sum) / ref_sum <= 1e-6, (float(sums.sum), ref_sum)
    mean = float(masked_ops.masked_mse(y_true, y_pred))
    assert abs(mean - ref_sum / n) / (ref_sum / n) <= 1e-6, (mean, ref_sum / n)


@pytest.mark.parametrize("mask_kind", ["bool", "int8", "float_ones"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.float16], ids=lambda d: d.name)
def test_count_is_exact_beyond_2_pow_24(dtype, mask_kind):
    n = 2**24 + 100
    kept = 2**24 + 3
    rng = np.random.default_rng(24)
    m = np.ones(n, bool)
    m[rng.choice(n, n - kept, replace=False)] = False
    assert int(m.sum()) == kept
    y_true = tf.zeros([n], dtype)
    y_pred = tf.fill([n], tf.constant(0.5, dtype))  # squared error 0.25 each
    if mask_kind == "bool":
        mask = tf.constant(m)
    elif mask_kind == "int8":
        mask = tf.constant(m.astype(np.int8))
    else:
        mask = tf.constant(m.astype(tf.as_dtype(dtype).as_numpy_dtype))
    sums = masked_ops.masked_squared_error_sums(y_true, y_pred, mask)
    assert sums.count.dtype == tf.int64 and int(sums.count) == kept
    if dtype == tf.float64:
        assert float(sums.weight_sum) == float(kept)
        assert float(sums.sum) == kept * 0.25
    else:
        # float32 accumulator: the exact count rounded once to float32.
        assert sums.weight_sum.dtype == tf.float32
        assert sums.weight_sum.numpy() == np.float32(kept)
        assert float(sums.weight_sum) == 16777220.0  # 2**24 + 3 rounds to even
        assert sums.sum.numpy() == np.float32(kept * 0.25)
    # The mean divides the unrounded totals: exactly 0.25.
    assert float(masked_ops.masked_mse(y_true, y_pred, mask)) == 0.25
    no_mask = masked_ops.masked_squared_error_sums(y_true, y_pred)
    assert int(no_mask.count) == n
