"""Float64 NumPy oracle for the masked losses, without TensorFlow (the
sanitizer build runs it next to the bare binding).

It works on float64 copies of exactly the values the kernels read and spells
the semantics out directly. With w the weight of an element as the kernel
reads it:

    keep       = (w != 0) & (y_true != padding_value)
    sum        = sum(keep ? w * value(t, p) : 0)
    weight_sum = sum(keep ? w : 0),  count = sum(keep)
    mean       = sum / weight_sum, exactly 0 when weight_sum == 0

value(t, p) and its derivatives come from LOSSES, one class per loss of the
loss table. Next to every result it returns a scale: the sum of the magnitudes of the
terms that make it up, so tolerances can be relative to the terms and not to
a result that cancelled.
"""

import dataclasses

import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------
# Dtypes: names, NumPy types, the kernel's view of inputs and masks.


def np_dtype(name):
    """NumPy dtype of a name; bfloat16 is ml_dtypes.bfloat16."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def dtype_name(dtype):
    return np.dtype(dtype).name


def finfo(name):
    return ml_dtypes.finfo(ml_dtypes.bfloat16) if name == "bfloat16" else np.finfo(name)


def accumulator(name):
    """float32 for 16-bit and float32 inputs, float64 for float64."""
    return "float64" if name == "float64" else "float32"


def kernel_mask_dtype(mask_dtype, pred_dtype):
    """The mask dtype the kernel reads: bool for boolean and integer masks; a
    float mask keeps its dtype when it is y_pred's or the accumulator's, else
    it is converted to the accumulator dtype."""
    if mask_dtype == "bool" or np.issubdtype(np_dtype(mask_dtype), np.integer):
        return "bool"
    if mask_dtype in (pred_dtype, accumulator(pred_dtype)):
        return mask_dtype
    return accumulator(pred_dtype)


def round_to(x, name):
    """float64 of x rounded to dtype `name` (round to nearest even)."""
    with np.errstate(over="ignore"):
        return np.asarray(np.asarray(x, np.float64).astype(np_dtype(name)), np.float64)


def kernel_mask(mask, pred_dtype):
    """The mask as the kernel receives it: integer masks as bool (non-zero
    keeps), float masks in kernel_mask_dtype. None stays None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    name = dtype_name(mask.dtype)
    kind = kernel_mask_dtype(name, pred_dtype)
    if kind == "bool":
        return mask != 0
    return mask.astype(np_dtype(kind))


def kernel_weights(mask, pred_dtype):
    """float64 weights of the mask entries as the kernel reads them (its own
    shape), or None."""
    m = kernel_mask(mask, pred_dtype)
    return None if m is None else m.astype(np.float64)


def kernel_padding(padding_value, dtype):
    """The padding value rounded to y_true's dtype (through the accumulator
    dtype, as a cast of a float64 tensor does), as float64; None if none."""
    if padding_value is None:
        return None
    return float(round_to(round_to(padding_value, accumulator(dtype)), dtype))


def padding_overflows(padding_value, dtype):
    """A finite padding value that becomes infinite in y_true's dtype."""
    return bool(
        np.isfinite(padding_value) and not np.isfinite(kernel_padding(padding_value, dtype))
    )


def full_weights(weights, shape):
    """Weight of every element: a prefix mask covers the trailing dimensions."""
    if weights is None:
        return np.ones(shape, np.float64)
    weights = np.asarray(weights, np.float64)
    gap = len(shape) - weights.ndim
    return np.broadcast_to(weights.reshape(weights.shape + (1,) * gap), shape)


def combined_weights(masks, pred_dtype, shape):
    """Full float64 weights of several masks (a list) as the kernels combine
    them: in list order, in the accumulator dtype, the product of the
    weights, or 0 once any of them is 0."""
    acc = np_dtype(accumulator(pred_dtype))
    combined = None
    for m in masks:
        w = np.asarray(full_weights(kernel_weights(m, pred_dtype), shape)).astype(acc)
        if combined is None:
            combined = w
        else:
            with np.errstate(invalid="ignore", over="ignore", under="ignore"):
                combined = np.where((combined != 0) & (w != 0), combined * w, acc.type(0))
    return combined.astype(np.float64)


