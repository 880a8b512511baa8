"""Input normalization shared by the fused ops and the pure-TF reference, so
both apply exactly the same dtype rules."""

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


def convert_predictions(y_true, y_pred):
    """y_pred must be floating; y_true of another real dtype is cast to it."""
    y_pred = tf.convert_to_tensor(y_pred, dtype_hint=tf.float32, name="y_pred")
    if y_pred.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"y_pred must be float16, bfloat16, float32 or float64, got {y_pred.dtype.name}"
        )
    y_true = tf.convert_to_tensor(y_true, dtype_hint=y_pred.dtype, name="y_true")
    if y_true.dtype != y_pred.dtype:
        if not (y_true.dtype.is_floating or y_true.dtype.is_integer or y_true.dtype == tf.bool):
            raise TypeError(
                f"y_true must have a real dtype, got {y_true.dtype.name} "
                f"(y_pred is {y_pred.dtype.name})"
            )
        y_true = tf.cast(y_true, y_pred.dtype)
    return y_true, y_pred


def convert_mask(mask, dtype):
    """Boolean masks stay boolean; integer masks keep non-zero positions;
    float masks are weights in y_pred's dtype. None means no mask: a 0-d True,
    which as a rank-0 prefix covers every element."""
    if mask is None:
        return tf.constant(True)
    mask = tf.convert_to_tensor(mask, name="mask")
    if mask.dtype == tf.bool:
        return mask
    if mask.dtype.is_integer:
        return tf.not_equal(mask, tf.zeros([], mask.dtype))
    if mask.dtype.is_floating:
        return mask if mask.dtype == dtype else tf.cast(mask, dtype)
    raise TypeError(f"mask must be boolean, integer or floating point, got {mask.dtype.name}")


def convert_padding_value(padding_value, dtype):
    """A scalar in y_pred's dtype; None becomes NaN, which equals nothing."""
    if padding_value is None:
        return tf.constant(float("nan"), dtype)
    value = tf.convert_to_tensor(padding_value, name="padding_value")
    if value.shape.rank is not None and value.shape.rank != 0:
        raise ValueError(f"padding_value must be a scalar, got shape {value.shape}")
    static = tf.get_static_value(value)
    if static is not None and value.dtype.is_floating and np.isnan(static):
        raise ValueError(
            "padding_value=NaN would mask nothing (NaN equals nothing); "
            "pass mask=~tf.math.is_nan(y_true) instead"
        )
    return tf.cast(value, dtype)


def prepare(y_true, y_pred, mask, padding_value):
    y_true, y_pred = convert_predictions(y_true, y_pred)
    mask = convert_mask(mask, y_pred.dtype)
    return y_true, y_pred, mask, convert_padding_value(padding_value, y_pred.dtype)
