"""XLA support for the fused ops.

Keras compiles training steps with XLA (`jit_compile`), and XLA compiles only
ops that have an XLA lowering. When the compiled library registers lowerings
for an op, the op itself is emitted under XLA; otherwise, inside an XLA
context, `ops.fused` emits the equivalent pure-TF formula from
`masked_ops.reference`, which XLA compiles like any TensorFlow code.
"""

import contextlib
import threading

import tensorflow as tf
from tensorflow.python.framework import kernels
from tensorflow.python.ops import control_flow_util

_state = threading.local()


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True,
    including functions called from one)."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def has_lowering(spec):
    """Whether XLA can compile the op of `spec` itself: the loaded library
    registered a lowering for it and TensorFlow made it a kernel of the XLA
    devices (it does that once per process, so a library loaded after XLA
    first compiled something has lowerings that XLA never sees)."""
    from masked_ops._loader import op_library

    lowered_ops = getattr(op_library, "masked_ops_xla_lowered_ops", None)
    if lowered_ops is None:
        return False
    if spec.op_type.encode() not in set(lowered_ops().numpy().tolist()):
        return False
    registered = kernels.get_registered_kernels_for_op(spec.op_type)
    return any(kernel.device_type.endswith("_JIT") for kernel in registered.kernel)


@contextlib.contextmanager
def force_fallback(enabled=True):
    """Within this context (while tracing), use the pure-TF formula under XLA
    even when the op has a lowering."""
    previous = getattr(_state, "forced", None)
    _state.forced = enabled
    try:
        yield
    finally:
        _state.forced = previous


def _forced():
    return bool(getattr(_state, "forced", False))


def use_fallback(spec):
    """True when the op of `spec` must be replaced by its pure-TF formula:
    inside an XLA context, with no lowering registered (or the fallback forced)."""
    if not in_xla_context():
        return False
    return _forced() or not _lowering_cached(spec)


_LOWERINGS = {}


def _lowering_cached(spec):
    if spec.op_type not in _LOWERINGS:
        with tf.init_scope():
            _LOWERINGS[spec.op_type] = has_lowering(spec)
    return _LOWERINGS[spec.op_type]
