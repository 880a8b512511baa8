"""Hypothesis strategies and oracle checks shared by the fuzz suites, in NumPy
only (tests/test_fuzz_binding.py runs without TensorFlow, under the
sanitizers too).

A Case holds one loss with its parameters and NumPy inputs exactly as a user
would pass them: y_true and y_pred in one float dtype (values from the loss's
domain), a mask of any kind (None, bool, int32, or float weights of any float
dtype; the inputs' shape, a leading prefix of it, or 0-d), an optional
padding value that occurs in y_true, NaN/Inf wherever an element is not kept,
the reduction and the upstream gradients. Most examples are small; some
sizes sit on the kernels' block (1024) and chunk (65536) boundaries.
"""

import dataclasses

import numpy as np
import oracle
from hypothesis import settings
from hypothesis import strategies as st
from tolerances import allowed_error, assert_within, tolerance

FLOAT_DTYPES = oracle.FLOAT_DTYPES
REDUCTIONS = ("mean", "sum")

# Around one block (1024) and one chunk (65536) of elements; prefix rows
# shorter and longer than a block, and longer than a chunk.
BOUNDARY_SHAPES = (
    (1023,),
    (1024,),
    (1025,),
    (2049,),
    (3, 343),
    (1, 1025, 1),
    (65535,),
    (65536,),
    (65537,),
    (2, 32769),
    (64, 1025),
    (1025, 64),
    (3, 7, 3121),
    (131073,),
    (40, 3001),
    (2, 65537),
)

# Upstream gradients of (loss, sum, weight_sum): exact in every accumulator.
UPSTREAMS = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.75, 0.25, -0.5),
    (-2.0, 1.0, 0.5),
)

PADDING_VALUES = (-1.5, 0.0, 1.0, 0.1, -3.0, 1.0 / 3.0, 100.0, np.inf, -np.inf)
POISON = (np.nan, np.inf, -np.inf)


def examples(fraction):
    """A fraction of the loaded profile's max_examples, at least 1: for tests
    whose examples cost more than most."""
    return max(1, round(settings.default.max_examples * fraction))


@st.composite
def small_shapes(draw):
    """Rank 0 to 3, empty and 0-d included; mostly a few elements, some a few
    thousand."""
    if draw(st.integers(0, 3)) < 3:
        return tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
    rank = draw(st.integers(1, 3))
    limit = {1: 3000, 2: 70, 3: 17}[rank]
    return tuple(draw(st.lists(st.integers(1, limit), min_size=rank, max_size=rank)))


def boundary_shapes():
    """Sizes on the kernels' block (1024) and chunk (65536) boundaries."""
    return st.one_of(
        st.sampled_from(BOUNDARY_SHAPES),
        st.tuples(st.integers(1, 66), st.integers(1022, 1026)),
        st.tuples(st.integers(65530, 65542)),
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(16382, 16386)),
    )


SHAPES = {"small": small_shapes(), "boundary": boundary_shapes()}
MASK_KINDS = ("none", "bool", "int32", "float")


def _subnormal(*names):
    """A value subnormal in the narrowest-ranged of the dtypes `names`."""
    return 0.3 * max(float(oracle.finfo(n).smallest_normal) for n in names)


def _huge(name):
    """A large weight that stays finite in `name` and in float32 sums."""
    return 1e30 if float(oracle.finfo(name).max) > 1e31 else 3e4


def _real_values(rng, kind, shape):
    if kind == "normal":
        t = rng.standard_normal(shape) * 3.0
        return t, t + rng.standard_normal(shape)
    if kind == "ints":
        return rng.integers(-4, 5, shape).astype(np.float64), rng.integers(-4, 5, shape) * 1.0
    if kind == "wide":

        def mag():
            return rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 1, shape)

        return mag(), mag()
    # "close": differences far below the values.
    t = rng.standard_normal(shape) * 3.0
    return t, t * (1.0 + 1e-3 * rng.standard_normal(shape))


def _probabilities(rng, kind, shape):
    if kind == "labels":
        return (rng.random(shape) < 0.5).astype(np.float64)
    if kind == "extreme":
        # Near 0 and 1, across the clipping bounds 1e-7 and 1 - 1e-7.
        tail = 10.0 ** rng.uniform(-9, -0.5, shape)
        return np.where(rng.random(shape) < 0.5, tail, 1.0 - tail)
    return rng.random(shape)


