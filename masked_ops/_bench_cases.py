"""Benchmark setup shared by `python -m masked_ops.benchmark` and the
pytest-benchmark cases in benchmarks/: cases and their inputs, the timed paths
(fused or reference; eager, tf.function or XLA; forward or forward+backward),
the bandwidth ceilings, the bytes each case must move, and float64 NumPy
references for the error columns. Importing this module starts no work."""

import dataclasses
import functools

import numpy as np
import tensorflow as tf

import masked_ops
from masked_ops import reference

IMPLS = ("fused", "reference")
MODES = ("eager", "graph", "xla")
DIRECTIONS = ("fwd", "fwd+bwd")
CEILINGS = ("read", "read+write")
LOSS_FNS = {"fused": masked_ops.masked_mse, "reference": reference.masked_mse}

# Prefix-mask cases: inputs (B, T, F) with a (B, T) mask.
PREFIX_STEPS = 256
PREFIX_FEATURES = 64


class Unsupported(Exception):
    """A path this build or device cannot run (e.g. no XLA lowering of the fused op)."""


@dataclasses.dataclass(frozen=True)
class Case:
    n: int
    dtype: str = "float32"
    mask: str = "bool"  # "bool", or "weights": float weights in the input dtype
    density: float = 0.7  # fraction of mask entries kept (non-zero)
    prefix: bool = False  # (B, T, F) inputs, (B, T) mask

    def __post_init__(self):
        if self.mask not in ("bool", "weights"):
            raise ValueError(f"mask must be 'bool' or 'weights', got {self.mask!r}")
        if self.prefix and self.n % (PREFIX_STEPS * PREFIX_FEATURES):
            raise ValueError(
                f"a prefix-mask case needs n divisible by {PREFIX_STEPS * PREFIX_FEATURES}"
            )

    @property
    def shape(self):
        if self.prefix:
            return (self.n // (PREFIX_STEPS * PREFIX_FEATURES), PREFIX_STEPS, PREFIX_FEATURES)
        return (self.n,)

    @property
    def mask_shape(self):
        return self.shape[:2] if self.prefix else self.shape

    @property
    def label(self):
        log2 = self.n.bit_length() - 1
        size = f"2^{log2}" if self.n == 1 << log2 else str(self.n)
        mask = "prefix(B,T) " if self.prefix else ""
        return f"{size} {self.dtype} {mask}{self.mask} {round(self.density * 100)}%"

    def as_dict(self):
        return dataclasses.asdict(self) | {"label": self.label, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Path:
    impl: str  # "fused", "reference" or "ceiling"
    mode: str  # a MODES entry, or a CEILINGS entry for impl "ceiling"
    direction: str  # a DIRECTIONS entry; ceilings: "fwd" (read) or "fwd+bwd" (read+write)

    @property
    def name(self):
        return f"{self.impl}/{self.mode}"


# The pytest-benchmark case: N = 2^24 float32, boolean mask keeping 70 %.
PYTEST_CASE = Case(1 << 24, dtype="float32", mask="bool", density=0.7)


def loss_paths():
    return [Path(i, m, d) for d in DIRECTIONS for i in IMPLS for m in MODES]


def ceiling_paths():
    return [Path("ceiling", "read", "fwd"), Path("ceiling", "read+write", "fwd+bwd")]


def devices():
    """Names of the CPU and GPU devices TensorFlow sees."""
    return [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]


def is_gpu(device):
    return tf.DeviceSpec.from_string(device).device_type == "GPU"


class Inputs:
    """One case's tensors on one device, and what the paths must move."""

    def __init__(self, case, device, seed=0):
        self.case = case
        self.device = device
        rng = np.random.default_rng(seed)
        t = rng.standard_normal(case.shape, dtype=np.float32)
        p = rng.standard_normal(case.shape, dtype=np.float32)
        keep = rng.random(case.mask_shape, dtype=np.float32) < case.density
        if case.mask == "bool":
            m = keep
        else:
            m = np.where(keep, rng.uniform(0.5, 1.5, case.mask_shape), 0.0).astype(np.float32)
        dtype = tf.as_dtype(case.dtype)
        with tf.device(device):
            self.y_true = tf.cast(tf.identity(t), dtype)
            self.y_pred = tf.cast(tf.identity(p), dtype)
            self.mask = tf.identity(m) if case.mask == "bool" else tf.cast(tf.identity(m), dtype)

    @property
    def args(self):
        return self.y_true, self.y_pred, self.mask

    def input_bytes(self):
        return sum(x.shape.num_elements() * x.dtype.size for x in self.args)

    def grad_bytes(self):
        return self.y_pred.shape.num_elements() * self.y_pred.dtype.size

    def bytes_moved(self, direction):
        """Each input read once, each output written once, per pass: the forward
        reads y_true, y_pred and mask; the backward reads them again (it needs the
        finished loss) and writes the gradient."""
        if direction == "fwd":
            return self.input_bytes()
        return 2 * self.input_bytes() + self.grad_bytes()

    def ceiling_bytes(self, kind):
        """Bytes the ceiling op moves: a reduce_sum reads as much as the forward;
        x * 2.0 reads and writes as much as the backward."""
        if kind == "read":
            return self.input_bytes()
        return self.input_bytes() + self.grad_bytes()

    @functools.cached_property
    def expected(self):
        """(loss, d loss / d y_pred) in float64 NumPy from the same rounded inputs."""
        t, p, w = (np.asarray(tf.cast(x, tf.float64)) for x in self.args)
        if self.case.prefix:
            w = w[..., np.newaxis]
        w = np.broadcast_to(w, t.shape)
        keep = w != 0
        diff = np.where(keep, t - p, 0.0)
        total = np.sum(w * diff * diff)
        weight_sum = np.sum(np.where(keep, w, 0.0))
        loss = total / weight_sum if weight_sum else 0.0
        grad = -2.0 * w * diff / weight_sum if weight_sum else np.zeros_like(t)
        return loss, grad


def relative_errors(inputs, outputs):
    """(loss, gradient) maximum relative errors against the float64 reference;
    the gradient's is None for a forward-only path. Where the reference gradient
    is 0 (masked out) the error is the absolute value."""
    loss_ref, grad_ref = inputs.expected
    loss = float(outputs[0].numpy())
    loss_err = abs(loss - loss_ref) / abs(loss_ref) if loss_ref else abs(loss)
    if len(outputs) < 2:
        return loss_err, None
    grad = np.asarray(tf.cast(outputs[1], tf.float64))
    scale = np.maximum(np.abs(grad_ref), np.finfo(np.float64).tiny)
    return loss_err, float(np.max(np.abs(grad - grad_ref) / scale))


def _forward(loss_fn):
    def run(y_true, y_pred, mask):
        return (loss_fn(y_true, y_pred, mask),)

    return run


def _forward_backward(loss_fn):
    def run(y_true, y_pred, mask):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = loss_fn(y_true, y_pred, mask)
        return loss, tape.gradient(loss, y_pred)

    return run


def _wrap(fn, mode):
    # Graph and XLA paths trace the tape and its gradient into the same function.
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


def build(path, inputs):
    """A zero-argument callable running `path` on `inputs`, returning its
    outputs: (loss,) or (loss, gradient) for losses, (result,) for ceilings.
    Call it inside tf.device(inputs.device)."""
    if path.impl == "ceiling":
        return _ceiling(path.mode, inputs)
    make = _forward if path.direction == "fwd" else _forward_backward
    fn = _wrap(make(LOSS_FNS[path.impl]), path.mode)
    args = inputs.args
    return lambda: fn(*args)


def _ceiling(kind, inputs):
    elements = inputs.ceiling_bytes(kind) // (4 if kind == "read" else 8)
    with tf.device(inputs.device):
        x = tf.ones([elements], tf.float32)
        two = tf.constant(2.0)
    if kind == "read":
        return lambda: (tf.reduce_sum(x),)
    return lambda: (x * two,)


def synchronizer(device):
    """sync(outputs): waits until `outputs` are computed. Eager CPU ops and
    tf.function calls return finished results, so reading the scalar back is
    enough there; GPU work is queued, so the device is drained too."""
    gpu = is_gpu(device)

    def sync(outputs):
        if gpu:
            tf.test.experimental.sync_devices()
        if outputs[0].shape.rank == 0:
            outputs[0].numpy()

    return sync


def first_call(path, inputs):
    """Builds `path` and runs it once (tracing or compiling it): (fn, outputs).
    Raises Unsupported when this build or device has no kernel for it."""
    sync = synchronizer(inputs.device)
    with tf.device(inputs.device):
        fn = build(path, inputs)
        try:
            outputs = fn()
            sync(outputs)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            if path.impl == "ceiling":
                raise
            message = e.message.strip().splitlines()[0] if e.message else type(e).__name__
            raise Unsupported(message) from e
    wanted = tf.DeviceSpec.from_string(inputs.device).device_type
    for out in outputs:
        got = tf.DeviceSpec.from_string(out.device).device_type
        if got != wanted:
            # Soft placement would otherwise time another device's kernel.
            raise Unsupported(f"ran on {got} instead of {wanted}: no {wanted} kernel")
    return fn, outputs
