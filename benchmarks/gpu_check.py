"""GPU check of the masked squared error kernels, without TensorFlow.

benchmarks/gpu_check.sh builds the CUDA kernels and the pybind11 binding for the
local GPU and runs this script, which
  1. checks forward and backward against a float64 reference on fresh random
     data: sizes 1 to above 2**31 elements (the largest when memory allows);
     float16, bfloat16, float32; boolean, float and prefix masks; padding; NaN
     and Inf under the mask. Every output is poisoned (NaN) before each run and
     checked fully written, and each run is repeated and compared byte for byte;
  2. times forward, backward and both with CUDA events (median of many runs,
     inputs larger than L2) against the unfused formula in PyTorch eager, under
     torch.compile, under jax.jit when JAX is installed, and a device-to-device
     copy of the same number of bytes (the bandwidth ceiling);
  3. writes all numbers to benchmarks/results/ and prints a table last.

--cpu is a dry run of the same checks and report through the binding's host
path with NumPy (small sizes, no GPU or PyTorch needed). The exit status is
non-zero when any check fails or the GPU path cannot run.
"""

import argparse
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tolerances import tolerance  # noqa: E402

PAD = -1.5  # exactly representable in every input dtype
DTYPES = ("float16", "bfloat16", "float32")
MASKS = ("bool", "float", "prefix_bool", "prefix_float")
REDUCTIONS = ("mean", "sum")
# Upstream gradients of (loss, sum, weight_sum): all non-zero, so every term of
# the backward's coefficients is exercised.
UPSTREAM = (0.75, 0.25, 0.5)
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}
HUGE = 2049 * 1048577  # above 2**31, with a divisor for a prefix mask
REF_CHUNK = 1 << 25  # elements per chunk of the float64 reference


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


@dataclasses.dataclass
class Case:
    n: int
    dtype: str
    mask: str
    reduction: str

    @property
    def prefix(self):
        return self.mask.startswith("prefix")

    @property
    def float_mask(self):
        return self.mask.endswith("float")

    @property
    def rows_inner(self):
        return prefix_split(self.n) if self.prefix else (self.n, 1)

    @property
    def shape(self):
        return self.rows_inner if self.prefix else (self.n,)

    @property
    def mask_n(self):
        return self.rows_inner[0]

    def name(self):
        return f"n={self.n} {self.dtype} {self.mask} {self.reduction}"


def coefficients(loss, weight_sum, reduction):
    """float64 (a, b) of grad_coefficients() in csrc/kernels/masked_loss.h."""
    grad_loss, grad_sum, grad_weight_sum = UPSTREAM
    if reduction == "sum":
        return grad_loss + grad_sum, grad_weight_sum
    inv = 1.0 / weight_sum if weight_sum != 0 else 0.0
    return grad_loss * inv + grad_sum, grad_weight_sum - grad_loss * loss * inv


def chunks(n, size):
    for start in range(0, n, size):
        yield start, min(n, start + size)


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


