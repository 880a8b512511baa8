"""Keras layers around the fused masked losses."""

import keras

from masked_ops.losses import MaskedMeanSquaredError


@keras.saving.register_keras_serializable(package="masked_ops")
class MaskedMeanSquaredErrorLoss(keras.layers.Layer):
    """Adds the fused masked MSE of its inputs to the model's losses
    (`add_loss`), for models that carry the targets and the mask as inputs.

    Called on `[y_true, y_pred]` or `[y_true, y_pred, mask]`, where `mask`
    (boolean, or float weights) has the per-sample loss shape,
    `y_pred.shape[:-1]`; without one, the Keras mask of `y_pred` is used if it
    has one. Returns `y_pred` unchanged. The loss is that of
    `MaskedMeanSquaredError(padding_value, reduction, global_mean=...)` with
    `mask` as the Keras mask (boolean) or as the sample weight (float).
    """

    def __init__(
        self,
        padding_value=None,
        reduction="sum_over_batch_size",
        global_mean=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.loss_fn = MaskedMeanSquaredError(
            padding_value=padding_value,
            reduction=reduction,
            name=f"{self.name}_loss",
            global_mean=global_mean,
        )
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(
                "MaskedMeanSquaredErrorLoss expects [y_true, y_pred] or [y_true, y_pred, mask], "
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

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)) and len(mask) > 1:
            return mask[1]
        return None

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update(
            padding_value=self.loss_fn.padding_value,
            reduction=self.loss_fn.reduction,
            global_mean=self.loss_fn.global_mean,
        )
        return config
