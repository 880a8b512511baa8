"""The losses under test: for each entry of masked_ops.specs.LOSSES (with
parameter values worth testing), its float64 NumPy element math, inputs in its
domain, and its Keras counterpart. NumPy and TensorFlow-free at import for the
element math, so the oracle and the TF-free fuzz suite share it.

The element math is written independently of the kernels (which use a C++
functor) and of masked_ops.specs (TensorFlow ops): it is the oracle."""

import dataclasses

import numpy as np

BCE_EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class ElementMath:
    value: object  # value(t, p), float64
    grad_pred: object  # d value / d p
    grad_true: object  # d value / d t


def _sign(x):
    return np.sign(x)  # sign(0) == 0, as TensorFlow's gradient of abs


def squared_error(accumulator="float64"):
    return ElementMath(
        value=lambda t, p: (t - p) ** 2,
        grad_pred=lambda t, p: 2.0 * (p - t),
        grad_true=lambda t, p: 2.0 * (t - p),
    )


def absolute_error(accumulator="float64"):
    return ElementMath(
        value=lambda t, p: np.abs(t - p),
        grad_pred=lambda t, p: _sign(p - t),
        grad_true=lambda t, p: _sign(t - p),
    )


def huber(delta, accumulator="float64"):
    def grad_pred(t, p):
        e = p - t
        return np.where(np.abs(e) <= delta, e, delta * _sign(e))

    return ElementMath(
        value=lambda t, p: np.where(
            np.abs(p - t) <= delta, 0.5 * (p - t) ** 2, delta * np.abs(p - t) - 0.5 * delta**2
        ),
        grad_pred=grad_pred,
        grad_true=lambda t, p: -grad_pred(t, p),
    )


def _smoothed(t, s):
    return t * (1.0 - s) + 0.5 * s


def binary_crossentropy(label_smoothing, accumulator="float64"):
    s = label_smoothing
    # The clipping bounds as the accumulator dtype holds them (float32(1 - 1e-7)
    # is not 1 - 1e-7): a bound is a discontinuity of the gradient.
    lo = float(np.asarray(BCE_EPSILON, accumulator))
    hi = float(np.asarray(1.0 - BCE_EPSILON, accumulator))

    def value(t, p):
        z, c = _smoothed(t, s), np.clip(p, lo, hi)
        return -(z * np.log(c) + (1.0 - z) * np.log(1.0 - c))

    def grad_pred(t, p):
        z, c = _smoothed(t, s), np.clip(p, lo, hi)
        # No gradient through the clipping outside [lo, hi] (tf.clip_by_value's).
        return np.where((p >= lo) & (p <= hi), (1.0 - z) / (1.0 - c) - z / c, 0.0)

    def grad_true(t, p):
        c = np.clip(p, lo, hi)
        return (1.0 - s) * (np.log(1.0 - c) - np.log(c))

    return ElementMath(value=value, grad_pred=grad_pred, grad_true=grad_true)


def binary_crossentropy_from_logits(label_smoothing, accumulator="float64"):
    s = label_smoothing

    def value(t, x):
        z = _smoothed(t, s)
        return np.maximum(x, 0.0) - x * z + np.log1p(np.exp(-np.abs(x)))

    return ElementMath(
        value=value,
        grad_pred=lambda t, x: 1.0 / (1.0 + np.exp(-x)) - _smoothed(t, s),
        grad_true=lambda t, x: -(1.0 - s) * x,
    )


@dataclasses.dataclass(frozen=True)
class LossCase:
    """One loss with fixed parameter values.

    name: id for test names; spec: the masked_ops.specs entry's name;
    params: its parameter values; math(accumulator): the float64 oracle's
    element math for inputs accumulated in that dtype ("float32"/"float64");
    targets / predictions: draw inputs in the loss's domain from a NumPy
    Generator and a shape.
    """

    name: str
    spec: str
    params: tuple
    element_math: object
    targets: object
    predictions: object

    def math(self, accumulator="float64"):
        return self.element_math(*self.params, accumulator)


def _normal(rng, shape):
    return rng.standard_normal(shape)


def _labels(rng, shape):
    # Hard 0/1 labels and some soft ones.
    hard = rng.integers(0, 2, size=shape).astype(np.float64)
    return np.where(rng.random(shape) < 0.8, hard, rng.random(shape))


def _probabilities(rng, shape):
    p = rng.uniform(0.02, 0.98, size=shape)
    # Some at and beyond the clipping bounds.
    edges = np.array([0.0, 1.0, BCE_EPSILON, 1.0 - BCE_EPSILON, 1e-9])
    pick = rng.random(shape) < 0.05
    return np.where(pick, edges[rng.integers(0, len(edges), size=shape)], p)


def _logits(rng, shape):
    x = 3.0 * rng.standard_normal(shape)
    return np.where(rng.random(shape) < 0.05, 0.0, x)


LOSS_CASES = (
    LossCase("squared_error", "squared_error", (), squared_error, _normal, _normal),
    LossCase("absolute_error", "absolute_error", (), absolute_error, _normal, _normal),
    LossCase("huber", "huber", (1.0,), huber, _normal, _normal),
    LossCase("huber_delta_0.3", "huber", (0.3,), huber, _normal, _normal),
    LossCase(
        "binary_crossentropy",
        "binary_crossentropy",
        (0.0,),
        binary_crossentropy,
        _labels,
        _probabilities,
    ),
    LossCase(
        "binary_crossentropy_smoothed",
        "binary_crossentropy",
        (0.2,),
        binary_crossentropy,
        _labels,
        _probabilities,
    ),
    LossCase(
        "binary_crossentropy_from_logits",
        "binary_crossentropy_from_logits",
        (0.0,),
        binary_crossentropy_from_logits,
        _labels,
        _logits,
    ),
    LossCase(
        "binary_crossentropy_from_logits_smoothed",
        "binary_crossentropy_from_logits",
        (0.1,),
        binary_crossentropy_from_logits,
        _labels,
        _logits,
    ),
)
