"""The pybind11 binding (masked_ops.kernels) on the host: against the float64
NumPy reference, against the TF op (bitwise: same kernels, same chunking), and
its input validation, including the __cuda_array_interface__ checks that need
no GPU. The CUDA path runs at the end only where PyTorch sees a GPU."""

import importlib.util
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from _helpers import (
    BIG_SHAPE,
    DTYPE_IDS,
    DTYPES,
    LONG_ROWS_SHAPE,
    SMALL_SHAPES,
    assert_bitwise_equal,
    assert_close_with_scale,
    make_case,
    np_case_sums,
    np_loss,
    reduce_to_mask,
    shape_id,
)
from tolerances import assert_close, tolerance

import masked_ops
from masked_ops import kernels

REDUCTIONS = ("mean", "sum")
# The binding takes bool masks and masks of y_pred's dtype; other mask dtypes
# are converted by the Python layer of the TF op, not here.
KINDS = (
    "none",
    "bool",
    "float",
    "padding",
    "prefix_bool",
    "prefix_float",
    "mask_and_padding",
    "prefix_and_padding",
)
# Short prefix rows over several chunks.
MULTI_CHUNK_SHAPE = (24, 130, 70)
SHAPES = (*SMALL_SHAPES, LONG_ROWS_SHAPE, MULTI_CHUNK_SHAPE)


def host(case):
    """NumPy arrays of a case (bfloat16 as ml_dtypes.bfloat16; 0-d stays an array)."""
    mask = None if case.mask is None else np.asarray(case.mask.numpy())
    return np.asarray(case.y_true.numpy()), np.asarray(case.y_pred.numpy()), mask


def case_for(dtype, shape, kind, seed_extra=0):
    # A stable seed per case, so a failure reproduces.
    key = repr((tf.as_dtype(dtype).name, tuple(shape), kind, seed_extra)).encode()
    return make_case(np.random.default_rng(zlib.crc32(key)), dtype, shape, kind)


def poison_under_mask(case, t, p):
    """NaN predictions wherever an element is dropped and Inf truths where its
    weight is 0: neither may leak into results or gradients."""
    _, _, _, keep, w, _ = np_case_sums(case)
    p = p.copy()
    p[~keep] = np.nan
    t = t.copy()
    t[w == 0] = np.inf
    return t, p


def coefficients(g, loss, weight_sum, reduction):
    """float64 (a, b) of masked_loss.h's grad_coefficients."""
    grad_loss, grad_sum, grad_weight_sum = g
    if reduction == "sum":
        return grad_loss + grad_sum, grad_weight_sum
    inv = 1.0 / weight_sum if weight_sum != 0 else 0.0
    return grad_loss * inv + grad_sum, grad_weight_sum - grad_loss * loss * inv


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", (*SHAPES, BIG_SHAPE), ids=shape_id)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_forward_matches_reference(dtype, kind, shape, reduction):
    case = case_for(dtype, shape, kind)
    t, p, m = host(case)
    t, p = poison_under_mask(case, t, p)
    loss, total, weight_sum, count = kernels.forward(
        t, p, m, padding_value=case.padding_value, reduction=reduction
    )
    ref_sum, ref_ws, ref_count, _, _, _ = np_case_sums(case)
    acc = np.float64 if dtype == tf.float64 else np.float32
    for value in (loss, total, weight_sum):
        assert value.dtype == acc
        assert np.isfinite(value)
    assert count == ref_count
    assert_close(total, ref_sum, dtype)
    assert_close(weight_sum, ref_ws, dtype)
    assert_close(loss, np_loss(ref_sum, ref_ws, reduction), dtype)
    if ref_ws == 0 and reduction == "mean":
        assert loss == 0.0


