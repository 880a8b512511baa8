"""Pure-TensorFlow masked losses with the same semantics as the fused ops.

Select-based: masked positions are replaced before any arithmetic, so NaN/Inf
there reach neither the loss nor the gradients. Tests and benchmarks compare
the fused kernels against these; under XLA, when an op has no lowering, this
formula is what gets compiled."""

import tensorflow as tf

from masked_ops import _inputs, specs
from masked_ops.specs import MaskedSums


def masked_loss(spec, y_true, y_pred, mask, padding_value, reduction, params=()):
    """(loss, sum, weight_sum, count) of sum(w * spec.value(t, p, *params)) over kept positions."""
    _inputs.check_reduction(reduction)
    y_true, y_pred, mask, extra_masks, padding, has_padding = _inputs.prepare(
        y_true, y_pred, mask, padding_value
    )
    acc = _inputs.accumulator_dtype(y_pred.dtype)
    # Labels (bool/int) are read as y_pred's dtype, as the kernels read them.
    t = tf.cast(tf.cast(y_true, y_pred.dtype), acc)
    p = tf.cast(y_pred, acc)
    # Leading-prefix masks (B, T) on (B, T, F) broadcast over the trailing
    # dims; several masks multiply (booleans as 0/1).
    masks = [mask, *extra_masks]
    for i, m in enumerate(masks):
        if not _is_leading_prefix(m.shape, y_pred.shape):
            name = "mask" if len(masks) == 1 else f"mask[{i}]"
            raise ValueError(
                f"{name} shape {m.shape} must equal the inputs' shape {y_pred.shape} or be a "
                f"leading prefix of it"
            )
    w = _inputs.combined_weight(masks, tf.shape(t), y_pred.shape.rank, acc)
    keep = tf.not_equal(w, 0)
    bad_padding = tf.constant(False)
    if has_padding:
        # Rounded to y_true's dtype through the accumulator dtype, as the kernels do.
        padding_t = tf.cast(tf.cast(padding, acc), y_pred.dtype)
        keep = tf.logical_and(keep, tf.not_equal(t, tf.cast(padding_t, acc)))
        # A run-time NaN or overflowing padding value: the op raises an error;
        # here (also the formula compiled under XLA, which cannot raise) the
        # outputs become NaN rather than silently masking nothing.
        padding_back = tf.cast(padding_t, tf.float64)
        bad_padding = tf.logical_or(
            tf.math.is_nan(padding),
            tf.logical_and(
                tf.math.is_finite(padding), tf.logical_not(tf.math.is_finite(padding_back))
            ),
        )
    zeros = tf.zeros_like(t)
    value = spec.value(tf.where(keep, t, zeros), tf.where(keep, p, zeros), *params)
    total = tf.reduce_sum(tf.where(keep, w * value, zeros))
    weight_sum = tf.reduce_sum(tf.where(keep, w, zeros))
    count = tf.math.count_nonzero(keep, dtype=tf.int64)
    loss = total if reduction == "sum" else tf.math.divide_no_nan(total, weight_sum)
    if has_padding:
        nan = tf.constant(float("nan"), acc)
        loss, total, weight_sum = (tf.where(bad_padding, nan, x) for x in (loss, total, weight_sum))
    return loss, total, weight_sum, count


def _is_leading_prefix(prefix, shape):
    if prefix.rank is None or shape.rank is None:
        return True
    return prefix.rank <= shape.rank and prefix.is_compatible_with(shape[: prefix.rank])


def masked_squared_error_sums(y_true, y_pred, mask=None, *, padding_value=None):
    """Reference for masked_ops.masked_squared_error_sums."""
    _, total, weight_sum, count = masked_loss(
        specs.SQUARED_ERROR, y_true, y_pred, mask, padding_value, "sum"
    )
    return MaskedSums(total, weight_sum, count)


def masked_mse(y_true, y_pred, mask=None, *, padding_value=None, reduction="mean"):
    """Reference for masked_ops.masked_mse."""
    return masked_loss(specs.SQUARED_ERROR, y_true, y_pred, mask, padding_value, reduction)[0]


