"""The losses under test: each entry of masked_ops.specs.LOSSES with
parameter values worth testing, its float64 element math (tests/oracle.py)
and inputs in its domain. NumPy only."""

import dataclasses

import numpy as np
import oracle
from oracle import BCE_EPSILON


@dataclasses.dataclass(frozen=True)
class LossCase:
    """One loss with fixed parameter values.

    name: id for test names; spec: the masked_ops.specs entry's name;
    params: its parameter values; math(accumulator): the oracle's element
    math for inputs accumulated in that dtype ("float32"/"float64");
    targets / predictions: draw inputs in the loss's domain from a NumPy
    Generator and a shape.
    """

    name: str
    spec: str
    params: tuple
    targets: object
    predictions: object

    def math(self, accumulator="float64"):
        return oracle.LOSSES[self.spec](self.params, accumulator)


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
    LossCase("squared_error", "squared_error", (), _normal, _normal),
    LossCase("absolute_error", "absolute_error", (), _normal, _normal),
    LossCase("huber", "huber", (1.0,), _normal, _normal),
    LossCase("huber_delta_0.3", "huber", (0.3,), _normal, _normal),
    LossCase(
        "binary_crossentropy",
        "binary_crossentropy",
        (0.0,),
        _labels,
        _probabilities,
    ),
    LossCase(
        "binary_crossentropy_smoothed",
        "binary_crossentropy",
        (0.2,),
        _labels,
        _probabilities,
    ),
    LossCase(
        "binary_crossentropy_from_logits",
        "binary_crossentropy_from_logits",
        (0.0,),
        _labels,
        _logits,
    ),
    LossCase(
        "binary_crossentropy_from_logits_smoothed",
        "binary_crossentropy_from_logits",
        (0.1,),
        _labels,
        _logits,
    ),
)
