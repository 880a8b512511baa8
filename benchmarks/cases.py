"""Benchmark setup shared by benchmarks/bench.py and the pytest-benchmark cases:
the losses and their peers, cases and their inputs, the timed paths (fused,
hand-written, Keras or reference; eager, tf.function or XLA; forward or
forward+backward), the bandwidth ceilings and compute passes, the bytes each
case must move, and float64 references for the error columns. Importing this
module starts no work."""

import dataclasses
import functools
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

import masked_ops
from masked_ops import ops, reference, specs

MODES = ("eager", "graph", "xla")
DIRECTIONS = ("fwd", "fwd+bwd")
# two_pass: the fused ops without the one-pass training-step op (the forward
# op, then the gradient op), to show what the one pass gains.
IMPLS = ("fused", "two_pass", "handwritten", "keras", "reference")
PEERS = ("handwritten", "keras", "reference")
# Keras's losses are benchmarked as they run in a compiled training step.
IMPL_MODES = {
    "fused": MODES,
    "two_pass": ("graph",),
    "handwritten": MODES,
    "keras": ("graph", "xla"),
    "reference": MODES,
}
CEILINGS = ("read", "read+write")
COMPUTE_PASSES = ("log", "exp")

HUBER_DELTA = 1.0
LABEL_SMOOTHING = 0.0

# Prefix-mask cases: inputs (B, T, F) with a (B, T) mask.
PREFIX_STEPS = 256
PREFIX_FEATURES = 64


class Unsupported(Exception):
    """A path this build or device cannot run (e.g. no kernel on this device)."""


# --- The hand-written formulas users write, with m = tf.cast(mask, dtype). ---


def _user_mask(mask, like):
    """(m, kept): the mask as the inputs' dtype, expanded to broadcast over
    trailing dimensions it lacks, and the number of elements it keeps."""
    m = tf.cast(mask, like.dtype)
    trailing = like.shape[m.shape.rank :].num_elements()
    kept = tf.reduce_sum(m)
    for _ in range(like.shape.rank - m.shape.rank):
        m = m[..., tf.newaxis]
    return m, kept if trailing == 1 else kept * trailing


def handwritten_mse(t, p, mask):
    m, kept = _user_mask(mask, p)
    if mask.dtype.is_floating:
        # Squaring (t - p) * m would weigh by w^2: float weights multiply the square.
        return tf.reduce_sum(tf.square(t - p) * m) / kept
    return tf.reduce_sum(tf.square((t - p) * m)) / kept


def handwritten_mae(t, p, mask):
    m, kept = _user_mask(mask, p)
    return tf.reduce_sum(tf.abs(t - p) * m) / kept


def handwritten_huber(t, p, mask):
    m, kept = _user_mask(mask, p)
    e = p - t
    a = tf.abs(e)
    delta = tf.constant(HUBER_DELTA, p.dtype)
    value = tf.where(a <= delta, 0.5 * tf.square(e), delta * a - 0.5 * tf.square(delta))
    return tf.reduce_sum(value * m) / kept


def handwritten_bce(t, p, mask):
    # keras.ops.binary_crossentropy is Keras 3's backend element loss (Keras 2's
    # keras.backend.binary_crossentropy): clip, then two logs.
    m, kept = _user_mask(mask, p)
    return tf.reduce_sum(keras.ops.binary_crossentropy(t, p) * m) / kept


def handwritten_bce_logits(t, x, mask):
    m, kept = _user_mask(mask, x)
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=t, logits=x) * m) / kept


def _keras_peer(make):
    """Keras's built-in loss with the mask as sample_weight and reduction
    "mean_with_sample_weight" (sum(w * loss) / sum(w), the masked mean).
    Keras averages each sample's last axis before weighting, so inputs shaped
    like the mask get a trailing axis of 1; a prefix mask (B, T) weights the
    per-sample losses of (B, T, F) inputs, F-means that weigh each element alike."""
    loss = make(reduction="mean_with_sample_weight")

    def run(t, p, mask):
        if mask.shape.rank == p.shape.rank:
            t, p = t[..., tf.newaxis], p[..., tf.newaxis]
        return loss(t, p, sample_weight=mask)

    return run


