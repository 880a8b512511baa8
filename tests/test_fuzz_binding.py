"""Property-based fuzzing of the pybind11 binding against the float64 NumPy
oracle, for every loss the module was compiled with and every mask kind
(lists of several masks included), without TensorFlow: this file imports
only NumPy, Hypothesis, the oracle and the compiled module, so `make
sanitize` runs it on an AddressSanitizer/UBSan build of the kernels.
The TensorFlow ops are fuzzed in test_fuzz.py (including binding == op bit
for bit).

Example counts come from the Hypothesis profile (tests/conftest.py): bounded
in `make test`, many more in `make fuzz`.
"""

import numpy as np
import oracle
import pytest
from fuzz_cases import (
    FLOAT_DTYPES,
    MASK_KINDS,
    SHAPES,
    cases,
    check_backward,
    check_forward,
    examples,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from kernels_module import load_kernels

kernels = load_kernels()

# Every loss of the compiled loss table; each needs its element math in
# oracle.LOSSES (test_every_compiled_loss_has_an_oracle).
LOSSES = tuple(kernels.losses)
# Every loss and mask kind in every run, so the bounded `make test` profile
# covers them all; the rest (dtype, shapes, mask rank and float dtype, values,
# parameters, padding, NaN/Inf, reduction, upstream) is drawn.
per_loss_and_mask_kind = pytest.mark.parametrize(
    "loss, mask_kind", [(loss, kind) for loss in LOSSES for kind in MASK_KINDS]
)
dtypes = st.sampled_from(FLOAT_DTYPES)


def test_every_compiled_loss_has_an_oracle():
    assert LOSSES and set(LOSSES) <= set(oracle.LOSSES), set(LOSSES) - set(oracle.LOSSES)


def run(case, y_true=None, y_pred=None):
    """Forward results and gradients (the case's upstream) of the binding."""
    y_true = case.y_true if y_true is None else y_true
    y_pred = case.y_pred if y_pred is None else y_pred
    mask = case.kernel_mask
    which = {"loss_name": case.loss, "params": list(case.params)}
    out = kernels.forward(y_true, y_pred, mask, case.padding_value, case.reduction, **which)
    grads = kernels.backward(
        *case.upstream, y_true, y_pred, mask, case.padding_value, float(out[0]), float(out[2]),
        case.reduction, want_y_true=True, want_y_pred=True, want_mask=case.mask_is_float,
        **which,
    )  # fmt: skip
    return out, grads


def raw_bits(out, grads):
    """Every result as bytes (dtype and shape included), count as an int."""
    result = [int(out[3])]
    for x in (*out[:3], *grads):
        a = None if x is None else np.ascontiguousarray(x)
        result.append(None if a is None else (a.dtype.str, a.shape, a.tobytes()))
    return result


def check_against_oracle(case):
    out, grads = run(case)
    fwd = check_forward(case, *out)
    check_backward(case, fwd, out[0], out[2], grads, case.mask_is_float)
    if case.several:
        # The kernels compute no mask gradient for several masks.
        with pytest.raises(ValueError, match="several masks"):
            kernels.backward(
                *case.upstream, case.y_true, case.y_pred, case.kernel_mask, case.padding_value,
                float(out[0]), float(out[2]), case.reduction, want_mask=True,
                loss_name=case.loss, params=list(case.params),
            )  # fmt: skip


@per_loss_and_mask_kind
@given(data=st.data())
def test_binding_matches_oracle(loss, mask_kind, data):
    check_against_oracle(data.draw(cases(loss, data.draw(dtypes), mask_kind), label="case"))


@per_loss_and_mask_kind
@settings(max_examples=examples(0.3))
@given(data=st.data())
def test_binding_matches_oracle_at_block_and_chunk_boundaries(loss, mask_kind, data):
    dtype = data.draw(dtypes)
    check_against_oracle(data.draw(cases(loss, dtype, mask_kind, SHAPES["boundary"]), "case"))


@per_loss_and_mask_kind
@settings(max_examples=examples(0.5))
@given(data=st.data(), threads=st.integers(1, 4), boundary=st.booleans())
def test_binding_bits_ignore_poison_threads_and_repeats(loss, mask_kind, data, threads, boundary):
    """NaN/Inf where nothing is kept change no bit of any result; neither does
    the thread count or running again."""
    shapes = SHAPES["boundary" if boundary else "small"]
    case = data.draw(cases(loss, data.draw(dtypes), mask_kind, shapes), label="case")
    first = raw_bits(*run(case))
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(threads)
        clean = raw_bits(*run(case, case.clean_true, case.clean_pred))
    finally:
        kernels.set_num_threads(before)
    assert clean == first
    assert raw_bits(*run(case)) == first


def misaligned(a):
    """A copy of `a` whose data starts one byte past an element boundary."""
    raw = np.zeros(a.nbytes + a.itemsize, np.uint8)
    view = raw[1 : 1 + a.nbytes].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


@given(
    dtype=dtypes,
    argument=st.sampled_from(("y_true", "y_pred", "mask")),
    n=st.integers(1, 3000),
)
def test_misaligned_buffers_are_refused(dtype, argument, n):
    rng = np.random.default_rng(n)
    np_t = oracle.np_dtype(dtype)
    args = {name: rng.random(n).astype(np_t) for name in ("y_true", "y_pred", "mask")}
    args[argument] = misaligned(args[argument])
    with pytest.raises(ValueError, match=argument):
        kernels.forward(args["y_true"], args["y_pred"], args["mask"], None, "mean")
    with pytest.raises(ValueError, match=argument):
        kernels.backward(
            1.0, 0.0, 0.0, args["y_true"], args["y_pred"], args["mask"], None, 1.0, 1.0, "mean",
            want_y_true=True, want_y_pred=True, want_mask=True,
        )  # fmt: skip


@given(
    dtype=st.sampled_from(("float16", "bfloat16", "float32")),
    factor=st.floats(1.01, 1e3),
    sign=st.sampled_from((1.0, -1.0)),
)
def test_padding_value_overflowing_the_dtype_is_refused(dtype, factor, sign):
    np_t = oracle.np_dtype(dtype)
    largest = float(oracle.finfo(dtype).max)
    y_true = np.array([1.0, sign * largest, 2.0]).astype(np_t)
    y_pred = np.zeros(3, np_t)
    assert oracle.padding_overflows(sign * largest * factor, dtype)
    with pytest.raises(ValueError, match="padding_value"):
        kernels.forward(y_true, y_pred, None, sign * largest * factor, "sum")
    with pytest.raises(ValueError, match="NaN"):
        kernels.forward(y_true, y_pred, None, float("nan"), "sum")
    # The largest finite value is a padding value like any other.
    _, total, _, count = kernels.forward(y_true, y_pred, None, sign * largest, "sum")
    assert (float(total), count) == (5.0, 2)
