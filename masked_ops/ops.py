"""Fused masked losses: the TensorFlow ops from the compiled library, their
gradients, and the public functions."""

import collections

import tensorflow as tf

from masked_ops import _inputs, _xla
from masked_ops._loader import op_library

MaskedSums = collections.namedtuple("MaskedSums", ["sum", "weight_sum", "count"])


def _attr_str(value):
    return value.decode() if isinstance(value, bytes) else value


def register_gradient(op_name, grad_op):
    """Registers the fused gradient of a masked-loss op (outputs loss, sum,
    weight_sum, count). One kernel writes only the gradients that are needed:
    inputs the tape skips get none, and boolean masks never get one."""

    @tf.RegisterGradient(op_name)
    def _gradient(op, grad_loss, grad_sum, grad_weight_sum, _grad_count):
        skip = set(getattr(op, "skip_input_indices", None) or ())
        y_true, y_pred, mask, padding_value = op.inputs
        want_true = 0 not in skip
        want_pred = 1 not in skip
        want_mask = mask.dtype.is_floating and 2 not in skip
        if not (want_true or want_pred or want_mask):
            return [None] * 4
        acc = op.outputs[0].dtype

        def upstream(g):
            return tf.zeros([], acc) if g is None else g

        grad_true, grad_pred, grad_mask = grad_op(
            grad_loss=upstream(grad_loss),
            grad_sum=upstream(grad_sum),
            grad_weight_sum=upstream(grad_weight_sum),
            y_true=y_true,
            y_pred=y_pred,
            mask=mask,
            padding_value=padding_value,
            loss=op.outputs[0],
            weight_sum=op.outputs[2],
            reduction=_attr_str(op.get_attr("reduction")),
            has_padding_value=op.get_attr("has_padding_value"),
            want_y_true=want_true,
            want_y_pred=want_pred,
            want_mask=want_mask,
        )
        return [
            grad_true if want_true else None,
            grad_pred if want_pred else None,
            grad_mask if want_mask else None,
            None,
        ]

    tf.no_gradient(op_name + "Grad")


def fused(op, y_true, y_pred, mask, padding_value, reduction):
    """Runs a masked-loss op; returns (loss, sum, weight_sum, count)."""
    _inputs.check_reduction(reduction)
    if _xla.use_fallback(op):
        return _xla.fallback(op, y_true, y_pred, mask, padding_value, reduction)
    y_true, y_pred, mask, padding, has_padding = _inputs.prepare(
        y_true, y_pred, mask, padding_value
    )
    return op(
        y_true=y_true,
        y_pred=y_pred,
        mask=mask,
        padding_value=padding,
        Tout=_inputs.accumulator_dtype(y_pred.dtype),
        reduction=reduction,
        has_padding_value=has_padding,
    )


register_gradient("MaskedSquaredError", op_library.masked_squared_error_grad)


def masked_squared_error_sums(y_true, y_pred, mask=None, *, padding_value=None):
    """Fused (sum, weight_sum, count) of the masked squared error.

    sum = sum(w * (y_true - y_pred)^2), weight_sum = sum(w), count = number of
    positions with w != 0 (exact int64), over positions kept by `mask` (bool,
    integer or float weights; the inputs' shape or a leading prefix of it) and
    not equal to `padding_value`.
    """
    _, s, w, c = fused(op_library.masked_squared_error, y_true, y_pred, mask, padding_value, "sum")
    return MaskedSums(s, w, c)


def masked_mse(y_true, y_pred, mask=None, *, padding_value=None, reduction="mean"):
    """Masked mean squared error in one fused pass.

    reduction="mean": sum / weight_sum, exactly 0 when nothing is kept;
    reduction="sum": the masked sum. Masked positions contribute nothing and get
    zero gradient even when they hold NaN or Inf.
    """
    return fused(op_library.masked_squared_error, y_true, y_pred, mask, padding_value, reduction)[0]
