"""Fused masked losses: the TensorFlow ops from the compiled library, their
gradients, and the public functions, all driven by the loss specs."""

import tensorflow as tf
from tensorflow.python.eager import record

from masked_ops import _inputs, _loader, _xla, reference, specs
from masked_ops._loader import op_library
from masked_ops.specs import MaskedSums


def _wrapper(name):
    fn = getattr(op_library, name, None)
    if fn is None:
        raise ImportError(
            f"masked_ops: the op library has no {name}: the loss specs (masked_ops/specs.py) "
            f"and the compiled loss table (csrc/kernels/loss_list.h) disagree; rebuild"
        )
    return fn


def _attr_str(value):
    return value.decode() if isinstance(value, bytes) else value


def _two_pass_gradients(
    grad_op, op, upstream, masks, has_padding_value, want_true, want_pred, want_mask
):
    """The gradient op of a forward op (either form) on that op's inputs and
    outputs: upstream = (grad_loss, grad_sum, grad_weight_sum), None read as 0;
    masks: the mask and the extra masks the kernels combine."""
    acc = op.outputs[0].dtype
    grad_loss, grad_sum, grad_weight_sum = (tf.zeros([], acc) if g is None else g for g in upstream)
    y_true, y_pred, _, padding_value, params = op.inputs[:5]
    return grad_op(
        grad_loss=grad_loss,
        grad_sum=grad_sum,
        grad_weight_sum=grad_weight_sum,
        y_true=y_true,
        y_pred=y_pred,
        mask=masks[0],
        padding_value=padding_value,
        params=params,
        loss=op.outputs[0],
        weight_sum=op.outputs[2],
        extra_masks=masks[1:],
        reduction=_attr_str(op.get_attr("reduction")),
        has_padding_value=has_padding_value,
        want_y_true=want_true,
        want_y_pred=want_pred,
        want_mask=want_mask,
    )


def _register_gradient(spec):
    """Registers the fused gradient of a masked-loss op (outputs loss, sum,
    weight_sum, count). One kernel writes only the gradients that are needed:
    inputs the tape skips get none, and boolean masks never get one."""
    grad_op = _wrapper(spec.grad_op)

    @tf.RegisterGradient(spec.op_type)
    def _gradient(op, grad_loss, grad_sum, grad_weight_sum, _grad_count):
        skip = set(getattr(op, "skip_input_indices", None) or ())
        y_true, y_pred, mask = op.inputs[:3]
        masks = [mask, *op.inputs[5:]]
        mask_index = [2, *range(5, 5 + len(masks) - 1)]  # op input index of each mask
        want_true = 0 not in skip and y_true.dtype.is_floating  # labels have no gradient
        want_pred = 1 not in skip
        want_masks = [
            m.dtype.is_floating and i not in skip for m, i in zip(masks, mask_index, strict=True)
        ]
        grads = [None] * len(op.inputs)
        if not (want_true or want_pred or any(want_masks)):
            return grads
        acc = op.outputs[0].dtype
        upstream = (grad_loss, grad_sum, grad_weight_sum)
        has_padding = op.get_attr("has_padding_value")

        def run(kernel_masks, want_mask, want_true=want_true, want_pred=want_pred):
            return _two_pass_gradients(
                grad_op, op, upstream, kernel_masks, has_padding, want_true, want_pred, want_mask
            )

        if len(masks) == 1 or not any(want_masks):
            grad_true, grad_pred, grad_mask = run(masks, want_masks[0])
            grads[2] = grad_mask if want_masks[0] else None
        else:
            grad_true, grad_pred, mask_grads = _several_masks_gradient(run, masks, y_pred, acc)
            for m, i, want, g in zip(masks, mask_index, want_masks, mask_grads, strict=True):
                grads[i] = tf.cast(g, m.dtype) if want else None
        grads[0] = grad_true if want_true else None
        grads[1] = grad_pred if want_pred else None
        return grads

    tf.no_gradient(spec.op_type + "Grad")


