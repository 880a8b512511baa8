"""Keras losses computed by the fused masked kernels.

`MaskedMeanSquaredError` is a drop-in replacement for
`keras.losses.MeanSquaredError`: the same reductions, sample weights and Keras
masks, with the sums taken by one fused pass over `y_true`/`y_pred`. Keras's
weights (sample weight x mask) live on the per-sample loss shape, which is a
leading prefix of `y_pred`'s shape, so they go to the kernel as a prefix mask
that it broadcasts over the last axis without materializing anything full-size.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses.loss import reduce_weighted_values

from masked_ops import _inputs, ops, specs

try:  # Keras keeps masks in a side table for tensors that refuse attributes.
    from keras.src.backend import get_keras_mask as _get_keras_mask
except ImportError:  # pragma: no cover - older Keras 3 releases

    def _get_keras_mask(x):
        return getattr(x, "_keras_mask", None)


_SIXTEEN_BIT = (tf.float16, tf.bfloat16)
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")
_SCALED_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def _check_padding_value(padding_value):
    """A real number (Python or NumPy scalar, kept as a Python number so the
    config serializes) or None."""
    if padding_value is None:
        return None
    if isinstance(padding_value, np.generic):
        padding_value = padding_value.item()
    if isinstance(padding_value, bool) or not isinstance(padding_value, numbers.Real):
        raise TypeError(f"padding_value must be a real number or None, got {padding_value!r}")
    if math.isnan(padding_value):
        raise ValueError(
            "padding_value=NaN would mask nothing (NaN equals nothing); mask NaN targets "
            "with a Keras mask or sample_weight instead"
        )
    return padding_value


def _squeeze_or_expand(x1, x2, expand_rank_1=True):
    """Keras's rule for operands whose ranks differ by one: squeeze a trailing
    size-1 axis, or expand a rank-1 operand."""
    r1, r2 = x1.shape.rank, x2.shape.rank
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        if r2 == 1 and expand_rank_1:
            x2 = tf.expand_dims(x2, -1)
        else:
            x1 = tf.squeeze(x1, -1)
    elif r2 == r1 + 1 and x2.shape[-1] == 1:
        if r1 == 1 and expand_rank_1:
            x1 = tf.expand_dims(x1, -1)
        else:
            x2 = tf.squeeze(x2, -1)
    return x1, x2


def _squeeze_or_expand_shape(values_shape, weights):
    """_squeeze_or_expand(values, weights) when only the values' shape exists."""
    r1, r2 = values_shape.rank, weights.shape.rank
    if r1 == r2 + 1 and values_shape[-1] == 1:
        if r2 == 1:
            weights = tf.expand_dims(weights, -1)
        else:
            values_shape = values_shape[:-1]
    elif r2 == r1 + 1 and weights.shape[-1] == 1:
        if r1 == 1:
            values_shape = values_shape.concatenate([1])
        else:
            weights = tf.squeeze(weights, -1)
    return values_shape, weights


def _to_positions(weights, values_shape, y_pred):
    """Weights aligned to the per-sample loss (`values_shape`, which Keras's
    rule may have squeezed or expanded by a trailing 1) as a prefix mask of
    y_pred: shape y_pred.shape[:-1], or a scalar."""
    if weights.shape.rank == 0:
        return weights
    rank = y_pred.shape.rank
    positions = tf.shape(y_pred)[: rank - 1]
    if values_shape.rank == rank:
        aligned = tf.concat([positions, [1]], 0)
    elif values_shape.rank == rank - 2:
        aligned = positions[:-1]
    else:
        aligned = positions
    if not (weights.shape.is_fully_defined() and weights.shape == values_shape):
        weights = tf.broadcast_to(weights, aligned)
    return tf.reshape(weights, positions)


