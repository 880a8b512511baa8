"""Keras layers around the fused masked losses."""

import keras

from masked_ops.losses import MaskedLoss, MaskedMeanSquaredError


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedLossLayer(keras.layers.Layer):
    """Adds a fused masked loss of its inputs to the model's losses
    (`add_loss`), for models that carry the targets and the mask as inputs.

    Called on `[y_true, y_pred]` or `[y_true, y_pred, mask]` (or as
    `layer(y_true, y_pred, mask)`), where `mask` (boolean, or float weights)
    has the per-sample loss shape, `y_pred.shape[:-1]`; without one, the Keras
    mask of `y_pred` is used if it has one. Returns `y_pred` unchanged. The
    loss is `loss` (any masked_ops Keras loss, MaskedMeanSquaredError() by
    default) with `mask` as the Keras mask (boolean) or as the sample weight
    (float).
    """

    def __init__(self, loss=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        loss = MaskedMeanSquaredError() if loss is None else loss
        if not isinstance(loss, MaskedLoss):
            raise TypeError(f"loss must be a masked_ops Keras loss (MaskedLoss), got {loss!r}")
        self.loss_fn = loss
        self.supports_masking = True

    def call(self, inputs, *args, mask=None):
        if args:
            inputs = [inputs, *args]
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(
                f"{type(self).__name__} expects [y_true, y_pred] or [y_true, y_pred, mask], "
                f"got {inputs!r}"
            )
        y_true, y_pred = inputs[0], inputs[1]
        weights = inputs[2] if len(inputs) == 3 else None
        keras_mask, sample_weight = None, None
        if weights is None:
            keras_mask = mask[1] if isinstance(mask, (list, tuple)) else None
        elif keras.backend.is_float_dtype(weights.dtype):
            sample_weight = weights
        else:
            keras_mask = weights
        loss = self.loss_fn.compute(y_true, y_pred, sample_weight, mask=keras_mask)
        self.add_loss(loss)
        return y_pred

    def compute_mask(self, inputs, *args, mask=None):
        if isinstance(mask, (list, tuple)) and len(mask) > 1:
            return mask[1]
        return None

    def compute_output_shape(self, input_shape, *args):
        return args[0] if args else input_shape[1]

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss_fn)}


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedMeanSquaredErrorLoss(MaskedLossLayer):
    """MaskedLossLayer with MaskedMeanSquaredError(padding_value, reduction,
    global_mean=...)."""

    def __init__(
        self,
        padding_value=None,
        reduction="sum_over_batch_size",
        global_mean=False,
        **kwargs,
    ):
        kwargs.pop("loss", None)
        loss = MaskedMeanSquaredError(
            padding_value=padding_value,
            reduction=reduction,
            name=f"{kwargs.get('name') or 'masked_mean_squared_error'}_loss",
            global_mean=global_mean,
        )
        super().__init__(loss, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["loss"]
        config.update(
            padding_value=self.loss_fn.padding_value,
            reduction=self.loss_fn.reduction,
            global_mean=self.loss_fn.global_mean,
        )
        return config