def row_values(spec, y_true, y_pred, keep, label_smoothing=0.0):
    """The per-row loss of a row spec (accumulator dtype, shape
    y_pred.shape[:-1]) where `keep`, exactly 0 elsewhere. Rows not kept are
    replaced before any arithmetic (logits by 0, probabilities by 1, labels
    by 0), so whatever they hold reaches neither the value nor a gradient.
    Keras's formulas: from logits TF's fused softmax cross-entropy ops; from
    probabilities, sparse: log(clip(p)) as logits of the sparse op; dense: p
    normalized by its row sum, clipped, -sum(z log(.))."""
    acc = _inputs.accumulator_dtype(y_pred.dtype)
    keep_rows = keep[..., tf.newaxis]
    x = tf.cast(y_pred, acc)
    x = tf.where(keep_rows, x, tf.zeros_like(x) if spec.from_logits else tf.ones_like(x))
    eps = specs.BCE_EPSILON
    if spec.sparse:
        labels = tf.where(keep, y_true, tf.zeros_like(y_true))
        logits = x if spec.from_logits else tf.math.log(tf.clip_by_value(x, eps, 1.0 - eps))
        value = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        t = tf.cast(y_true, acc)
        z = tf.where(keep_rows, t, tf.zeros_like(t))
        if label_smoothing:
            classes = tf.cast(tf.shape(x)[-1], acc)
            z = z * (1.0 - label_smoothing) + tf.constant(label_smoothing, acc) / classes
        if spec.from_logits:
            value = tf.nn.softmax_cross_entropy_with_logits(labels=z, logits=x)
        else:
            q = x / tf.reduce_sum(x, axis=-1, keepdims=True)
            value = -tf.reduce_sum(z * tf.math.log(tf.clip_by_value(q, eps, 1.0 - eps)), axis=-1)
    return tf.where(keep, value, tf.zeros_like(value))


def masked_row_loss(spec, y_true, y_pred, mask, reduction, ignore_class=None, label_smoothing=0.0):
    """(loss, sum, weight_sum, count) of a row loss (specs.ROW_LOSSES) over the
    kept rows: sum(w * value), sum(w), their count; loss = sum / weight_sum
    ("mean", 0 when nothing is kept) or sum. Under XLA this is what compiles
    (a kept row's out-of-range label gives NaN there instead of an error)."""
    _inputs.check_reduction(reduction)
    ignore_class = _inputs.check_ignore_class(ignore_class, spec.sparse)
    label_smoothing = _inputs.check_label_smoothing(label_smoothing)
    y_true, y_pred, mask = _inputs.prepare_rows(spec, y_true, y_pred, mask)
    acc = _inputs.accumulator_dtype(y_pred.dtype)
    keep, w = _inputs.row_keep(spec, y_true, y_pred, mask, ignore_class, acc)
    value = row_values(spec, y_true, y_pred, keep, label_smoothing)
    zeros = tf.zeros_like(w)
    total = tf.reduce_sum(tf.where(keep, w * value, zeros))
    weight_sum = tf.reduce_sum(tf.where(keep, w, zeros))
    count = tf.math.count_nonzero(keep, dtype=tf.int64)
    loss = total if reduction == "sum" else tf.math.divide_no_nan(total, weight_sum)
    return loss, total, weight_sum, count


def masked_sparse_categorical_crossentropy(
    y_true, y_pred, mask=None, *, from_logits=False, ignore_class=None, reduction="mean"
):
    """Reference for masked_ops.masked_sparse_categorical_crossentropy."""
    spec = specs.row_loss(True, from_logits)
    return masked_row_loss(spec, y_true, y_pred, mask, reduction, ignore_class)[0]


def masked_categorical_crossentropy(
    y_true, y_pred, mask=None, *, from_logits=False, label_smoothing=0.0, reduction="mean"
):
    """Reference for masked_ops.masked_categorical_crossentropy."""
    spec = specs.row_loss(False, from_logits)
    return masked_row_loss(spec, y_true, y_pred, mask, reduction, None, label_smoothing)[0]