def reduce_to_mask(full, mask_shape):
    """Sums an elementwise array over the dimensions a prefix mask covers."""
    full = np.asarray(full, np.float64)
    axes = tuple(range(len(mask_shape), full.ndim))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sum(full, axis=axes) if axes else full


# ---------------------------------------------------------------------------
# Element math of each loss, in float64, keyed by the loss table's name (the
# binding's loss_name, masked_ops.specs' name). One class per loss; the suites
# refuse to run a compiled loss that has no entry here.


class ElementMath:
    """value(t, p), grad_pred = d value / d p and grad_true = d value / d t of
    one loss with its parameters, on float64 arrays; acc is the accumulator
    dtype the kernel computes in (constants such as clip bounds are rounded
    to it). The *_scale methods bound the magnitude of the terms each result
    is computed from, so tolerances cover cancellation inside the formula.

    domain: the inputs the loss is meant for: "real", "probability" (y_true
    and y_pred in [0, 1]) or "logit" (y_true in [0, 1], y_pred any real).
    params: parameter tuples the fuzzers draw from.
    """

    domain = "real"
    params = ((),)

    def __init__(self, params=(), acc="float64"):
        self.acc = acc

    @property
    def value_atol(self):
        """Absolute error allowed in each value, beyond value_scale."""
        return 0.0

    def value_scale(self, t, p):
        return np.abs(self.value(t, p))

    def grad_pred_scale(self, t, p):
        return np.abs(self.grad_pred(t, p))

    def grad_true_scale(self, t, p):
        return np.abs(self.grad_true(t, p))


class SquaredError(ElementMath):
    def value(self, t, p):
        return (t - p) ** 2

    def grad_pred(self, t, p):
        return 2.0 * (p - t)

    def grad_true(self, t, p):
        return 2.0 * (t - p)


class AbsoluteError(ElementMath):
    def value(self, t, p):
        return np.abs(t - p)

    def grad_pred(self, t, p):
        return np.sign(p - t)  # 0 at t == p

    def grad_true(self, t, p):
        return np.sign(t - p)


class Huber(ElementMath):
    params = ((1.0,), (0.25,), (3.0,), (1e-3,), (0.1,))

    def __init__(self, params=(1.0,), acc="float64"):
        super().__init__(params, acc)
        self.delta = float(round_to(params[0], acc))

    def value(self, t, p):
        a = np.abs(p - t)
        d = self.delta
        return np.where(a <= d, 0.5 * a * a, d * a - 0.5 * d * d)

    def value_scale(self, t, p):
        a = np.abs(p - t)
        d = self.delta
        return np.where(a <= d, 0.5 * a * a, d * a + 0.5 * d * d)

    def grad_pred(self, t, p):
        e = p - t
        return np.where(np.abs(e) <= self.delta, e, self.delta * np.sign(e))

    def grad_true(self, t, p):
        return -self.grad_pred(t, p)


BCE_EPSILON = 1e-7


class _Crossentropy(ElementMath):
    params = ((0.0,), (0.1,), (1.0,), (1e-3,))

    def __init__(self, params=(0.0,), acc="float64"):
        super().__init__(params, acc)
        self.smoothing = float(params[0])

    def target(self, t):
        s = self.smoothing
        return t if s == 0 else t * (1.0 - s) + 0.5 * s