def _several_masks_gradient(run, masks, y_pred, acc):
    """Gradients of several masks (only when one of them is a watched float
    mask: weights are rarely trained). The kernels compute the gradient of the
    combined weight W = w_0 w_1 ... (materialized here, at the shape of the
    longest mask, by TF ops, which flush subnormal products to zero on the
    CPU); each mask's is that times the other masks' weights, summed over the
    elements its entries cover. y_true's and y_pred's come from the kernels on
    the masks themselves, as without a mask gradient."""
    rank = max(m.shape.rank for m in masks)
    shape = tf.shape(y_pred)[:rank]
    weights = [_inputs.broadcast_weight(m, shape, rank, acc) for m in masks]
    combined = weights[0]
    for w in weights[1:]:
        combined = _inputs.combine_weights(combined, w)
    grad_true, grad_pred, _ = run(masks, False)
    _, _, grad_combined = run([combined], True, want_true=False, want_pred=False)
    grads = []
    for i, m in enumerate(masks):
        g = grad_combined
        for j, w in enumerate(weights):
            if j != i:
                g = g * w
        # Elements not kept have grad_combined 0: no NaN/Inf weight leaks through.
        g = tf.where(tf.not_equal(grad_combined, 0), g, tf.zeros_like(g))
        grads.append(tf.reduce_sum(g, axis=list(range(m.shape.rank, rank))))
    return grad_true, grad_pred, grads


def _register_one_pass_gradient(spec):
    """The gradient of the one-pass op (OP "WithGrad"), which wrote the
    gradients of `loss` for an upstream gradient of 1 in its forward: they are
    only scaled by the upstream gradient (nothing to do when it is exactly 1).
    Any other use (gradients through sum or weight_sum, an input the forward
    did not write a gradient for) takes the two-pass gradient op."""
    grad_op = _wrapper(spec.grad_op)

    @tf.RegisterGradient(spec.op_type + "WithGrad")
    def _gradient(op, grad_loss, grad_sum, grad_weight_sum, _count, _g_true, _g_pred):
        skip = set(getattr(op, "skip_input_indices", None) or ())
        y_true, _, mask = op.inputs[:3]
        want_true = 0 not in skip and y_true.dtype.is_floating
        want_pred = 1 not in skip
        grads = [None] * len(op.inputs)
        if not (want_true or want_pred):
            return grads
        reduction = _attr_str(op.get_attr("reduction"))
        acc = op.outputs[0].dtype
        written = (op.get_attr("want_y_true"), op.get_attr("want_y_pred"))
        grad_sum, grad_weight_sum = _unless_zero(grad_sum), _unless_zero(grad_weight_sum)
        only_loss = grad_weight_sum is None and (grad_sum is None or reduction == "sum")
        if only_loss and (written[0] or not want_true) and (written[1] or not want_pred):
            # For "sum", loss and sum are the same output.
            scale = tf.zeros([], acc) if grad_loss is None else grad_loss
            if grad_sum is not None:
                scale = scale + grad_sum
            for i, want in ((0, want_true), (1, want_pred)):
                if want:
                    grads[i] = _SCALE_GRADIENT(scale=scale, gradient=op.outputs[4 + i])
            return grads

        grad_true, grad_pred, _ = _two_pass_gradients(
            grad_op,
            op,
            (grad_loss, grad_sum, grad_weight_sum),
            [mask],
            False,
            want_true,
            want_pred,
            False,
        )
        grads[0] = grad_true if want_true else None
        grads[1] = grad_pred if want_pred else None
        return grads


def _unless_zero(g):
    """None for an upstream gradient that is absent or a known zero (the
    tape passes zeros for outputs that reach no loss)."""
    if g is None:
        return None
    value = tf.get_static_value(g)
    return None if value is not None and value == 0 else g


_SCALE_GRADIENT = _wrapper("masked_ops_scale_gradient")
tf.no_gradient("MaskedOps>ScaleGradient")

_OPS = {}
_ONE_PASS_OPS = {}
for _spec in specs.LOSSES:
    _OPS[_spec.op_type] = _wrapper(_spec.op)
    _ONE_PASS_OPS[_spec.op_type] = _wrapper(_spec.one_pass_op)
    _register_gradient(_spec)
    _register_one_pass_gradient(_spec)


def _one_pass_gradients(y_true, y_pred, mask, extra_masks, has_padding):
    """(want_y_true, want_y_pred) when the loss and its gradient can come from
    one pass, else None: a gradient tape is recording y_true or y_pred (so a
    gradient will be taken; evaluate/predict keep the forward-only kernel),
    the mask is boolean (its count is the normalization, from a cheap
    pre-pass), there is no padding value and no second mask, and XLA is not
    compiling (its lowering stays two-pass)."""
    if _xla.in_xla_context() or mask.dtype != tf.bool or extra_masks or has_padding:
        return None
    want = tuple(
        x.dtype.is_floating and record.should_record_backprop([x]) for x in (y_true, y_pred)
    )
    return want if any(want) else None


