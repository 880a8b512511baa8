"""Hypothesis strategies and oracle checks shared by the fuzz suites, in NumPy
only (tests/test_fuzz_binding.py runs without TensorFlow, under the
sanitizers too).

A Case holds one loss with its parameters and NumPy inputs exactly as a user
would pass them: y_true and y_pred in one float dtype (values from the loss's
domain), a mask of any kind (None, bool, int32, or float weights of any float
dtype; the inputs' shape, a leading prefix of it, or 0-d) or a list of 2 or 3
such masks (mask_lists: "several masks", each of its own kind and shape), an
optional padding value that occurs in y_true, NaN/Inf wherever an element is
not kept, the reduction and the upstream gradients. Most examples are small;
some sizes sit on the kernels' block (1024) and chunk (65536) boundaries.
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
# "several": a list of masks (mask_lists).
MASK_KINDS = ("none", "bool", "int32", "float", "several")


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
    def several(self):
        """mask is a list of masks."""
        return isinstance(self.mask, list)

    @property
    def mask_dtype(self):
        """The dtype of a single mask (None for none or several)."""
        return None if self.mask is None or self.several else oracle.dtype_name(self.mask.dtype)

    @property
    def mask_is_float(self):
        """A single float mask: the kernels compute its gradient (none for several)."""
        return self.mask_dtype in FLOAT_DTYPES  # ml_dtypes.bfloat16 is not np.floating

    @property
    def kernel_mask(self):
        """The mask as the kernels take it (bool, or weights in the kernel
        dtype; a list of them for several masks)."""
        if self.several:
            # Arrays, not NumPy scalars (`m != 0` of a 0-d array is one):
            # a list of scalars is one mask.
            return [np.asarray(oracle.kernel_mask(m, self.dtype)) for m in self.mask]
        return oracle.kernel_mask(self.mask, self.dtype)

    @property
    def weights(self):
        """float64 weight of every element as the kernels read it (several
        masks combined as the kernels combine them)."""
        if self.several:
            return oracle.combined_weights(self.mask, self.dtype, self.shape)
        return oracle.full_weights(oracle.kernel_weights(self.mask, self.dtype), self.shape)

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
            self.weights,
            self.padding,
        )


def _mask_shape(draw, shape):
    """The inputs' shape (half of the time) or a leading prefix of it."""
    rank = draw(st.one_of(st.just(len(shape)), st.integers(0, len(shape))))
    return shape[:rank]


def _draw_mask(draw, rng, kind, dtype, mshape, huge=True, keep=(0.0, 0.5, 0.9, 1.0)):
    """One mask of `kind` ("bool", "int32" or "float": weights of a drawn float
    dtype, some subnormal, some huge unless huge=False) for inputs of `dtype`.
    keep: the fractions a boolean mask keeps."""
    if kind == "bool":
        return rng.random(mshape) < draw(st.sampled_from(keep))
    if kind == "int32":
        values = np.array([-2, 0, 0, 1, 3, -(2**31)], np.int32)
        return values[rng.integers(0, values.size, mshape)]
    choice = draw(st.sampled_from(("same", "accumulator", *FLOAT_DTYPES)))
    mask_dtype = {"same": dtype, "accumulator": oracle.accumulator(dtype)}.get(choice, choice)
    k_dtype = oracle.kernel_mask_dtype(mask_dtype, dtype)
    subnormal = _subnormal(mask_dtype, k_dtype)
    if k_dtype != mask_dtype:
        # TensorFlow's Cast flushes subnormal values to zero (a documented
        # limit of masks of another dtype): converted masks draw tiny
        # weights that stay normal in both dtypes.
        subnormal = 1e3 * max(float(oracle.finfo(n).smallest_normal) for n in (mask_dtype, k_dtype))
    w = np.asarray(
        _bulk_weights(
            rng,
            draw(st.sampled_from(("positive", "signed", "ints", "binary", "tiny", "cancel"))),
            mshape,
            subnormal,
        ),
        np.float64,
    )
    specials = (0.0, -0.0, -1.0, 1.0, subnormal) + ((_huge(mask_dtype),) if huge else ())
    _put_specials(draw, w, specials)
    return w.astype(oracle.np_dtype(mask_dtype))