class BinaryCrossentropy(_Crossentropy):
    """Probabilities clipped to [eps, 1 - eps] (the bounds in the accumulator
    dtype); no gradient w.r.t. p outside them."""

    domain = "probability"

    def __init__(self, params=(0.0,), acc="float64"):
        super().__init__(params, acc)
        self.lo = float(round_to(BCE_EPSILON, acc))
        self.hi = float(round_to(1.0 - BCE_EPSILON, acc))

    def clipped(self, p):
        return np.clip(p, self.lo, self.hi)

    def value(self, t, p):
        z, c = self.target(t), self.clipped(p)
        return -(z * np.log(c) + (1.0 - z) * np.log1p(-c))

    def value_scale(self, t, p):
        # 1 - c is rounded before its log: an absolute error of one ulp of 1.
        z, c = self.target(t), self.clipped(p)
        return (np.abs(z) + np.abs(1.0 - z)) * (np.abs(np.log(c)) + np.abs(np.log1p(-c)) + 1.0)

    def grad_pred(self, t, p):
        z, c = self.target(t), self.clipped(p)
        g = (1.0 - z) / (1.0 - c) - z / c
        return np.where((p < self.lo) | (p > self.hi), 0.0, g)

    def grad_pred_scale(self, t, p):
        # 1 - z cancels when z is near 1: its error is one ulp of z.
        z, c = self.target(t), self.clipped(p)
        g = (np.abs(1.0 - z) + np.abs(z)) / np.abs(1.0 - c) + np.abs(z / c)
        return np.where((p < self.lo) | (p > self.hi), 0.0, g)

    def grad_true(self, t, p):
        c = self.clipped(p)
        return (1.0 - self.smoothing) * (np.log1p(-c) - np.log(c))

    def grad_true_scale(self, t, p):
        c = self.clipped(p)
        return abs(1.0 - self.smoothing) * (np.abs(np.log1p(-c)) + np.abs(np.log(c)) + 1.0)


class BinaryCrossentropyFromLogits(_Crossentropy):
    domain = "logit"

    @property
    def value_atol(self):
        # The kernels' exp flushes results below the normal range to 0.
        return float(finfo(self.acc).smallest_normal)

    def value(self, t, x):
        return np.maximum(x, 0.0) - x * self.target(t) + np.log1p(np.exp(-np.abs(x)))

    def value_scale(self, t, x):
        z = self.target(t)
        return np.maximum(x, 0.0) + np.abs(x * z) + np.log1p(np.exp(-np.abs(x)))

    def grad_pred(self, t, x):
        return 0.5 * (1.0 + np.tanh(0.5 * x)) - self.target(t)

    def grad_pred_scale(self, t, x):
        return 0.5 * (1.0 + np.tanh(0.5 * x)) + np.abs(self.target(t))

    def grad_true(self, t, x):
        return -(1.0 - self.smoothing) * x


LOSSES = {
    "squared_error": SquaredError,
    "absolute_error": AbsoluteError,
    "huber": Huber,
    "binary_crossentropy": BinaryCrossentropy,
    "binary_crossentropy_from_logits": BinaryCrossentropyFromLogits,
}


# ---------------------------------------------------------------------------
# Forward and backward.


def kept(t64, w, padding):
    """keep = (w != 0) & (t != padding), elementwise (w: full weights)."""
    keep = np.asarray(w) != 0
    if padding is not None:
        keep = keep & (np.asarray(t64, np.float64) != padding)
    return keep


@dataclasses.dataclass
class Forward:
    sum: float
    weight_sum: float
    count: int
    sum_scale: float  # sum of |keep * w| * value_scale
    sum_atol: float  # sum of |keep * w| * value_atol
    weight_scale: float  # sum |keep * w|
    keep: np.ndarray
    w: np.ndarray  # full weights
    value: np.ndarray  # per-element value (garbage where not kept)
    value_scale: np.ndarray

    def loss(self, reduction):
        if reduction == "sum":
            return self.sum
        return self.sum / self.weight_sum if self.weight_sum != 0 else 0.0