def _replica_count():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _cross_replica_sum(values):
    """Sums scalars over the replicas of a tf.distribute strategy (identity
    without one). Differentiable: the gradient is summed back the same way."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def _convert_inputs(y_true, y_pred, loss_dtype):
    """y_pred keeps a 16-bit dtype under a float32 loss (mixed precision: no
    cast pass, float32 accumulation in the kernel); otherwise it takes the
    loss dtype, as in Keras. y_true follows y_pred. Ranks that differ by one
    are aligned by Keras's rule, then shapes that differ are broadcast against
    each other as Keras's losses broadcast them ((4, 1) targets with (4, 3)
    predictions); that case materializes the broadcast operand."""
    y_pred = tf.convert_to_tensor(y_pred)
    if not (y_pred.dtype in _SIXTEEN_BIT and loss_dtype == tf.float32):
        y_pred = tf.cast(y_pred, loss_dtype)
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype != y_pred.dtype:
        y_true = tf.cast(y_true, y_pred.dtype)
    for name, x in (("y_true", y_true), ("y_pred", y_pred)):
        if x.shape.rank is None:
            raise ValueError(
                f"{name} has an unknown rank; the masked losses align y_true, y_pred, masks and "
                f"sample weights by rank while tracing, so give {name} a known rank (e.g. with "
                f"tf.ensure_shape or an Input of fixed rank)"
            )
    y_true, y_pred = _squeeze_or_expand(y_true, y_pred)
    if not y_true.shape.is_compatible_with(y_pred.shape):
        try:
            tf.broadcast_static_shape(y_true.shape, y_pred.shape)
        except ValueError:
            raise ValueError(
                f"y_true of shape {y_true.shape} and y_pred of shape {y_pred.shape} are neither "
                f"equal nor broadcastable"
            ) from None
        shape = tf.broadcast_dynamic_shape(tf.shape(y_true), tf.shape(y_pred))
        y_true, y_pred = tf.broadcast_to(y_true, shape), tf.broadcast_to(y_pred, shape)
    return y_true, y_pred


def _per_sample(spec, params, y_true, y_pred, keep, acc, axis=-1):
    """Mean over `axis` of the loss's element values, select-based: elements
    where `keep` is False contribute exactly 0 whatever they hold."""
    t = tf.cast(y_true, acc)
    p = tf.cast(y_pred, acc)
    if keep is not None:
        t = tf.where(keep, t, tf.zeros_like(t))
        p = tf.where(keep, p, tf.zeros_like(p))
    return tf.reduce_mean(spec.value(t, p, *params), axis=axis)


def _masked_per_sample(spec, params, y_true, y_pred, padding_value, axis=-1):
    padding_value = _check_padding_value(padding_value)
    y_pred = tf.convert_to_tensor(y_pred)
    acc = _inputs.accumulator_dtype(y_pred.dtype)
    y_true, y_pred = _convert_inputs(y_true, y_pred, acc)
    keep = None
    if padding_value is not None:
        keep = _inputs.not_padding(y_true, padding_value)
    return _per_sample(spec, params, y_true, y_pred, keep, acc, axis)


def masked_mean_squared_error(y_true, y_pred, *, padding_value=None):
    """Per-sample masked MSE, analogous to `keras.losses.mean_squared_error`:
    mean over the last axis of (y_true - y_pred)^2, where elements with
    y_true == padding_value contribute 0 (select-based, so NaN/Inf there never
    leak). Returns the per-sample loss shape, y_pred.shape[:-1], in float32
    (float64 for float64 inputs)."""
    return _masked_per_sample(specs.SQUARED_ERROR, (), y_true, y_pred, padding_value)


def masked_mean_absolute_error(y_true, y_pred, *, padding_value=None):
    """Per-sample masked MAE, analogous to `keras.losses.mean_absolute_error`
    (see masked_mean_squared_error)."""
    return _masked_per_sample(specs.ABSOLUTE_ERROR, (), y_true, y_pred, padding_value)


def masked_huber(y_true, y_pred, *, delta=1.0, padding_value=None):
    """Per-sample masked Huber loss, analogous to `keras.losses.huber`."""
    params = (ops._check_delta(delta),)
    return _masked_per_sample(specs.HUBER, params, y_true, y_pred, padding_value)


def masked_binary_crossentropy(
    y_true, y_pred, *, from_logits=False, label_smoothing=0.0, axis=-1, padding_value=None
):
    """Per-sample masked binary cross-entropy, analogous to
    `keras.losses.binary_crossentropy`."""
    spec = ops._bce_spec(from_logits)
    params = (ops._check_label_smoothing(label_smoothing),)
    return _masked_per_sample(spec, params, y_true, y_pred, padding_value, axis)


def _is_leading_prefix(prefix, shape):
    if prefix.rank is None or prefix.rank > shape.rank:
        return False
    return prefix.is_compatible_with(shape[: prefix.rank])


def _expand_to_rank(x, rank):
    extra = rank - x.shape.rank
    return tf.reshape(x, tf.concat([tf.shape(x), tf.ones([extra], tf.int32)], 0))


class MaskedLoss(keras.losses.Loss):
    """A Keras loss computed by the fused kernel of a loss spec: the base of
    the drop-in classes below, which only say which spec and parameters.

    With `padding_value=None` and no Keras mask it equals the corresponding
    Keras loss for every reduction and sample-weight form Keras accepts. A
    Keras mask on `y_pred` (`Masking`, `Embedding(mask_zero=True)`, ...) is
    applied the way Keras applies it, combined with `sample_weight`; elements
    with `y_true == padding_value` are masked out the same way, element by
    element. Masked positions contribute nothing to the loss or the gradients
    even when they hold NaN or Inf.

    Args:
        padding_value: targets equal to it are masked out; None masks nothing.
        reduction: as in `keras.losses.Loss`.
        name: loss name.
        dtype: dtype of the result (Keras's loss dtype, `floatx()` by default).
            16-bit predictions under a float32 loss (mixed precision) go to
            the kernel as they are and accumulate in float32.
        global_mean: under a `tf.distribute` strategy, sum the fused
            (sum, weight) pairs over the replicas before dividing, so the
            mean is over the whole global batch: replicas with uneven masks
            then give the same gradients as one replica on the whole batch.
            The default divides on each replica, as Keras does.
    """

    def __init__(self, padding_value, reduction, name, dtype, global_mean):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.padding_value = _check_padding_value(padding_value)
        self.global_mean = bool(global_mean)
        self._dtype_arg = dtype

    # Subclasses: the spec and its parameters for these predictions, and the
    # axis the per-sample loss averages over.
    def _loss_for(self, y_pred):
        """(y_pred, spec, params): the predictions the kernel reads."""
        raise NotImplementedError

    axis = -1

    def call(self, y_true, y_pred):
        y_pred, spec, params = self._loss_for(tf.convert_to_tensor(y_pred))
        return _masked_per_sample(spec, params, y_true, y_pred, self.padding_value, self.axis)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            return self.compute(y_true, y_pred, sample_weight, mask=_get_keras_mask(y_pred))

    def compute(self, y_true, y_pred, sample_weight=None, mask=None):
        """The loss with an explicit mask (the per-sample loss shape or
        broadcastable to it) in place of the Keras mask of `y_pred`."""
        loss_dtype = tf.as_dtype(self.dtype)
        y_pred, spec, params = self._loss_for(tf.convert_to_tensor(y_pred))
        y_true, y_pred = _convert_inputs(y_true, y_pred, loss_dtype)
        if y_pred.shape.rank is None or y_pred.shape.rank == 0:
            raise ValueError(f"y_pred must have a known rank >= 1, got shape {y_pred.shape}")
        acc = _inputs.accumulator_dtype(y_pred.dtype)
        if mask is not None:
            mask = tf.cast(mask, tf.bool)
        if sample_weight is not None:
            sample_weight = tf.cast(sample_weight, acc)
        loss = None
        if self.axis in (-1, y_pred.shape.rank - 1):
            loss = self._fused(spec, params, y_true, y_pred, sample_weight, mask, acc)
        if loss is None:
            loss = self._unfused(spec, params, y_true, y_pred, sample_weight, mask, acc)
        return tf.cast(loss, loss_dtype)

    def _weights(self, values_shape, sample_weight, mask, acc):
        """Keras's merged weights (sample weight x mask, aligned to the
        per-sample loss as Keras aligns them) before broadcasting; None when
        there are neither."""
        weights = sample_weight
        if mask is not None:
            float_mask = tf.cast(mask, acc)
            if weights is None:
                weights = float_mask
            else:
                float_mask, weights = _squeeze_or_expand(float_mask, weights)
                weights = weights * float_mask
        if weights is None:
            return values_shape, None
        return _squeeze_or_expand_shape(values_shape, weights)

    def _fused(self, spec, params, y_true, y_pred, sample_weight, mask, acc):
        """The loss from the fused sums, or None for the cases that need the
        per-sample losses: reduction "none", and weights that do not broadcast
        to the per-sample loss shape."""
        if self.reduction in (None, "none"):
            return None
        values_shape, weights = self._weights(y_pred.shape[:-1], sample_weight, mask, acc)
        if weights is not None:
            try:
                broadcast = tf.broadcast_static_shape(values_shape, weights.shape)
            except ValueError:
                return None
            if broadcast.rank != values_shape.rank or not broadcast.is_compatible_with(
                values_shape
            ):
                return None
        if values_shape.rank == 0 and weights is not None and weights.shape.rank != 0:
            return None
        values_size = tf.cast(tf.reduce_prod(tf.shape(y_pred)[:-1]), acc)
        features = tf.cast(tf.shape(y_pred)[-1], acc)
        padded = self.padding_value is not None

        # The prefix mask for the kernel: boolean when there is no sample
        # weight (exact for every dtype), else the weights in y_pred's dtype.
        kernel_mask = weights
        if sample_weight is None and mask is not None:
            kernel_mask = tf.cast(kernel_mask, tf.bool)
        if kernel_mask is not None:
            kernel_mask = _to_positions(kernel_mask, values_shape, y_pred)
        if kernel_mask is not None and kernel_mask.dtype != tf.bool:
            kernel_mask = tf.cast(kernel_mask, y_pred.dtype)

        sums = ops.masked_sums(spec, y_true, y_pred, kernel_mask, self.padding_value, params)
        total = sums.sum / features  # sum of the weighted per-sample losses

        if values_shape.rank == 0:
            # Keras leaves a scalar per-sample loss unreduced and unscaled.
            return total
        if self.reduction == "sum":
            return total
        if self.reduction in _MEAN_REDUCTIONS:
            numerator = total
            if padded:
                # Padding masks elements: the mean is over the kept elements.
                numerator = sums.sum
                denominator = self._kept_elements(y_true, mask, sample_weight, sums)
            elif mask is not None:
                # Keras weighs valid positions by size(mask) / count(mask).
                valid = tf.reduce_sum(tf.cast(mask, acc))
                mask_size = tf.cast(tf.size(mask), acc)
                numerator = total * mask_size
                denominator = valid * values_size
            else:
                denominator = values_size
        elif padded:
            numerator, denominator = sums.sum, sums.weight_sum
        elif weights is not None:
            numerator, denominator = total, tf.reduce_sum(weights)
        else:
            numerator, denominator = total, values_size
        return self._divide(numerator, denominator)

    def _kept_elements(self, y_true, mask, sample_weight, sums):
        """Elements kept by the Keras mask and the padding, not counting the
        sample weight (Keras's mean divides by the mask's count only)."""
        acc = sums.sum.dtype
        if sample_weight is None:
            return tf.cast(sums.count, acc)
        keep = _inputs.not_padding(y_true, self.padding_value)
        if mask is not None:
            values_shape, aligned = self._weights(y_true.shape[:-1], None, mask, acc)
            aligned = _to_positions(tf.cast(aligned, tf.bool), values_shape, y_true)
            keep = tf.logical_and(keep, _expand_to_rank(aligned, y_true.shape.rank))
        return tf.cast(tf.math.count_nonzero(keep), acc)

    def _divide(self, numerator, denominator):
        replicas = _replica_count()
        if self.global_mean and replicas > 1:
            numerator, denominator = _cross_replica_sum([numerator, tf.stop_gradient(denominator)])
        loss = tf.math.divide_no_nan(numerator, denominator)
        if replicas > 1:
            # Keras scales mean losses by 1/replicas (gradients are summed
            # over replicas); it skips that when `call` returns a scalar.
            loss = loss * tf.cast(1.0 / replicas, loss.dtype)
        return loss

    def _unfused(self, spec, params, y_true, y_pred, sample_weight, mask, acc):
        """Per-sample losses (select-based), reduced exactly as Keras reduces."""
        keep = None
        if self.padding_value is not None:
            keep = _inputs.not_padding(y_true, self.padding_value)
        if mask is not None and _is_leading_prefix(mask.shape, y_pred.shape):
            # The mask covers y_pred's positions (a leading prefix of its shape,
            # e.g. a (B, T) mask on a (B, T, 1) output squeezed to (B, T)):
            # masked elements are zeroed before the arithmetic, so NaN/Inf there
            # never leak through Keras's multiply by the mask.
            expanded = _expand_to_rank(mask, y_pred.shape.rank)
            expanded = tf.broadcast_to(expanded, tf.shape(y_pred))
            keep = expanded if keep is None else tf.logical_and(keep, expanded)
        values = _per_sample(spec, params, y_true, y_pred, keep, acc, self.axis)
        return reduce_weighted_values(
            values,
            sample_weight=sample_weight,
            mask=mask,
            reduction=self.reduction,
            dtype=acc,
        )

    def get_config(self):
        config = super().get_config()
        dtype = self._dtype_arg
        if dtype is not None and not isinstance(dtype, str):
            dtype = keras.saving.serialize_keras_object(dtype)
        config.update(padding_value=self.padding_value, global_mean=self.global_mean, dtype=dtype)
        return config


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedMeanSquaredError(MaskedLoss):
    """Drop-in for `keras.losses.MeanSquaredError` (see MaskedLoss)."""

    def __init__(
        self,
        padding_value=None,
        reduction="sum_over_batch_size",
        name="masked_mean_squared_error",
        dtype=None,
        global_mean=False,
    ):
        super().__init__(padding_value, reduction, name, dtype, global_mean)

    def _loss_for(self, y_pred):
        return y_pred, specs.SQUARED_ERROR, ()


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedMeanAbsoluteError(MaskedLoss):
    """Drop-in for `keras.losses.MeanAbsoluteError` (see MaskedLoss)."""

    def __init__(
        self,
        reduction="sum_over_batch_size",
        name="masked_mean_absolute_error",
        dtype=None,
        *,
        padding_value=None,
        global_mean=False,
    ):
        super().__init__(padding_value, reduction, name, dtype, global_mean)

    def _loss_for(self, y_pred):
        return y_pred, specs.ABSOLUTE_ERROR, ()


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedHuber(MaskedLoss):
    """Drop-in for `keras.losses.Huber` (see MaskedLoss)."""

    def __init__(
        self,
        delta=1.0,
        reduction="sum_over_batch_size",
        name="masked_huber_loss",
        dtype=None,
        *,
        padding_value=None,
        global_mean=False,
    ):
        super().__init__(padding_value, reduction, name, dtype, global_mean)
        self.delta = ops._check_delta(delta)

    def _loss_for(self, y_pred):
        return y_pred, specs.HUBER, (self.delta,)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedBinaryCrossentropy(MaskedLoss):
    """Drop-in for `keras.losses.BinaryCrossentropy` (see MaskedLoss).

    As Keras, predictions produced by a sigmoid (a graph-mode `Sigmoid` op, or
    a tensor carrying `_keras_logits`) are taken as logits: the stable form."""

    def __init__(
        self,
        from_logits=False,
        label_smoothing=0.0,
        axis=-1,
        reduction="sum_over_batch_size",
        name="masked_binary_crossentropy",
        dtype=None,
        *,
        padding_value=None,
        global_mean=False,
    ):
        super().__init__(padding_value, reduction, name, dtype, global_mean)
        self.from_logits = bool(from_logits)
        self.label_smoothing = ops._check_label_smoothing(label_smoothing)
        self.axis = axis

    def _loss_for(self, y_pred):
        from_logits = self.from_logits
        # Keras's rule (its backend's _get_logits), on the predictions as Keras
        # sees them: in the loss dtype (a cast first hides the Sigmoid).
        if y_pred.dtype == tf.as_dtype(self.dtype):
            if hasattr(y_pred, "_keras_logits"):
                y_pred, from_logits = y_pred._keras_logits, True
            elif (
                not isinstance(y_pred, (tf.__internal__.EagerTensor, tf.Variable))
                and hasattr(y_pred, "op")
                and y_pred.op.type == "Sigmoid"
            ):
                y_pred, from_logits = y_pred.op.inputs[0], True
        return y_pred, ops._bce_spec(from_logits), (self.label_smoothing,)

    def get_config(self):
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "label_smoothing": self.label_smoothing,
            "axis": self.axis,
        }


__all__ = [
    "MaskedBinaryCrossentropy",
    "MaskedHuber",
    "MaskedLoss",
    "MaskedMeanAbsoluteError",
    "MaskedMeanSquaredError",
    "masked_binary_crossentropy",
    "masked_huber",
    "masked_mean_absolute_error",
    "masked_mean_squared_error",
]
