"""Input normalization shared by the fused ops and the pure-TF reference, so
both apply exactly the same dtype rules."""

import numbers

import numpy as np
import tensorflow as tf

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
REDUCTIONS = ("mean", "sum")


def accumulator_dtype(dtype):
    """float32 for 16-bit and float32 inputs, float64 for float64."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _to_tensor(x, dtype_hint, name):
    """NumPy arrays and scalars keep their dtype, exactly as tensors do (a
    float64 array is not squeezed into float32 by the hint); Python numbers and
    lists take the hint."""
    if isinstance(x, (np.ndarray, np.generic)):
        return tf.convert_to_tensor(x, name=name)
    return tf.convert_to_tensor(x, dtype_hint=dtype_hint, name=name)


LABEL_DTYPES = (tf.bool, tf.int32, tf.int64)
"""y_true dtypes the kernels read as they are (0/1 or integer labels),
converting each value to y_pred's dtype as tf.cast would."""


def convert_predictions(y_true, y_pred):
    """y_pred must be floating; y_true keeps y_pred's dtype or a label dtype
    (LABEL_DTYPES: no full-size cast); another real dtype is cast to y_pred's."""
    y_pred = _to_tensor(y_pred, tf.float32, "y_pred")
    if y_pred.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"y_pred must be float16, bfloat16, float32 or float64, got {y_pred.dtype.name}"
        )
    y_true = _to_tensor(y_true, y_pred.dtype, "y_true")
    if y_true.dtype != y_pred.dtype and y_true.dtype not in LABEL_DTYPES:
        if not (y_true.dtype.is_floating or y_true.dtype.is_integer):
            raise TypeError(
                f"y_true must have a real dtype, got {y_true.dtype.name} "
                f"(y_pred is {y_pred.dtype.name})"
            )
        y_true = tf.cast(y_true, y_pred.dtype)
    return y_true, y_pred


def mask_dtype(mask_dtype, dtype):
    """The dtype a float mask reaches the kernels in: its own when that is
    y_pred's dtype or the accumulator dtype, else the accumulator dtype, so
    weights are never rounded below float32 (float64 weights with float16
    predictions become float32, not float16)."""
    acc = accumulator_dtype(dtype)
    return mask_dtype if mask_dtype in (dtype, acc) else acc


def convert_mask(mask, dtype, name="mask"):
    """Boolean masks stay boolean; integer masks keep non-zero positions;
    float masks are weights (see mask_dtype). None means no mask: a 0-d True,
    which as a rank-0 prefix covers every element."""
    if mask is None:
        return tf.constant(True)
    mask = tf.convert_to_tensor(mask)
    if mask.dtype == tf.bool:
        return mask
    if mask.dtype.is_integer:
        return tf.not_equal(mask, tf.zeros([], mask.dtype))
    if mask.dtype.is_floating:
        target = mask_dtype(mask.dtype, dtype)
        return mask if mask.dtype == target else tf.cast(mask, target)
    raise TypeError(f"{name} must be boolean, integer or floating point, got {mask.dtype.name}")


MAX_MASKS = 5
"""Masks one call combines (the kernels' mask plus ExtraMasks::kMax)."""


def _is_array(x):
    return tf.is_tensor(x) or isinstance(x, (np.ndarray, tf.Variable))


def is_mask_list(mask):
    """Whether `mask` is several masks: a list or tuple holding at least one
    tensor or array. A nested list of Python numbers is one mask, as
    tf.convert_to_tensor reads it."""
    return isinstance(mask, (list, tuple)) and any(_is_array(m) for m in mask)


def convert_masks(mask, dtype):
    """(mask, extra_masks): `mask` may be one mask or a list or tuple of
    masks (see is_mask_list), which the kernels combine in one pass (booleans
    AND-ed, float weights multiplied, each of its own prefix shape) without
    materializing their product."""
    if not is_mask_list(mask):
        return convert_mask(mask, dtype), []
    if len(mask) > MAX_MASKS:
        raise ValueError(f"mask combines at most {MAX_MASKS} masks, got a list of {len(mask)}")
    converted = []
    for i, m in enumerate(mask):
        if m is None:
            raise ValueError(f"mask[{i}] is None; leave it out of the list instead")
        converted.append(convert_mask(m, dtype, name=f"mask[{i}]"))
    return converted[0], converted[1:]