def forward(math, t64, p64, weights=None, padding=None):
    """float64 forward of one loss (an ElementMath) on the (already rounded)
    inputs. weights: kernel_weights(...) (None: no mask); padding:
    kernel_padding(...)."""
    t64 = np.asarray(t64, np.float64)
    p64 = np.asarray(p64, np.float64)
    w = full_weights(weights, t64.shape)
    keep = kept(t64, w, padding)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        value = math.value(t64, p64)
        value_scale = math.value_scale(t64, p64)
        terms = np.where(keep, w * value, 0.0)
        term_scales = np.where(keep, np.abs(w) * value_scale, 0.0)
    kept_w = np.where(keep, w, 0.0)
    return Forward(
        sum=float(np.sum(terms)),
        weight_sum=float(np.sum(kept_w)),
        count=int(np.count_nonzero(keep)),
        sum_scale=float(np.sum(term_scales)),
        sum_atol=float(np.sum(np.where(keep, np.abs(w), 0.0))) * math.value_atol,
        weight_scale=float(np.sum(np.abs(kept_w))),
        keep=keep,
        w=w,
        value=value,
        value_scale=value_scale,
    )


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """The gradient d/dp = a * w * grad_pred, d/dw = a * value + b, from the
    upstream gradients (g_loss, g_sum, g_ws) and the forward's own loss and
    weight_sum outputs:
        "sum":  a = g_loss + g_sum,               b = g_ws
        "mean": a = g_loss / weight_sum + g_sum,  b = g_ws - g_loss * loss / weight_sum
    (1 / weight_sum read as 0 when weight_sum == 0). Kept as a = ratio /
    divisor + plain, so the oracle never forms 1 / weight_sum, which
    overflows for subnormal weight sums."""

    ratio: float
    divisor: float
    plain: float
    plain_scale: float
    g_ws: float
    loss: float

    def times_a(self, w, x):
        """a * w * x, the ratio applied to w first (w / weight_sum stays finite)."""
        return self.ratio * (w / self.divisor) * x + self.plain * w * x

    def times_a_scale(self, w, x_scale):
        return (np.abs(self.ratio * (w / self.divisor)) + self.plain_scale * np.abs(w)) * x_scale

    def grad_weight(self, value):
        """a * value + b."""
        # ratio first: with a zero upstream ratio and a subnormal divisor,
        # (value - loss) / divisor alone may overflow (0 * inf).
        return (self.ratio * (value - self.loss)) / self.divisor + self.plain * value + self.g_ws

    def grad_weight_scale(self, value_scale):
        ratio_terms = abs(self.ratio) * (value_scale + abs(self.loss)) / abs(self.divisor)
        return ratio_terms + self.plain_scale * value_scale + abs(self.g_ws)


def coefficients(upstream, loss, weight_sum, reduction):
    g_loss, g_sum, g_ws = (float(g) for g in upstream)
    if reduction == "sum" or weight_sum == 0:
        plain = g_sum + (g_loss if reduction == "sum" else 0.0)
        scale = abs(g_sum) + (abs(g_loss) if reduction == "sum" else 0.0)
        return Coefficients(0.0, 1.0, plain, scale, g_ws, 0.0)
    return Coefficients(g_loss, float(weight_sum), g_sum, abs(g_sum), g_ws, float(loss))


@dataclasses.dataclass
class Backward:
    grad_true: np.ndarray
    grad_pred: np.ndarray
    true_scale: np.ndarray
    pred_scale: np.ndarray
    grad_mask: object  # in the mask's shape, or None
    mask_scale: object  # sum over the entry's elements of |terms|
    mask_terms: object  # number of elements each mask entry sums


