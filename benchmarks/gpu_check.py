"""GPU check of the masked-loss kernels, every loss of the loss table, without
TensorFlow.

benchmarks/gpu_check.sh builds the CUDA kernels and the pybind11 binding for the
local GPU and runs this script, which
  1. checks forward and backward against the float64 oracle of tests/oracle.py
     (the element math the test suites use) on fresh random data. The squared
     error gets the full matrix: sizes 1 to above 2**31 elements (the largest
     when memory allows); float16, bfloat16, float32, float64; no mask,
     boolean, float and float32 (for 16-bit inputs) masks, prefix masks with
     rows of 2 to 4096 elements and rows split into segments, a 0-d float mask;
     offset views (a scalar head before the aligned vectors, and the scalar
     path when y_true and y_pred sit at different offsets from a 16-byte
     boundary); padding; NaN and Inf under the mask. Every other loss, for each
     of its parameter sets in LOSS_PARAMS, runs a representative subset (each
     dtype and mask kind, short and long prefix rows, offsets, a size above
     2**24) with inputs in its domain. Every loss, for each parameter set,
     also runs with `mask` a list of two or three masks (SEVERAL_MASKS: boolean
     and float, 0-d, row and elementwise, NaN/Inf weights where another mask
     is 0), checked against the weights as the kernels combine them. Every
     output is poisoned (NaN) before each run and checked fully written, and
     each run is repeated and compared byte for byte. It also checks that a
     bad loss name or parameter, a list of 6 masks and a mask gradient of
     several masks are refused, that the peers' formulas compute the oracle's
     loss, and on the GPU that an element-misaligned view and a call without
     a stream are refused with their errors;
  2. writes the correctness results to benchmarks/results/ at once, then times
     with CUDA events (median of many runs, inputs larger than L2) each loss's
     forward and forward+backward at 2**28 float32 elements, then the squared
     error's forward, backward and both across dtypes and mask kinds, against
     the same masked formula in PyTorch eager, under torch.compile, under
     jax.jit when JAX is installed, and a device-to-device copy of the bytes
     the fused op actually moves (the bandwidth ceiling); a peer that fails is
     noted and the others go on;
  3. rewrites the results with the timings and prints a table last.

--cpu is a dry run of the same checks and report through the binding's host
path with NumPy (small sizes, no GPU or PyTorch needed). The exit status is
non-zero when any check fails or the GPU path cannot run.
"""

import argparse
import collections
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tolerances import tolerance  # noqa: E402

try:
    import oracle  # noqa: E402  (needs ml_dtypes)
except ImportError as e:  # reported by main(), which can say what to install
    oracle, ORACLE_ERROR = None, e

PAD = -1.5  # exactly representable in every input dtype, outside every loss's target range
DTYPES = ("float16", "bfloat16", "float32", "float64")
# "float32": float32 weights with 16-bit inputs (the accumulator dtype); "scalar_float": a 0-d mask.
MASKS = ("none", "bool", "float", "float32", "prefix_bool", "prefix_float", "scalar_float")
# Several masks in one call (Case.mask "several", Case.masks): (kind, rank) of
# each in list order. kind: "bool", "float" (the inputs' dtype) or "acc" (the
# accumulator dtype: float32 weights for 16-bit inputs); rank: 0 (a 0-d
# weight), 1 (rows: a prefix mask) or 2 (elementwise). Float weights are NaN or
# Inf wherever another mask of no higher rank is 0: never kept.
SEVERAL_MASKS = (
    (("bool", 1), ("float", 2)),  # a padding mask of rows and elementwise weights
    (("bool", 2), ("bool", 1)),  # two booleans of two shapes (AND)
    (("acc", 2), ("float", 0), ("bool", 1)),  # three, a 0-d weight in the middle
)
REDUCTIONS = ("mean", "sum")
# (1, 1): a scalar head before 16-byte-aligned vectors; (1, 2) and (0, 3):
# y_true and y_pred at different 16-byte phases (the scalar path).
OFFSETS = ((1, 1), (1, 2), (0, 3))
# Upstream gradients of (loss, sum, weight_sum): all non-zero, so every term of
# the backward's coefficients is exercised.
UPSTREAM = (0.75, 0.25, 0.5)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
HUGE = 2049 * 1048577  # above 2**31, with a divisor for a prefix mask
REF_CHUNK = 1 << 25  # elements per chunk of the float64 reference
# Parameter sets each loss is checked with; the first is also the one timed.
# A loss of the binding without an entry here fails the check.
LOSS_PARAMS = {
    "squared_error": ((),),
    "absolute_error": ((),),
    "huber": ((1.0,), (0.3,)),
    "binary_crossentropy": ((0.0,), (0.1,)),
    "binary_crossentropy_from_logits": ((0.0,), (0.1,)),
}
KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): the probability clip of binary cross-entropy


def fail(message):
    sys.exit(f"gpu_check: {message}")


