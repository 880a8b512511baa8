"""The example trains with the fused loss and the hand-written loss; their
curves agree."""

import importlib.util
from pathlib import Path

import numpy as np
import tensorflow as tf
from tolerances import assert_close

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "masked_sequence_regression.py"


def _load():
    spec = importlib.util.spec_from_file_location("masked_sequence_regression", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_curves_agree():
    example = _load()
    fused, reference = example.main(epochs=3, batches=2)
    assert len(fused) == 3
    assert np.all(np.isfinite(fused))
    assert fused[-1] < fused[0]  # it trains
    assert_close(fused, reference, tf.float32)


def test_example_data_are_padded_sequences():
    example = _load()
    tokens, targets = example.make_data(16)
    padded = tokens == 0
    assert padded.any() and not padded.all()
    assert np.all(targets[padded] == example.PAD)
    assert np.all(targets[~padded] != example.PAD)