UPSTREAMS = {"loss": (1.0, 0.0, 0.0), "all": (0.75, 0.25, 0.5)}


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_backward_matches_reference(dtype, kind, shape, reduction, upstream):
    case = case_for(dtype, shape, kind)
    t, p, m = host(case)
    t, p = poison_under_mask(case, t, p)
    loss, _, weight_sum, _ = kernels.forward(t, p, m, case.padding_value, reduction)
    want_mask = case.mask_is_float
    g = UPSTREAMS[upstream]
    grad_true, grad_pred, grad_mask = kernels.backward(
        *g, t, p, m, case.padding_value, float(loss), float(weight_sum), reduction,
        want_y_true=True, want_y_pred=True, want_mask=want_mask,
    )  # fmt: skip

    _, _, _, keep, w, value = np_case_sums(case)
    a, b = coefficients(g, float(loss), float(weight_sum), reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        d = case.t64 - case.p64
        ref_true = np.where(keep, a * w * 2.0 * d, 0.0)
        ref_pred = np.where(keep, a * w * -2.0 * d, 0.0)
        ref_w = np.where(keep, a * value + b, 0.0)
        scale_w = np.where(keep, np.abs(a * value) + abs(b), 0.0)
    assert grad_true.dtype == t.dtype and grad_true.shape == t.shape
    assert grad_pred.dtype == p.dtype and grad_pred.shape == p.shape
    assert_close(grad_true, ref_true, dtype, "elementwise")
    assert_close(grad_pred, ref_pred, dtype, "elementwise")
    if not want_mask:
        assert grad_mask is None
        return
    assert grad_mask.dtype == m.dtype and grad_mask.shape == m.shape
    rtol, atol = tolerance(dtype, "elementwise")
    assert_close_with_scale(
        grad_mask,
        reduce_to_mask(ref_w, m.shape),
        reduce_to_mask(scale_w, m.shape),
        rtol,
        atol,
        "grad_mask",
    )


@pytest.mark.parametrize("want", ["y_true", "y_pred", "mask", "none"])
def test_backward_writes_only_wanted(want):
    case = case_for(tf.float32, (6, 50), "prefix_float")
    t, p, m = host(case)
    loss, _, weight_sum, _ = kernels.forward(t, p, m)
    grads = kernels.backward(
        1.0, 0.0, 0.0, t, p, m, None, float(loss), float(weight_sum), "mean",
        want_y_true=want == "y_true", want_y_pred=want == "y_pred", want_mask=want == "mask",
    )  # fmt: skip
    for name, grad in zip(("y_true", "y_pred", "mask"), grads, strict=False):
        if name == want:
            assert grad is not None and grad.shape == (t if name != "mask" else m).shape
            assert np.any(grad != 0)
        else:
            assert grad is None


def test_worked_example():
    y_true = np.array([[1.0, 2.0, -1.5], [0.0, 5.0, 9.0]], np.float32)
    y_pred = np.array([[0.0, 4.0, np.nan], [1.0, 5.0, 0.0]], np.float32)
    mask = np.array([[1.0, 0.5, 1.0], [2.0, 1.0, 0.0]], np.float32)
    # Kept: (0,0) w=1 d^2=1; (0,1) w=.5 d^2=4; (1,0) w=2 d^2=1; (1,1) w=1 d^2=0.
    # (0,2) is padding (NaN prediction ignored), (1,2) has weight 0.
    loss, total, weight_sum, count = kernels.forward(y_true, y_pred, mask, padding_value=-1.5)
    assert (float(total), float(weight_sum), count) == (5.0, 4.5, 4)
    assert float(loss) == np.float32(5.0 / 4.5)
    _, grad_pred, grad_mask = kernels.backward(
        0.0, 1.0, 0.0, y_true, y_pred, mask, -1.5, float(loss), float(weight_sum), "mean",
        want_y_pred=True, want_mask=True,
    )  # fmt: skip
    # d sum / d p = w * 2 (p - t); d sum / d w = (t - p)^2 where kept.
    np.testing.assert_array_equal(grad_pred, [[-2.0, 2.0, 0.0], [4.0, 0.0, 0.0]])
    np.testing.assert_array_equal(grad_mask, [[1.0, 4.0, 0.0], [1.0, 0.0, 0.0]])


def test_nothing_kept_gives_zero_mean():
    t = np.ones((3, 4), np.float16)
    p = np.full((3, 4), np.inf, np.float16)
    loss, total, weight_sum, count = kernels.forward(t, p, np.zeros(3, bool))
    assert (float(loss), float(total), float(weight_sum), count) == (0.0, 0.0, 0.0, 0)
    _, grad_pred, _ = kernels.backward(1.0, 0.0, 0.0, t, p, np.zeros(3, bool), None, 0.0, 0.0)
    np.testing.assert_array_equal(grad_pred, np.zeros((3, 4), np.float16))


@pytest.mark.parametrize("shape,mask_shape", [((0,), (0,)), ((3, 0), (3,)), ((0, 5), (0,))])
def test_empty_with_mask_gradient(shape, mask_shape):
    t = np.zeros(shape, np.float32)
    m = np.ones(mask_shape, np.float32)
    loss, total, weight_sum, count = kernels.forward(t, t, m)
    assert (float(loss), float(total), float(weight_sum), count) == (0.0, 0.0, 0.0, 0)
    grad_true, grad_pred, grad_mask = kernels.backward(
        1.0, 1.0, 1.0, t, t, m, None, 0.0, 0.0, "sum", True, True, True
    )
    assert grad_true.shape == shape and grad_pred.shape == shape
    np.testing.assert_array_equal(grad_mask, np.zeros(mask_shape, np.float32))


def test_zero_d_mask_weighs_everything():
    rng = np.random.default_rng(7)
    t = rng.standard_normal((5, 7))
    p = rng.standard_normal((5, 7))
    _, total, weight_sum, count = kernels.forward(t, p, np.array(2.5), reduction="sum")
    assert_close(total, 2.5 * np.sum((t - p) ** 2), tf.float64)
    assert (float(weight_sum), count) == (2.5 * 35, 35)
    *_, grad_mask = kernels.backward(
        0.0, 1.0, 0.0, t, p, np.array(2.5), None, float(total), float(weight_sum), "sum",
        want_y_pred=False, want_mask=True,
    )  # fmt: skip
    assert grad_mask.shape == ()
    assert_close(grad_mask, np.sum((t - p) ** 2), tf.float64, "elementwise")


def test_padding_is_rounded_like_the_op():
    # 0.1 is not a float16: y_true holds float16(0.1), which must match padding 0.1.
    t = np.array([0.1, 1.0], np.float16)
    p = np.zeros(2, np.float16)
    _, total, _, count = kernels.forward(t, p, padding_value=0.1, reduction="sum")
    assert (float(total), count) == (1.0, 1)


def test_results_do_not_depend_on_thread_count():
    case = case_for(tf.float32, (2**20 + 3,), "float")
    t, p, m = host(case)
    before = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        one = kernels.forward(t, p, m), kernels.backward(1, 0, 0, t, p, m, None, 1, 1)
        kernels.set_num_threads(4)
        four = kernels.forward(t, p, m), kernels.backward(1, 0, 0, t, p, m, None, 1, 1)
    finally:
        kernels.set_num_threads(before)
    for a, b in zip(one[0], four[0], strict=False):
        assert_bitwise_equal(np.asarray(a), np.asarray(b), "forward")
    assert_bitwise_equal(one[1][1], four[1][1], "grad_y_pred")


# The TF op and the binding run the same CPU kernels with the same fixed
# chunking, so their results must agree bit for bit.
@pytest.mark.parametrize("shape", [(5, 9, 4), BIG_SHAPE, LONG_ROWS_SHAPE], ids=shape_id)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bitwise_equal_to_tf_op(dtype, kind, shape):
    case = case_for(dtype, shape, kind, seed_extra=1)
    t, p, m = host(case)
    sums = masked_ops.masked_squared_error_sums(
        case.y_true, case.y_pred, case.mask, padding_value=case.padding_value
    )
    _, total, weight_sum, count = kernels.forward(t, p, m, case.padding_value, "sum")
    assert_bitwise_equal(np.asarray(total), sums.sum.numpy(), "sum")
    assert_bitwise_equal(np.asarray(weight_sum), sums.weight_sum.numpy(), "weight_sum")
    assert count == int(sums.count.numpy())

    watch = [case.y_true, case.y_pred] + ([case.mask] if case.mask_is_float else [])
    with tf.GradientTape() as tape:
        tape.watch(watch)
        tf_loss = masked_ops.masked_mse(
            case.y_true, case.y_pred, case.mask, padding_value=case.padding_value
        )
    tf_grads = tape.gradient(tf_loss, watch)
    loss, _, weight_sum, _ = kernels.forward(t, p, m, case.padding_value, "mean")
    assert_bitwise_equal(np.asarray(loss), tf_loss.numpy(), "loss")
    grads = kernels.backward(
        1.0, 0.0, 0.0, t, p, m, case.padding_value, float(loss), float(weight_sum), "mean",
        want_y_true=True, want_y_pred=True, want_mask=case.mask_is_float,
    )  # fmt: skip
    for name, mine, theirs in zip(
        ("grad_y_true", "grad_y_pred", "grad_mask"), grads, tf_grads, strict=False
    ):
        assert_bitwise_equal(mine, theirs.numpy(), name)


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the problem.

F32 = np.zeros((4, 3), np.float32)


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda: kernels.forward(F32, np.zeros((4, 2), np.float32)),
            ValueError,
            r"\(4, 3\).*\(4, 2\)",
        ),
        (lambda: kernels.forward(F32, F32, np.ones(3, bool)), ValueError, r"\(3,\).*prefix"),
        (lambda: kernels.forward(F32, F32, np.ones((4, 3, 1), bool)), ValueError, "prefix"),
        (lambda: kernels.forward(F32.astype(np.int32), F32.astype(np.int32)), TypeError, "int32"),
        (lambda: kernels.forward(F32, F32.astype(np.float64)), TypeError, "float32.*float64"),
        (lambda: kernels.forward(F32, F32, np.ones(4, np.float64)), TypeError, "mask.*float64"),
        (lambda: kernels.forward(F32, F32, np.ones(4, np.int32)), TypeError, "mask.*int32"),
        (lambda: kernels.forward(F32.astype(bool), F32.astype(bool)), TypeError, "bool"),
        (lambda: kernels.forward(F32, np.zeros((3, 4), np.float32).T), ValueError, "C-contiguous"),
        (lambda: kernels.forward(F32, F32.astype(">f4")), TypeError, "byte order"),
        (lambda: kernels.forward(F32, F32, reduction="max"), ValueError, "'mean' or 'sum'"),
        (lambda: kernels.forward(F32, F32, padding_value=float("nan")), ValueError, "NaN"),
        (lambda: kernels.forward("abc", F32), TypeError, "y_true"),
        (lambda: kernels.forward(F32, F32, padding_value="x"), TypeError, "padding_value.*str"),
        (
            lambda: kernels.backward(
                1, 0, 0, F32, F32, np.ones(4, bool), None, 0, 1, "mean", want_mask=True
            ),  # fmt: skip
            ValueError,
            "boolean mask has no gradient",
        ),
        (
            lambda: kernels.backward(1, 0, 0, F32, F32, None, None, 0, 1, "mean", want_mask=True),
            ValueError,
            "needs a mask",
        ),
    ],
    ids=lambda x: None,
)
def test_host_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