@st.composite
def mask_lists(draw, shape, dtype):
    """Several masks (a list of 2 or 3) for inputs of `shape` and `dtype`:
    each bool, int32 or float weights (of a drawn float dtype, zero,
    subnormal and negative ones among them) and of its own shape (the
    inputs', a leading prefix, or 0-d; always NumPy arrays, never NumPy
    scalars). Huge weights in one mask only, so their products stay finite.
    Sometimes float weights are NaN or Inf where another mask (of no higher
    rank) is 0 in the kernel's view: their combination is 0 all the same, so
    they must not be kept."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(2, 3))
    huge_at = draw(st.integers(0, count - 1))
    masks = []
    for i in range(count):
        kind = draw(st.sampled_from(("bool", "int32", "float")))
        mshape = _mask_shape(draw, shape)
        m = _draw_mask(draw, rng, kind, dtype, mshape, huge=i == huge_at, keep=(0.5, 0.9, 1.0))
        masks.append(np.asarray(m))
    if draw(st.booleans()):
        # One mask's zeros stay: float weights of the others at the entries it
        # covers with 0 become NaN or Inf.
        a = draw(st.integers(0, count - 1))
        zero = oracle.kernel_weights(masks[a], dtype) == 0
        for i, m in enumerate(masks):
            if i == a or m.ndim < zero.ndim:
                continue
            if oracle.dtype_name(m.dtype) in FLOAT_DTYPES:
                where = oracle.full_weights(zero, m.shape) != 0
                where &= rng.random(m.shape) < 0.7
                poison = np.resize(np.array(POISON), m.shape)
                masks[i] = np.asarray(np.where(where, poison, m).astype(m.dtype))
    return masks


@st.composite
def cases(draw, loss, dtype, mask_kind, shapes=SHAPES["small"]):
    """Cases of one loss (its name), one input dtype and one mask kind ("none",
    "bool", "int32", "float", or "several": mask_lists; the masks' ranks and
    float dtypes vary)."""
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
    if mask_kind == "several":
        mask = draw(mask_lists(shape, dtype), label="masks")
    elif mask_kind != "none":
        mask = _draw_mask(draw, rng, mask_kind, dtype, _mask_shape(draw, shape))

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
        w = case.weights
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


def check_mask_list_gradients(case, fwd, loss, weight_sum, grads):
    """The gradients of several masks (case.mask a list; grads: one per mask,
    None for boolean and integer masks), as TensorFlow computes them from the
    gradient of the combined weight W: entry k of mask i gets the sum, over
    the elements it covers, of dW times the other masks' weights. Exactly 0
    where nothing is kept. Not checked where the gradient of W, or its
    product with the other weights, may overflow the accumulator (TensorFlow
    forms them there)."""
    coeffs = oracle.coefficients(case.upstream, float(loss), float(weight_sum), case.reduction)
    t64 = case.y_true.astype(np.float64)
    p64 = case.y_pred.astype(np.float64)
    bwd = oracle.backward(case.math, fwd, t64, p64, case.shape, coeffs)
    keep, g_w, s_w = fwd.keep, bwd.grad_mask, bwd.mask_scale  # elementwise dW and its scale
    full = [
        oracle.full_weights(oracle.kernel_weights(m, case.dtype), case.shape) for m in case.mask
    ]
    acc = oracle.accumulator(case.dtype)
    limit = 0.5 * float(oracle.finfo(acc).max)
    rank = max(m.ndim for m in case.mask)  # where TensorFlow forms dW
    assert len(grads) == len(case.mask)
    for i, (m, actual) in enumerate(zip(case.mask, grads, strict=True)):
        if oracle.dtype_name(m.dtype) not in FLOAT_DTYPES:
            assert actual is None, f"mask[{i}]: a gradient for a {m.dtype} mask"
            continue
        actual = np.asarray(actual)
        what = f"grad of mask[{i}]"
        assert actual.shape == m.shape, (what, actual.shape, m.shape)
        assert oracle.dtype_name(actual.dtype) == oracle.dtype_name(m.dtype), (what, actual.dtype)
        with np.errstate(invalid="ignore", over="ignore"):
            others = np.ones(case.shape)
            for j, f in enumerate(full):
                if j != i:
                    others = others * f
            others = np.where(keep, others, 0.0)  # NaN/Inf weights only where not kept
            terms_scale = s_w * np.abs(others)
            expected = oracle.reduce_to_mask(g_w * others, m.shape)
            scale = oracle.reduce_to_mask(terms_scale, m.shape)
            terms = oracle.reduce_to_mask(np.where(keep, 1.0 + np.abs(others), 0.0), m.shape)
        kept_any = oracle.reduce_to_mask(keep, m.shape) != 0
        assert np.all(actual[~kept_any] == 0), f"{what}: not 0 where nothing is kept"
        formed = (s_w, terms_scale)  # dW and dW times the others, at TensorFlow's rank
        # A kept element whose combined weight is subnormal: TensorFlow's CPU
        # ops flush it to 0 when they form W, so it drops out of the mask
        # gradients (a documented limit of gradients of mask lists).
        tiny_w = float(oracle.finfo(acc).smallest_normal)
        if np.any(keep & (np.abs(fwd.w) < tiny_w)):
            continue
        if any(
            np.max(oracle.reduce_to_mask(x, case.shape[:rank]), initial=0) >= limit for x in formed
        ):
            continue
        mask_dtype = oracle.dtype_name(m.dtype)
        names = (oracle.kernel_mask_dtype(mask_dtype, case.dtype), mask_dtype)
        rtol, atol = _widest_tolerance(names, "elementwise")
        bound = allowed_error(expected, scale, case.dtype, terms=terms)
        bound = bound + atol + rtol * (np.abs(expected) + scale)
        # TensorFlow's CPU ops flush subnormal results to zero: each product
        # and partial sum may lose up to the smallest normal value.
        tiny = float(oracle.finfo(acc).smallest_normal)
        bound = bound + 2.0 * tiny * oracle.reduce_to_mask(keep, m.shape)
        narrowest = min(names, key=lambda n: float(oracle.finfo(n).max))
        _check_may_overflow(actual, expected, bound, narrowest, what)
