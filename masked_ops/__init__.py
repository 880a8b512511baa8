"""Fused masked losses for TensorFlow and Keras."""

from masked_ops import layers, losses, reference
from masked_ops.ops import MaskedSums, masked_mse, masked_squared_error_sums

__all__ = ["MaskedSums", "layers", "losses", "masked_mse", "masked_squared_error_sums", "reference"]