def load_kernels(module_dir):
    """The compiled binding, loaded from its file: importing the masked_ops
    package would need TensorFlow."""
    paths = sorted(Path(module_dir).glob("_kernels*.so"))
    if not paths:
        fail(
            f"no compiled binding (_kernels*.so) in {module_dir}; build it with "
            "benchmarks/gpu_check.sh (GPU) or `make build` (--cpu)"
        )
    spec = importlib.util.spec_from_file_location("_kernels", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prefix_split(n):
    """(rows, inner) for a prefix mask on n elements: the largest divisor of n
    below n and up to 4096 as the row length, one row when there is none."""
    for inner in range(min(n - 1, 4096), 1, -1):
        if n % inner == 0:
            return n // inner, inner
    return 1, n


def loss_label(loss, params):
    return f"{loss}({', '.join(f'{x:g}' for x in params)})" if params else loss


@dataclasses.dataclass
class Case:
    n: int
    dtype: str
    mask: str
    reduction: str
    inner: int = 0  # prefix masks: row length (0: prefix_split(n))
    offsets: tuple = (0, 0)  # element offsets of the y_true and y_pred views
    loss: str = "squared_error"  # the loss table's name
    params: tuple = ()
    masks: tuple = ()  # mask "several": SEVERAL_MASKS's (kind, rank) pairs (needs inner)

    @property
    def prefix(self):
        return self.mask.startswith("prefix")

    @property
    def several(self):
        return self.mask == "several"

    @property
    def float_mask(self):
        """A single float mask, whose gradient is checked (the kernels compute
        none for several masks)."""
        return self.mask in ("float", "float32", "prefix_float", "scalar_float")

    @property
    def acc(self):
        return "float64" if self.dtype == "float64" else "float32"

    @property
    def mask_dtype(self):
        """None (no mask, or several: kind_dtype), "bool", or the weights' dtype."""
        if self.mask == "none" or self.several:
            return None
        if not self.float_mask:
            return "bool"
        return "float32" if self.mask == "float32" else self.dtype

    def kind_dtype(self, kind):
        """The dtype of a mask of SEVERAL_MASKS's `kind`."""
        return {"bool": "bool", "float": self.dtype, "acc": self.acc}[kind]

    @property
    def rows_inner(self):
        if self.several:
            return self.n // self.inner, self.inner
        if self.prefix:
            return (self.n // self.inner, self.inner) if self.inner else prefix_split(self.n)
        if self.mask in ("none", "scalar_float"):
            return 1, self.n
        return self.n, 1

    @property
    def shape(self):
        return self.rows_inner if self.prefix or self.several else (self.n,)

    @property
    def mask_sizes(self):
        """Several masks: the number of entries of each (1, rows or n)."""
        return [(1, self.rows_inner[0], self.n)[rank] for _, rank in self.masks]

    @property
    def mask_shape(self):
        return () if self.mask == "scalar_float" else self.shape[: 1 if self.prefix else None]

    @property
    def mask_n(self):
        """Entries of the mask (of the first mask of several)."""
        return self.mask_sizes[0] if self.several else self.rows_inner[0]

    @property
    def math(self):
        """The oracle's element math of the loss, in this case's accumulator."""
        return oracle.LOSSES[self.loss](self.params, self.acc)

    @property
    def loss_kw(self):
        """The binding's keyword arguments naming the loss."""
        return {"loss_name": self.loss, "params": [float(x) for x in self.params]}

    @property
    def label(self):
        return loss_label(self.loss, self.params)

    def name(self):
        extra = f" inner={self.inner}" if self.inner else ""
        extra += f" offsets={self.offsets}" if any(self.offsets) else ""
        mask = self.mask
        if self.several:
            ranks = ("0-d", "rows", "elements")
            mask = "[" + ", ".join(f"{k}({ranks[r]})" for k, r in self.masks) + "]"
        return f"{self.label} n={self.n} {self.dtype} {mask} {self.reduction}{extra}"


def valid_case(case):
    # float32 weights are the accumulator dtype of 16-bit inputs only (for
    # float32 inputs they are the "float" case).
    return case.mask != "float32" or case.dtype in ("float16", "bfloat16")


def chunks(n, size):
    for start in range(0, n, size):
        yield start, min(n, start + size)


# ---------------------------------------------------------------------------
# Inputs: written once against a few array primitives, which NumPy (host) and
# PyTorch (device) backends provide, so the dry run draws the GPU's inputs.


def draw_values(ops, gen, domain, n):
    """y_true and y_pred of n elements in a loss's domain (oracle.ElementMath.domain),
    before padding and poison."""
    if domain == "real":
        t = 3.0 * ops.randn(gen, n)
        return t, t + ops.randn(gen, n)
    # Targets: half hard labels, half soft.
    labels = ops.as_float(ops.rand(gen, n) < 0.5)
    t = ops.where(ops.rand(gen, n) < 0.5, labels, ops.rand(gen, n))
    u = ops.rand(gen, n)
    if domain == "probability":
        # 10 % near 0 and 10 % near 1, across the clip bounds 1e-7 and 1 - 1e-7
        # (some round to exactly 0 or 1).
        tail = 10.0 ** (-9.0 + 8.0 * ops.rand(gen, n))
        return t, ops.where(u < 0.1, tail, ops.where(u < 0.2, 1.0 - tail, ops.rand(gen, n)))
    if domain == "logit":
        # 10 % large enough to saturate the sigmoid.
        x = 4.0 * ops.randn(gen, n)
        return t, ops.where(u < 0.1, 8.0 * x, x)
    raise ValueError(f"no inputs for the domain {domain!r}")


@dataclasses.dataclass
class Inputs:
    t: object  # flat y_true
    p: object  # flat y_pred
    m: object  # the mask (case.mask_shape), or None


@dataclasses.dataclass
class Result:
    out: tuple  # (loss, sum, weight_sum) as Python floats
    count: int
    grads: tuple  # flat (grad_y_true, grad_y_pred, grad_mask or None)
    unwritten: list  # outputs that kept their poison
    outputs: tuple  # every output array, for the repeatability check


class Backend:
    """What both backends share: inputs drawn from their primitives."""

    def make_inputs(self, case, seed, poison=True):
        """Inputs of a case in its loss's domain, padding in 10 % of y_true.
        With poison, elements that are not kept hold NaN predictions and
        zero-weight ones Inf truths (the kernels must not let them through)."""
        gen = self.generator(seed)
        rows, inner = case.rows_inner
        m = None
        if case.several:
            m = self.draw_masks(case, gen, poison)
        elif case.float_mask:
            u = self.rand(gen, rows)
            w = 0.25 + 1.75 * self.rand(gen, rows)
            m = self.cast(self.where(u < 0.3, 0.0, w), case.mask_dtype)
        elif case.mask != "none":
            m = self.rand(gen, rows) < 0.7
        ot, op = case.offsets
        t = self.empty_view(case.n, case.dtype, ot)
        p = self.empty_view(case.n, case.dtype, op)
        domain = case.math.domain
        for s, e in chunks(case.n, REF_CHUNK):
            tc, pc = draw_values(self, gen, domain, e - s)
            tc = self.where(self.rand(gen, e - s) < 0.1, PAD, tc)
            if poison:
                dropped = tc == PAD
                if case.several:
                    zero = self.several_zero(case, m, s, e)
                    dropped = dropped | zero
                    tc = self.where(zero, np.inf, tc)
                elif m is not None:
                    w = self.as_float(m[self.arange(s, e) // inner])
                    dropped = dropped | (w == 0)
                    tc = self.where(w == 0, np.inf, tc)
                pc = self.where(dropped, np.nan, pc)
            self.store(t, s, e, tc)
            self.store(p, s, e, pc)
        if case.several:
            shapes = ((), (rows,), (rows, inner))
            return Inputs(
                t, p, [x.reshape(shapes[r]) for x, (_, r) in zip(m, case.masks, strict=True)]
            )
        return Inputs(t, p, None if m is None else m.reshape(case.mask_shape))

    def draw_masks(self, case, gen, poison):
        """Several masks, flat, in list order: 70 % of the entries kept (a 0-d
        mask always), float weights in [0.25, 2). With poison, float weights
        are NaN or Inf wherever another mask of no higher rank is 0, where
        their combination is 0 all the same."""
        masks = []
        for (kind, rank), size in zip(case.masks, case.mask_sizes, strict=True):
            keep = self.rand(gen, size) < (1.0 if rank == 0 else 0.7)
            if kind != "bool":
                keep = self.where(keep, 0.25 + 1.75 * self.rand(gen, size), 0.0)
            masks.append(keep)
        if poison:
            for k, ((kind, rank), size) in enumerate(zip(case.masks, case.mask_sizes, strict=True)):
                if kind == "bool" or rank == 0:
                    continue
                i = self.arange(0, size)
                for j, ((_, rank_j), size_j) in enumerate(
                    zip(case.masks, case.mask_sizes, strict=True)
                ):
                    if j != k and 0 < rank_j <= rank:
                        zero = masks[j][i // (size // size_j)] == 0
                        masks[k] = self.where(zero & (i % 2 == 0), np.nan, masks[k])
                        masks[k] = self.where(zero & (i % 2 == 1), np.inf, masks[k])
        return [
            m if kind == "bool" else self.cast(m, case.kind_dtype(kind))
            for m, (kind, _) in zip(masks, case.masks, strict=True)
        ]

    def several_zero(self, case, masks, s, e):
        """Elements s..e that one of several masks weighs 0."""
        zero = None
        for m, size in zip(masks, case.mask_sizes, strict=True):
            z = m[self.arange(s, e) // (case.n // size)] == 0
            zero = z if zero is None else zero | z
        return zero


# ---------------------------------------------------------------------------
# The float64 reference: tests/oracle.py's element math and backward
# coefficients, on chunks of be.xp arrays (NumPy; CuPy on the GPU, which NumPy
# calls dispatch to).


class Tally:
    """Elements out of tolerance in one output, with the first few."""

    def __init__(self, what):
        self.what, self.bad, self.total, self.examples = what, 0, 0, []

    def add(self, bad_count, total, examples):
        self.bad += bad_count
        self.total += total
        self.examples.extend(examples[: max(0, 3 - len(self.examples))])

    def failure(self):
        if self.bad == 0:
            return None
        return f"{self.what}: {self.bad} of {self.total} out of tolerance, e.g. {self.examples}"


def examples(xp, bad, actual, expected, offset):
    i = xp.flatnonzero(bad)[:3].tolist()
    return [(int(j) + offset, float(actual[j]), float(expected[j])) for j in i]


def out_of_bound(xp, actual, expected, bound, dtype):
    """actual farther than bound from expected, except where the result
    overflows dtype's range and actual is the infinity of its sign (the
    rounding of such a result)."""
    bad = ~(abs(actual - expected) <= bound)
    big = abs(expected) + bound >= float(oracle.finfo(dtype).max)
    return bad & ~(big & (actual == xp.where(expected > 0, np.inf, -np.inf)))


def combined_weights(be, case, masks, s, e):
    """float64 weights of elements s..e under several masks as the kernels
    combine them (tests/oracle.py's combined_weights): in list order, in the
    accumulator dtype, the product, or 0 once any weight is 0."""
    xp, acc = be.xp, np.dtype(case.acc)
    combined = None
    for m, size in zip(masks, case.mask_sizes, strict=True):
        per = case.n // size  # elements each entry covers
        r0, r1 = s // per, (e - 1) // per + 1
        local = xp.arange(s, e, dtype=xp.int64) // per - r0
        w = be.f64(m.reshape(-1)[r0:r1])[local].astype(acc)
        if combined is None:
            combined = w
        else:
            combined = xp.where((combined != 0) & (w != 0), combined * w, acc.type(0))
    return combined.astype(np.float64)


def check_reference(be, case, inp, result):
    """Failures of one run against the float64 oracle (empty when it passed).
    Bounds as in tests/fuzz_cases.py: relative to the magnitudes of the terms
    a result is made of, which may cancel."""
    xp, math = be.xp, case.math
    inner = case.rows_inner[1]
    padding = oracle.kernel_padding(PAD, case.dtype)
    loss_k, sum_k, ws_k = result.out
    coeffs = oracle.coefficients(UPSTREAM, loss_k, ws_k, case.reduction)
    rtol_e, atol_e = tolerance(case.dtype, "elementwise")
    rtol_a, atol_a = tolerance(case.dtype, "accumulation")
    total = total_scale = weight_sum = weight_scale = count = 0
    tallies = [Tally("grad_y_true"), Tally("grad_y_pred")]
    grads = (
        (tallies[0], result.grads[0], math.grad_true, math.grad_true_scale),
        (tallies[1], result.grads[1], math.grad_pred, math.grad_pred_scale),
    )
    m_flat = None if inp.m is None or case.several else inp.m.reshape(-1)
    if case.float_mask:
        mask_grad, mask_scale, mask_kept = (xp.zeros(case.mask_n) for _ in range(3))
    with np.errstate(all="ignore"):
        for s, e in chunks(case.n, REF_CHUNK):
            t = be.f64(inp.t[s:e])
            p = be.f64(inp.p[s:e])
            r0, r1 = s // inner, (e - 1) // inner + 1
            local = xp.arange(s, e, dtype=xp.int64) // inner - r0
            if case.several:
                w = combined_weights(be, case, inp.m, s, e)
            else:
                w = xp.ones(e - s) if m_flat is None else be.f64(m_flat[r0:r1])[local]
            keep = (w != 0) & (t != padding)
            value = math.value(t, p)
            value_scale = math.value_scale(t, p)
            total += float(xp.where(keep, w * value, 0.0).sum())
            total_scale += float(xp.where(keep, abs(w) * value_scale, 0.0).sum())
            weight_sum += float(xp.where(keep, w, 0.0).sum())
            weight_scale += float(xp.where(keep, abs(w), 0.0).sum())
            count += int(keep.sum())
            for tally, grad, g, g_scale in grads:
                expected = xp.where(keep, coeffs.times_a(w, g(t, p)), 0.0)
                scale = xp.where(keep, coeffs.times_a_scale(w, g_scale(t, p)), 0.0)
                actual = be.f64(grad[s:e])
                bound = atol_e + rtol_e * (abs(expected) + scale)
                bad = out_of_bound(xp, actual, expected, bound, case.dtype)
                bad = bad | (~keep & (actual != 0))  # exactly 0 where not kept
                tally.add(int(bad.sum()), e - s, examples(xp, bad, actual, expected, s))
            if case.float_mask:
                gw = xp.where(keep, coeffs.grad_weight(value), 0.0)
                sw = xp.where(keep, coeffs.grad_weight_scale(value_scale), 0.0)
                for acc, x in ((mask_grad, gw), (mask_scale, sw), (mask_kept, keep * 1.0)):
                    acc[r0:r1] += xp.bincount(local, weights=x, minlength=r1 - r0)
    failures = []
    if result.count != count:
        failures.append(f"count: got {result.count}, reference {count}")
    e_sum = atol_a * case.n + rtol_a * (abs(total) + total_scale)
    e_ws = atol_a * case.n + rtol_a * (abs(weight_sum) + weight_scale)
    checks = [("sum", sum_k, total, e_sum), ("weight_sum", ws_k, weight_sum, e_ws)]
    if case.reduction == "sum":
        checks.append(("loss", loss_k, total, e_sum))
    elif weight_sum == 0:
        if loss_k != 0.0:
            failures.append(f"loss: nothing kept but got {loss_k!r} instead of 0")
    elif abs(weight_sum) > 2 * e_ws:
        # sum / weight_sum with both known to within e_sum and e_ws, plus the
        # division's rounding.
        mean = total / weight_sum
        bound = (e_sum + abs(mean) * e_ws) / (abs(weight_sum) - e_ws)
        checks.append(("loss", loss_k, mean, bound + atol_a + rtol_a * abs(mean)))
    for what, got, want, bound in checks:
        if not abs(got - want) <= bound:
            failures.append(f"{what}: got {got!r}, float64 reference {want!r}")
    if case.float_mask:
        actual = be.f64(result.grads[2])
        # A row sum's accumulation error (per term and relative to the terms'
        # magnitudes), then the rounding to the mask dtype.
        rtol_m, atol_m = tolerance(case.mask_dtype, "elementwise")
        terms = atol_a * inner + rtol_a * (abs(mask_grad) + mask_scale)
        bound = terms + atol_m + rtol_m * (abs(mask_grad) + mask_scale)
        bad = out_of_bound(xp, actual, mask_grad, bound, case.mask_dtype)
        # Exactly 0 where nothing of the row is kept (weight 0 included).
        bad = bad | ((mask_kept == 0) & (actual != 0))
        tally = Tally("grad_mask")
        tally.add(int(bad.sum()), case.mask_n, examples(xp, bad, actual, mask_grad, 0))
        tallies.append(tally)
    failures.extend(f for f in (t.failure() for t in tallies) if f)
    return failures


# ---------------------------------------------------------------------------
# The peers' formulas: per loss, its element value as PyTorch and as the NumPy
# API (run as jax.numpy under jax.jit, and with NumPy in the dry run), on
# inputs in the accumulator dtype; the masked mean around them is shared.


def _smoothed(t, smoothing):
    return t if smoothing == 0 else t * (1.0 - smoothing) + 0.5 * smoothing


def _torch_bce(torch, t, p, q):
    # Keras's binary_crossentropy: clip, then the two logs.
    z = _smoothed(t, q[0])
    c = torch.clamp(p, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -(z * torch.log(c) + (1.0 - z) * torch.log(1.0 - c))


def _array_bce(xp, t, p, q):
    z = _smoothed(t, q[0])
    c = xp.clip(p, KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -(z * xp.log(c) + (1.0 - z) * xp.log(1.0 - c))


def _array_huber(xp, t, p, q):
    # torch.nn.functional.huber_loss's form.
    a, d = xp.abs(p - t), q[0]
    return xp.where(a < d, 0.5 * a * a, d * (a - 0.5 * d))


def _array_bce_logits(xp, t, x, q):
    # The stable form binary_cross_entropy_with_logits computes.
    return xp.maximum(x, 0.0) - x * _smoothed(t, q[0]) + xp.log1p(xp.exp(-xp.abs(x)))


class PeerFormula(NamedTuple):
    torch: object  # (torch, t, p, params) -> elementwise loss
    array: object  # (xp, t, p, params) -> elementwise loss; xp is jax.numpy or NumPy


PEER_FORMULAS = {
    "squared_error": PeerFormula(
        lambda torch, t, p, q: torch.nn.functional.mse_loss(p, t, reduction="none"),
        lambda xp, t, p, q: (t - p) ** 2,
    ),
    "absolute_error": PeerFormula(
        lambda torch, t, p, q: torch.nn.functional.l1_loss(p, t, reduction="none"),
        lambda xp, t, p, q: xp.abs(t - p),
    ),
    "huber": PeerFormula(
        lambda torch, t, p, q: torch.nn.functional.huber_loss(p, t, reduction="none", delta=q[0]),
        _array_huber,
    ),
    "binary_crossentropy": PeerFormula(_torch_bce, _array_bce),
    "binary_crossentropy_from_logits": PeerFormula(
        lambda torch, t, x, q: torch.nn.functional.binary_cross_entropy_with_logits(
            x, _smoothed(t, q[0]), reduction="none"
        ),
        _array_bce_logits,
    ),
}


def torch_masked_loss(torch, case):
    """The unfused masked mean of case's loss in PyTorch: f(t, p, m)."""
    value = PEER_FORMULAS[case.loss].torch
    acc = {"float32": torch.float32, "float64": torch.float64}[case.acc]
    prefix, params = case.prefix, case.params

    def masked(t, p, m):
        w = m.to(acc)
        if prefix:
            w = w[:, None]
        keep = (w != 0) & (t != PAD)
        v = value(torch, t.to(acc), p.to(acc), params)
        total = torch.where(keep, w * v, 0.0).sum()
        ws = torch.where(keep, w, 0.0).sum()
        return torch.where(ws != 0, total / torch.where(ws != 0, ws, 1.0), 0.0)

    return masked


def array_masked_loss(xp, case):
    """The same with the NumPy API (jax.numpy or NumPy)."""
    value = PEER_FORMULAS[case.loss].array
    acc, prefix, params = case.acc, case.prefix, case.params

    def masked(t, p, m):
        w = m.astype(acc)
        if prefix:
            w = w[:, None]
        keep = (w != 0) & (t != PAD)
        v = value(xp, t.astype(acc), p.astype(acc), params)
        total = xp.where(keep, w * v, 0.0).sum()
        ws = xp.where(keep, w, 0.0).sum()
        return xp.where(ws != 0, total / xp.where(ws != 0, ws, 1.0), 0.0)

    return masked


def check_peer_formulas(columns, losses):
    """Each peer formula against the oracle's element value (float32 inputs in
    the loss's domain), so the timings compare against the same loss. columns:
    (label, evaluate(formula, t, p, params) -> float64 NumPy, optional); an
    optional column that raises is not run rather than failed. Returns records."""
    records = []
    rng = np.random.default_rng(7)
    for loss in losses:
        for params in LOSS_PARAMS[loss]:
            math = oracle.LOSSES[loss](params, "float32")
            t, p = (x.astype(np.float32) for x in draw_values(NumpyOps, rng, math.domain, 4096))
            t64, p64 = t.astype(np.float64), p.astype(np.float64)
            want, scale = math.value(t64, p64), math.value_scale(t64, p64)
            for label, evaluate, optional in columns:
                name = f"{label} formula of {loss_label(loss, params)} matches the oracle"
                try:
                    with np.errstate(all="ignore"):
                        got = evaluate(PEER_FORMULAS[loss], t, p, params)
                except Exception as e:  # a broken peer is reported, not fatal
                    why = f"raised {type(e).__name__}: {e}"
                    status = "not run" if optional else "fail"
                    records.append(
                        {"case": name, "status": status, "failures": [why], "reason": why}
                    )
                    continue
                # Loose enough for a float32 log near 1 (a few ulps of 1), far
                # tighter than any wrong term, sign, clip or parameter.
                bad = ~(np.abs(got - want) <= 1e-6 + 1e-5 * (np.abs(want) + scale))
                failures = []
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    failures.append(
                        f"{int(bad.sum())} of {bad.size} differ, e.g. t={t[i]!r} p={p[i]!r}: "
                        f"{got[i]!r} instead of {want[i]!r}"
                    )
                records.append(
                    {"case": name, "status": "fail" if failures else "pass", "failures": failures}
                )
    return records


# ---------------------------------------------------------------------------
# Backends.


class NumpyOps:
    """Array primitives of the host backend (and of the formula check's inputs)."""

    xp = np

    @staticmethod
    def generator(seed):
        return np.random.default_rng(seed)

    @staticmethod
    def rand(gen, n):
        return gen.random(n)

    @staticmethod
    def randn(gen, n):
        return gen.standard_normal(n)

    where = staticmethod(np.where)

    @staticmethod
    def as_float(x):
        return np.asarray(x, np.float64)

    @staticmethod
    def arange(s, e):
        return np.arange(s, e, dtype=np.int64)


def refusal(name, call, error, text):
    """(name, None) when call() raises `error` with `text` in its message,
    else (name, what happened)."""
    try:
        call()
    except error as e:
        return name, None if text in str(e) else f"wrong message: {e}"
    except Exception as e:  # the wrong error is a failure, not a crash
        return name, f"{type(e).__name__}: {e}"
    return name, "was not refused"


def loss_refusals(losses, forward):
    """A bad loss_name or parameter must be refused with a ValueError naming
    the problem; forward(loss_name, params) runs one forward call."""
    wanted = [("an unknown loss_name", "no_such_loss", [], "unknown loss")]
    if "squared_error" in losses:
        wanted.append(("squared_error with a parameter", "squared_error", [1.0], "params must"))
    if "huber" in losses:
        wanted.append(("huber without its delta", "huber", [], "params must"))
        wanted.append(("huber with delta 0", "huber", [0.0], "delta"))
    if "binary_crossentropy" in losses:
        wanted.append(("label_smoothing 1.5", "binary_crossentropy", [1.5], "label_smoothing"))
    return [
        refusal(f"{what} is refused", lambda n=n, q=q: forward(n, q), ValueError, text)
        for what, n, q, text in wanted
    ]


def several_mask_refusals(forward, backward_with_mask_gradient, two_masks):
    """Six masks, and a mask gradient of several masks (which the kernels do
    not compute), must be refused with their messages: forward(masks) and
    backward_with_mask_gradient(masks) run one call each."""
    return [
        refusal(
            "a list of 6 masks is refused",
            lambda: forward(two_masks * 3),
            ValueError,
            "at most 5 masks",
        ),
        refusal(
            "a mask gradient of several masks is refused",
            lambda: backward_with_mask_gradient(two_masks),
            ValueError,
            "several masks",
        ),
    ]


class HostBackend(NumpyOps, Backend):
    """NumPy arrays through the binding's host path (the dry run)."""

    name = "cpu"
    poisons = False

    def __init__(self, kernels):
        self.k = kernels

    def describe(self):
        return {
            "backend": "host (NumPy)",
            "machine": platform.processor() or platform.machine(),
            "reference": "NumPy",
        }

    @staticmethod
    def empty_view(n, dtype, offset):
        """n elements of dtype, `offset` elements into a larger buffer."""
        return np.empty(n + offset, oracle.np_dtype(dtype))[offset:]

    @staticmethod
    def cast(x, dtype):
        return x.astype(oracle.np_dtype(dtype))

    @staticmethod
    def store(view, s, e, values):
        with np.errstate(over="ignore", invalid="ignore"):
            view[s:e] = values

    def run(self, case, inp):
        t = inp.t.reshape(case.shape)
        p = inp.p.reshape(case.shape)
        kw = case.loss_kw
        loss, total, ws, count = self.k.forward(t, p, inp.m, PAD, case.reduction, **kw)
        grads = self.k.backward(
            *UPSTREAM, t, p, inp.m, PAD, float(loss), float(ws), case.reduction,
            want_y_true=True, want_y_pred=True, want_mask=case.float_mask, **kw,
        )  # fmt: skip
        grads = tuple(None if g is None else g.reshape(-1) for g in grads)
        outputs = tuple(np.asarray(x) for x in (loss, total, ws, count, *grads) if x is not None)
        return Result((float(loss), float(total), float(ws)), int(count), grads, [], outputs)

    @staticmethod
    def same_bits(a, b):
        return all(x.tobytes() == y.tobytes() for x, y in zip(a.outputs, b.outputs, strict=False))

    @staticmethod
    def f64(x):
        return np.asarray(x, np.float64)

    def memory_allows(self, case):
        return True, ""

    def one_pass(self, loss, params, dtype, t, p, m):
        """(outputs of forward then backward for upstream (1, 0, 0), outputs
        of forward_backward), NumPy arrays from NumPy t, p (float64) and m."""
        k, kw = self.k, {"loss_name": loss, "params": list(params)}
        t, p = (x.astype(oracle.np_dtype(dtype)) for x in (t, p))
        loss_v, total, ws, count = k.forward(t, p, m, None, "mean", **kw)
        g_true, g_pred, _ = k.backward(
            1.0, 0.0, 0.0, t, p, m, None, loss_v, ws, "mean", True, True, False, **kw
        )
        two = [np.asarray(x) for x in (loss_v, total, ws, count, g_true, g_pred)]
        one = [np.asarray(x) for x in k.forward_backward(t, p, m, "mean", True, True, **kw)]
        return two, one, []

    def api_checks(self):
        k, t = self.k, np.ones(8, np.float32)
        checks = loss_refusals(k.losses, lambda name, q: k.forward(t, t, loss_name=name, params=q))
        return checks + several_mask_refusals(
            lambda masks: k.forward(t, t, masks),
            lambda masks: k.backward(
                *UPSTREAM, t, t, masks, None, 1.0, 8.0, "mean", want_mask=True
            ),
            [t, t],
        )

    def release(self):
        pass


class MisalignedView:
    """A device buffer seen `shift` bytes further on: element-misaligned."""

    def __init__(self, tensor, shift):
        cai = dict(tensor.__cuda_array_interface__)
        cai["data"] = (cai["data"][0] + shift, False)
        cai["shape"] = (cai["shape"][0] - 1, *cai["shape"][1:])
        cai["strides"] = None
        self.__cuda_array_interface__ = cai


class CudaBackend(Backend):
    """PyTorch CUDA tensors through the binding's CUDA launchers; the float64
    reference runs on the device with CuPy (on the host without it)."""

    name = "cuda"
    poisons = True
    # Without CuPy the reference runs in NumPy on the host: cases above this
    # many elements would take minutes each and are not run.
    HOST_REFERENCE_LIMIT = 1 << 26

    def __init__(self, kernels, torch):
        self.k, self.torch = kernels, torch
        self.dev = torch.device("cuda")
        self.t_dtypes = {
            "float16": torch.float16,
            "bfloat16": torch.bfloat16,
            "float32": torch.float32,
            "float64": torch.float64,
        }
        self.cupy, self.cupy_problem = self.probe_cupy()
        self.xp = np if self.cupy is None else self.cupy

    def probe_cupy(self):
        """(cupy, None) when CuPy can take a PyTorch tensor and compute on it,
        else (None, why): a CuPy built for another CUDA imports but fails later."""
        try:
            import cupy

            x = cupy.from_dlpack(self.torch.arange(4, dtype=self.torch.float64, device=self.dev))
            if float(np.where(x > 1, x, 0.0).sum()) != 5.0:
                return None, "CuPy computed a wrong sum"
            return cupy, None
        except Exception as e:  # no CuPy, or one that cannot run here
            return None, f"{type(e).__name__}: {e}"

    def describe(self):
        torch = self.torch
        p = torch.cuda.get_device_properties(self.dev)
        return {
            "backend": "cuda",
            "device": p.name,
            "compute_capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "kernels_cuda_runtime": self.k.cuda_runtime_version,
            "cuda_driver": self.k.cuda_driver_version(),
            "reference": (
                f"NumPy on the host (CuPy: {self.cupy_problem})"
                if self.cupy is None
                else "CuPy on the device"
            ),
        }

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def cai(self, x):
        # The protocol has no bfloat16 typestr: pass the bits with dtype="bfloat16".
        return x.view(self.torch.int16) if x.dtype == self.torch.bfloat16 else x

    def generator(self, seed):
        gen = self.torch.Generator(device=self.dev)
        gen.manual_seed(seed)
        return gen

    def rand(self, gen, n):
        return self.torch.rand(n, generator=gen, device=self.dev)

    def randn(self, gen, n):
        return self.torch.randn(n, generator=gen, device=self.dev)

    def where(self, cond, x, y):
        return self.torch.where(cond, x, y)

    @staticmethod
    def as_float(x):
        return x.float()

    def arange(self, s, e):
        return self.torch.arange(s, e, device=self.dev, dtype=self.torch.int64)

    def empty_view(self, n, dtype, offset):
        return self.torch.empty(n + offset, dtype=self.t_dtypes[dtype], device=self.dev)[offset:]

    def cast(self, x, dtype):
        return x.to(self.t_dtypes[dtype])

    @staticmethod
    def store(view, s, e, values):
        view[s:e].copy_(values)

    def f64(self, x):
        """float64 copy of a tensor as an array of self.xp."""
        y = x.to(self.torch.float64)
        return y.cpu().numpy() if self.cupy is None else self.cupy.from_dlpack(y)

    def release(self):
        # CuPy's pool keeps the reference's blocks, which PyTorch cannot use.
        if self.cupy is not None:
            self.cupy.get_default_memory_pool().free_all_blocks()
        self.torch.cuda.empty_cache()

    def memory_allows(self, case):
        if self.cupy is None and case.n > self.HOST_REFERENCE_LIMIT:
            return False, "without CuPy the float64 reference would run on the host for minutes"
        self.release()  # cached blocks count as used for the driver
        free, _ = self.torch.cuda.mem_get_info()
        item = ITEMSIZE[case.dtype]
        # Inputs, the gradients of two runs, comparison and reference temporaries, slack.
        need = 8 * case.n * item + case.mask_n * 16 + 32 * REF_CHUNK * 8 + (2 << 30)
        if need > free:
            return False, f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        return True, ""

    def run(self, case, inp):
        torch, k = self.torch, self.k
        acc = self.t_dtypes[case.acc]
        shape = case.shape
        out = torch.empty(3, dtype=acc, device=self.dev)
        count = torch.empty(1, dtype=torch.int64, device=self.dev)
        # Gradients at the offsets of the inputs they belong to: same 16-byte
        # phase, so the vector path (or the scalar one) is taken as for the inputs.
        ot, op = case.offsets
        grads = [self.empty_view(case.n, case.dtype, o) for o in (ot, op)]
        grads.append(torch.empty_like(inp.m) if case.float_mask else None)
        fw = torch.empty(k.forward_workspace_bytes(case.n), dtype=torch.uint8, device=self.dev)
        bw = torch.empty(
            k.backward_workspace_bytes(case.n, case.mask_n, case.float_mask),
            dtype=torch.uint8,
            device=self.dev,
        )
        upstream = torch.tensor(UPSTREAM, dtype=acc, device=self.dev)
        out.fill_(float("nan"))
        count.fill_(-1)
        for g in grads:
            if g is not None:
                g.fill_(float("nan"))
        t, p = (self.cai(x.view(shape)) for x in (inp.t, inp.p))
        if case.several:
            m = [self.cai(x) for x in inp.m]
        else:
            m = None if inp.m is None else self.cai(inp.m)
        kw = {"dtype": case.dtype, "stream": self.stream(), **case.loss_kw}
        k.forward_cuda(t, p, m, PAD, case.reduction, out, count, fw, **kw)
        g_views = [
            None if g is None else self.cai(g.view(x.shape))
            for g, x in zip(grads, (inp.t.view(shape), inp.p.view(shape), inp.m), strict=False)
        ]
        k.backward_cuda(upstream, out, t, p, m, PAD, case.reduction, *g_views, bw, **kw)
        torch.cuda.synchronize()
        unwritten = []
        if not bool(torch.isfinite(out).all()):
            unwritten.append(f"out={out.tolist()}")
        if int(count.item()) == -1:
            unwritten.append("count")
        for name, g in zip(("grad_y_true", "grad_y_pred", "grad_mask"), grads, strict=False):
            if g is not None and bool(torch.isnan(g).any()):
                unwritten.append(f"{name} ({int(torch.isnan(g).sum())} NaN left)")
        outputs = tuple(x for x in (out, count, *grads) if x is not None)
        o = out.tolist()
        flat = tuple(None if g is None else g.reshape(-1) for g in grads)
        return Result((o[0], o[1], o[2]), int(count.item()), flat, unwritten, outputs)

    def one_pass(self, loss, params, dtype, t, p, m):
        """As HostBackend.one_pass on the device (forward_backward_cuda
        against forward_cuda + backward_cuda), plus scale_gradient_cuda: in
        place with 1 (nothing changes), and 2 into another buffer (exact)."""
        torch, k = self.torch, self.k
        td = self.t_dtypes[dtype]
        acc = self.t_dtypes["float64" if dtype == "float64" else "float32"]
        t, p = (torch.tensor(x, device=self.dev).to(td) for x in (t, p))
        m = None if m is None else torch.tensor(m, device=self.dev)
        n = t.numel()
        kw = {"dtype": dtype, "stream": self.stream(), "loss_name": loss, "params": list(params)}
        views = [self.cai(x) for x in (t, p)]
        mv = None if m is None else self.cai(m)

        def buffers():
            out = torch.full((3,), float("nan"), dtype=acc, device=self.dev)
            count = torch.full((1,), -1, dtype=torch.int64, device=self.dev)
            grads = [torch.full_like(p, float("nan")) for _ in range(2)]
            return out, count, grads

        out, count, grads = buffers()
        fw = torch.empty(k.forward_workspace_bytes(n), dtype=torch.uint8, device=self.dev)
        k.forward_cuda(*views, mv, None, "mean", out, count, fw, **kw)
        upstream = torch.tensor((1.0, 0.0, 0.0), dtype=acc, device=self.dev)
        bw = torch.empty(
            k.backward_workspace_bytes(n, 1, False), dtype=torch.uint8, device=self.dev
        )
        g_views = [self.cai(g) for g in grads]
        k.backward_cuda(upstream, out, *views, mv, None, "mean", *g_views, None, bw, **kw)
        two = [out, count, *grads]
        out1, count1, grads1 = buffers()
        ws = torch.empty(k.forward_backward_workspace_bytes(n), dtype=torch.uint8, device=self.dev)
        k.forward_backward_cuda(
            *views, mv, "mean", out1, count1, *[self.cai(g) for g in grads1], ws, **kw
        )
        one = [out1, count1, *grads1]
        failures = []
        g = grads1[1]
        before = g.clone()
        one_scale = torch.ones(1, dtype=acc, device=self.dev)
        k.scale_gradient_cuda(
            one_scale, self.cai(g), self.cai(g), dtype=dtype, stream=self.stream()
        )
        doubled = torch.full_like(g, float("nan"))
        k.scale_gradient_cuda(
            2 * one_scale, self.cai(g), self.cai(doubled), dtype=dtype, stream=self.stream()
        )
        torch.cuda.synchronize()
        u8 = torch.uint8
        if not torch.equal(before.view(-1).view(u8), g.view(-1).view(u8)):
            failures.append("scale_gradient_cuda with 1 in place changed the gradient")
        if not torch.equal(doubled, 2 * before):
            failures.append("scale_gradient_cuda with 2 is not exactly twice the gradient")
        host = (
            [x.view(-1).view(u8).cpu().numpy() for x in two],
            [x.view(-1).view(u8).cpu().numpy() for x in one],
        )
        return host[0], host[1], failures

    def same_bits(self, a, b):
        u8 = self.torch.uint8
        return all(
            self.torch.equal(x.reshape(-1).view(u8), y.reshape(-1).view(u8))
            for x, y in zip(a.outputs, b.outputs, strict=False)
        )

    def api_checks(self):
        """Calls the binding must refuse before launching anything: (name,
        failure or None) pairs."""
        torch, k = self.torch, self.k
        x = torch.ones(1 << 12, device=self.dev)
        raw = torch.zeros(4 * (1 << 12) + 4, dtype=torch.uint8, device=self.dev)
        out = torch.empty(3, device=self.dev)
        count = torch.empty(1, dtype=torch.int64, device=self.dev)
        ws = torch.empty(k.forward_workspace_bytes(x.numel()), dtype=torch.uint8, device=self.dev)
        stream = self.stream()
        # Element-misaligned: one byte into a float32 buffer (16-byte-misaligned
        # but element-aligned views are exercised by the offset cases).
        bad = MisalignedView(raw.view(torch.float32), 1)
        good = x[: bad.__cuda_array_interface__["shape"][0]]
        checks = [
            refusal(
                "element-misaligned y_pred is refused",
                lambda: k.forward_cuda(
                    good, bad, None, None, "mean", out, count, ws, stream=stream
                ),
                ValueError,
                "y_pred's device buffer is not aligned to its 4-byte element size",
            ),
            # PyTorch tensors name no stream: without stream= the call has no order.
            refusal(
                "a call without stream= on PyTorch tensors is refused",
                lambda: k.forward_cuda(x, x, None, None, "mean", out, count, ws),
                ValueError,
                "no stream to launch on",
            ),
        ]
        checks += loss_refusals(
            k.losses,
            lambda name, q: k.forward_cuda(
                x, x, None, None, "mean", out, count, ws, stream=stream, loss_name=name, params=q
            ),
        )
        bw = torch.empty(
            k.backward_workspace_bytes(x.numel(), x.numel(), True),
            dtype=torch.uint8,
            device=self.dev,
        )
        up = torch.tensor(UPSTREAM, device=self.dev)
        g = [torch.empty_like(x) for _ in range(3)]
        checks += several_mask_refusals(
            lambda masks: k.forward_cuda(x, x, masks, None, "mean", out, count, ws, stream=stream),
            lambda masks: k.backward_cuda(
                up, out, x, x, masks, None, "mean", *g, bw, stream=stream
            ),
            [x, x],
        )
        # The context survived: a valid call still runs and is right.
        k.forward_cuda(x, x, None, None, "mean", out, count, ws, stream=stream)
        torch.cuda.synchronize()
        got = (out.tolist(), int(count.item()))
        want = ([0.0, 0.0, float(x.numel())], x.numel())
        checks.append(("a valid call after the refusals", None if got == want else f"{got}"))
        return checks


# ---------------------------------------------------------------------------
# Correctness.


def full_matrix(mode, loss="squared_error", params=()):
    """Every size, dtype, mask kind and reduction, with prefix rows, segments,
    offsets and (on the GPU) 2**28 and > 2**31 elements."""
    cuda = mode == "cuda"
    kw = {"loss": loss, "params": params}
    small = (1, 7, 1023, 2**20 + 3) if cuda else (1, 7, 1023, 2**17 + 3)
    cases = [
        Case(n, d, m, r, **kw) for n in small for d in DTYPES for m in MASKS for r in REDUCTIONS
    ]
    # Prefix rows shorter than a vector or a warp: vectors spanning row ends,
    # lane groups of 2 to 32 in the mask gradient.
    rows = 3001 if cuda else 301
    cases += [
        Case(rows * inner, d, m, "mean", inner=inner, **kw)
        for inner in (2, 3, 5, 8, 17, 33)
        for d in DTYPES
        for m in ("prefix_bool", "prefix_float")
    ]
    # Long rows split into segments whose partials a second kernel adds.
    long_row = 100_003 if cuda else 20_011
    cases += [Case(3 * long_row, d, "prefix_float", "sum", inner=long_row, **kw) for d in DTYPES]
    cases += [Case(2**22 if cuda else 2**18, d, "scalar_float", "mean", **kw) for d in DTYPES]
    cases += [
        Case(2**16 + 5, d, m, "mean", offsets=o, **kw)
        for o in OFFSETS
        for d in DTYPES
        for m in ("none", "bool", "float", "prefix_float")
    ]
    if cuda:
        cases += [Case(2**28, d, m, "mean", **kw) for d in DTYPES for m in ("bool", "prefix_float")]
        cases += [Case(HUGE, "float16", m, "mean", **kw) for m in ("bool", "prefix_float")]
    return cases


def loss_subset(mode, loss, params):
    """A representative subset for one loss and parameter set: each dtype and
    mask kind at two sizes (mean and sum alternating), short and segmented
    prefix rows, the three offsets, and each dtype above 2**24 elements (where
    float32 counts and sums stop being exact integers)."""
    cuda = mode == "cuda"
    kw = {"loss": loss, "params": params}
    cases = []
    for i, n in enumerate((7, 2**20 + 3) if cuda else (7, 2**17 + 3)):
        for j, d in enumerate(DTYPES):
            for k, m in enumerate(MASKS):
                cases.append(Case(n, d, m, REDUCTIONS[(i + j + k) % 2], **kw))
    rows = 3001 if cuda else 301
    long_row = 100_003 if cuda else 20_011
    for j, d in enumerate(DTYPES):
        for k, inner in enumerate((3, 33)):
            m = ("prefix_bool", "prefix_float")[(j + k) % 2]
            cases.append(Case(rows * inner, d, m, REDUCTIONS[k], inner=inner, **kw))
        cases.append(Case(3 * long_row, d, "prefix_float", "sum", inner=long_row, **kw))
        for k, o in enumerate(OFFSETS):
            m = ("none", "bool", "float", "prefix_float")[(j + k) % 4]
            cases.append(Case(2**16 + 5, d, m, "mean", offsets=o, **kw))
    rows, inner = (4097, 4099) if cuda else (513, 515)
    for j, d in enumerate(DTYPES):
        if j % 2:
            cases.append(Case(rows * inner, d, "prefix_float", "sum", inner=inner, **kw))
        else:
            cases.append(Case(rows * inner, d, "bool", "mean", **kw))
    return cases


def several_masks_cases(mode, loss, params):
    """Each SEVERAL_MASKS combination for each dtype, mean and sum
    alternating, at a few elements and at (rows, inner) with an odd row
    length (vectors span rows) over several blocks."""
    shapes = ((7, 3), (6433, 163) if mode == "cuda" else (1225, 107))  # 2**20+3, 2**17+3
    return [
        Case(
            rows * inner,
            d,
            "several",
            REDUCTIONS[(i + j + k) % 2],
            inner=inner,
            loss=loss,
            params=params,
            masks=masks,
        )
        for i, (rows, inner) in enumerate(shapes)
        for j, d in enumerate(DTYPES)
        for k, masks in enumerate(SEVERAL_MASKS)
    ]


def correctness_cases(mode, losses=None):
    """squared_error's full matrix, then each other loss's subset for each of
    its parameter sets; for each loss and parameter set, several masks."""
    losses = tuple(LOSS_PARAMS) if losses is None else losses
    cases = []
    for loss in losses:
        for params in LOSS_PARAMS[loss]:
            if loss == "squared_error":
                cases += full_matrix(mode, loss, params)
            else:
                cases += loss_subset(mode, loss, params)
            cases += several_masks_cases(mode, loss, params)
    return [c for c in cases if valid_case(c)]


def coverage(kernels):
    """(losses to check, records of losses the check cannot cover)."""
    records = []
    compiled = list(kernels.losses)
    for loss in compiled:
        missing = [
            what
            for what, table in (
                ("LOSS_PARAMS", LOSS_PARAMS),
                ("PEER_FORMULAS", PEER_FORMULAS),
                ("tests/oracle.py LOSSES", oracle.LOSSES),
            )
            if loss not in table
        ]
        if missing:
            why = f"the binding has the loss {loss!r} but {' and '.join(missing)} lack it"
            records.append({"case": f"{loss} is covered", "status": "fail", "failures": [why]})
    for loss in LOSS_PARAMS:
        if loss not in compiled:
            why = f"{loss!r} is not in the binding's losses {compiled} (a stale build?)"
            records.append({"case": f"{loss} is compiled", "status": "fail", "failures": [why]})
    return [x for x in LOSS_PARAMS if x in compiled and x in oracle.LOSSES], records


def check_one_pass(be, mode, seed, losses):
    """The one-pass launcher (loss and gradient together: one boolean mask or
    none, no padding) gives the bits of the forward then the backward for an
    upstream gradient of 1, for every loss, dtype and mask shape; on the
    device also scale_gradient_cuda. Records as run_correctness's."""
    records = []
    n_rows, inner = (6433, 163) if mode == "cuda" else (1225, 107)
    gen = np.random.default_rng(seed)
    for loss in losses:
        params = LOSS_PARAMS[loss][0]
        domain = oracle.LOSSES[loss](params, "float64").domain
        for dtype in DTYPES:
            for kind in ("none", "bool", "prefix_bool"):
                name = f"one pass {loss_label(loss, params)} {dtype} {kind} {n_rows}x{inner}"
                try:
                    t, p = draw_values(NumpyOps(), gen, domain, n_rows * inner)
                    t, p = (np.reshape(x, (n_rows, inner)) for x in (t, p))
                    m = None
                    if kind == "bool":
                        m = gen.random((n_rows, inner)) < 0.7
                    elif kind == "prefix_bool":
                        m = gen.random(n_rows) < 0.7
                    two, one, failures = be.one_pass(loss, params, dtype, t, p, m)
                    names = ("loss", "sum", "weight_sum", "count", "grad_y_true", "grad_y_pred")
                    for what, a, b in zip(names, two, one, strict=True):
                        if np.asarray(a).tobytes() != np.asarray(b).tobytes():
                            failures.append(f"{what} differs from forward + backward")
                except Exception as e:  # one broken case must not hide the others
                    failures = [f"raised {type(e).__name__}: {e}"]
                status = "fail" if failures else "pass"
                records.append(
                    {"case": name, "loss": loss_label(loss, params), "status": status,
                     "failures": failures}
                )  # fmt: skip
                if failures:
                    print(f"  FAIL     {name}: {'; '.join(failures)}", flush=True)
    return records


def run_correctness(be, mode, seed, losses, formula_columns=()):
    records = []
    for name, failure in be.api_checks():
        failures = [failure] if failure else []
        records.append(
            {"case": name, "status": "fail" if failure else "pass", "failures": failures}
        )
    records += check_peer_formulas(formula_columns, [x for x in losses if x in PEER_FORMULAS])
    for r in records:
        detail = " ".join(r["failures"]) if r["status"] != "pass" else ""
        print(f"  {r['status'].upper():8} {r['case']} {detail}", flush=True)
    for i, case in enumerate(correctness_cases(mode, losses)):
        ok, why = be.memory_allows(case)
        if not ok:
            records.append(
                {"case": case.name(), "loss": case.label, "status": "not run", "reason": why}
            )
            print(f"  NOT RUN  {case.name()}: {why}", flush=True)
            continue
        started = time.perf_counter()
        try:
            inp = be.make_inputs(case, seed + i)
            first = be.run(case, inp)
            second = be.run(case, inp)
            failures = check_reference(be, case, inp, first)
            for r in (first, second):
                failures += [f"not written: {u}" for u in r.unwritten]
            if not be.same_bits(first, second):
                failures.append("two identical runs differ bitwise")
            loss, count = first.out[0], first.count
        except Exception as e:  # one broken case must not hide the others' results
            failures, loss, count = [f"raised {type(e).__name__}: {e}"], None, None
        status = "fail" if failures else "pass"
        records.append(
            {
                "case": case.name(),
                "loss": case.label,
                "status": status,
                "failures": failures,
                "poisoned": be.poisons,
                "seconds": round(time.perf_counter() - started, 3),
                "loss_value": loss,
                "count": count,
            }
        )
        if failures or case.n > 2**24:
            print(f"  {status.upper():8} {case.name()}", flush=True)
        for f in failures:
            print(f"           {f}", flush=True)
        inp = first = second = None
    return records + check_one_pass(be, mode, seed, losses)


def per_loss_summary(records):
    """{loss label: Counter of statuses} for the cases of each loss."""
    summary = collections.defaultdict(collections.Counter)
    for r in records:
        summary[r.get("loss", "checks of the API and the peers")][r["status"]] += 1
    return summary


# ---------------------------------------------------------------------------
# Timing.


def median_ms(samples):
    return statistics.median(samples)


def check_peer_loss(notes, case, name, peer, fused):
    """Notes a peer whose loss differs from the fused one: its timing would
    compare different work."""
    if not abs(peer - fused) <= 1e-3 * abs(fused) + 1e-6:
        notes.append(f"{name} ({case.name()}): loss {peer!r} differs from the fused {fused!r}")


class HostTimer:
    """Wall clock on the host path; the peer is the NumPy-API formula with NumPy."""

    def __init__(self, be, reps):
        self.be, self.reps = be, reps
        self.notes = []

    def formula_columns(self):
        def numpy_column(formula, t, p, params):
            return np.asarray(formula.array(np, t, p, params), np.float64)

        return [("NumPy-API (jax.numpy's)", numpy_column, False)]

    def time(self, fn):
        fn()
        samples = []
        for _ in range(self.reps):
            s = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - s) * 1e3)
        return median_ms(samples)

    def paths(self, case, inp):
        k = self.be.k
        t, p, m = inp.t.reshape(case.shape), inp.p.reshape(case.shape), inp.m
        kw = case.loss_kw
        loss, _, ws, _ = k.forward(t, p, m, PAD, "mean", **kw)

        def fused_fwd():
            k.forward(t, p, m, PAD, "mean", **kw)

        def fused_bwd():
            k.backward(1.0, 0.0, 0.0, t, p, m, PAD, float(loss), float(ws), "mean", **kw)

        unfused = array_masked_loss(np, case)

        def numpy_fwd():
            with np.errstate(all="ignore"):
                return unfused(t, p, m)

        check_peer_loss(self.notes, case, "numpy", float(numpy_fwd()), float(loss))

        def copy_of(nbytes):
            src = np.ones(nbytes // 2, np.uint8)
            dst = np.empty_like(src)
            return lambda: np.copyto(dst, src)

        return {
            "forward": {"fused": fused_fwd, "numpy": numpy_fwd},
            "backward": {"fused": fused_bwd},
            "forward+backward": {"fused": lambda: (fused_fwd(), fused_bwd())},
        }, copy_of


def import_jax():
    import jax
    import jax.dlpack
    import jax.numpy

    # float64 cases in float64, as the other peers compute them (JAX would
    # truncate them to float32 otherwise); float32 stays float32.
    jax.config.update("jax_enable_x64", True)
    return jax


class CudaTimer:
    """CUDA events around each launch on the current stream. JAX runs on its
    own streams: K calls back to back, then one block_until_ready, per sample."""

    JAX_CALLS = 10

    def __init__(self, be, reps, use_compile, use_jax):
        self.be, self.reps = be, reps
        self.use_compile, self.use_jax = use_compile, use_jax
        self.notes = []

    def formula_columns(self):
        torch, dev = self.be.torch, self.be.dev

        def torch_column(formula, t, p, params):
            tt, pt = (torch.from_numpy(x).to(dev) for x in (t, p))
            return formula.torch(torch, tt, pt, params).double().cpu().numpy()

        columns = [("PyTorch", torch_column, False)]
        if self.use_jax:

            def jax_column(formula, t, p, params):
                jnp = import_jax().numpy
                v = formula.array(jnp, jnp.asarray(t), jnp.asarray(p), params)
                return np.asarray(v, np.float64)

            columns.append(("jax.numpy", jax_column, True))
        return columns

    def time(self, fn):
        torch = self.be.torch
        for _ in range(3):
            fn()
        pairs = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(self.reps)
        ]
        for start, end in pairs:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return median_ms([s.elapsed_time(e) for s, e in pairs])

    def time_wall(self, fn):
        for _ in range(3):
            fn().block_until_ready()
        samples = []
        for _ in range(max(1, self.reps // self.JAX_CALLS)):
            s = time.perf_counter()
            for _ in range(self.JAX_CALLS - 1):
                fn()
            fn().block_until_ready()
            samples.append((time.perf_counter() - s) * 1e3 / self.JAX_CALLS)
        return median_ms(samples)

    def paths(self, case, inp):
        torch, k, be = self.be.torch, self.be.k, self.be
        dev = be.dev
        t, p, m = inp.t.view(case.shape), inp.p.view(case.shape), inp.m
        ct, cp, cm = be.cai(t), be.cai(p), be.cai(m)
        acc = be.t_dtypes[case.acc]
        out = torch.empty(3, dtype=acc, device=dev)
        count = torch.empty(1, dtype=torch.int64, device=dev)
        fw = torch.empty(k.forward_workspace_bytes(case.n), dtype=torch.uint8, device=dev)
        bw = torch.empty(
            k.backward_workspace_bytes(case.n, case.mask_n, False), dtype=torch.uint8, device=dev
        )
        grad = torch.empty_like(p)
        cgrad = be.cai(grad)
        upstream = torch.tensor([1.0, 0.0, 0.0], dtype=acc, device=dev)
        kw = {"dtype": case.dtype, "stream": be.stream(), **case.loss_kw}

        def fused_fwd():
            k.forward_cuda(ct, cp, cm, PAD, "mean", out, count, fw, **kw)

        def fused_bwd():
            k.backward_cuda(upstream, out, ct, cp, cm, PAD, "mean", None, cgrad, None, bw, **kw)

        def fused_step():
            fused_fwd()
            fused_bwd()

        fused_fwd()
        fused_loss = float(out[0])
        unfused = torch_masked_loss(torch, case)
        p_req = p.detach().clone().requires_grad_(True)
        paths = {"forward": {"fused": fused_fwd}, "backward": {"fused": fused_bwd}}
        paths["forward+backward"] = {"fused": fused_step}
        peers = [("torch eager", unfused)]
        if self.use_compile:
            # A fresh compiler state per case: otherwise the recompile limit
            # makes later cases run eager under the torch.compile label.
            torch._dynamo.reset()
            peers.append(("torch.compile", torch.compile(unfused, dynamic=False)))
        for name, f in peers:
            try:
                loss = f(t, p_req, m)
                torch.autograd.grad(loss, p_req, retain_graph=True)
                check_peer_loss(self.notes, case, name, float(loss.detach()), fused_loss)
            except Exception as e:  # a peer that cannot run is reported, not fatal
                self.notes.append(f"{name} ({case.name()}): {type(e).__name__}: {e}")
                continue
            paths["forward"][name] = lambda f=f: f(t, p, m)
            paths["backward"][name] = lambda loss=loss: torch.autograd.grad(
                loss, p_req, retain_graph=True
            )
            paths["forward+backward"][name] = lambda f=f: torch.autograd.grad(f(t, p_req, m), p_req)
        if self.use_jax:
            self.add_jax(paths, case, t, p, m, fused_loss)

        def copy_of(nbytes):
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)

        return paths, copy_of

    def add_jax(self, paths, case, t, p, m, fused_loss):
        try:
            jax = import_jax()
            jnp = jax.numpy
            jt, jp, jm = (jax.dlpack.from_dlpack(x) for x in (t, p, m))
            loss = array_masked_loss(jnp, case)
            fwd = jax.jit(loss)
            step = jax.jit(jax.value_and_grad(loss, argnums=1))
            value, grad = step(jt, jp, jm)
            grad.block_until_ready()
            check_peer_loss(self.notes, case, "jax.jit", float(value), fused_loss)
        except Exception as e:  # JAX is optional: a failure is reported, not fatal
            self.notes.append(f"jax.jit ({case.name()}): {type(e).__name__}: {e}")
            return
        paths["forward"]["jax.jit"] = ("wall", lambda: fwd(jt, jp, jm))
        paths["forward+backward"]["jax.jit"] = ("wall", lambda: step(jt, jp, jm)[1])


def timing_cases(mode, losses):
    """(case, ops) pairs, in the order they are timed: each loss at 2**28
    float32 elements with a boolean mask first, then the squared error across
    dtypes and mask kinds (the budget cuts from the end)."""
    cuda = mode == "cuda"
    n_loss, n_matrix = (2**28, 2**27) if cuda else (2**22, 2**22)
    dtypes = DTYPES if cuda else ("float16", "float32")
    per_loss = ("forward", "forward+backward")
    cases = [
        (Case(n_loss, "float32", "bool", "mean", loss=x, params=LOSS_PARAMS[x][0]), per_loss)
        for x in losses
    ]
    if "squared_error" in losses:
        cases += [
            (Case(n_matrix, d, m, "mean"), ("forward", "backward", "forward+backward"))
            for d in dtypes
            for m in ("bool", "prefix_float")
            # float32 with a boolean mask is the per-loss case.
            if (d, m) != ("float32", "bool")
        ]
    return cases


def bytes_moved(case, inp):
    """Bytes the fused kernels move: the mask, y_true and y_pred where they are
    read (rows of a prefix or 0-d mask whose weight is 0 are skipped, elementwise
    masks read everything), and the gradient of y_pred written."""
    item = ITEMSIZE[case.dtype]
    rows, inner = case.rows_inner
    if inp.m is None:
        mask_bytes, read = 0, case.n
    else:
        mask_item = 1 if case.mask_dtype == "bool" else ITEMSIZE[case.mask_dtype]
        mask_bytes = case.mask_n * mask_item
        if case.prefix or case.mask == "scalar_float":
            read = int((inp.m.reshape(-1) != 0).sum()) * inner
        else:
            read = case.n
    reads = mask_bytes + 2 * item * read
    return {"forward": reads, "backward": reads + case.n * item}


def run_timing(be, timer, cases, seed, deadline):
    rows = []
    for i, (case, ops) in enumerate(cases):
        if time.perf_counter() > deadline:
            timer.notes.append(f"{case.name()}: not timed (time budget spent)")
            continue
        try:
            # Clean inputs: the peers' formulas need no guard against NaN under the mask.
            inp = be.make_inputs(case, seed + 1000 + i, poison=False)
            paths, copy_of = timer.paths(case, inp)
        except Exception as e:  # noted; the other cases still run
            timer.notes.append(f"{case.name()}: not timed ({type(e).__name__}: {e})")
            continue
        moved = bytes_moved(case, inp)
        moved["forward+backward"] = moved["forward"] + moved["backward"]
        for op in ops:
            row = {
                "op": op,
                "loss": case.loss,
                "params": list(case.params),
                "n": case.n,
                "dtype": case.dtype,
                "mask": case.mask,
                "bytes": moved[op],
                "copy_ms": None,
                "ms": {},
            }
            for name, fn in [("copy", copy_of(moved[op])), *paths[op].items()]:
                if time.perf_counter() > deadline and name not in ("fused", "copy"):
                    timer.notes.append(f"{op} {case.name()} {name}: not timed (time budget spent)")
                    continue
                try:
                    if isinstance(fn, tuple):
                        ms = timer.time_wall(fn[1])
                    else:
                        ms = timer.time(fn)
                except Exception as e:  # one failing peer loses nothing else
                    timer.notes.append(f"{op} {case.name()} {name}: {type(e).__name__}: {e}")
                    continue
                if name == "copy":
                    row["copy_ms"] = ms
                else:
                    row["ms"][name] = ms
            rows.append(row)
        inp = paths = None
        be.release()
    return rows


def print_table(rows, peers):
    width = max([4, *(len(r["loss"]) for r in rows)])
    head = f"{'loss':{width}} {'op':17} {'dtype':9} {'mask':13} {'fused ms':>9} {'GB/s':>7}"
    head += f" {'% copy':>7}" + "".join(f" {'x ' + p:>15}" for p in peers)
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['loss']:{width}} {r['op']:17} {r['dtype']:9} {r['mask']:13}"
        ms = r["ms"].get("fused")
        if ms is None:
            print(f"{line} {'failed':>9}")
            continue
        line += f" {ms:9.3f} {r['bytes'] / ms / 1e6:7.1f}"
        line += f" {100 * r['copy_ms'] / ms:6.1f}%" if r["copy_ms"] else f" {'-':>7}"
        for p in peers:
            line += f" {r['ms'][p] / ms:15.2f}" if p in r["ms"] else f" {'-':>15}"
        print(line)
    print(
        "GB/s: bytes the fused op moves (mask and inputs where read: rows of weight 0 are "
        "skipped; gradient written) / time; % copy: time of a copy moving the same bytes "
        "(device to device on the GPU) / fused time; x peer: peer time / fused time (above 1: "
        "fused is faster). Each loss runs with its first parameter set in LOSS_PARAMS."
    )


def write_summary(path, summary):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, default=float) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="dry run on the binding's host path")
    ap.add_argument("--module-dir", help="folder holding _kernels*.so")
    ap.add_argument("--json", help="where to write the results (default: benchmarks/results/)")
    ap.add_argument("--seed", type=int, help="random seed (default: from the clock)")
    ap.add_argument("--reps", type=int, help="timed repetitions per path")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for the timing part")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    ap.add_argument("--no-jax", action="store_true", help="skip the jax.jit peer")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    seed = args.seed if args.seed is not None else int(time.time()) % 2**31
    mode = "cpu" if args.cpu else "cuda"
    module_dir = args.module_dir or (
        ROOT / "masked_ops" if args.cpu else ROOT / "build" / "gpu_check" / "out"
    )
    if oracle is None:
        fail(f"cannot import tests/oracle.py ({ORACLE_ERROR}): python -m pip install ml_dtypes")

    if args.cpu:
        kernels = load_kernels(module_dir)
        be = HostBackend(kernels)
        timer = HostTimer(be, args.reps or 5)
        peers = ["numpy"]
    else:
        try:
            import torch
        except ImportError:
            fail("PyTorch is not installed; the GPU check needs it (or run with --cpu)")
        if not torch.cuda.is_available():
            fail("torch.cuda.is_available() is False: no usable CUDA GPU (use --cpu for a dry run)")
        kernels = load_kernels(module_dir)
        if not kernels.with_cuda:
            fail(f"the binding in {module_dir} was built without CUDA; run benchmarks/gpu_check.sh")
        runtime, driver = kernels.cuda_runtime_version, kernels.cuda_driver_version()
        if driver // 1000 < runtime // 1000:
            fail(
                f"the kernels were built with CUDA {runtime // 1000}.{runtime % 1000 // 10} but "
                f"the driver supports CUDA {driver // 1000}.{driver % 1000 // 10} only: update "
                f"the driver or rebuild with a CUDA {driver // 1000} nvcc (CUDACXX=... "
                "benchmarks/gpu_check.sh after removing build/gpu_check)"
            )
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        use_jax = not args.no_jax and importlib.util.find_spec("jax") is not None
        be = CudaBackend(kernels, torch)
        timer = CudaTimer(be, args.reps or 50, not args.no_compile, use_jax)
        peers = ["torch eager"] + (["torch.compile"] if not args.no_compile else [])
        peers += ["jax.jit"] if use_jax else []

    info = be.describe()
    losses, records = coverage(kernels)
    print(f"gpu_check ({mode}): {info}, seed {seed}, losses {losses}", flush=True)
    print("correctness (float64 oracle, poisoned outputs, bitwise repeatability):", flush=True)
    for r in records:
        print(f"  FAIL     {r['case']}: {r['failures'][0]}", flush=True)
    records += run_correctness(be, mode, seed, losses, timer.formula_columns())
    passed = sum(r["status"] == "pass" for r in records)
    failed = [r for r in records if r["status"] == "fail"]
    not_run = [r for r in records if r["status"] == "not run"]
    print(f"  {passed} passed, {len(failed)} failed, {len(not_run)} not run", flush=True)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = (
        Path(args.json)
        if args.json
        else ROOT / "benchmarks" / "results" / f"gpu_check_{mode}_{stamp}.json"
    )
    summary = {
        "mode": mode,
        "seed": seed,
        "environment": info,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "losses": {x: [list(q) for q in LOSS_PARAMS[x]] for x in losses},
        "correctness": records,
        "timing": None,  # written once timed: a crash while timing keeps the above
        "notes": [],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_summary(path, summary)

    print("timing ...", flush=True)
    deadline = time.perf_counter() + args.budget
    rows = run_timing(be, timer, timing_cases(mode, losses), seed, deadline)
    notes = timer.notes
    summary.update(timing=rows, notes=notes, seconds=round(time.perf_counter() - started, 1))
    write_summary(path, summary)

    for n in notes:
        print(f"note: {n}")
    for r in failed:
        print(f"FAILED {r['case']}: {'; '.join(r['failures'])}")
    for r in not_run:
        print(f"NOT RUN {r['case']}: {r['reason']}")
    print(f"results: {path}")
    for label, counts in per_loss_summary(records).items():
        print(f"  {label}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    print(f"correctness: {passed} passed, {len(failed)} failed, {len(not_run)} not run")
    print_table(rows, peers)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