def fused(spec, y_true, y_pred, mask, padding_value, reduction, params=(), loss_only=False):
    """Runs the op of `spec`; returns (loss, sum, weight_sum, count).
    loss_only: the caller differentiates only `loss` (the public loss
    functions), which lets the forward write the gradient in the same pass
    when a tape is recording; callers of the sums keep the two-pass op."""
    _inputs.check_reduction(reduction)
    params = tuple(float(p) for p in params)
    if len(params) != len(spec.params):
        raise ValueError(f"{spec.name} takes parameters {spec.params}, got {params}")
    # The pure-TF formula where the op cannot run: under XLA without a
    # lowering, or on a GPU whose driver is too old for the CUDA kernels.
    if _xla.use_fallback(spec) or _loader.gpu_kernels_unavailable_reason() is not None:
        return reference.masked_loss(spec, y_true, y_pred, mask, padding_value, reduction, params)
    y_true, y_pred, mask, extra_masks, padding, has_padding = _inputs.prepare(
        y_true, y_pred, mask, padding_value
    )
    params = tf.constant(params, tf.float64, shape=[len(params)])
    tout = _inputs.accumulator_dtype(y_pred.dtype)
    want = (
        _one_pass_gradients(y_true, y_pred, mask, extra_masks, has_padding) if loss_only else None
    )
    if want is not None:
        return _ONE_PASS_OPS[spec.op_type](
            y_true=y_true,
            y_pred=y_pred,
            mask=mask,
            padding_value=padding,
            params=params,
            extra_masks=[],
            Tout=tout,
            reduction=reduction,
            want_y_true=want[0],
            want_y_pred=want[1],
        )[:4]
    return _OPS[spec.op_type](
        y_true=y_true,
        y_pred=y_pred,
        mask=mask,
        extra_masks=extra_masks,
        padding_value=padding,
        params=params,
        Tout=tout,
        reduction=reduction,
        has_padding_value=has_padding,
    )


def masked_sums(spec, y_true, y_pred, mask=None, padding_value=None, params=()):
    """(sum, weight_sum, count) of the loss of `spec` (any entry of specs.LOSSES)."""
    _, s, w, c = fused(spec, y_true, y_pred, mask, padding_value, "sum", params)
    return MaskedSums(s, w, c)


def _bce_spec(from_logits):
    return specs.BINARY_CROSSENTROPY_FROM_LOGITS if from_logits else specs.BINARY_CROSSENTROPY


_check_label_smoothing = _inputs.check_label_smoothing


def _check_delta(delta):
    delta = float(delta)
    if not 0.0 < delta < float("inf"):
        raise ValueError(f"delta must be positive and finite, got {delta}")
    return delta


def masked_squared_error_sums(y_true, y_pred, mask=None, *, padding_value=None):
    """Fused (sum, weight_sum, count) of the masked squared error.

    sum = sum(w * (y_true - y_pred)^2), weight_sum = sum(w), count = number of
    positions with w != 0 (exact int64), over positions kept by `mask` (bool,
    integer or float weights; the inputs' shape or a leading prefix of it) and
    not equal to `padding_value`.
    """
    return masked_sums(specs.SQUARED_ERROR, y_true, y_pred, mask, padding_value)


def masked_mse(y_true, y_pred, mask=None, *, padding_value=None, reduction="mean"):
    """Masked mean squared error in one fused pass.

    reduction="mean": sum / weight_sum, exactly 0 when nothing is kept;
    reduction="sum": the masked sum. Masked positions contribute nothing and get
    zero gradient even when they hold NaN or Inf.
    """
    return fused(
        specs.SQUARED_ERROR, y_true, y_pred, mask, padding_value, reduction, loss_only=True
    )[0]


def masked_absolute_error_sums(y_true, y_pred, mask=None, *, padding_value=None):
    """Fused (sum, weight_sum, count) of |y_true - y_pred| (see masked_squared_error_sums)."""
    return masked_sums(specs.ABSOLUTE_ERROR, y_true, y_pred, mask, padding_value)