class FakeCudaArray:
    """Carries a __cuda_array_interface__ without any GPU: validation only."""

    def __init__(self, shape, typestr="<f4", *, version=3, strides=None, stream=None, ptr=4096):
        self.__cuda_array_interface__ = {
            "version": version,
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "strides": strides,
            "stream": stream,
        }


def fake_forward(y_true=None, y_pred=None, mask=None, out=None, count=None, **kwargs):
    def default(x, make):
        return make() if x is None else x

    kernels.forward_cuda(
        default(y_true, lambda: FakeCudaArray((4, 3))),
        default(y_pred, lambda: FakeCudaArray((4, 3))),
        mask,
        None,
        "mean",
        default(out, lambda: FakeCudaArray((3,))),
        default(count, lambda: FakeCudaArray((1,), "<i8")),
        None,
        **kwargs,
    )


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"y_pred": np.zeros((4, 3), np.float32)}, TypeError, "y_pred must be a CUDA array"),
        ({"y_pred": FakeCudaArray((4, 2))}, ValueError, r"\(4, 3\).*\(4, 2\)"),
        ({"mask": FakeCudaArray((3,), "|b1")}, ValueError, "prefix"),
        ({"y_pred": FakeCudaArray((4, 3), version=4)}, ValueError, "version 4"),
        ({"y_pred": FakeCudaArray((4, 3), "<i4")}, TypeError, "'<i4'"),
        ({"y_pred": FakeCudaArray((4, 3), ">f4")}, TypeError, "little-endian"),
        ({"y_pred": FakeCudaArray((4, 3), "<f8")}, TypeError, "float32.*float64"),
        ({"mask": FakeCudaArray((4,), "<f8")}, TypeError, "mask.*float64"),
        ({"y_pred": FakeCudaArray((4, 3), strides=(4, 16))}, ValueError, "C-contiguous"),
        ({"y_pred": FakeCudaArray((4, 3), stream=0)}, ValueError, "stream"),
        (
            {"y_true": FakeCudaArray((4, 3), stream=5), "y_pred": FakeCudaArray((4, 3), stream=6)},
            ValueError,
            "names stream 5 but y_pred names stream 6",
        ),
        ({"out": FakeCudaArray((2,))}, ValueError, "out must have 3 elements"),
        ({"out": FakeCudaArray((3,), "<f8")}, TypeError, "out must have typestr '<f4'"),
        ({"count": FakeCudaArray((1,), "<i4")}, TypeError, "count"),
        ({"y_true": FakeCudaArray((4, 3), "<i2")}, TypeError, "bfloat16"),
        ({"dtype": "int8"}, TypeError, "dtype must be"),
        ({"y_true": FakeCudaArray((4, 3), ptr=0)}, ValueError, "null data pointer"),
    ],
    ids=lambda x: None,
)
def test_cuda_array_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        fake_forward(**kwargs)


