"""Every loss of the table against the float64 oracle, its own reference's
autodiff, XLA, the binding and worked examples; parametrized over
tests/loss_cases.py (MSE's full matrix lives in test_masked_squared_error.py)."""

import ctypes
import os

import numpy as np
import pytest
import tensorflow as tf
from _helpers import DTYPE_IDS, DTYPES, to_tensor
from loss_cases import LOSS_CASES
from oracle import forward as oracle_forward
from tolerances import assert_close

import masked_ops
from masked_ops import _xla, kernels, reference, specs
from masked_ops._loader import op_library
from masked_ops.ops import fused

SPECS = {spec.name: spec for spec in specs.LOSSES}
per_case = pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: c.name)
MASK_KINDS = ("none", "bool", "float", "prefix_bool", "prefix_float")


def _acc(dtype):
    return "float64" if dtype == tf.float64 else "float32"


def _mask(rng, kind, shape, dtype):
    """(mask for the op or None, float64 full weights)."""
    if kind == "none":
        return None, np.ones(shape)
    mshape = shape if kind in ("bool", "float") else shape[:-1]
    if kind.endswith("bool"):
        m = rng.random(mshape) < 0.7
        w = m.astype(np.float64)
        tensor = tf.constant(m)
    else:
        raw = np.where(rng.random(mshape) < 0.3, 0.0, rng.uniform(0.25, 2.0, mshape))
        tensor, w = to_tensor(raw, dtype)
    w = np.broadcast_to(w.reshape(w.shape + (1,) * (len(shape) - w.ndim)), shape)
    return tensor, w


def _data(case, dtype, kind, shape=(6, 5, 7), seed=0, poison=True):
    rng = np.random.default_rng([seed, DTYPES.index(dtype), MASK_KINDS.index(kind)])
    t = case.targets(rng, shape)
    p = case.predictions(rng, shape)
    mask, w = _mask(rng, kind, shape, dtype)
    if poison:
        # NaN/Inf where nothing is kept: must never reach the results.
        t = np.where(w == 0, np.nan, t)
        p = np.where(w == 0, np.inf, p)
    y_true, t64 = to_tensor(t, dtype)
    y_pred, p64 = to_tensor(p, dtype)
    return y_true, y_pred, mask, t64, p64, w


def _run(case, y_true, y_pred, mask, reduction="mean"):
    return fused(SPECS[case.spec], y_true, y_pred, mask, None, reduction, case.params)


@per_case
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_matches_the_float64_oracle(case, dtype, kind):
    y_true, y_pred, mask, t64, p64, w = _data(case, dtype, kind)
    ref = oracle_forward(case.math(_acc(dtype)), t64, p64, w)
    for fn in (_run, tf.function(_run)):
        loss, s, ws, count = fn(case, y_true, y_pred, mask)
        assert int(count) == ref.count
        assert_close(s, ref.sum, dtype)
        assert_close(ws, ref.weight_sum, dtype)
        assert_close(loss, ref.loss("mean"), dtype)


def _grads(fn, case, y_true, y_pred, mask):
    sources = [y_true, y_pred] + ([mask] if mask is not None and mask.dtype.is_floating else [])
    with tf.GradientTape() as tape:
        tape.watch(sources)
        loss = fn(case, *sources[:2], sources[2] if len(sources) > 2 else mask)[0]
    return tape.gradient(loss, sources)


def _reference(case, y_true, y_pred, mask, reduction="mean"):
    spec = SPECS[case.spec]
    return reference.masked_loss(spec, y_true, y_pred, mask, None, reduction, case.params)