def masked_mae(y_true, y_pred, mask=None, *, padding_value=None, reduction="mean"):
    """Masked mean absolute error in one fused pass (gradient 0 where y_true == y_pred,
    as TensorFlow's); otherwise as masked_mse."""
    return fused(
        specs.ABSOLUTE_ERROR, y_true, y_pred, mask, padding_value, reduction, loss_only=True
    )[0]


def masked_huber_sums(y_true, y_pred, mask=None, *, delta=1.0, padding_value=None):
    """Fused (sum, weight_sum, count) of the Huber loss (see masked_huber)."""
    return masked_sums(specs.HUBER, y_true, y_pred, mask, padding_value, (_check_delta(delta),))


def masked_huber(y_true, y_pred, mask=None, *, delta=1.0, padding_value=None, reduction="mean"):
    """Masked Huber loss, as keras.losses.Huber: with e = y_pred - y_true,
    0.5 e^2 where |e| <= delta, else delta |e| - 0.5 delta^2; otherwise as masked_mse."""
    params = (_check_delta(delta),)
    return fused(
        specs.HUBER, y_true, y_pred, mask, padding_value, reduction, params, loss_only=True
    )[0]


def masked_binary_crossentropy_sums(
    y_true, y_pred, mask=None, *, from_logits=False, label_smoothing=0.0, padding_value=None
):
    """Fused (sum, weight_sum, count) of the binary cross-entropy (see
    masked_binary_crossentropy)."""
    params = (_check_label_smoothing(label_smoothing),)
    return masked_sums(_bce_spec(from_logits), y_true, y_pred, mask, padding_value, params)


def masked_binary_crossentropy(
    y_true,
    y_pred,
    mask=None,
    *,
    from_logits=False,
    label_smoothing=0.0,
    padding_value=None,
    reduction="mean",
):
    """Masked binary cross-entropy, as keras.losses.binary_crossentropy per
    element: targets smoothed to y_true (1 - s) + s / 2; from probabilities,
    y_pred clipped to [1e-7, 1 - 1e-7]; from logits, the stable form of
    tf.nn.sigmoid_cross_entropy_with_logits. Otherwise as masked_mse."""
    params = (_check_label_smoothing(label_smoothing),)
    spec = _bce_spec(from_logits)
    return fused(spec, y_true, y_pred, mask, padding_value, reduction, params, loss_only=True)[0]


# The row losses (specs.ROW_LOSSES): cross-entropy over the last axis of y_pred.


def _row_attrs(op):
    return {
        "reduction": _attr_str(op.get_attr("reduction")),
        "has_ignore_class": op.get_attr("has_ignore_class"),
        "ignore_class": op.get_attr("ignore_class"),
    }


def _row_two_pass_gradient(spec, op, grad_loss, grad_sum):
    """d/dy_pred from the gradient op, on the inputs and outputs of a forward
    op of either form."""
    acc = op.outputs[0].dtype
    grad_loss, grad_sum = (tf.zeros([], acc) if g is None else g for g in (grad_loss, grad_sum))
    y_true, y_pred, mask, label_smoothing = op.inputs[:4]
    return _ROW_GRAD_OPS[spec.op_type](
        grad_loss=grad_loss,
        grad_sum=grad_sum,
        y_true=y_true,
        y_pred=y_pred,
        mask=mask,
        label_smoothing=label_smoothing,
        loss=op.outputs[0],
        weight_sum=op.outputs[2],
        row_stats=op.outputs[4],
        **_row_attrs(op),
    )