def check_reference(be, case, inp, result):
    """Failures of one run against the float64 reference (empty when it passed)."""
    rows, inner = case.rows_inner
    rtol_r, atol_r = tolerance(case.dtype, "reduction")
    rtol_e, atol_e = tolerance(case.dtype, "elementwise")
    total = weight_sum = 0.0
    count = 0
    loss_k, sum_k, ws_k = result.out
    a, b = coefficients(loss_k, ws_k, case.reduction)
    tallies = [Tally("grad_y_true"), Tally("grad_y_pred")]
    mask_grad = be.zeros_f64(case.mask_n) if case.float_mask else None
    mask_scale = be.zeros_f64(case.mask_n) if case.float_mask else None
    with np.errstate(invalid="ignore", over="ignore"):
        for s, e in chunks(case.n, REF_CHUNK):
            t = be.f64(inp.t[s:e])
            p = be.f64(inp.p[s:e])
            rows_of = be.arange(s, e) // inner
            w = be.f64(inp.m[rows_of])
            keep = (w != 0) & (t != PAD)
            d = be.where(keep, t - p, 0.0)
            value = d * d
            total += float((w * value).sum())
            weight_sum += float(be.where(keep, w, 0.0).sum())
            count += int(keep.sum())
            for tally, grad, expected in (
                (tallies[0], result.grads[0], a * w * 2.0 * d),
                (tallies[1], result.grads[1], a * w * -2.0 * d),
            ):
                actual = be.f64(grad[s:e])
                bad = ~(abs(actual - expected) <= atol_e + rtol_e * abs(expected))
                tally.add(int(bad.sum()), e - s, be.examples(bad, actual, expected, s))
            if case.float_mask:
                gw = be.where(keep, a * value + b, 0.0)
                scale = be.where(keep, abs(a * value) + abs(b), 0.0)
                be.index_add(mask_grad, rows_of, gw)
                be.index_add(mask_scale, rows_of, scale)
    failures = []
    loss = total if case.reduction == "sum" else (total / weight_sum if weight_sum else 0.0)
    for what, got, want in (
        ("loss", loss_k, loss),
        ("sum", sum_k, total),
        ("weight_sum", ws_k, weight_sum),
    ):
        if not abs(got - want) <= atol_r + rtol_r * abs(want):
            failures.append(f"{what}: got {got!r}, float64 reference {want!r}")
    if result.count != count:
        failures.append(f"count: got {result.count}, reference {count}")
    if case.reduction == "mean" and weight_sum == 0 and loss_k != 0.0:
        failures.append(f"loss: nothing kept but got {loss_k!r} instead of 0")
    if case.float_mask:
        actual = be.f64(result.grads[2])
        bad = ~(abs(actual - mask_grad) <= atol_e + rtol_e * (abs(mask_grad) + mask_scale))
        tally = Tally("grad_mask")
        tally.add(int(bad.sum()), case.mask_n, be.examples(bad, actual, mask_grad, 0))
        tallies.append(tally)
    failures.extend(f for f in (t.failure() for t in tallies) if f)
    return failures


@dataclasses.dataclass
class Inputs:
    t: object  # flat y_true
    p: object  # flat y_pred
    m: object  # flat mask: mask_n entries (all ones of the mask dtype for no mask)


@dataclasses.dataclass
class Result:
    out: tuple  # (loss, sum, weight_sum) as Python floats
    count: int
    grads: tuple  # flat (grad_y_true, grad_y_pred, grad_mask or None)
    unwritten: list  # outputs that kept their poison
    outputs: tuple  # every output array, for the repeatability check


class HostBackend:
    """NumPy arrays through the binding's host path (the dry run)."""

    name = "cpu"
    poisons = False

    def __init__(self, kernels):
        import ml_dtypes

        self.k = kernels
        self.np_dtypes = {
            "float16": np.float16,
            "bfloat16": ml_dtypes.bfloat16,
            "float32": np.float32,
        }

    def describe(self):
        return {"backend": "host (NumPy)", "machine": platform.processor() or platform.machine()}

    def make_inputs(self, case, seed):
        rng = np.random.default_rng(seed)
        rows, inner = case.rows_inner
        dtype = self.np_dtypes[case.dtype]
        t = 3.0 * rng.standard_normal(case.n)
        p = t + rng.standard_normal(case.n)
        t = np.where(rng.random(case.n) < 0.1, PAD, t)
        if case.float_mask:
            m = np.where(rng.random(rows) < 0.3, 0.0, rng.uniform(0.25, 2.0, rows)).astype(dtype)
        else:
            m = rng.random(rows) < 0.7
        w = np.repeat(m.astype(np.float64), inner)
        # Dropped elements hold NaN predictions, zero-weight ones Inf truths.
        p = np.where((w == 0) | (t == PAD), np.nan, p)
        t = np.where(w == 0, np.inf, t)
        return Inputs(t.astype(dtype), p.astype(dtype), m)

    def run(self, case, inp):
        t = inp.t.reshape(case.shape)
        p = inp.p.reshape(case.shape)
        loss, total, ws, count = self.k.forward(t, p, inp.m, PAD, case.reduction)
        grads = self.k.backward(
            *UPSTREAM, t, p, inp.m, PAD, float(loss), float(ws), case.reduction,
            want_y_true=True, want_y_pred=True, want_mask=case.float_mask,
        )  # fmt: skip
        grads = tuple(None if g is None else g.reshape(-1) for g in grads)
        outputs = tuple(np.asarray(x) for x in (loss, total, ws, count, *grads) if x is not None)
        return Result((float(loss), float(total), float(ws)), int(count), grads, [], outputs)

    @staticmethod
    def same_bits(a, b):
        return all(x.tobytes() == y.tobytes() for x, y in zip(a.outputs, b.outputs, strict=False))

    def free(self, *_):
        pass

    f64 = staticmethod(lambda x: np.asarray(x, np.float64))
    where = staticmethod(np.where)
    zeros_f64 = staticmethod(lambda n: np.zeros(n, np.float64))

    @staticmethod
    def arange(s, e):
        return np.arange(s, e, dtype=np.int64)

    @staticmethod
    def index_add(acc, index, values):
        np.add.at(acc, index, values)

    @staticmethod
    def examples(bad, actual, expected, offset):
        i = np.flatnonzero(bad)[:3]
        return [(int(j) + offset, float(actual[j]), float(expected[j])) for j in i]

    def memory_allows(self, case):
        return True, ""