@dataclasses.dataclass(frozen=True)
class Loss:
    key: str  # short name: mse, mae, huber, bce, bce_logits
    spec: specs.LossSpec
    family: str  # results file name: benchmarks/results/<family>.{json,csv}
    data: str  # "real", "probabilities" or "logits": what y_true, y_pred hold
    params: tuple
    fused: Callable
    handwritten: Callable
    keras: Callable
    transcendental: bool = False

    def fn(self, impl):
        """The scalar loss(y_true, y_pred, mask) of `impl`."""
        if impl == "reference":
            return self.reference
        return getattr(self, impl)

    def reference(self, t, p, mask):
        return reference.masked_loss(self.spec, t, p, mask, None, "mean", self.params)[0]

    def two_pass(self, t, p, mask):
        return ops.fused(self.spec, t, p, mask, None, "mean", self.params)[0]


LOSSES = {
    loss.key: loss
    for loss in (
        Loss(
            "mse",
            specs.SQUARED_ERROR,
            "masked_mse",
            "real",
            (),
            masked_ops.masked_mse,
            handwritten_mse,
            _keras_peer(keras.losses.MeanSquaredError),
        ),
        Loss(
            "mae",
            specs.ABSOLUTE_ERROR,
            "masked_mae",
            "real",
            (),
            masked_ops.masked_mae,
            handwritten_mae,
            _keras_peer(keras.losses.MeanAbsoluteError),
        ),
        Loss(
            "huber",
            specs.HUBER,
            "masked_huber",
            "real",
            (HUBER_DELTA,),
            functools.partial(masked_ops.masked_huber, delta=HUBER_DELTA),
            handwritten_huber,
            _keras_peer(functools.partial(keras.losses.Huber, delta=HUBER_DELTA)),
        ),
        Loss(
            "bce",
            specs.BINARY_CROSSENTROPY,
            "masked_binary_crossentropy",
            "probabilities",
            (LABEL_SMOOTHING,),
            functools.partial(masked_ops.masked_binary_crossentropy, from_logits=False),
            handwritten_bce,
            _keras_peer(functools.partial(keras.losses.BinaryCrossentropy, from_logits=False)),
            transcendental=True,
        ),
        Loss(
            "bce_logits",
            specs.BINARY_CROSSENTROPY_FROM_LOGITS,
            "masked_binary_crossentropy",
            "logits",
            (LABEL_SMOOTHING,),
            functools.partial(masked_ops.masked_binary_crossentropy, from_logits=True),
            handwritten_bce_logits,
            _keras_peer(functools.partial(keras.losses.BinaryCrossentropy, from_logits=True)),
            transcendental=True,
        ),
    )
}
# Every spec of the package's loss table has a benchmark entry.
assert {loss.spec.name for loss in LOSSES.values()} == {s.name for s in specs.LOSSES}


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
    impl: str  # an IMPLS entry, "ceiling" or "compute"
    mode: str  # a MODES entry; ceilings: a CEILINGS entry; compute passes: COMPUTE_PASSES
    direction: str  # a DIRECTIONS entry; ceilings: "fwd" (read) or "fwd+bwd" (read+write)

    @property
    def name(self):
        return f"{self.impl}/{self.mode}"

    @property
    def is_loss(self):
        return self.impl in IMPLS


# The pytest-benchmark case: N = 2^24 float32, boolean mask keeping 70 %.
PYTEST_CASE = Case(1 << 24, dtype="float32", mask="bool", density=0.7)


def loss_paths(impls=IMPLS):
    return [Path(i, m, d) for d in DIRECTIONS for i in impls for m in IMPL_MODES[i]]


def baseline_paths(loss):
    """The bandwidth ceilings, and for transcendental losses the compute passes."""
    paths = [Path("ceiling", "read", "fwd"), Path("ceiling", "read+write", "fwd+bwd")]
    if loss.transcendental:
        paths += [Path("compute", kind, "fwd") for kind in COMPUTE_PASSES]
    return paths