def _row_target_and_mask_gradients(spec, op, upstream, want_true, want_mask):
    """(d/dy_true, d/dmask) for the rare uses the kernels leave out: soft
    targets that are trained (distillation) and float mask weights that are.
    From the row values of the pure-TF formula, on the rows the mask keeps."""
    y_true, y_pred, mask, label_smoothing = op.inputs[:4]
    acc = op.outputs[0].dtype
    grad_loss, grad_sum, grad_weight_sum = (tf.zeros([], acc) if g is None else g for g in upstream)
    attrs = _row_attrs(op)
    ignore_class = attrs["ignore_class"] if attrs["has_ignore_class"] else None
    keep, w = _inputs.row_keep(spec, y_true, y_pred, mask, ignore_class, acc)
    smoothing = tf.get_static_value(label_smoothing)
    smoothing = float(smoothing) if smoothing is not None else label_smoothing
    loss, weight_sum = op.outputs[0], op.outputs[2]
    mean = attrs["reduction"] == "mean"
    # d(loss, sum)/d value_r = w_r (1 / weight_sum for "mean", 1) and w_r.
    per_value = grad_sum + (tf.math.divide_no_nan(grad_loss, weight_sum) if mean else grad_loss)
    t = tf.cast(y_true, acc) if want_true else y_true
    with tf.GradientTape() as tape:
        if want_true:
            tape.watch(t)
        value = reference.row_values(spec, t, y_pred, keep, smoothing)
    grad_true = grad_mask = None
    if want_true:
        coefficient = tf.where(keep, w * per_value, tf.zeros_like(w))
        grad_true = tape.gradient(value, t, output_gradients=coefficient)
        grad_true = tf.cast(grad_true, y_true.dtype)
    if want_mask:
        # d loss / d w_r = (value_r - loss) / weight_sum for "mean", value_r for "sum".
        d = per_value * value + grad_weight_sum
        if mean:
            d = d - tf.math.divide_no_nan(grad_loss * loss, weight_sum)
        d = tf.where(keep, d, tf.zeros_like(d))
        rows_rank = y_pred.shape.rank - 1
        d = tf.reduce_sum(d, axis=list(range(mask.shape.rank, rows_rank)))
        grad_mask = tf.cast(d, mask.dtype)
    return grad_true, grad_mask


def _register_row_gradients(spec):
    def extras(op, upstream, skip):
        y_true, _, mask = op.inputs[:3]
        want_true = not spec.sparse and 0 not in skip
        want_mask = mask.dtype.is_floating and 2 not in skip
        if not (want_true or want_mask):
            return None, None
        return _row_target_and_mask_gradients(spec, op, upstream, want_true, want_mask)

    @tf.RegisterGradient(spec.op_type)
    def _gradient(op, grad_loss, grad_sum, grad_weight_sum, _count, _row_stats):
        skip = set(getattr(op, "skip_input_indices", None) or ())
        grads = [None] * 4
        if 1 not in skip:
            grads[1] = _row_two_pass_gradient(spec, op, grad_loss, grad_sum)
        upstream = (grad_loss, grad_sum, grad_weight_sum)
        grads[0], grads[2] = extras(op, upstream, skip)
        return grads

    @tf.RegisterGradient(spec.op_type + "WithGrad")
    def _one_pass_gradient(op, grad_loss, grad_sum, grad_weight_sum, _count, _row_stats, _grad):
        """The forward wrote d loss / d y_pred for an upstream gradient of 1:
        it is only scaled (nothing to do for exactly 1); gradients through
        `sum` of a "mean" loss take the gradient op."""
        skip = set(getattr(op, "skip_input_indices", None) or ())
        grads = [None] * 4
        if 1 not in skip:
            reduction = _attr_str(op.get_attr("reduction"))
            acc = op.outputs[0].dtype
            grad_sum_used = _unless_zero(grad_sum)
            if grad_sum_used is None or reduction == "sum":
                scale = tf.zeros([], acc) if grad_loss is None else grad_loss
                if grad_sum_used is not None:
                    scale = scale + grad_sum_used
                grads[1] = _SCALE_GRADIENT(scale=scale, gradient=op.outputs[5])
            else:
                grads[1] = _row_two_pass_gradient(spec, op, grad_loss, grad_sum)
        upstream = (grad_loss, grad_sum, grad_weight_sum)
        grads[0], grads[2] = extras(op, upstream, skip)
        return grads

    tf.no_gradient(spec.op_type + "Grad")


_ROW_OPS = {}
_ROW_ONE_PASS_OPS = {}
_ROW_GRAD_OPS = {}
for _spec in specs.ROW_LOSSES:
    _ROW_OPS[_spec.op_type] = _wrapper(_spec.op)
    _ROW_ONE_PASS_OPS[_spec.op_type] = _wrapper(_spec.one_pass_op)
    _ROW_GRAD_OPS[_spec.op_type] = _wrapper(_spec.grad_op)
    _register_row_gradients(_spec)