def test_cuda_backward_validation():
    x = FakeCudaArray((4, 3))
    three = FakeCudaArray((3,))
    with pytest.raises(ValueError, match=r"grad_y_pred must have the inputs' shape \(4, 3\)"):
        kernels.backward_cuda(three, three, x, x, None, None, "mean", None, FakeCudaArray((3, 4)))
    with pytest.raises(ValueError, match="boolean mask has no gradient"):
        kernels.backward_cuda(
            three, three, x, x, FakeCudaArray((4,), "|b1"), None, "mean",
            grad_mask=FakeCudaArray((4,), "|b1"),
        )  # fmt: skip
    with pytest.raises(ValueError, match="grad_mask must have the mask's shape"):
        kernels.backward_cuda(
            three, three, x, x, FakeCudaArray((4,)), None, "mean", grad_mask=FakeCudaArray((3,))
        )


def test_bfloat16_buffers_are_named_with_dtype():
    # The protocol has no bfloat16 typestr: 2-byte buffers pass validation once
    # dtype= names the type (the launch itself needs a GPU build and device memory).
    bf = FakeCudaArray((4, 3), "<i2")
    expected = RuntimeError if not kernels.with_cuda else (ValueError, RuntimeError)
    with pytest.raises(expected, match="built without CUDA" if not kernels.with_cuda else None):
        fake_forward(y_true=bf, y_pred=bf, mask=FakeCudaArray((4,), "<V2"), dtype="bfloat16")