def round_padding_value(value, dtype):
    """value (float64) rounded to `dtype` the way the kernels round it: through
    the accumulator dtype, as tf.cast does."""
    acc = accumulator_dtype(dtype).as_numpy_dtype
    with np.errstate(over="ignore"):
        return np.float64(np.asarray(value, np.float64).astype(acc).astype(dtype.as_numpy_dtype))


def _padding_error(value, dtype):
    """The error for a padding value the kernels refuse, or None."""
    if np.isnan(value):
        return ValueError(
            "padding_value=NaN would mask nothing (NaN equals nothing); "
            "pass mask=~tf.math.is_nan(y_true) instead"
        )
    if np.isfinite(value) and not np.isfinite(round_padding_value(value, dtype)):
        return ValueError(
            f"padding_value={float(value)!r} overflows {dtype.name}, the dtype of y_true: it would "
            f"become inf and mask infinite targets"
        )
    return None


def convert_padding_value(padding_value, dtype):
    """(float64 scalar tensor, has_padding_value). The kernels round it to
    `dtype`; a NaN value or a finite one that overflows `dtype` is refused here
    when it is known while tracing, and by the op when it is known only at run
    time."""
    if padding_value is None:
        return tf.constant(0.0, tf.float64), False
    if isinstance(padding_value, (str, bytes)):
        raise TypeError(f"padding_value must be a real number or None, got {padding_value!r}")
    if isinstance(padding_value, numbers.Real) and not isinstance(padding_value, (bool, np.bool_)):
        # Numbers go to float64 directly: TF would make a Python float float32,
        # turning 1e300 into inf before it could be checked.
        value = tf.constant(np.float64(padding_value), tf.float64, name="padding_value")
    else:
        value = tf.convert_to_tensor(padding_value, name="padding_value")
    if not (value.dtype.is_floating or value.dtype.is_integer):
        raise TypeError(
            f"padding_value must be a real number or None, got a {value.dtype.name} value"
        )
    if value.shape.rank is not None and value.shape.rank != 0:
        raise ValueError(f"padding_value must be a scalar, got shape {value.shape}")
    static = tf.get_static_value(value)
    if static is not None:
        error = _padding_error(np.float64(static), dtype)
        if error is not None:
            raise error
    return tf.cast(value, tf.float64), True


def not_padding(y_true, padding_value):
    """y_true != padding_value for a padding value known in Python, rounded and
    checked as the kernels round and check it (for the pure-TF paths)."""
    value = np.float64(padding_value)
    error = _padding_error(value, y_true.dtype)
    if error is not None:
        raise error
    return tf.not_equal(y_true, tf.constant(round_padding_value(value, y_true.dtype), y_true.dtype))


def prepare(y_true, y_pred, mask, padding_value):
    """(y_true, y_pred, mask, extra_masks, padding_value, has_padding_value)
    as the ops take them."""
    y_true, y_pred = convert_predictions(y_true, y_pred)
    mask, extra_masks = convert_masks(mask, y_pred.dtype)
    padding, has_padding = convert_padding_value(padding_value, y_pred.dtype)
    return y_true, y_pred, mask, extra_masks, padding, has_padding


def broadcast_weight(mask, shape, rank, dtype):
    """`mask` (a leading prefix of `shape`) as `dtype` weights broadcast to
    `shape`, whose rank is `rank` (booleans as 0/1)."""
    w = tf.cast(mask, dtype)
    gap = rank - mask.shape.rank
    if gap:
        w = tf.reshape(w, tf.concat([tf.shape(w), tf.ones([gap], tf.int32)], 0))
    return tf.broadcast_to(w, shape)


def combine_weights(a, b):
    """a * b, or 0 where either is 0 (0 * NaN would keep a NaN weight), as the
    kernels combine two masks."""
    zero = tf.zeros([], a.dtype)
    return tf.where(tf.logical_and(tf.not_equal(a, zero), tf.not_equal(b, zero)), a * b, zero)


def combined_weight(masks, shape, rank, dtype):
    """The combined weight of `masks` over `shape`, in list order, as the
    kernels compute it."""
    w = broadcast_weight(masks[0], shape, rank, dtype)
    for m in masks[1:]:
        w = combine_weights(w, broadcast_weight(m, shape, rank, dtype))
    return w