def devices():
    """Names of the CPU and GPU devices TensorFlow sees."""
    return [d.name for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")]


def is_gpu(device):
    return tf.DeviceSpec.from_string(device).device_type == "GPU"


class Inputs:
    """One case's tensors on one device for one kind of data, and what the paths
    must move. real: y_true, y_pred standard normal; probabilities: y_true 0/1,
    y_pred uniform in [0.001, 0.999]; logits: y_true 0/1, y_pred standard normal."""

    def __init__(self, case, device, data="real", seed=0):
        self.case = case
        self.device = device
        self.data = data
        rng = np.random.default_rng(seed)
        if data == "real":
            t = rng.standard_normal(case.shape, dtype=np.float32)
        else:
            t = (rng.random(case.shape, dtype=np.float32) < 0.5).astype(np.float32)
        if data == "probabilities":
            p = rng.uniform(1e-3, 1 - 1e-3, case.shape).astype(np.float32)
        else:
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
        self._expected = {}

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

    def baseline_bytes(self, path):
        """Bytes a baseline moves: a reduce_sum reads as much as the forward;
        x * 2.0 reads and writes as much as the backward; a compute pass reads
        y_pred once."""
        if path.impl == "compute":
            return self.grad_bytes()
        if path.mode == "read":
            return self.input_bytes()
        return self.input_bytes() + self.grad_bytes()

    def expected(self, loss):
        """(loss, d loss / d y_pred) in float64 from the same rounded inputs: the
        pure-TF reference formula of the spec evaluated in float64."""
        if loss.key not in self._expected:
            with tf.device("/CPU:0"):
                t, p = (tf.cast(x, tf.float64) for x in (self.y_true, self.y_pred))
                mask = self.mask if self.mask.dtype == tf.bool else tf.cast(self.mask, tf.float64)
                with tf.GradientTape() as tape:
                    tape.watch(p)
                    value = loss.reference(t, p, mask)
                grad = tape.gradient(value, p)
                self._expected[loss.key] = (float(value), np.asarray(grad))
        return self._expected[loss.key]


def relative_errors(inputs, loss, outputs):
    """(loss, gradient) maximum relative errors against the float64 reference;
    the gradient's is None for a forward-only path. Where the reference gradient
    is 0 (masked out) the error is the absolute value."""
    loss_ref, grad_ref = inputs.expected(loss)
    value = float(outputs[0].numpy())
    loss_err = abs(value - loss_ref) / abs(loss_ref) if loss_ref else abs(value)
    if len(outputs) < 2:
        return loss_err, None
    grad = np.asarray(tf.cast(outputs[1], tf.float64))
    scale = np.maximum(np.abs(grad_ref), np.finfo(np.float64).tiny)
    return loss_err, float(np.max(np.abs(grad - grad_ref) / scale))


def _forward(loss_fn):
    def forward(y_true, y_pred, mask):
        return (loss_fn(y_true, y_pred, mask),)

    return forward


def _forward_backward(loss_fn):
    def forward_backward(y_true, y_pred, mask):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            loss = loss_fn(y_true, y_pred, mask)
        return loss, tape.gradient(loss, y_pred)

    return forward_backward


def _traced(fn, mode, args):
    """A zero-argument call of fn(*args): eager, or the one concrete function
    traced (and for XLA compiled on first call) for these inputs. Calling the
    concrete function reuses that trace and never retraces."""
    if mode == "eager":
        return lambda: fn(*args)
    concrete = tf.function(fn, jit_compile=mode == "xla").get_concrete_function(*args)
    return lambda: concrete(*args)


def build(loss, path, inputs):
    """A zero-argument callable running `path` of `loss` on `inputs`, returning
    its outputs: (loss,) or (loss, gradient) for losses, (result,) for the
    baselines. Call it inside tf.device(inputs.device)."""
    if not path.is_loss:
        return _baseline(path, inputs)
    make = _forward if path.direction == "fwd" else _forward_backward
    return _traced(make(loss.fn(path.impl)), path.mode, inputs.args)


def _sum_of_log(x):
    return (tf.reduce_sum(tf.math.log(x)),)


def _sum_of_exp(x):
    return (tf.reduce_sum(tf.math.exp(-x)),)


def _baseline(path, inputs):
    with tf.device(inputs.device):
        if path.impl == "compute":
            # One transcendental per element of y_pred (made positive), fused
            # with a sum under XLA so that, like the losses' forward, it reads
            # the data once and writes nothing.
            x = tf.abs(inputs.y_pred)
            fn = _sum_of_log if path.mode == "log" else _sum_of_exp
            return _traced(fn, "xla", (x,))
        elements = inputs.baseline_bytes(path) // (4 if path.mode == "read" else 8)
        x = tf.ones([elements], tf.float32)
        two = tf.constant(2.0)
    if path.mode == "read":
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


def first_call(loss, path, inputs):
    """Builds `path` and runs it once (tracing or compiling it): (fn, outputs).
    Raises Unsupported when this build or device has no kernel for it."""
    sync = synchronizer(inputs.device)
    with tf.device(inputs.device):
        try:
            fn = build(loss, path, inputs)
            outputs = fn()
            sync(outputs)
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
            if not path.is_loss:
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
