"""Fused masked losses for TensorFlow and Keras."""

from masked_ops import layers, losses, reference, specs
from masked_ops.ops import (
    masked_absolute_error_sums,
    masked_binary_crossentropy,
    masked_binary_crossentropy_sums,
    masked_categorical_crossentropy,
    masked_categorical_crossentropy_sums,
    masked_huber,
    masked_huber_sums,
    masked_mae,
    masked_mse,
    masked_sparse_categorical_crossentropy,
    masked_sparse_categorical_crossentropy_sums,
    masked_squared_error_sums,
)
from masked_ops.specs import MaskedSums

__all__ = [
    "MaskedSums",
    "layers",
    "losses",
    "masked_absolute_error_sums",
    "masked_binary_crossentropy",
    "masked_binary_crossentropy_sums",
    "masked_categorical_crossentropy",
    "masked_categorical_crossentropy_sums",
    "masked_huber",
    "masked_huber_sums",
    "masked_mae",
    "masked_mse",
    "masked_sparse_categorical_crossentropy",
    "masked_sparse_categorical_crossentropy_sums",
    "masked_squared_error_sums",
    "reference",
    "specs",
]