def test_device_mismatch_on_host_call():
    with pytest.raises(TypeError, match="device mismatch: y_pred is a CUDA array"):
        kernels.forward(F32, FakeCudaArray((4, 3)))
    with pytest.raises(TypeError, match="device mismatch: mask is a CUDA array"):
        kernels.backward(1, 0, 0, F32, F32, FakeCudaArray((4,), "|b1"), None, 0, 1)


def test_without_cuda_the_cuda_functions_say_so():
    if kernels.with_cuda:
        # Built with CUDA: the fake pointer is not device memory.
        with pytest.raises((ValueError, RuntimeError)):
            fake_forward()
        return
    with pytest.raises(RuntimeError, match="built without CUDA"):
        fake_forward()
    with pytest.raises(RuntimeError, match="built without CUDA"):
        kernels.forward_workspace_bytes(10)


# ---------------------------------------------------------------------------
# benchmarks/gpu_check.py: its checks, run on the host path, pass on correct
# results and catch wrong ones (so a GPU run cannot pass vacuously).


def load_gpu_check():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mask", ["bool", "float", "prefix_bool", "prefix_float"])
def test_gpu_check_reference_passes_and_catches_errors(mask):
    gc = load_gpu_check()
    be = gc.HostBackend(kernels.module())
    case = gc.Case(30030, "bfloat16", mask, "mean")
    inp = be.make_inputs(case, seed=3)
    first, second = be.run(case, inp), be.run(case, inp)
    assert gc.check_reference(be, case, inp, first) == []
    assert be.same_bits(first, second)

    first.out = (first.out[0] * 1.001, *first.out[1:])
    first.count += 1
    first.grads[1][7] += 1.0
    if case.float_mask:
        first.grads[2][0] = np.nan
    failures = " ".join(gc.check_reference(be, case, inp, first))
    for what in ["loss", "count", "grad_y_pred"] + (["grad_mask"] if case.float_mask else []):
        assert what in failures
    assert "grad_y_true" not in failures
    assert not be.same_bits(first, second)


