"""The loss table on the Python side: one spec per loss, mirroring the C++
lists in csrc/kernels/loss_list.h (LOSSES: the elementwise losses; ROW_LOSSES:
the losses over rows of classes). A spec drives the op wrapper, the gradient
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


@dataclasses.dataclass(frozen=True)
class RowLossSpec:
    """One row loss: a loss over each row of V classes (the last axis of
    y_pred), an entry of MASKED_OPS_ROW_LOSS_LIST.

    name: the kernel table's name (Keras's loss name, "_from_logits" added).
    op_type: the TensorFlow op "MaskedOps>..."; its gradient op adds "Grad",
        its one-pass form (loss and gradient) "WithGrad".
    op: the op's Python wrapper in the loaded op library.
    sparse: y_true is integer class indices (else targets of y_pred's shape).
    from_logits: y_pred is logits (else probabilities, clipped as Keras clips).
    row_stats: per-row statistics the forward writes for the gradient.
    """

    name: str
    op_type: str
    op: str
    sparse: bool
    from_logits: bool
    row_stats: int

    @property
    def grad_op(self):
        return self.op + "_grad"

    @property
    def one_pass_op(self):
        return self.op + "_with_grad"


def _row_spec(keras_name, op_name, sparse, from_logits, row_stats):
    name = keras_name + ("_from_logits" if from_logits else "")
    return RowLossSpec(
        name=name,
        op_type="MaskedOps>" + op_name,
        op="masked_ops_" + name,
        sparse=sparse,
        from_logits=from_logits,
        row_stats=row_stats,
    )


SPARSE_CATEGORICAL_CROSSENTROPY = _row_spec(
    "sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", True, False, 1
)
SPARSE_CATEGORICAL_CROSSENTROPY_FROM_LOGITS = _row_spec(
    "sparse_categorical_crossentropy", "SparseCategoricalCrossentropyFromLogits", True, True, 2
)
CATEGORICAL_CROSSENTROPY = _row_spec(
    "categorical_crossentropy", "CategoricalCrossentropy", False, False, 2
)
CATEGORICAL_CROSSENTROPY_FROM_LOGITS = _row_spec(
    "categorical_crossentropy", "CategoricalCrossentropyFromLogits", False, True, 2
)

ROW_LOSSES = (
    SPARSE_CATEGORICAL_CROSSENTROPY,
    SPARSE_CATEGORICAL_CROSSENTROPY_FROM_LOGITS,
    CATEGORICAL_CROSSENTROPY,
    CATEGORICAL_CROSSENTROPY_FROM_LOGITS,
)
ROW_BY_OP_TYPE = {spec.op_type: spec for spec in ROW_LOSSES}


def row_loss(sparse, from_logits):
    """The row loss spec for integer labels (sparse) or dense targets, from
    logits or from probabilities."""
    for spec in ROW_LOSSES:
        if spec.sparse == bool(sparse) and spec.from_logits == bool(from_logits):
            return spec
    raise AssertionError("every (sparse, from_logits) pair has a row loss")
