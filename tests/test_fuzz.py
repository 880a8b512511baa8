"""Property-based fuzzing of the TensorFlow ops of every loss in
masked_ops.specs.LOSSES against the float64 NumPy oracle: forward results and
gradients over dtypes, mask kinds and ranks, lists of several masks (their
float masks' gradients included), padding, NaN/Inf where nothing is kept,
NumPy, tensor and list inputs; eager and tf.function bit for bit; the op and
the pybind11 binding bit for bit. The binding alone (without TensorFlow, also
under the sanitizers) is fuzzed in test_fuzz_binding.py.

Example counts come from the Hypothesis profile (tests/conftest.py): bounded
in `make test`, many more in `make fuzz`.
"""

import numpy as np
import oracle
import pytest
import tensorflow as tf
from fuzz_cases import (
    FLOAT_DTYPES,
    MASK_KINDS,
    SHAPES,
    cases,
    check_backward,
    check_forward,
    check_mask_list_gradients,
    examples,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from masked_ops import kernels, ops, specs

# Every loss of the registry; each needs its element math in oracle.LOSSES
# (test_every_loss_has_an_oracle).
SPECS = {spec.name: spec for spec in specs.LOSSES}
# Every loss and mask kind in every run, so the bounded `make test` profile
# covers them all; the rest (dtype, shapes, mask rank and float dtype, values,
# parameters, padding, NaN/Inf, reduction, upstream) is drawn.
per_loss_and_mask_kind = pytest.mark.parametrize(
    "loss, mask_kind", [(loss, kind) for loss in SPECS for kind in MASK_KINDS]
)
dtypes = st.sampled_from(FLOAT_DTYPES)


def test_every_loss_has_an_oracle():
    assert set(SPECS) <= set(oracle.LOSSES), set(SPECS) - set(oracle.LOSSES)


def tensor(x):
    """A tensor, a list of them for a list of masks, or None."""
    if isinstance(x, list):
        return [tf.constant(m) for m in x]
    return None if x is None else tf.constant(x)


def numpy(x):
    return None if x is None else np.asarray(x.numpy() if hasattr(x, "numpy") else x)


def fused(case, y_true, y_pred, mask):
    """The op's (loss, sum, weight_sum, count)."""
    spec = SPECS[case.loss]
    return ops.fused(spec, y_true, y_pred, mask, case.padding_value, case.reduction, case.params)


def with_gradients(case, y_true, y_pred, mask):
    """The op's (loss, sum, weight_sum, count) and the gradients of the
    upstream-weighted outputs w.r.t. y_true, y_pred and each mask: (g_true,
    g_pred, g_mask), with a list of masks (g_true, g_pred, g_mask_0, ...);
    None for a mask that is not floating."""
    masks = mask if isinstance(mask, list) else [mask]
    floats = [m for m in masks if m is not None and m.dtype.is_floating]
    with tf.GradientTape() as tape:
        tape.watch([y_true, y_pred, *floats])
        out = fused(case, y_true, y_pred, mask)
        target = sum(g * x for g, x in zip(case.upstream, out[:3], strict=True))
    grads = iter(tape.gradient(target, [y_true, y_pred, *floats]))
    g_true, g_pred = next(grads), next(grads)
    g_masks = [next(grads) if m is not None and m.dtype.is_floating else None for m in masks]
    return tuple(out), (g_true, g_pred, *g_masks)


def check_op_against_oracle(case, form):
    """The op with `form` inputs (tensors, NumPy arrays or lists), then its
    gradients (tensors)."""
    mask = case.mask if form != "tensor" else tensor(case.mask)
    convert = {"tensor": tensor, "numpy": lambda x: x, "list": lambda x: x.tolist()}[form]
    y_true, y_pred = convert(case.y_true), convert(case.y_pred)
    value = fused(case, y_true, y_pred, mask)[0]
    sums = ops.masked_sums(SPECS[case.loss], y_true, y_pred, mask, case.padding_value, case.params)
    assert sums.count.dtype == tf.int64
    fwd = check_forward(case, *(numpy(x) for x in (value, *sums)))
    if form != "tensor":
        return
    mask = tensor(case.mask)
    out, grads = with_gradients(case, tensor(case.y_true), tensor(case.y_pred), mask)
    if case.mask_is_float:
        assert grads[2].dtype == mask.dtype and grads[2].shape == mask.shape
    grads = tuple(numpy(g) for g in grads)
    loss, weight_sum = numpy(out[0]), numpy(out[2])
    if case.several:
        check_backward(case, fwd, loss, weight_sum, (*grads[:2], None), False)
        check_mask_list_gradients(case, fwd, loss, weight_sum, grads[2:])
    else:
        check_backward(case, fwd, loss, weight_sum, grads, case.mask_is_float)


def forms(dtype):
    """Input forms: tensors, NumPy arrays (dtype kept), Python lists (float32)."""
    return st.sampled_from(
        ("tensor", "numpy", "list") if dtype == "float32" else ("tensor", "numpy")
    )


@per_loss_and_mask_kind
@given(data=st.data())
def test_op_matches_oracle(loss, mask_kind, data):
    dtype = data.draw(dtypes)
    case = data.draw(cases(loss, dtype, mask_kind), label="case")
    form = data.draw(forms(dtype), label="form")
    if form == "list" and case.y_pred.size == 0:
        form = "numpy"  # nested empty lists lose the trailing dimensions
    check_op_against_oracle(case, form)


@per_loss_and_mask_kind
@settings(max_examples=examples(0.2))
@given(data=st.data())
def test_op_matches_oracle_at_block_and_chunk_boundaries(loss, mask_kind, data):
    dtype = data.draw(dtypes)
    case = data.draw(cases(loss, dtype, mask_kind, SHAPES["boundary"]), label="case")
    check_op_against_oracle(case, data.draw(forms(dtype), label="form"))


def all_bits(out, grads):
    return [
        None if x is None else (x.dtype.name, tuple(x.shape), x.numpy().tobytes())
        for x in (*out, *grads)
    ]


@per_loss_and_mask_kind
@settings(max_examples=examples(0.2))
@given(data=st.data(), boundary=st.booleans())
def test_eager_and_function_agree_bitwise(loss, mask_kind, data, boundary):
    """tf.function gives the bits of eager execution, which repeats itself."""
    shapes = SHAPES["boundary" if boundary else "small"]
    case = data.draw(cases(loss, data.draw(dtypes), mask_kind, shapes), label="case")
    args = (tensor(case.y_true), tensor(case.y_pred), tensor(case.mask))
    eager = all_bits(*with_gradients(case, *args))
    assert all_bits(*with_gradients(case, *args)) == eager
    function = tf.function(lambda *args: with_gradients(case, *args))
    assert all_bits(*function(*args)) == eager


@per_loss_and_mask_kind
@settings(max_examples=examples(0.5))
@given(data=st.data(), boundary=st.booleans())
def test_binding_and_op_agree_bitwise(loss, mask_kind, data, boundary):
    """Same kernels, same fixed chunking: loss, sums, count and gradients of the
    binding and of the op have the same bits. Float masks go to both in the
    kernel's mask dtype, so the op's mask gradient is not cast back. Several
    masks have no mask gradient in the binding: the op's gradients of y_true
    and y_pred, which it computes from the combined weight when a float mask
    is watched, are compared."""
    shapes = SHAPES["boundary" if boundary else "small"]
    case = data.draw(cases(loss, data.draw(dtypes), mask_kind, shapes), label="case")
    kernel_mask = case.kernel_mask
    op_mask = case.mask if mask_kind == "int32" else kernel_mask
    if case.several:
        # Integer masks as they are, float ones in the kernel's dtype.
        op_mask = [
            m if m.dtype.kind in "iu" else k for m, k in zip(case.mask, kernel_mask, strict=True)
        ]
    out, grads = with_gradients(case, tensor(case.y_true), tensor(case.y_pred), tensor(op_mask))
    if case.several:
        grads = (*grads[:2], None)
    which = {"loss_name": case.loss, "params": list(case.params)}
    b_out = kernels.forward(
        case.y_true, case.y_pred, kernel_mask, case.padding_value, case.reduction, **which
    )
    b_grads = kernels.backward(
        *case.upstream, case.y_true, case.y_pred, kernel_mask, case.padding_value,
        float(b_out[0]), float(b_out[2]), case.reduction,
        want_y_true=True, want_y_pred=True, want_mask=case.mask_is_float, **which,
    )  # fmt: skip
    assert int(b_out[3]) == int(out[3])
    names = ("loss", "sum", "weight_sum", "grad_y_true", "grad_y_pred", "grad_mask")
    for name, mine, theirs in zip(names, (*b_out[:3], *b_grads), (*out[:3], *grads), strict=True):
        if mine is None:
            assert theirs is None, name
            continue
        mine, theirs = np.asarray(mine), theirs.numpy()
        assert (mine.dtype, mine.shape) == (theirs.dtype, theirs.shape), name
        assert mine.tobytes() == theirs.tobytes(), (name, mine, theirs)


@pytest.mark.parametrize("loss", SPECS)
@settings(max_examples=examples(0.2))
@given(
    dtype=st.sampled_from(("float16", "bfloat16", "float32")),
    factor=st.floats(1.01, 1e3),
    sign=st.sampled_from((1.0, -1.0)),
)
def test_padding_value_overflowing_the_dtype_is_refused(loss, dtype, factor, sign):
    """A Python value at the call, a tensor when the op runs; NaN too; the
    largest finite value is a padding value like any other."""
    spec = SPECS[loss]
    params = oracle.LOSSES[loss].params[0]
    np_t = oracle.np_dtype(dtype)
    largest = float(oracle.finfo(dtype).max)
    y_true = tf.constant(np.array([0.5, sign * largest, 0.25]).astype(np_t))
    y_pred = tf.constant(np.array([0.5, 0.5, 0.5]).astype(np_t))
    value = sign * largest * factor
    assert oracle.padding_overflows(value, dtype)
    with pytest.raises(ValueError, match="padding_value"):
        ops.masked_sums(spec, y_true, y_pred, None, value, params)
    with pytest.raises(ValueError, match="NaN"):
        ops.masked_sums(spec, y_true, y_pred, None, float("nan"), params)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float64)])
    def at_run_time(padding_value):
        return ops.masked_sums(spec, y_true, y_pred, None, padding_value, params).count

    with pytest.raises(tf.errors.InvalidArgumentError, match="padding_value"):
        at_run_time(tf.constant(value, tf.float64))
    assert int(ops.masked_sums(spec, y_true, y_pred, None, sign * largest, params).count) == 2
    assert int(at_run_time(tf.constant(sign * largest, tf.float64))) == 2