@per_case
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_float64_gradients_match_the_analytic_oracle_and_reference_autodiff(case, kind):
    dtype = tf.float64
    y_true, y_pred, mask, t64, p64, w = _data(case, dtype, kind, seed=1)
    ref = oracle_forward(case.math(), t64, p64, w)
    math = case.math()
    inv = 1.0 / ref.weight_sum
    with np.errstate(invalid="ignore"):
        g_true = np.where(ref.keep, w * math.grad_true(t64, p64) * inv, 0.0)
        g_pred = np.where(ref.keep, w * math.grad_pred(t64, p64) * inv, 0.0)
        g_w = np.where(ref.keep, (ref.value - ref.loss("mean")) * inv, 0.0)
    grads = _grads(_run, case, y_true, y_pred, mask)
    np.testing.assert_allclose(grads[0].numpy(), g_true, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads[1].numpy(), g_pred, rtol=1e-10, atol=1e-13)
    if len(grads) > 2:
        g_w = (
            g_w.reshape(tuple(mask.shape) + (-1,)).sum(axis=-1)
            if kind.startswith("prefix")
            else g_w
        )
        np.testing.assert_allclose(grads[2].numpy(), g_w, rtol=1e-10, atol=1e-13)
    # The reference's autodiff (on NaN-free data: its selects do not hide
    # NaN gradients of unselected branches' inputs from the tape everywhere).
    y_true, y_pred, mask, *_ = _data(case, dtype, kind, seed=1, poison=False)
    for got, want in zip(
        _grads(_run, case, y_true, y_pred, mask),
        _grads(_reference, case, y_true, y_pred, mask),
        strict=True,
    ):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-13)


@per_case
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16], ids=lambda d: d.name)
def test_gradients_never_leak_nan_from_masked_positions(case, dtype):
    y_true, y_pred, mask, _, _, w = _data(case, dtype, "prefix_float", seed=2)
    for g in _grads(_run, case, y_true, y_pred, mask):
        assert np.all(np.isfinite(tf.cast(g, tf.float32).numpy()))
    g_pred = _grads(_run, case, y_true, y_pred, mask)[1]
    assert np.all(tf.cast(g_pred, tf.float32).numpy()[w == 0] == 0.0)


@per_case
@pytest.mark.parametrize("forced", [False, True], ids=["lowering", "pure_tf"])
def test_xla_matches_eager(case, forced):
    dtype = tf.float32
    y_true, y_pred, mask, *_ = _data(case, dtype, "prefix_float", seed=3)
    jitted = tf.function(_run, jit_compile=True)
    with _xla.force_fallback(forced):
        got = jitted(case, y_true, y_pred, mask)
        got_grads = _grads(jitted, case, y_true, y_pred, mask)
    want = _run(case, y_true, y_pred, mask)
    assert int(got[3]) == int(want[3])
    for g, e in zip(got[:3], want[:3], strict=True):
        assert_close(g, e, dtype)
    want_grads = _grads(_run, case, y_true, y_pred, mask)
    for g, e in zip(got_grads[:2], want_grads[:2], strict=True):
        assert_close(g, e, dtype, "elementwise")
    # The mask gradient sums a row's terms, which cancel: a reduction's tolerance.
    assert_close(got_grads[2], want_grads[2], dtype)


@per_case
@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16, tf.float64], ids=lambda d: d.name)
def test_binding_equals_the_op_bitwise(case, dtype):
    y_true, y_pred, mask, *_ = _data(case, dtype, "prefix_float", seed=4)
    t, p, m = y_true.numpy(), y_pred.numpy(), mask.numpy()
    loss, s, ws, count = _run(case, y_true, y_pred, mask)
    b = kernels.forward(t, p, m, None, "mean", loss_name=case.spec, params=case.params)
    assert (b[0], b[1], b[2], b[3]) == (loss.numpy(), s.numpy(), ws.numpy(), int(count))
    grads = _grads(_run, case, y_true, y_pred, mask)
    bg = kernels.backward(
        1.0, 0.0, 0.0, t, p, m, None, b[0], b[2], "mean", True, True, True,
        loss_name=case.spec, params=case.params,
    )  # fmt: skip
    for g, want in zip(grads, bg, strict=True):
        np.testing.assert_array_equal(g.numpy(), want)


# ---------------------------------------------------------------------------
# Worked examples (Keras's documented values, and hand computations).

T2 = [[0.0, 1.0], [0.0, 0.0]]
P2 = [[0.6, 0.4], [0.4, 0.6]]