def check_ignore_class(ignore_class, sparse):
    """None, or an integer label (Keras's ignore_class) for the sparse losses."""
    if ignore_class is None:
        return None
    if not sparse:
        raise ValueError(
            "ignore_class applies to the sparse cross-entropy (integer labels); mask the rows "
            "of dense targets with `mask` instead"
        )
    if isinstance(ignore_class, (bool, np.bool_)) or not isinstance(ignore_class, numbers.Integral):
        raise TypeError(f"ignore_class must be an integer or None, got {ignore_class!r}")
    return int(ignore_class)


def check_label_smoothing(label_smoothing):
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return label_smoothing


def prepare_rows(spec, y_true, y_pred, mask):
    """(y_true, y_pred, mask) as the row ops take them. y_pred: float logits or
    probabilities, classes on the last axis. Sparse losses: y_true is class
    indices of shape y_pred.shape[:-1] (a trailing axis of 1 is squeezed, as
    Keras does; int32/int64 stay, other real dtypes are cast to int64); dense
    losses: targets of y_pred's shape, cast to its dtype. mask: one mask, a
    leading prefix of y_pred.shape[:-1] (see convert_mask)."""
    y_pred = _to_tensor(y_pred, tf.float32, "y_pred")
    if y_pred.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"y_pred must be float16, bfloat16, float32 or float64, got {y_pred.dtype.name}"
        )
    rank = y_pred.shape.rank
    if rank is None or rank == 0:
        raise ValueError(
            f"y_pred must have a known rank >= 1 with the classes on its last axis, got shape "
            f"{y_pred.shape}"
        )
    if y_pred.shape[-1] == 0:
        raise ValueError(f"y_pred's class axis (its last) is empty: shape {y_pred.shape}")
    rows = y_pred.shape[:-1]
    y_true = _to_tensor(y_true, tf.int64 if spec.sparse else y_pred.dtype, "y_true")
    if spec.sparse:
        if y_true.shape.rank == rank and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, -1)
        if y_true.dtype not in (tf.int32, tf.int64):
            if not (y_true.dtype.is_integer or y_true.dtype.is_floating):
                raise TypeError(f"y_true must be integer class indices, got {y_true.dtype.name}")
            y_true = tf.cast(y_true, tf.int64)
        expected, what = rows, "y_pred's shape without its class axis"
    else:
        if y_true.dtype != y_pred.dtype:
            if not (y_true.dtype.is_integer or y_true.dtype.is_floating or y_true.dtype == tf.bool):
                raise TypeError(f"y_true must have a real dtype, got {y_true.dtype.name}")
            y_true = tf.cast(y_true, y_pred.dtype)
        expected, what = y_pred.shape, "y_pred's shape"
    if not y_true.shape.is_compatible_with(expected):
        raise ValueError(
            f"y_true shape {y_true.shape} must be {what}, {expected} (y_pred {y_pred.shape})"
        )
    if is_mask_list(mask):
        raise TypeError(
            "the cross-entropy losses take one mask; combine several with tf.logical_and (or "
            "multiply weights) first: they are the size of the rows, not of the logits"
        )
    mask = convert_mask(mask, y_pred.dtype)
    m = mask.shape
    if m.rank is not None and not (m.rank <= rows.rank and m.is_compatible_with(rows[: m.rank])):
        raise ValueError(
            f"mask shape {m} must be a leading prefix of y_pred's shape without its class axis, "
            f"{rows} (y_pred {y_pred.shape})"
        )
    return y_true, y_pred, mask


def row_keep(spec, y_true, y_pred, mask, ignore_class, dtype):
    """(keep, w): which rows count (weight != 0, label != ignore_class) and
    their weights in `dtype`, over y_pred.shape[:-1]."""
    rows = tf.shape(y_pred)[:-1]
    w = broadcast_weight(mask, rows, y_pred.shape.rank - 1, dtype)
    keep = tf.not_equal(w, tf.zeros([], dtype))
    if spec.sparse and ignore_class is not None:
        keep = tf.logical_and(keep, tf.not_equal(y_true, tf.cast(ignore_class, y_true.dtype)))
    return keep, w