class CudaBackend:
    """PyTorch CUDA tensors through the binding's CUDA launchers."""

    name = "cuda"
    poisons = True

    def __init__(self, kernels, torch):
        self.k, self.torch = kernels, torch
        self.dev = torch.device("cuda")
        self.t_dtypes = {
            "float16": torch.float16,
            "bfloat16": torch.bfloat16,
            "float32": torch.float32,
        }

    def describe(self):
        torch = self.torch
        p = torch.cuda.get_device_properties(self.dev)
        return {
            "backend": "cuda",
            "device": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        }

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def cai(self, x):
        # The protocol has no bfloat16 typestr: pass the bits with dtype="bfloat16".
        return x.view(self.torch.int16) if x.dtype == self.torch.bfloat16 else x

    def make_inputs(self, case, seed):
        torch = self.torch
        gen = torch.Generator(device=self.dev)
        gen.manual_seed(seed)
        rows, inner = case.rows_inner
        dtype = self.t_dtypes[case.dtype]
        if case.float_mask:
            u = torch.rand(rows, generator=gen, device=self.dev)
            w = 0.25 + 1.75 * torch.rand(rows, generator=gen, device=self.dev)
            m = torch.where(u < 0.3, 0.0, w).to(dtype)
        else:
            m = torch.rand(rows, generator=gen, device=self.dev) < 0.7
        t = torch.empty(case.n, dtype=dtype, device=self.dev)
        p = torch.empty(case.n, dtype=dtype, device=self.dev)
        for s, e in chunks(case.n, REF_CHUNK):
            tc = 3.0 * torch.randn(e - s, generator=gen, device=self.dev)
            pc = tc + torch.randn(e - s, generator=gen, device=self.dev)
            tc = torch.where(torch.rand(e - s, generator=gen, device=self.dev) < 0.1, PAD, tc)
            w = m[torch.arange(s, e, device=self.dev) // inner].float()
            # Dropped elements hold NaN predictions, zero-weight ones Inf truths.
            pc = torch.where((w == 0) | (tc == PAD), float("nan"), pc)
            tc = torch.where(w == 0, float("inf"), tc)
            t[s:e] = tc.to(dtype)
            p[s:e] = pc.to(dtype)
        return Inputs(t, p, m)

    def memory_allows(self, case):
        # Blocks PyTorch caches count as used for the driver: release them first.
        self.torch.cuda.empty_cache()
        free, _ = self.torch.cuda.mem_get_info()
        item = self.torch.tensor([], dtype=self.t_dtypes[case.dtype]).element_size()
        # Inputs, the gradients of two runs, comparison and reference temporaries, slack.
        need = 8 * case.n * item + case.mask_n * 16 + 32 * REF_CHUNK * 8 + (2 << 30)
        if need > free:
            return False, f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        return True, ""

    def run(self, case, inp):
        torch, k = self.torch, self.k
        acc = torch.float32
        shape = case.shape
        out = torch.empty(3, dtype=acc, device=self.dev)
        count = torch.empty(1, dtype=torch.int64, device=self.dev)
        grads = [torch.empty(case.n, dtype=inp.t.dtype, device=self.dev) for _ in range(2)]
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
        t, p, m = (self.cai(x) for x in (inp.t.view(shape), inp.p.view(shape), inp.m))
        kw = {"dtype": case.dtype, "stream": self.stream()}
        k.forward_cuda(t, p, m, PAD, case.reduction, out, count, fw, **kw)
        g_views = [
            None if g is None else self.cai(g.view(x.shape))
            for g, x in zip(grads, (t, p, m), strict=False)
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
        return Result((o[0], o[1], o[2]), int(count.item()), tuple(grads), unwritten, outputs)

    def same_bits(self, a, b):
        u8 = self.torch.uint8
        return all(
            self.torch.equal(x.view(u8), y.view(u8))
            for x, y in zip(a.outputs, b.outputs, strict=False)
        )

    def f64(self, x):
        return x.to(self.torch.float64)

    def where(self, cond, x, y):
        return self.torch.where(cond, x, y)

    def zeros_f64(self, n):
        return self.torch.zeros(n, dtype=self.torch.float64, device=self.dev)

    def arange(self, s, e):
        return self.torch.arange(s, e, device=self.dev, dtype=self.torch.int64)

    def index_add(self, acc, index, values):
        acc.index_add_(0, index, values)

    def examples(self, bad, actual, expected, offset):
        i = self.torch.nonzero(bad.reshape(-1))[:3].reshape(-1).tolist()
        return [(j + offset, float(actual[j]), float(expected[j])) for j in i]


def correctness_cases(mode):
    small = (1, 7, 1023, 2**20 + 3) if mode == "cuda" else (1, 7, 1023, 2**17 + 3)
    cases = [Case(n, d, m, r) for n in small for d in DTYPES for m in MASKS for r in REDUCTIONS]
    if mode == "cuda":
        cases += [Case(2**28, d, m, "mean") for d in DTYPES for m in ("bool", "prefix_float")]
        cases += [Case(HUGE, "float16", m, "mean") for m in ("bool", "prefix_float")]
    return cases


def run_correctness(be, mode, seed):
    records = []
    for i, case in enumerate(correctness_cases(mode)):
        ok, why = be.memory_allows(case)
        if not ok:
            records.append({"case": case.name(), "status": "not run", "reason": why})
            print(f"  NOT RUN  {case.name()}: {why}", flush=True)
            continue
        started = time.perf_counter()
        inp = be.make_inputs(case, seed + i)
        first = be.run(case, inp)
        second = be.run(case, inp)
        failures = check_reference(be, case, inp, first)
        for r in (first, second):
            failures += [f"not written: {u}" for u in r.unwritten]
        if not be.same_bits(first, second):
            failures.append("two identical runs differ bitwise")
        status = "fail" if failures else "pass"
        records.append(
            {
                "case": case.name(),
                "status": status,
                "failures": failures,
                "poisoned": be.poisons,
                "seconds": round(time.perf_counter() - started, 3),
                "loss": first.out[0],
                "count": first.count,
            }
        )
        if failures or case.n > 2**20:
            print(f"  {status.upper():8} {case.name()}", flush=True)
        for f in failures:
            print(f"           {f}", flush=True)
        del inp, first, second
    return records


# ---------------------------------------------------------------------------
# Timing.


def median_ms(samples):
    return statistics.median(samples)


class HostTimer:
    """Wall clock on the host path, and NumPy's unfused formula as the peer."""

    def __init__(self, be, reps):
        self.be, self.reps = be, reps
        self.notes = []

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
        loss, _, ws, _ = k.forward(t, p, m, PAD, "mean")

        def fused_fwd():
            k.forward(t, p, m, PAD, "mean")

        def fused_bwd():
            k.backward(1.0, 0.0, 0.0, t, p, m, PAD, float(loss), float(ws), "mean")

        def numpy_fwd():
            with np.errstate(invalid="ignore"):
                w = m.astype(np.float32).reshape(m.shape + (1,) * (t.ndim - m.ndim))
                keep = (w != 0) & (t != PAD)
                d = np.where(keep, t.astype(np.float32) - p.astype(np.float32), 0.0)
                return (w * d * d).sum() / np.where(keep, w, 0.0).sum()

        def copy_of(nbytes):
            src = np.ones(nbytes // 2, np.uint8)
            dst = np.empty_like(src)
            return lambda: np.copyto(dst, src)

        return {
            "forward": {"fused": fused_fwd, "numpy": numpy_fwd},
            "backward": {"fused": fused_bwd},
            "forward+backward": {"fused": lambda: (fused_fwd(), fused_bwd())},
        }, copy_of


class CudaTimer:
    """CUDA events around each launch on the current stream (JAX: wall clock
    with block_until_ready, as it runs on its own streams)."""

    def __init__(self, be, reps, use_compile, use_jax):
        self.be, self.reps = be, reps
        self.use_compile, self.use_jax = use_compile, use_jax
        self.notes = []

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
        for _ in range(self.reps):
            s = time.perf_counter()
            fn().block_until_ready()
            samples.append((time.perf_counter() - s) * 1e3)
        return median_ms(samples)

    def paths(self, case, inp):
        torch, k, be = self.be.torch, self.be.k, self.be
        dev = be.dev
        shape = case.shape
        prefix = case.prefix
        t, p, m = inp.t.view(shape), inp.p.view(shape), inp.m
        ct, cp, cm = be.cai(t), be.cai(p), be.cai(m)
        out = torch.empty(3, dtype=torch.float32, device=dev)
        count = torch.empty(1, dtype=torch.int64, device=dev)
        fw = torch.empty(k.forward_workspace_bytes(case.n), dtype=torch.uint8, device=dev)
        bw = torch.empty(
            k.backward_workspace_bytes(case.n, case.mask_n, False), dtype=torch.uint8, device=dev
        )
        grad = torch.empty_like(p)
        cgrad = be.cai(grad)
        upstream = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32, device=dev)
        kw = {"dtype": case.dtype, "stream": be.stream()}

        def fused_fwd():
            k.forward_cuda(ct, cp, cm, PAD, "mean", out, count, fw, **kw)

        def fused_bwd():
            k.backward_cuda(upstream, out, ct, cp, cm, PAD, "mean", None, cgrad, None, bw, **kw)

        def fused_step():
            fused_fwd()
            fused_bwd()

        def unfused(t, p, m):
            w = m.to(torch.float32)
            if prefix:
                w = w[:, None]
            keep = (w != 0) & (t != PAD)
            d = torch.where(keep, t.to(torch.float32) - p.to(torch.float32), 0.0)
            total = (w * d * d).sum()
            ws = torch.where(keep, w, 0.0).sum()
            return torch.where(ws != 0, total / torch.where(ws != 0, ws, 1.0), 0.0)

        p_req = p.detach().clone().requires_grad_(True)
        paths = {"forward": {"fused": fused_fwd}, "backward": {"fused": fused_bwd}}
        paths["forward+backward"] = {"fused": fused_step}
        peers = [("torch eager", unfused)]
        if self.use_compile:
            peers.append(("torch.compile", torch.compile(unfused, dynamic=False)))
        for name, f in peers:
            try:
                loss = f(t, p_req, m)
                torch.autograd.grad(loss, p_req, retain_graph=True)
            except Exception as e:  # a peer that cannot run is reported, not fatal
                self.notes.append(f"{name} ({case.dtype}, {case.mask}): {type(e).__name__}: {e}")
                continue
            paths["forward"][name] = lambda f=f: f(t, p, m)
            paths["backward"][name] = lambda loss=loss: torch.autograd.grad(
                loss, p_req, retain_graph=True
            )
            paths["forward+backward"][name] = lambda f=f: torch.autograd.grad(f(t, p_req, m), p_req)
        if self.use_jax:
            self.add_jax(paths, t, p, m, prefix)

        def copy_of(nbytes):
            src = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)

        return paths, copy_of

    def add_jax(self, paths, t, p, m, prefix):
        try:
            import jax
            import jax.numpy as jnp

            jt, jp, jm = (jax.dlpack.from_dlpack(x) for x in (t, p, m))

            def loss(t, p, m):
                w = m.astype(jnp.float32)
                if prefix:
                    w = w[:, None]
                keep = (w != 0) & (t != PAD)
                d = jnp.where(keep, t.astype(jnp.float32) - p.astype(jnp.float32), 0.0)
                ws = jnp.where(keep, w, 0.0).sum()
                return jnp.where(ws != 0, (w * d * d).sum() / jnp.where(ws != 0, ws, 1.0), 0.0)

            fwd = jax.jit(loss)
            step = jax.jit(jax.value_and_grad(loss, argnums=1))
            step(jt, jp, jm)[1].block_until_ready()
        except Exception as e:  # JAX is optional: a failure is reported, not fatal
            self.notes.append(f"jax.jit: {type(e).__name__}: {e}")
            return
        paths["forward"]["jax.jit"] = ("wall", lambda: fwd(jt, jp, jm))
        paths["forward+backward"]["jax.jit"] = ("wall", lambda: step(jt, jp, jm)[1])


def bytes_moved(case, itemsize, mask_itemsize):
    reads = 2 * case.n * itemsize + case.mask_n * mask_itemsize
    return {"forward": reads, "backward": reads + case.n * itemsize}


def run_timing(be, timer, cases, seed, deadline):
    rows = []
    for i, case in enumerate(cases):
        if time.perf_counter() > deadline:
            timer.notes.append(f"{case.name()}: not timed (time budget spent)")
            continue
        inp = be.make_inputs(case, seed + 1000 + i)
        paths, copy_of = timer.paths(case, inp)
        item = ITEMSIZE[case.dtype]
        mask_item = item if case.float_mask else 1
        moved = bytes_moved(case, item, mask_item)
        moved["forward+backward"] = moved["forward"] + moved["backward"]
        for op, impls in paths.items():
            copy_ms = timer.time(copy_of(moved[op]))
            row = {
                "op": op,
                "n": case.n,
                "dtype": case.dtype,
                "mask": case.mask,
                "bytes": moved[op],
                "copy_ms": copy_ms,
                "ms": {},
            }
            for name, fn in impls.items():
                if time.perf_counter() > deadline and name != "fused":
                    timer.notes.append(f"{op} {case.name()} {name}: not timed (time budget spent)")
                    continue
                if isinstance(fn, tuple):
                    row["ms"][name] = timer.time_wall(fn[1])
                else:
                    row["ms"][name] = timer.time(fn)
            rows.append(row)
        del inp, paths
    return rows


def print_table(rows, peers):
    head = f"{'op':17} {'dtype':9} {'mask':13} {'fused ms':>9} {'GB/s':>7} {'% copy':>7}"
    head += "".join(f" {'x ' + p:>15}" for p in peers)
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["ms"]["fused"]
        gbs = r["bytes"] / ms / 1e6
        line = f"{r['op']:17} {r['dtype']:9} {r['mask']:13} {ms:9.3f} {gbs:7.1f}"
        line += f" {100 * r['copy_ms'] / ms:6.1f}%"
        for p in peers:
            line += f" {r['ms'][p] / ms:15.2f}" if p in r["ms"] else f" {'-':>15}"
        print(line)
    print(
        "GB/s: bytes the op must move (inputs read, gradient written) / time; % copy: time of a "
        "copy moving the same bytes (device to device on the GPU) / fused time; x peer: peer "
        "time / fused time (above 1: fused is faster)."
    )


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

    if args.cpu:
        kernels = load_kernels(module_dir)
        be = HostBackend(kernels)
        timer = HostTimer(be, args.reps or 5)
        timing_cases = [
            Case(2**22, d, m, "mean")
            for d in ("float16", "float32")
            for m in ("bool", "prefix_float")
        ]
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
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        use_jax = not args.no_jax and importlib.util.find_spec("jax") is not None
        be = CudaBackend(kernels, torch)
        timer = CudaTimer(be, args.reps or 50, not args.no_compile, use_jax)
        timing_cases = [Case(2**27, d, m, "mean") for d in DTYPES for m in ("bool", "prefix_float")]
        peers = ["torch eager"] + (["torch.compile"] if not args.no_compile else [])
        peers += ["jax.jit"] if use_jax else []

    info = be.describe()
    print(f"gpu_check ({mode}): {info}, seed {seed}", flush=True)
    print("correctness (float64 reference, poisoned outputs, bitwise repeatability):", flush=True)
    records = run_correctness(be, mode, seed)
    passed = sum(r["status"] == "pass" for r in records)
    failed = [r for r in records if r["status"] == "fail"]
    not_run = [r for r in records if r["status"] == "not run"]
    print(f"  {passed} passed, {len(failed)} failed, {len(not_run)} not run", flush=True)

    print("timing ...", flush=True)
    deadline = time.perf_counter() + args.budget
    rows = run_timing(be, timer, timing_cases, seed, deadline)
    notes = timer.notes

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = (
        Path(args.json)
        if args.json
        else ROOT / "benchmarks" / "results" / f"gpu_check_{mode}_{stamp}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "mode": mode,
        "seed": seed,
        "environment": info,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "correctness": records,
        "timing": rows,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    path.write_text(json.dumps(summary, indent=1, default=float) + "\n")

    for n in notes:
        print(f"note: {n}")
    for r in failed:
        print(f"FAILED {r['case']}: {'; '.join(r['failures'])}")
    for r in not_run:
        print(f"NOT RUN {r['case']}: {r['reason']}")
    print(f"results: {path}")
    print(f"correctness: {passed} passed, {len(failed)} failed, {len(not_run)} not run")
    print_table(rows, peers)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
