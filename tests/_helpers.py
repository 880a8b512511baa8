"""Shared test data and a float64 NumPy reference for the masked squared error.

The NumPy reference here is deliberately independent of masked_ops.reference:
it works on float64 copies of the (already rounded) inputs and spells out the
semantics directly:

    w     = mask weight (bool/int -> 0/1, float -> the weight in y_pred's dtype;
            a leading-prefix mask covers the trailing dimensions)
    keep  = (w != 0) & (y_true != padding_value)
    sum   = sum(keep ? w * (y_true - y_pred)^2 : 0)
    weight_sum = sum(keep ? w : 0), count = sum(keep)
    mean  = sum / weight_sum, or exactly 0 when weight_sum == 0
"""

import dataclasses

import numpy as np
import tensorflow as tf
from oracle import full_weights

DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
DTYPE_IDS = [d.name for d in DTYPES]

# Exactly representable in every input dtype.
PAD = -1.5

MASK_KINDS = (
    "none",  # no mask
    "bool",  # elementwise boolean mask
    "int32",  # elementwise integer mask, non-zero keeps
    "float",  # elementwise float weights (in y_pred's dtype), some exactly 0
    "padding",  # no mask, padding_value=PAD with some y_true == PAD
    "prefix_bool",  # boolean mask of shape shape[:-1]
    "prefix_float",  # float weights of shape shape[:-1]
    "mask_and_padding",  # elementwise boolean mask and padding_value together
    "prefix_and_padding",  # prefix float weights and padding_value together
)

# Every shape class the kernels distinguish: empty, 0-d, a single element, short,
# around one block (1024), more than one chunk (65536), prefix rows shorter and
# longer than a block.
SMALL_SHAPES = ((0,), (3, 0, 2), (), (1,), (7,), (1023,), (5, 9, 4))
BIG_SHAPE = (2**20 + 3,)
# Prefix rows longer than a block (1024), spanning a chunk boundary mid-row.
LONG_ROWS_SHAPE = (40, 3001)


