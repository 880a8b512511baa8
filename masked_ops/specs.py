"""The loss table on the Python side: one spec per loss, mirroring the C++
list in csrc/kernels/loss_list.h. A spec drives the op wrapper, the gradient
registration, the pure-TF reference formula (also what XLA compiles when a
lowering is missing), the Keras per-sample loss, and the parametrization of
the tests and the benchmark. Adding a loss is its functor header, one line
in loss_list.h and one spec here."""

import collections
import dataclasses
from collections.abc import Callable

import tensorflow as tf

MaskedSums = collections.namedtuple("MaskedSums", ["sum", "weight_sum", "count"])


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One masked loss.

    name: the kernel table's name (the binding's `loss_name=`).
    op_type: the TensorFlow op, "MaskedOps>..."; its gradient op adds "Grad".
    op: the op's Python wrapper in the loaded op library.
    params: names of the loss's scalar parameters, in the functor's order.
    value: value(t, p, *params), the element loss in TensorFlow ops on
        accumulator-dtype tensors: the same formula as the C++ functor.
    """

    name: str
    op_type: str
    op: str
    params: tuple[str, ...]
    value: Callable

    @property
    def grad_op(self):
        return self.op + "_grad"

    @property
    def one_pass_op(self):
        """The loss and its gradient in one pass (op_type + "WithGrad")."""
        return self.op + "_with_grad"


def squared_error(t, p):
    d = t - p
    return d * d


def absolute_error(t, p):
    return tf.abs(t - p)


def huber(t, p, delta):
    e = p - t
    a = tf.abs(e)
    d = tf.constant(delta, e.dtype)
    return tf.where(a <= d, 0.5 * (e * e), d * a - 0.5 * (d * d))


BCE_EPSILON = 1e-7  # Keras's default epsilon; the functor's clip bound


def _smoothed(t, label_smoothing):
    if label_smoothing == 0:
        return t
    return t * (1.0 - label_smoothing) + 0.5 * label_smoothing


def binary_crossentropy(t, p, label_smoothing):
    z = _smoothed(t, label_smoothing)
    c = tf.clip_by_value(p, BCE_EPSILON, 1.0 - BCE_EPSILON)
    return -(z * tf.math.log(c) + (1.0 - z) * tf.math.log(1.0 - c))


def binary_crossentropy_from_logits(t, x, label_smoothing):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=_smoothed(t, label_smoothing), logits=x)


def _spec(name, op_name, value, params=()):
    op = "masked_ops_" + name
    return LossSpec(name=name, op_type="MaskedOps>" + op_name, op=op, params=params, value=value)


SQUARED_ERROR = _spec("squared_error", "SquaredError", squared_error)
ABSOLUTE_ERROR = _spec("absolute_error", "AbsoluteError", absolute_error)
HUBER = _spec("huber", "Huber", huber, ("delta",))
BINARY_CROSSENTROPY = _spec(
    "binary_crossentropy", "BinaryCrossentropy", binary_crossentropy, ("label_smoothing",)
)
BINARY_CROSSENTROPY_FROM_LOGITS = _spec(
    "binary_crossentropy_from_logits",
    "BinaryCrossentropyFromLogits",
    binary_crossentropy_from_logits,
    ("label_smoothing",),
)

LOSSES = (
    SQUARED_ERROR,
    ABSOLUTE_ERROR,
    HUBER,
    BINARY_CROSSENTROPY,
    BINARY_CROSSENTROPY_FROM_LOGITS,
)
BY_OP_TYPE = {spec.op_type: spec for spec in LOSSES}