def test_worked_examples():
    close = pytest.approx
    assert float(masked_ops.masked_mae(T2, P2)) == close(0.55)
    assert float(masked_ops.masked_huber(T2, P2)) == close(0.155)
    # delta = 0.5: |e| = 0.6 is linear (0.5 * 0.6 - 0.125), 0.4 quadratic (0.08).
    assert float(masked_ops.masked_huber(T2, P2, delta=0.5)) == close((3 * 0.175 + 0.08) / 4)
    assert float(masked_ops.masked_binary_crossentropy(T2, P2)) == close(0.8149, abs=1e-4)
    logits = [[-18.6, 0.51], [2.94, -12.8]]
    got = masked_ops.masked_binary_crossentropy(T2, logits, from_logits=True)
    assert float(got) == close(0.8654, abs=1e-4)
    # A mask keeps the first row only: the mean of its two elements.
    mask = [[True, True], [False, False]]
    assert float(masked_ops.masked_mae(T2, P2, mask)) == close(0.6)
    sums = masked_ops.masked_huber_sums(T2, P2, mask, delta=1.0)
    assert (float(sums.sum), float(sums.weight_sum), int(sums.count)) == (
        close(0.36),
        2.0,
        2,
    )
    # Label smoothing 0.5 makes every target 0.5: -log(0.5) at p = 0.5.
    half = masked_ops.masked_binary_crossentropy([[1.0, 0.0]], [[0.5, 0.5]], label_smoothing=0.5)
    assert float(half) == close(np.log(2.0))


def test_everything_masked_gives_zero_and_zero_gradients():
    for case in LOSS_CASES:
        y_true, y_pred, *_ = _data(case, tf.float32, "none", seed=5)
        mask = tf.zeros(y_true.shape, tf.bool)
        assert float(_run(case, y_true, y_pred, mask)[0]) == 0.0
        grads = _grads(_run, case, y_true, y_pred, mask)
        assert all(np.all(g.numpy() == 0.0) for g in grads)


# ---------------------------------------------------------------------------
# Parameters and the table's consistency.