def test_gpu_check_dry_run(tmp_path):
    gc = load_gpu_check()
    report = tmp_path / "gpu_check.json"
    args = ["--cpu", "--module-dir", str(Path(kernels.module().__file__).parent)]
    assert gc.main([*args, "--json", str(report), "--reps", "1", "--budget", "0"]) == 0
    summary = json.loads(report.read_text())
    assert summary["correctness"] and all(r["status"] == "pass" for r in summary["correctness"])


# ---------------------------------------------------------------------------
# CUDA path: only where the binding has CUDA and PyTorch sees a GPU.


def cuda_torch():
    if not kernels.with_cuda:
        pytest.skip("masked_ops._kernels was built without CUDA")
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    return torch


@pytest.mark.parametrize("kind", ["none", "bool", "float", "prefix_float"])
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32, tf.float64], ids=lambda d: d.name)
def test_cuda_matches_host(dtype, kind):
    torch = cuda_torch()
    case = case_for(dtype, (37, 1029), kind)
    t, p, m = host(case)
    dev = [
        None if x is None else torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in (t, p, m)
    ]
    acc = torch.float64 if dtype == tf.float64 else torch.float32
    out = torch.full((3,), float("nan"), dtype=acc, device="cuda")
    count = torch.full((1,), -1, dtype=torch.int64, device="cuda")
    workspace = torch.empty(
        kernels.forward_workspace_bytes(t.size), dtype=torch.uint8, device="cuda"
    )
    stream = torch.cuda.current_stream()
    kernels.forward_cuda(*dev[:3], None, "mean", out, count, workspace, stream=stream)
    upstream = torch.tensor([1.0, 0.0, 0.0], dtype=acc, device="cuda")
    grad_pred = torch.full(p.shape, float("nan"), dtype=dev[1].dtype, device="cuda")
    want_mask = case.mask_is_float
    grad_mask = (
        torch.full(m.shape, float("nan"), dtype=dev[2].dtype, device="cuda") if want_mask else None
    )
    bw_ws = torch.empty(
        kernels.backward_workspace_bytes(t.size, 1 if m is None else m.size, want_mask),
        dtype=torch.uint8,
        device="cuda",
    )
    kernels.backward_cuda(
        upstream, out, *dev[:3], None, "mean", grad_y_pred=grad_pred, grad_mask=grad_mask,
        workspace=bw_ws, stream=stream,
    )  # fmt: skip
    torch.cuda.synchronize()
    loss, total, weight_sum, n = kernels.forward(t, p, m)
    host_grads = kernels.backward(1, 0, 0, t, p, m, None, float(loss), float(weight_sum),
                                  want_mask=want_mask)  # fmt: skip
    o = out.cpu().numpy()
    assert int(count.cpu()) == n
    for got, want in zip(o, (loss, total, weight_sum), strict=False):
        assert_close(got, want, dtype)
    assert_close(grad_pred.cpu().numpy(), host_grads[1], dtype, "elementwise")
    if want_mask:
        assert_close(grad_mask.cpu().numpy(), host_grads[2], dtype, "elementwise")