def backward(math, fwd, t64, p64, mask_shape, coeffs):
    """float64 gradients given coefficients(...). mask_shape None: no mask
    gradient."""
    keep, w = fwd.keep, fwd.w
    t64 = np.asarray(t64, np.float64)
    p64 = np.asarray(p64, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        gp = math.grad_pred(t64, p64)
        gt = math.grad_true(t64, p64)
        grad_pred = np.where(keep, coeffs.times_a(w, gp), 0.0)
        grad_true = np.where(keep, coeffs.times_a(w, gt), 0.0)
        pred_scale = np.where(keep, coeffs.times_a_scale(w, math.grad_pred_scale(t64, p64)), 0.0)
        true_scale = np.where(keep, coeffs.times_a_scale(w, math.grad_true_scale(t64, p64)), 0.0)
        g_w = np.where(keep, coeffs.grad_weight(fwd.value), 0.0)
        s_w = np.where(keep, coeffs.grad_weight_scale(fwd.value_scale), 0.0)
    grad_mask = mask_scale = mask_terms = None
    if mask_shape is not None:
        grad_mask = reduce_to_mask(g_w, mask_shape)
        mask_scale = reduce_to_mask(s_w, mask_shape)
        n, m = t64.size, int(np.prod(mask_shape))
        mask_terms = n // m if m else 0
    return Backward(grad_true, grad_pred, true_scale, pred_scale, grad_mask, mask_scale, mask_terms)


# ---------------------------------------------------------------------------
# Row losses (categorical cross-entropy over the last axis of V classes), as
# Keras 3 on the TensorFlow backend computes them (see
# csrc/kernels/losses/categorical_crossentropy.h for the rules). Inputs are
# 2-D: y_pred (rows, V), sparse labels (rows,) or dense targets (rows, V),
# and the full weight of each row (rows,) or None.

ROW_EPSILON = 1e-7  # keras.backend.epsilon()
ROW_LOSSES = (
    "sparse_categorical_crossentropy",
    "sparse_categorical_crossentropy_from_logits",
    "categorical_crossentropy",
    "categorical_crossentropy_from_logits",
)


def row_loss_kind(name):
    """(sparse, from_logits) of a row loss of the table."""
    return name.startswith("sparse_"), name.endswith("_from_logits")


def log_sum_exp(x):
    """Row-wise log(sum(exp(x))) in float64; NaN for rows holding +inf or NaN."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=-1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return np.log(np.sum(np.exp(x - m), axis=-1)) + m[..., 0]


def smoothed_targets(t64, smoothing, acc):
    """Keras's t (1 - s) + s / V, with s / V formed in the accumulator dtype
    (Keras forms it in y_pred's dtype, which the kernels compute in)."""
    v = np.asarray(t64).shape[-1]
    offset = float(round_to(round_to(smoothing, acc) / round_to(v, acc), acc))
    scale = float(round_to(1.0 - smoothing, acc))
    return np.asarray(t64, np.float64) * scale + offset


@dataclasses.dataclass
class RowForward:
    sum: float
    weight_sum: float
    count: int
    sum_scale: float  # sum of |w| * value_scale over kept rows
    weight_scale: float
    keep: np.ndarray  # (rows,)
    w: np.ndarray  # (rows,) weights (0 where not kept)
    value: np.ndarray  # (rows,), 0 where not kept
    value_scale: np.ndarray
    targets: np.ndarray  # (rows, V) float64 targets z (one-hot for sparse), 0 where not kept

    def loss(self, reduction):
        if reduction == "sum":
            return self.sum
        return self.sum / self.weight_sum if self.weight_sum != 0 else 0.0


def row_keep(name, labels, weights, rows, ignore_class=None):
    """keep and weight of each row: weight != 0 and (sparse) label != ignore_class."""
    w = np.ones(rows) if weights is None else np.asarray(weights, np.float64).reshape(rows)
    keep = w != 0
    if row_loss_kind(name)[0] and ignore_class is not None:
        keep &= np.asarray(labels).reshape(rows) != ignore_class
    return keep, np.where(keep, w, 0.0)


def _row_terms(name, y_true, p64, keep, smoothing, acc):
    """(value, value_scale, targets z) of the kept rows of one loss, float64."""
    sparse, logits = row_loss_kind(name)
    rows, v = p64.shape
    p = np.where(keep[:, None], p64, 0.5)  # rows not kept: never read
    if sparse:
        labels = np.where(keep, np.asarray(y_true).reshape(rows), 0).astype(np.int64)
        z = np.zeros((rows, v))
        z[np.arange(rows), labels] = 1.0
    else:
        z = smoothed_targets(np.where(keep[:, None], y_true, 0.0), smoothing, acc)
    lo, hi = float(round_to(ROW_EPSILON, acc)), float(round_to(1.0 - ROW_EPSILON, acc))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if logits:
            lse = log_sum_exp(p)
            m = np.max(p, axis=-1)
            if sparse:
                value = lse - p[np.arange(rows), labels]
            else:
                value = np.sum(z * (lse[:, None] - p), axis=-1)
            scale = np.sum(np.abs(z), axis=-1) * (np.abs(lse - m) + 1.0) + np.sum(
                np.abs(z * (p - m[:, None])), axis=-1
            )
        elif sparse:
            c = np.clip(p, lo, hi)
            value = np.log(np.sum(c, axis=-1)) - np.log(c[np.arange(rows), labels])
            scale = np.abs(np.log(np.sum(c, axis=-1))) + np.abs(np.log(c[np.arange(rows), labels]))
            scale = scale + 1.0
        else:
            c = np.clip(p / np.sum(p, axis=-1, keepdims=True), lo, hi)
            value = -np.sum(z * np.log(c), axis=-1)
            scale = np.sum(np.abs(z) * (np.abs(np.log(c)) + 1.0), axis=-1)
    value = np.where(keep, value, 0.0)
    scale = np.where(keep, scale, 0.0)
    return value, scale, np.where(keep[:, None], z, 0.0)


def row_forward(name, y_true, p64, weights=None, ignore_class=None, smoothing=0.0, acc="float64"):
    """float64 forward of a row loss on the (already rounded) inputs; weights:
    the full weight of each row (kernel_weights expanded to the rows), or None.
    value_scale bounds the terms of each row's value (the error of a sum of
    exponentials shows as an absolute error in its log, hence the + 1)."""
    p64 = np.asarray(p64, np.float64)
    rows = p64.shape[0]
    keep, w = row_keep(name, y_true, weights, rows, ignore_class)
    value, scale, z = _row_terms(name, y_true, p64, keep, smoothing, acc)
    return RowForward(
        sum=float(np.sum(w * value)),
        weight_sum=float(np.sum(w)),
        count=int(np.count_nonzero(keep)),
        sum_scale=float(np.sum(np.abs(w) * scale)),
        weight_scale=float(np.sum(np.abs(w))),
        keep=keep,
        w=w,
        value=value,
        value_scale=scale,
        targets=z,
    )


def row_backward(name, fwd, p64, coeffs, acc="float64"):
    """(grad, scale) of a row loss w.r.t. y_pred (rows, V) given
    coefficients(...); 0 for rows not kept. The scale bounds each element's
    terms; for softmax exp(x - M) / sum it adds p * |x - M| / 16: rounding x -
    M to float32 is a relative error of up to 2^-24 |x - M| in exp(x - M) (a
    sixteenth of it at rtol 1e-6 leaves a margin of 2)."""
    sparse, logits = row_loss_kind(name)
    p64 = np.asarray(p64, np.float64)
    keep, w, z = fwd.keep, fwd.w, fwd.targets
    x = np.where(keep[:, None], p64, 0.5)
    lo, hi = float(round_to(ROW_EPSILON, acc)), float(round_to(1.0 - ROW_EPSILON, acc))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if logits:
            lse = log_sum_exp(x)[:, None]
            soft = np.exp(x - lse)
            d = soft - z
            s = soft * (1.0 + np.abs(x - np.max(x, axis=-1, keepdims=True)) / 16) + np.abs(z)
        elif sparse:
            c = np.clip(x, lo, hi)
            inside = (x >= lo) & (x <= hi)
            inv = 1.0 / np.sum(c, axis=-1, keepdims=True)
            d = np.where(inside, inv - z / c, 0.0)
            s = np.where(inside, inv + z / c, 0.0)
        else:
            total = np.sum(x, axis=-1, keepdims=True)
            q = x / total
            inside = (q >= lo) & (q <= hi)
            z_in = np.sum(np.where(inside, z, 0.0), axis=-1, keepdims=True)
            d = (z_in - np.where(inside, z / q, 0.0)) / total
            s = (np.abs(z_in) + np.where(inside, np.abs(z / q), 0.0)) / np.abs(total)
        w2 = w[:, None]
        grad = np.where(keep[:, None], coeffs.times_a(w2, d), 0.0)
        scale = np.where(keep[:, None], coeffs.times_a_scale(w2, s), 0.0)
    return grad, scale