def fused_rows(
    spec, y_true, y_pred, mask, reduction, ignore_class=None, label_smoothing=0.0, loss_only=False
):
    """Runs the row op of `spec`; returns (loss, sum, weight_sum, count).
    loss_only: only `loss` is differentiated (the public loss functions):
    when a tape records y_pred in a graph, the forward writes the gradient of
    the loss in the same pass, into y_pred's buffer when nothing else holds it."""
    _inputs.check_reduction(reduction)
    ignore_class = _inputs.check_ignore_class(ignore_class, spec.sparse)
    label_smoothing = _inputs.check_label_smoothing(label_smoothing)
    if spec.sparse and label_smoothing:
        raise ValueError("label_smoothing applies to dense targets; the sparse loss has none")
    if _xla.use_fallback(spec) or _loader.gpu_kernels_unavailable_reason() is not None:
        return reference.masked_row_loss(
            spec, y_true, y_pred, mask, reduction, ignore_class, label_smoothing
        )
    y_true, y_pred, mask = _inputs.prepare_rows(spec, y_true, y_pred, mask)
    args = {
        "y_true": y_true,
        "y_pred": y_pred,
        "mask": mask,
        "label_smoothing": tf.constant(label_smoothing, tf.float64),
        "Tout": _inputs.accumulator_dtype(y_pred.dtype),
        "reduction": reduction,
        "has_ignore_class": ignore_class is not None,
        "ignore_class": 0 if ignore_class is None else ignore_class,
    }
    # Eagerly, the tape would hold y_pred (no reuse of its buffer) and fill
    # the unused gradient output's upstream gradient with logits-sized zeros:
    # the two ops then cost less memory at the same speed.
    one_pass = loss_only and not tf.executing_eagerly()
    if one_pass and record.should_record_backprop([y_pred]):
        return _ROW_ONE_PASS_OPS[spec.op_type](**args)[:4]
    return _ROW_OPS[spec.op_type](**args)[:4]


def masked_sparse_categorical_crossentropy_sums(
    y_true, y_pred, mask=None, *, from_logits=False, ignore_class=None
):
    """Fused (sum, weight_sum, count) of the sparse categorical cross-entropy
    over the rows kept by `mask` and not labelled `ignore_class` (see
    masked_sparse_categorical_crossentropy)."""
    spec = specs.row_loss(True, from_logits)
    _, s, w, c = fused_rows(spec, y_true, y_pred, mask, "sum", ignore_class)
    return MaskedSums(s, w, c)


def masked_sparse_categorical_crossentropy(
    y_true, y_pred, mask=None, *, from_logits=False, ignore_class=None, reduction="mean"
):
    """Masked sparse categorical cross-entropy over the last axis of y_pred,
    as keras.losses.sparse_categorical_crossentropy per row, in one fused pass.

    y_true: class indices, shape y_pred.shape[:-1] (or with a trailing 1).
    y_pred: logits (from_logits=True) or probabilities (clipped to
        [1e-7, 1 - 1e-7] as Keras clips them), classes last: e.g. (B, T, V).
    mask: bool/integer/float weights of shape y_pred.shape[:-1] or a leading
        prefix of it, e.g. a (B, T) padding mask; None keeps every row.
    ignore_class: rows with this label are left out, as Keras's ignore_class.
    reduction: "mean" (over the kept rows, weighted; 0 when none is kept) or "sum".

    Rows that are not kept are never read: their logits may hold NaN/Inf and
    their labels any value (-100 padding). A kept row's label outside
    [0, V) is an InvalidArgumentError (NaN under XLA, whose formula cannot raise).
    """
    spec = specs.row_loss(True, from_logits)
    return fused_rows(spec, y_true, y_pred, mask, reduction, ignore_class, loss_only=True)[0]


def masked_categorical_crossentropy_sums(
    y_true, y_pred, mask=None, *, from_logits=False, label_smoothing=0.0
):
    """Fused (sum, weight_sum, count) of the categorical cross-entropy (see
    masked_categorical_crossentropy)."""
    spec = specs.row_loss(False, from_logits)
    _, s, w, c = fused_rows(spec, y_true, y_pred, mask, "sum", None, label_smoothing)
    return MaskedSums(s, w, c)


def masked_categorical_crossentropy(
    y_true, y_pred, mask=None, *, from_logits=False, label_smoothing=0.0, reduction="mean"
):
    """Masked categorical cross-entropy over the last axis of y_pred, as
    keras.losses.categorical_crossentropy per row (one-hot or soft targets
    y_true of y_pred's shape, smoothed to y_true (1 - s) + s / V), in one
    fused pass; otherwise as masked_sparse_categorical_crossentropy."""
    spec = specs.row_loss(False, from_logits)
    return fused_rows(spec, y_true, y_pred, mask, reduction, None, label_smoothing, loss_only=True)[
        0
    ]
