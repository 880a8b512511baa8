"""Fused masked losses for TensorFlow and Keras."""

from masked_ops import reference
from masked_ops.ops import MaskedSums, masked_mse, masked_squared_error_sums

__all__ = ["MaskedSums", "masked_mse", "masked_squared_error_sums", "reference"]