def _logits(rng, kind, shape):
    if kind == "wide":
        return rng.choice([-1.0, 1.0], shape) * 10.0 ** rng.uniform(-3, 2, shape)
    return rng.standard_normal(shape) * 4.0


# Per domain: how y_true and y_pred are drawn, and special values put at a few
# positions of each.
DOMAINS = {
    "real": (("normal", "ints", "wide", "close"), (0.0, -0.0, 1.0, 100.0, -100.0)),
    "probability": (
        ("labels", "soft", "extreme"),
        (0.0, 1.0, 0.5, 1e-7, 1.0 - 1e-7, 1e-8, 1.0 - 2.0**-24, -0.5, 1.5),
    ),
    "logit": (("labels", "soft", "normal", "wide"), (0.0, 20.0, -20.0, 100.0, -100.0, 1e-3)),
}


def _values(rng, domain, kind, shape):
    if domain == "real":
        return _real_values(rng, kind, shape)
    if domain == "probability":
        return _probabilities(rng, kind, shape), _probabilities(rng, "soft", shape)
    # Logits: targets are probabilities.
    t_kind = kind if kind in ("labels", "soft") else "soft"
    return _probabilities(rng, t_kind, shape), _logits(rng, kind, shape)


def _bulk_weights(rng, kind, shape, subnormal):
    zeros = rng.random(shape) < 0.3
    if kind == "positive":
        w = rng.uniform(0.25, 2.0, shape)
    elif kind == "signed":
        w = rng.uniform(0.1, 3.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif kind == "ints":
        return rng.integers(-2, 4, shape).astype(np.float64)
    elif kind == "binary":
        return (rng.random(shape) < 0.6).astype(np.float64)
    elif kind == "tiny":
        w = subnormal * rng.uniform(0.001, 1.0, shape)
    else:
        # "cancel": +w and -w at mirrored positions, so the weights sum to 0.
        flat = rng.integers(1, 4, int(np.prod(shape))).astype(np.float64)
        half = flat.size // 2
        flat[flat.size - half :] = -flat[:half][::-1]
        if flat.size % 2:
            flat[half] = 0.0
        return flat.reshape(shape)
    return np.where(zeros, 0.0, w)


def _put_specials(draw, a, values):
    """Overwrites up to 3 hypothesis-chosen positions of `a` (in place)."""
    if a.size == 0:
        return
    for index, value in draw(
        st.lists(st.tuples(st.integers(0, a.size - 1), st.sampled_from(values)), max_size=3)
    ):
        a.flat[index] = value


@dataclasses.dataclass
class Case:
    loss: str  # the loss table's name
    params: tuple  # the loss's parameters
    dtype: str  # of y_true and y_pred
    y_true: np.ndarray
    y_pred: np.ndarray
    mask: object  # np.ndarray or None
    padding_value: object  # float or None
    reduction: str
    upstream: tuple  # of (loss, sum, weight_sum)
    clean_true: np.ndarray  # the inputs before NaN/Inf were put where not kept
    clean_pred: np.ndarray

    @property
    def shape(self):
        return self.y_pred.shape

    @property
    def mask_dtype(self):
        return None if self.mask is None else oracle.dtype_name(self.mask.dtype)

    @property
    def mask_is_float(self):
        return self.mask_dtype in FLOAT_DTYPES  # ml_dtypes.bfloat16 is not np.floating

    @property
    def kernel_mask(self):
        """The mask as the kernels take it (bool, or weights in the kernel dtype)."""
        return oracle.kernel_mask(self.mask, self.dtype)

    @property
    def padding(self):
        return oracle.kernel_padding(self.padding_value, self.dtype)

    @property
    def math(self):
        """The oracle's element math of the loss, in this case's accumulator."""
        return oracle.LOSSES[self.loss](self.params, oracle.accumulator(self.dtype))

    def forward(self):
        return oracle.forward(
            self.math,
            self.y_true.astype(np.float64),
            self.y_pred.astype(np.float64),
            oracle.kernel_weights(self.mask, self.dtype),
            self.padding,
        )


@st.composite
def cases(draw, loss, dtype, mask_kind, shapes=SHAPES["small"]):
    """Cases of one loss (its name), one input dtype and one mask kind ("none",
    "bool", "int32" or "float"; the mask's rank and float dtype vary)."""
    math = oracle.LOSSES[loss]
    params = draw(st.sampled_from(math.params))
    np_t = oracle.np_dtype(dtype)
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds, specials = DOMAINS[math.domain]
    t, p = _values(rng, math.domain, draw(st.sampled_from(kinds)), shape)
    finfo = oracle.finfo(dtype)
    specials = (*specials, _subnormal(dtype), float(finfo.smallest_normal))
    _put_specials(draw, t, specials)
    _put_specials(draw, p, specials)

    mask = None
    if mask_kind != "none":
        rank = draw(st.one_of(st.just(len(shape)), st.integers(0, len(shape))))
        mshape = shape[:rank]
        if mask_kind == "bool":
            mask = rng.random(mshape) < draw(st.sampled_from((0.0, 0.5, 0.9, 1.0)))
        elif mask_kind == "int32":
            values = np.array([-2, 0, 0, 1, 3, -(2**31)], np.int32)
            mask = values[rng.integers(0, values.size, mshape)]
        else:
            choice = draw(st.sampled_from(("same", "accumulator", *FLOAT_DTYPES)))
            mask_dtype = {"same": dtype, "accumulator": oracle.accumulator(dtype)}.get(
                choice, choice
            )
            k_dtype = oracle.kernel_mask_dtype(mask_dtype, dtype)
            subnormal = _subnormal(mask_dtype, k_dtype)
            if k_dtype != mask_dtype:
                # TensorFlow's Cast flushes subnormal values to zero (a documented
                # limit of masks of another dtype): converted masks draw tiny
                # weights that stay normal in both dtypes.
                subnormal = 1e3 * max(
                    float(oracle.finfo(n).smallest_normal) for n in (mask_dtype, k_dtype)
                )
            w = np.asarray(
                _bulk_weights(
                    rng,
                    draw(
                        st.sampled_from(("positive", "signed", "ints", "binary", "tiny", "cancel"))
                    ),
                    mshape,
                    subnormal,
                ),
                np.float64,
            )
            _put_specials(draw, w, (0.0, -0.0, -1.0, 1.0, subnormal, _huge(mask_dtype)))
            mask = w.astype(oracle.np_dtype(mask_dtype))

    padding_value = None
    if draw(st.booleans()):
        padding_value = draw(st.sampled_from(PADDING_VALUES))
        fraction = draw(st.sampled_from((0.0, 0.3, 1.0)))
        t = np.where(rng.random(shape) < fraction, oracle.kernel_padding(padding_value, dtype), t)

    y_true = np.asarray(t).astype(np_t)
    y_pred = np.asarray(p).astype(np_t)
    case = Case(
        loss,
        params,
        dtype,
        y_true,
        y_pred,
        mask,
        padding_value,
        draw(st.sampled_from(REDUCTIONS)),
        draw(st.sampled_from(UPSTREAMS)),
        y_true,
        y_pred,
    )
    if draw(st.booleans()):
        # NaN/Inf in y_pred wherever the element is not kept, and in y_true
        # where its weight is 0 (at padded positions it must stay the padding).
        w = oracle.full_weights(oracle.kernel_weights(mask, dtype), shape)
        keep = oracle.kept(y_true.astype(np.float64), w, case.padding)
        poison_t = np.resize(np.array(POISON), shape)
        poison_p = np.roll(poison_t, 1)
        case.y_pred = np.where(keep, y_pred, poison_p).astype(np_t)
        case.y_true = np.where(w == 0, poison_t, y_true).astype(np_t)
    return case


# ---------------------------------------------------------------------------
# Checks of kernel results (NumPy values) against the oracle.


def _widest_tolerance(names, kind):
    return max((tolerance(n, kind) for n in names), key=lambda rtol_atol: rtol_atol[0])


def check_forward(case, loss, total, weight_sum, count):
    """loss (of case.reduction), sum, weight_sum and count against the oracle.
    Returns the oracle's Forward."""
    fwd = case.forward()
    acc = oracle.accumulator(case.dtype)
    for name, x in (("loss", loss), ("sum", total), ("weight_sum", weight_sum)):
        x = np.asarray(x)
        assert x.shape == () and oracle.dtype_name(x.dtype) == acc, (name, x.dtype, x.shape)
        # A mean over a tiny weight_sum may overflow; nothing else may.
        assert np.isfinite(x) or (name == "loss" and np.isinf(x)), (name, x)
    assert int(count) == fwd.count, ("count", int(count), fwd.count)
    n = case.y_pred.size
    e_sum = allowed_error(fwd.sum, fwd.sum_scale, case.dtype, terms=n) + fwd.sum_atol
    e_ws = allowed_error(fwd.weight_sum, fwd.weight_scale, case.dtype, terms=n)
    assert_within(total, fwd.sum, e_sum, "sum")
    assert_within(weight_sum, fwd.weight_sum, e_ws, "weight_sum")
    if case.reduction == "sum":
        assert np.asarray(loss).tobytes() == np.asarray(total).tobytes(), (loss, total)
        return fwd
    if float(weight_sum) == 0.0:
        assert float(loss) == 0.0, loss
    w = abs(fwd.weight_sum)
    if w > 2 * e_ws:
        # sum / weight_sum with both known to within e_sum and e_ws; the
        # division and the final rounding add a few more ulps.
        mean = fwd.sum / fwd.weight_sum
        bound = (e_sum + abs(mean) * e_ws) / (w - e_ws)
        bound += allowed_error(mean, 0.0, case.dtype)
        _check_may_overflow(loss, mean, bound, acc, "mean")
    else:
        # weight_sum is not known to better than its own size: any mean.
        assert not np.isnan(loss), loss
    return fwd


def _check_may_overflow(actual, expected, bound, dtype, what):
    """assert_within, except that where the value or its bound reaches the
    largest finite value of `dtype` the infinity of the expected sign passes
    too (the rounding of a result that overflows)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), expected.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.abs(expected) + bound >= float(oracle.finfo(dtype).max)
        overflowed = big & (actual == np.where(expected > 0, np.inf, -np.inf))
    assert_within(actual[~overflowed], expected[~overflowed], bound[~overflowed], what)


def check_backward(case, fwd, loss, weight_sum, grads, want_mask):
    """(grad_y_true, grad_y_pred, grad_mask) of the upstream-weighted outputs,
    given the forward's own loss and weight_sum, against the oracle; masked
    positions must get exactly 0, and so must weights that are exactly 0."""
    coeffs = oracle.coefficients(case.upstream, float(loss), float(weight_sum), case.reduction)
    mask_shape = case.mask.shape if want_mask else None
    t64 = case.y_true.astype(np.float64)
    p64 = case.y_pred.astype(np.float64)
    bwd = oracle.backward(case.math, fwd, t64, p64, mask_shape, coeffs)
    grad_true, grad_pred, grad_mask = grads
    expected = (
        ("grad_y_true", grad_true, bwd.grad_true, bwd.true_scale),
        ("grad_y_pred", grad_pred, bwd.grad_pred, bwd.pred_scale),
    )
    for name, actual, e, scale in expected:
        if actual is None:
            continue
        actual = np.asarray(actual)
        assert actual.shape == case.shape, (name, actual.shape)
        assert oracle.dtype_name(actual.dtype) == case.dtype, (name, actual.dtype)
        assert np.all(actual[~fwd.keep] == 0), f"{name}: not 0 where masked"
        bound = allowed_error(e, scale, case.dtype, "elementwise")
        _check_may_overflow(actual, e, bound, case.dtype, name)
    if not want_mask:
        assert grad_mask is None
        return
    actual = np.asarray(grad_mask)
    assert actual.shape == case.mask.shape, ("grad_mask", actual.shape)
    weights = oracle.kernel_weights(case.mask, case.dtype)
    assert np.all(actual[weights == 0] == 0), "grad_mask: not 0 where the weight is 0"
    kept_any = oracle.reduce_to_mask(fwd.keep, case.mask.shape) != 0
    assert np.all(actual[~kept_any] == 0), "grad_mask: not 0 where nothing is kept"
    # Rounded to the kernel's mask dtype and then to the mask's own one.
    names = (oracle.kernel_mask_dtype(case.mask_dtype, case.dtype), case.mask_dtype)
    rtol, atol = _widest_tolerance(names, "elementwise")
    e = bwd.grad_mask
    bound = allowed_error(e, bwd.mask_scale, case.dtype, terms=bwd.mask_terms)
    bound = bound + atol + rtol * (np.abs(e) + bwd.mask_scale)
    narrowest = min(names, key=lambda n: float(oracle.finfo(n).max))
    _check_may_overflow(actual, e, bound, narrowest, "grad_mask")