@pytest.mark.parametrize("delta", [0.0, -1.0, float("inf"), float("nan")])
def test_invalid_delta_is_a_value_error(delta):
    with pytest.raises(ValueError, match="delta must be positive and finite"):
        masked_ops.masked_huber([1.0], [2.0], delta=delta)


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, float("nan")])
def test_invalid_label_smoothing_is_a_value_error(smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        masked_ops.masked_binary_crossentropy([1.0], [0.5], label_smoothing=smoothing)


def test_raw_op_refuses_wrong_or_invalid_params():
    args = {
        "y_true": tf.zeros([3]),
        "y_pred": tf.zeros([3]),
        "mask": tf.constant(True),
        "padding_value": tf.constant(0.0, tf.float64),
        "extra_masks": [],
        "Tout": tf.float32,
    }
    with pytest.raises(tf.errors.InvalidArgumentError, match="params must be a vector of 1"):
        op_library.masked_ops_huber(**args, params=tf.zeros([2], tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="delta must be positive"):
        op_library.masked_ops_huber(**args, params=tf.constant([-1.0], tf.float64))


def test_binding_refuses_unknown_loss_and_wrong_params():
    t = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        kernels.forward(t, t, loss_name="nope")
    with pytest.raises(ValueError, match="params must have 1 values"):
        kernels.forward(t, t, loss_name="huber", params=[])


def test_specs_ops_and_binding_list_the_same_losses():
    library_ops = {
        name for name in dir(op_library) if name.startswith("masked_ops_") and "eager" not in name
    }
    all_specs = (*specs.LOSSES, *specs.ROW_LOSSES)
    expected = {op for spec in all_specs for op in (spec.op, spec.grad_op, spec.one_pass_op)}
    shared = {"masked_ops_xla_lowered_ops", "masked_ops_scale_gradient"}
    assert library_ops - shared == expected
    assert sorted(kernels.losses) == sorted(spec.name for spec in specs.LOSSES)
    assert sorted(kernels.row_losses) == sorted(spec.name for spec in specs.ROW_LOSSES)
    assert {case.spec for case in LOSS_CASES} == set(SPECS)


def _float32_math(name, x):
    """The kernels' host float32 function `name` (csrc/kernels/loss_math.h)
    over x, from masked_ops/_math_check.so (built with the kernels' flags)."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(masked_ops.__file__), "_math_check.so"))
    fn = lib.masked_ops_math_check
    fn.argtypes = [ctypes.c_char_p] + [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    fn.restype = ctypes.c_int
    x = np.ascontiguousarray(x, np.float32)
    y, y2 = np.empty_like(x), np.empty_like(x)
    assert fn(name.encode(), x.ctypes.data, y.ctypes.data, y2.ctypes.data, x.size) == 0
    return (y, y2) if name == "log_and_log_one_minus" else y


def _floats_from_bits(lo, hi, rng, n):
    """n random float32s whose bit patterns are uniform in [lo, hi] (so every
    binade is sampled alike), plus both ends."""
    bits = rng.integers(lo, hi, size=n, endpoint=True, dtype=np.uint32)
    return np.concatenate([bits, np.array([lo, hi], np.uint32)]).view(np.float32)


def _ulps(y, want):
    """|y - want| in units of the last place of float32 at want (float64)."""
    _, e = np.frexp(want)
    ulp = np.maximum(np.ldexp(1.0, e.astype(np.int64) - 24), 2.0**-149)
    return np.abs(y.astype(np.float64) - want) / ulp


def test_float32_log_is_within_one_ulp_over_its_domain():
    rng = np.random.default_rng(7)
    ones = np.float32(1.0)
    x = np.concatenate(
        [
            _floats_from_bits(0x00800000, 0x7F7FFFFF, rng, 1 << 21),  # normal
            _floats_from_bits(0x00000001, 0x007FFFFF, rng, 1 << 18),  # subnormal
            np.ldexp(np.float32(1.0), np.arange(-149, 128)).astype(np.float32),  # powers of two
            np.nextafter(ones, np.float32(2.0)) + np.arange(1 << 12, dtype=np.float32) * 2**-23,
            ones - np.arange(1, 1 << 12, dtype=np.float32) * 2**-24,  # just below 1
            np.linspace(0.5, 2.0, 1 << 16, dtype=np.float32),  # near 1
        ]
    ).astype(np.float32)
    y = _float32_math("log", x)
    err = _ulps(y, np.log(x.astype(np.float64)))
    assert np.all(np.isfinite(y))
    assert err.max() <= 1.0, (float(err.max()), float(x[np.argmax(err)]))
    assert _float32_math("log", np.array([1.0], np.float32))[0] == 0.0
    special = np.array([0.0, -0.0, np.inf, -np.inf, -1.0, -1e-45, np.nan], np.float32)
    y = _float32_math("log", special)
    assert y[0] == -np.inf and y[1] == -np.inf and y[2] == np.inf
    assert np.all(np.isnan(y[3:]))


def test_float32_exp_and_log1p_are_within_their_bounds():
    rng = np.random.default_rng(8)
    # exp: within 1 ulp where the result is normal, 0 below, inf above.
    x = np.concatenate(
        [
            _floats_from_bits(0x00000000, 0x42B20000, rng, 1 << 20),  # [0, 89]
            _floats_from_bits(0x80000000, 0xC2B00000, rng, 1 << 20),  # [-88, 0]
            np.array([88.72283, 88.7229, -87.33654, -87.34, -103.0, -1e30, 1e30], np.float32),
        ]
    )
    with np.errstate(over="ignore"):
        y, want = _float32_math("exp", x), np.exp(x.astype(np.float64))
    f32 = np.finfo(np.float32)
    normal = (want >= f32.tiny) & (want <= f32.max)
    assert _ulps(y[normal], want[normal]).max() <= 1.0
    assert np.all(y[want < f32.tiny] == 0.0)
    assert np.all(y[want > f32.max] == np.inf)
    y = _float32_math("exp", np.array([np.inf, -np.inf, np.nan], np.float32))
    assert y[0] == np.inf and y[1] == 0.0 and np.isnan(y[2])
    # log1p on [0, 1] (the cross-entropy from logits): within 1 ulp.
    x = np.concatenate(
        [
            _floats_from_bits(0x00000000, 0x3F800000, rng, 1 << 21),
            np.linspace(0.0, 1.0, 1 << 16, dtype=np.float32),
        ]
    )
    err = _ulps(_float32_math("log1p_of_at_most_one", x), np.log1p(x.astype(np.float64)))
    assert err.max() <= 1.0, (float(err.max()), float(x[np.argmax(err)]))
    # log1p on [0, 2^127]: within 2.5 ulp.
    x = _floats_from_bits(0x00000000, 0x7F000000, rng, 1 << 20)
    err = _ulps(_float32_math("log1p_of_nonnegative", x), np.log1p(x.astype(np.float64)))
    assert err.max() <= 2.5, (float(err.max()), float(x[np.argmax(err)]))
    for name in ("log1p_of_at_most_one", "log1p_of_nonnegative"):
        assert np.isnan(_float32_math(name, np.array([np.nan], np.float32))[0])


def test_float32_log_pair_is_bitwise_two_logs():
    # The cross-entropy's log(c) and log(1 - c) share work but not results.
    rng = np.random.default_rng(9)
    c = np.concatenate(
        [
            _floats_from_bits(0x00800000, 0x3F7FFFFF, rng, 1 << 21),  # [2^-126, 1 - 2^-24]
            np.linspace(1e-7, 1 - 1e-7, 1 << 16, dtype=np.float32),
            np.array([0.5, np.nextafter(np.float32(0.5), np.float32(0.0))], np.float32),
        ]
    )
    log_c, log_d = _float32_math("log_and_log_one_minus", c)
    np.testing.assert_array_equal(log_c, _float32_math("log", c))
    np.testing.assert_array_equal(log_d, _float32_math("log", np.float32(1.0) - c))
    assert all(np.isnan(_float32_math("log_and_log_one_minus", np.array([np.nan], np.float32))))


@pytest.mark.parametrize(
    "case", [c for c in LOSS_CASES if c.spec.startswith("binary")], ids=lambda c: c.name
)
def test_float32_element_values_are_within_a_few_ulp(case):
    # With reduction "sum" and only grad_sum = 1 upstream, a float mask of ones
    # gets each element's value as its gradient: the kernel's float32 math
    # (vectorized exp/log polynomials on the host) element by element.
    x = np.concatenate(
        [
            np.linspace(-100, 100, 20001),
            [0.0, 1e-30, -1e-30, 1e-8, -1e-8, 88.0, -88.0, 0.5, 1.0 - 1e-7, 1e-7],
        ]
    ).astype(np.float32)
    if case.spec == "binary_crossentropy":
        x = 1.0 / (1.0 + np.exp(-x.astype(np.float64))).astype(np.float32)
    for label in (0.0, 1.0, 0.3):
        t = np.full_like(x, label)
        ones = np.ones_like(x)
        _, s, ws, _ = kernels.forward(
            t, x, ones, None, "sum", loss_name=case.spec, params=case.params
        )
        values = kernels.backward(
            0.0, 1.0, 0.0, t, x, ones, None, s, ws, "sum", False, False, True,
            loss_name=case.spec, params=case.params,
        )[2]  # fmt: skip
        t64, x64 = t.astype(np.float64), x.astype(np.float64)
        want = case.math("float32").value(t64, x64)
        # The float32 formula's own rounding is relative to its terms, not to
        # a result that cancels: |x| for logits, the two logs for probabilities.
        if case.spec == "binary_crossentropy":
            c = np.clip(x64, np.float32(1e-7), np.float32(1 - 1e-7))
            scale = -np.log(c) - np.log1p(-c)
        else:
            scale = np.abs(x64) + 1.0
        err = np.abs(values - want)
        assert np.all(err <= 4 * np.finfo(np.float32).eps * scale), float(np.max(err / scale))
