"""The fused ops under XLA (jit_compile=True): the op's own lowering when the
library has one, the pure-TF fallback otherwise or when forced, each compared
with the fused op run eagerly."""

import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tolerances import assert_close

import masked_ops
from masked_ops import _xla, specs
from masked_ops._loader import op_library

SPEC = specs.SQUARED_ERROR
MASK_KINDS = ["none", "bool_prefix", "float_prefix", "float_full"]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


@pytest.fixture(scope="module")
def lowered():
    return _xla.has_lowering(SPEC)


def _inputs(dtype, mask_kind, seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, 4, 5)
    y_true = tf.cast(rng.normal(size=shape), dtype)
    y_pred = rng.normal(size=shape)
    keep = rng.random(shape[:2]) < 0.6
    # NaN/Inf under the mask or at padded targets must not leak.
    y_pred[~keep] = np.nan
    y_pred = tf.cast(y_pred, dtype)
    y_true = tf.tensor_scatter_nd_update(y_true, [[0, 0, 1]], tf.constant([7.0], dtype))
    mask = {
        "none": None,
        "bool_prefix": tf.constant(keep),
        "float_prefix": tf.cast(np.where(keep, rng.uniform(0.5, 2.0, shape[:2]), 0.0), dtype),
        "float_full": tf.cast(np.where(keep[..., None], rng.uniform(0.5, 2.0, shape), 0.0), dtype),
    }[mask_kind]
    if mask is None:
        y_pred = tf.where(tf.math.is_nan(y_pred), tf.zeros_like(y_pred), y_pred)
    return y_true, y_pred, mask


def _loss_and_grads(y_true, y_pred, mask, reduction):
    with tf.GradientTape() as tape:
        watched = [y_true, y_pred] + ([mask] if mask is not None and mask.dtype != tf.bool else [])
        tape.watch(watched)
        loss = masked_ops.masked_mse(y_true, y_pred, mask, padding_value=7.0, reduction=reduction)
        sums = masked_ops.masked_squared_error_sums(y_true, y_pred, mask, padding_value=7.0)
        objective = loss + 0.5 * sums.sum + 0.25 * sums.weight_sum
    return (loss, sums.sum, sums.weight_sum, sums.count), tape.gradient(objective, watched)


def _op_types(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # noqa: SLF001 - nested function bodies
        types |= {node.op for node in function.definition.node_def}
    return types


CASES = [(kind, reduction) for kind in MASK_KINDS for reduction in ("mean", "sum")]


def _all_cases(dtype):
    """Every (mask kind, reduction) in one function: one XLA compile per dtype."""
    inputs = [_inputs(dtype, kind) for kind, _ in CASES]

    def run(inputs):
        return [
            _loss_and_grads(*case_inputs, reduction)
            for case_inputs, (_, reduction) in zip(inputs, CASES, strict=False)
        ]

    return inputs, run


def _check(dtype, forced):
    inputs, run = _all_cases(dtype)
    jitted = tf.function(run, jit_compile=True)
    with _xla.force_fallback() if forced else contextlib.nullcontext():
        results = jitted(inputs)
        types = _op_types(jitted, inputs)
    for (outputs, grads), (e_outputs, e_grads), case in zip(
        results, run(inputs), CASES, strict=False
    ):
        loss, total, weight_sum, count = outputs
        e_loss, e_total, e_weight_sum, e_count = e_outputs
        for got, expected in [(loss, e_loss), (total, e_total), (weight_sum, e_weight_sum)]:
            assert_close(got, expected, dtype)
        assert count.numpy() == e_count.numpy(), case
        for got, expected in zip(grads, e_grads, strict=False):
            assert np.all(np.isfinite(np.asarray(got, np.float64))), case
            assert_close(got, expected, dtype, "elementwise")
    return types


def test_xla_context_detection():
    seen = {}

    def probe(tag):
        seen[tag] = _xla.in_xla_context()

    @tf.function
    def inner(x):
        probe("called_from_jit")
        return x

    tf.function(lambda x: probe("graph") or x)(tf.constant(1.0))
    tf.function(lambda x: probe("jit") or x, jit_compile=True)(tf.constant(1.0))
    tf.function(lambda x: inner(x), jit_compile=True)(tf.constant(2.0))
    probe("eager")
    assert seen == {"graph": False, "jit": True, "called_from_jit": True, "eager": False}


@pytest.mark.parametrize("dtype", DTYPES)
def test_forced_fallback_under_jit(dtype):
    types = _check(dtype, forced=True)
    assert "MaskedOps>SquaredError" not in types
    assert "MaskedOps>SquaredErrorGrad" not in types


@pytest.mark.parametrize("dtype", DTYPES)
def test_op_under_jit(lowered, dtype):
    """With lowerings the op and its gradient op are compiled by XLA; without
    them the fallback is chosen automatically. Both give the eager results."""
    types = _check(dtype, forced=False)
    assert ("MaskedOps>SquaredError" in types) == lowered
    assert ("MaskedOps>SquaredErrorGrad" in types) == lowered


def test_lowerings_built_when_required(lowered):
    """MASKED_OPS_XLA=ON (as for the build) makes a library without lowerings
    an error rather than a silent fallback."""
    required = os.environ.get("MASKED_OPS_XLA", "AUTO").upper() == "ON"
    built = hasattr(op_library, "masked_ops_xla_lowered_ops")
    assert built or not required
    if built:
        assert b"MaskedOps>SquaredError" in op_library.masked_ops_xla_lowered_ops().numpy().tolist()
    assert lowered == built


def test_library_loaded_after_xla_started_falls_back():
    """TensorFlow turns lowerings into XLA kernels once per process; a library
    loaded after XLA first compiled something must use the fallback."""
    script = textwrap.dedent(
        """
        import numpy as np
        import tensorflow as tf
        tf.function(lambda x: x * 2, jit_compile=True)(tf.constant(1.0))
        import masked_ops
        from masked_ops import _xla
        from masked_ops._loader import op_library
        t = tf.constant([[1.0, 2.0], [3.0, np.nan]])
        p = tf.zeros([2, 2])
        fn = tf.function(
            lambda t, p: masked_ops.masked_mse(t, p, [True, False]), jit_compile=True
        )
        print(_xla.has_lowering(masked_ops.specs.SQUARED_ERROR), float(fn(t, p)))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lowered, loss = result.stdout.split()[-2:]
    assert lowered == "False"
    assert float(loss) == pytest.approx(2.5)


@pytest.mark.parametrize("n", [2**18, 2**18 + 3])
def test_float32_totals_under_jit_are_accurate(n):
    """Float32 totals under XLA are summed in blocks (n a multiple of the
    block) or in float64 (other n): both within the reduction tolerance of a
    float64 reference, where a plain float32 running sum is not."""
    rng = np.random.default_rng(n)
    y_true = rng.normal(size=n).astype(np.float32)
    y_pred = (y_true + rng.normal(size=n) + 3.0).astype(np.float32)
    keep = rng.random(n) < 0.7
    compiled = tf.function(
        lambda t, p, m: masked_ops.masked_squared_error_sums(t, p, m), jit_compile=True
    )
    total, weight_sum, count = compiled(y_true, y_pred, keep)
    d = y_true.astype(np.float64) - y_pred.astype(np.float64)
    assert_close(total, np.sum(np.where(keep, d * d, 0.0)), tf.float32)
    assert_close(weight_sum, keep.sum(), tf.float32)
    assert int(count) == keep.sum()