def shape_id(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def np_dtype(dtype):
    return tf.as_dtype(dtype).as_numpy_dtype


def to_tensor(values, dtype):
    """(tensor in `dtype`, float64 copy of exactly the values the tensor holds)."""
    values = np.asarray(values, np.float64)
    t = tf.cast(tf.constant(values, tf.float64), dtype)
    return t, t.numpy().astype(np.float64)


def accumulator(dtype):
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


@dataclasses.dataclass
class Case:
    """One set of inputs for the op, with the float64 view the reference uses."""

    dtype: tf.DType
    shape: tuple
    kind: str
    y_true: tf.Tensor
    y_pred: tf.Tensor
    mask: object  # tf.Tensor or None
    padding_value: object  # float or None
    t64: np.ndarray
    p64: np.ndarray
    mask64: object  # float64 mask values as passed (its own shape), or None
    mask_is_float: bool

    @property
    def kwargs(self):
        return {"mask": self.mask, "padding_value": self.padding_value}


def prefix_shape(shape):
    """A leading prefix one dimension shorter (0-d for 0-d and 1-D inputs)."""
    return tuple(shape[:-1]) if len(shape) > 0 else ()


def random_weights(rng, shape, zero_fraction=0.3):
    """Positive float weights in [0.25, 2) with some exact zeros."""
    w = rng.uniform(0.25, 2.0, size=shape)
    w = np.where(rng.random(size=shape) < zero_fraction, 0.0, w)
    return np.asarray(w, np.float64)


def make_case(rng, dtype, shape, kind, scale=3.0, pad_fraction=0.3):
    """Random inputs for one (dtype, shape, mask kind)."""
    dtype = tf.as_dtype(dtype)
    shape = tuple(shape)
    t_raw = rng.standard_normal(size=shape) * scale
    p_raw = t_raw + rng.standard_normal(size=shape)
    padding_value = None
    if kind in ("padding", "mask_and_padding", "prefix_and_padding"):
        padding_value = PAD
        t_raw = np.where(rng.random(size=shape) < pad_fraction, PAD, t_raw)
    y_true, t64 = to_tensor(t_raw, dtype)
    y_pred, p64 = to_tensor(p_raw, dtype)

    mask = None
    mask64 = None
    mask_is_float = False
    if kind in ("bool", "mask_and_padding"):
        m = rng.random(size=shape) < 0.7
        mask, mask64 = tf.constant(np.asarray(m, bool)), np.asarray(m, np.float64)
    elif kind == "int32":
        m = rng.choice(np.array([-2, 0, 0, 1, 3], np.int32), size=shape)
        mask = tf.constant(np.asarray(m, np.int32))
        mask64 = (np.asarray(m) != 0).astype(np.float64)
    elif kind == "float":
        mask, mask64 = to_tensor(random_weights(rng, shape), dtype)
        mask_is_float = True
    elif kind == "prefix_bool":
        m = rng.random(size=prefix_shape(shape)) < 0.7
        mask, mask64 = tf.constant(np.asarray(m, bool)), np.asarray(m, np.float64)
    elif kind in ("prefix_float", "prefix_and_padding"):
        mask, mask64 = to_tensor(random_weights(rng, prefix_shape(shape)), dtype)
        mask_is_float = True
    elif kind not in ("none", "padding"):
        raise ValueError(kind)
    return Case(
        dtype, shape, kind, y_true, y_pred, mask, padding_value, t64, p64, mask64, mask_is_float
    )


def np_keep(t64, w, padding_value):
    keep = w != 0
    if padding_value is not None:
        keep = keep & (t64 != np.float64(padding_value))
    return keep


def np_sums(t64, p64, mask64=None, padding_value=None):
    """float64 (sum, weight_sum, count, keep, full weights, per-element value)."""
    shape = np.shape(t64)
    w = full_weights(mask64, shape)
    keep = np_keep(t64, w, padding_value)
    with np.errstate(invalid="ignore", over="ignore"):
        value = (t64 - p64) ** 2
        total = np.sum(np.where(keep, w * value, 0.0), dtype=np.float64)
    weight_sum = np.sum(np.where(keep, w, 0.0), dtype=np.float64)
    count = int(np.count_nonzero(keep))
    return total, weight_sum, count, keep, w, value


def np_loss(total, weight_sum, reduction):
    if reduction == "sum":
        return total
    return total / weight_sum if weight_sum != 0 else 0.0


def np_case_sums(case):
    return np_sums(case.t64, case.p64, case.mask64, case.padding_value)


def np_gradients(case, reduction, upstream=1.0):
    """float64 analytic gradients of upstream * loss w.r.t. y_true, y_pred and
    the (float) mask in its own shape, plus a per-mask-entry magnitude scale of
    the terms summed into the mask gradient (for cancellation-aware tolerances)."""
    total, weight_sum, _, keep, w, value = np_case_sums(case)
    if reduction == "sum":
        a, b = upstream, 0.0
    else:
        inv = 1.0 / weight_sum if weight_sum != 0 else 0.0
        loss = total * inv
        a, b = upstream * inv, -upstream * loss * inv
    with np.errstate(invalid="ignore", over="ignore"):
        d = case.t64 - case.p64
        g_pred = np.where(keep, a * w * -2.0 * d, 0.0)
        g_true = np.where(keep, a * w * 2.0 * d, 0.0)
        g_w_full = np.where(keep, a * value + b, 0.0)
        scale_full = np.where(keep, np.abs(a * value) + abs(b), 0.0)
    g_mask = scale = None
    if case.mask64 is not None:
        g_mask = reduce_to_mask(g_w_full, np.shape(case.mask64))
        scale = reduce_to_mask(scale_full, np.shape(case.mask64))
    return g_true, g_pred, g_mask, scale


def reduce_to_mask(full, mask_shape):
    """Sums an elementwise array over the dimensions a prefix mask covers."""
    full = np.asarray(full)
    axes = tuple(range(len(mask_shape), full.ndim))
    return np.sum(full, axis=axes) if axes else full


def as_f64(x):
    return np.asarray(x.numpy() if hasattr(x, "numpy") else x).astype(np.float64)


def bits(x):
    """Raw bytes of a tensor or array, for bitwise comparisons."""
    a = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x)
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def assert_bitwise_equal(actual, expected, what=""):
    a = np.asarray(actual.numpy() if hasattr(actual, "numpy") else actual)
    e = np.asarray(expected.numpy() if hasattr(expected, "numpy") else expected)
    assert a.dtype == e.dtype and a.shape == e.shape, (what, a.dtype, e.dtype, a.shape, e.shape)
    if a.tobytes() != e.tobytes():
        bad = np.flatnonzero(
            np.frombuffer(a.tobytes(), np.uint8) != np.frombuffer(e.tobytes(), np.uint8)
        )
        raise AssertionError(
            f"{what}: not bitwise equal ({bad.size} differing bytes; "
            f"actual {a.ravel()[:8]}, expected {e.ravel()[:8]})"
        )


def assert_close_with_scale(actual, expected, scale, rtol, atol, what=""):
    """|actual - expected| <= atol + rtol * (|expected| + scale), elementwise:
    for results that are sums of terms of either sign, where rounding error is
    relative to the terms' magnitudes (`scale`), not to the possibly cancelled
    result."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, (what, a.shape, e.shape)
    bound = atol + rtol * (np.abs(e) + np.asarray(scale, np.float64))
    err = np.abs(a - e)
    bad = ~(err <= bound)
    if np.any(bad):
        i = np.flatnonzero(bad.ravel())[:5]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements out of tolerance "
            f"(rtol={rtol}, atol={atol}); at {i}: actual {a.ravel()[i]}, "
            f"expected {e.ravel()[i]}, scale {np.broadcast_to(scale, e.shape).ravel()[i]}"
        )


# ---------------------------------------------------------------------------
# Determinism: results of a fixed set of ~2**20-element cases, as raw bytes.

DETERMINISM_N = 2**20 + 3  # = 919 * 1141
DETERMINISM_CASES = (
    ("float32", "none", (DETERMINISM_N,)),
    ("float32", "bool", (DETERMINISM_N,)),
    ("float32", "float", (DETERMINISM_N,)),
    ("float32", "mask_and_padding", (DETERMINISM_N,)),
    ("float32", "prefix_float", (1141, 919)),  # prefix rows shorter than a block
    ("float32", "prefix_and_padding", (919, 1141)),  # prefix rows longer than a block
    ("float16", "float", (DETERMINISM_N,)),
    ("bfloat16", "prefix_float", (919, 1141)),
    ("float64", "float", (DETERMINISM_N,)),
)


def determinism_case(index):
    dtype, kind, shape = DETERMINISM_CASES[index]
    return make_case(np.random.default_rng([101, index]), tf.as_dtype(dtype), shape, kind)


def fused_raw_results(case, fn=None):
    """Raw bytes of the fused op's outputs and gradients for one case:
    {name: bytes}. `fn` wraps the computation (e.g. tf.function)."""
    import masked_ops

    sources = [case.y_true, case.y_pred] + ([case.mask] if case.mask_is_float else [])

    def compute(*sources):
        mask = sources[2] if len(sources) > 2 else case.mask
        with tf.GradientTape() as tape:
            tape.watch(sources)
            loss = masked_ops.masked_mse(
                sources[0], sources[1], mask, padding_value=case.padding_value
            )
        grads = tape.gradient(loss, sources)
        sums = masked_ops.masked_squared_error_sums(
            sources[0], sources[1], mask, padding_value=case.padding_value
        )
        total = masked_ops.masked_mse(
            sources[0], sources[1], mask, padding_value=case.padding_value, reduction="sum"
        )
        return loss, total, tuple(sums), grads

    if fn is not None:
        compute = fn(compute)
    loss, total, (s, w, c), grads = compute(*sources)
    out = {"loss": bits(loss), "loss_sum": bits(total), "sum": bits(s)}
    out.update({"weight_sum": bits(w), "count": bits(c)})
    for name, g in zip(("grad_y_true", "grad_y_pred", "grad_mask"), grads, strict=False):
        out[name] = bits(g)
    return out


def determinism_digests():
    """{case: {output: hex}}: forward outputs in full, gradients as sha256 of
    their bytes plus a float64 checksum."""
    import hashlib

    digests = {}
    for i, (dtype, kind, shape) in enumerate(DETERMINISM_CASES):
        raw = fused_raw_results(determinism_case(i))
        entry = {}
        for name, b in raw.items():
            entry[name] = hashlib.sha256(b).hexdigest() if name.startswith("grad") else b.hex()
        digests[f"{dtype}-{kind}-{shape_id(shape)}"] = entry
    return digests
