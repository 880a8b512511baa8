"""Bad inputs raise the documented error type with a message that says what is
wrong, eagerly and (where shapes are static) at tf.function trace time."""

import numpy as np
import pytest
import tensorflow as tf

import masked_ops
from masked_ops._loader import op_library

FUNCS = {
    "masked_mse": masked_ops.masked_mse,
    "masked_squared_error_sums": masked_ops.masked_squared_error_sums,
}
both_functions = pytest.mark.parametrize("fn", list(FUNCS.values()), ids=list(FUNCS))


# ---------------------------------------------------------------------------
# Shapes


@both_functions
def test_mismatched_shapes_eager(fn):
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        fn(tf.zeros([2, 3]), tf.zeros([3, 2]))
    msg = str(err.value)
    assert "y_true and y_pred must have the same shape" in msg
    assert "[2,3]" in msg and "[3,2]" in msg


@both_functions
def test_mismatched_element_count_eager(fn):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[4\].*\[5\]"):
        fn(tf.zeros([4]), tf.zeros([5]))


@both_functions
def test_mismatched_shapes_in_function_static_shapes_fail_at_trace(fn):
    @tf.function
    def f(y_true, y_pred):
        return fn(y_true, y_pred)

    with pytest.raises(ValueError) as err:
        f(tf.zeros([2, 3]), tf.zeros([3, 2]))
    msg = str(err.value)
    assert "same shape" in msg and "[2,3]" in msg and "[3,2]" in msg


@both_functions
def test_mismatched_shapes_in_function_unknown_shapes_fail_at_run(fn):
    @tf.function(input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])
    def f(y_true, y_pred):
        return fn(y_true, y_pred)

    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        f(tf.zeros([2, 3]), tf.zeros([3, 2]))
    msg = str(err.value)
    assert "y_true and y_pred must have the same shape" in msg
    assert "[2,3]" in msg and "[3,2]" in msg


NOT_A_PREFIX = [
    ((2, 3), (3,)),  # right rank-1 size is the trailing dim, not the leading one
    ((2, 3, 5), (2, 4)),
    ((2, 3, 5), (3, 5)),  # a suffix, not a prefix
    ((2, 3), (2, 3, 1)),  # rank greater than the inputs'
    ((2, 3), (2, 3, 4)),
    ((), (1,)),  # rank 1 on 0-d inputs
]


@pytest.mark.parametrize("mask_dtype", [tf.bool, tf.float32, tf.int32])
@pytest.mark.parametrize("shape, mask_shape", NOT_A_PREFIX, ids=str)
def test_mask_not_a_prefix_eager(shape, mask_shape, mask_dtype):
    y = tf.zeros(shape)
    mask = tf.ones(mask_shape, mask_dtype)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        masked_ops.masked_mse(y, y, mask)
    msg = str(err.value)
    assert "leading prefix" in msg
    assert "[" + ",".join(map(str, mask_shape)) + "]" in msg
    assert "[" + ",".join(map(str, shape)) + "]" in msg
    with pytest.raises(tf.errors.InvalidArgumentError, match="leading prefix"):
        masked_ops.masked_squared_error_sums(y, y, mask)


@pytest.mark.parametrize("shape, mask_shape", NOT_A_PREFIX, ids=str)
def test_mask_not_a_prefix_in_function(shape, mask_shape):
    y = tf.zeros(shape)
    mask = tf.ones(mask_shape, tf.bool)

    @tf.function
    def static(y_true, y_pred, mask):
        return masked_ops.masked_mse(y_true, y_pred, mask)

    with pytest.raises(ValueError):
        static(y, y, mask)

    @tf.function(input_signature=[tf.TensorSpec(None)] * 2 + [tf.TensorSpec(None, tf.bool)])
    def dynamic(y_true, y_pred, mask):
        return masked_ops.masked_mse(y_true, y_pred, mask)

    with pytest.raises(tf.errors.InvalidArgumentError, match="leading prefix"):
        dynamic(y, y, mask)


def test_mask_rank_greater_than_inputs_in_function_names_the_shapes():
    @tf.function
    def f(y, mask):
        return masked_ops.masked_mse(y, y, mask)

    with pytest.raises(ValueError) as err:
        f(tf.zeros([2, 3]), tf.ones([2, 3, 1]))
    assert "[2,3,1]" in str(err.value) and "leading prefix" in str(err.value)


# ---------------------------------------------------------------------------
# Dtypes


@both_functions
@pytest.mark.parametrize(
    "dtype", [tf.int32, tf.int64, tf.uint8, tf.bool, tf.complex64, tf.string], ids=lambda d: d.name
)
def test_unsupported_y_pred_dtype_is_a_type_error_naming_it(fn, dtype):
    if dtype == tf.string:
        y = tf.constant(["a", "b"])
    else:
        y = tf.cast(tf.constant([1, 0]), dtype)
    with pytest.raises(TypeError) as err:
        fn(y, y)
    assert dtype.name in str(err.value)
    assert "y_pred" in str(err.value)


def test_int_python_y_pred_is_a_type_error():
    with pytest.raises(TypeError, match="int32"):
        masked_ops.masked_mse(tf.constant([1, 2]), tf.constant([1, 2]))


@pytest.mark.parametrize("y_true", [tf.constant(["a", "b"]), tf.constant([1 + 2j, 3j])])
def test_non_real_y_true_is_a_type_error(y_true):
    with pytest.raises(TypeError) as err:
        masked_ops.masked_mse(y_true, tf.zeros([2]))
    assert y_true.dtype.name in str(err.value)


@both_functions
@pytest.mark.parametrize(
    "mask",
    [
        tf.constant([[1 + 1j, 0j, 1j]], tf.complex64),
        tf.constant([[1 + 1j, 0j, 1j]], tf.complex128),
        tf.constant([["a", "b", "c"]]),
    ],
    ids=["complex64", "complex128", "string"],
)
def test_complex_or_string_mask_is_a_type_error(fn, mask):
    y = tf.zeros([1, 3])
    with pytest.raises(TypeError) as err:
        fn(y, y, mask)
    assert "mask" in str(err.value) and mask.dtype.name in str(err.value)


# ---------------------------------------------------------------------------
# padding_value and reduction


@both_functions
@pytest.mark.parametrize(
    "padding_value",
    [[0.0, 1.0], np.zeros((1,)), np.zeros((2, 2)), tf.zeros([3]), tf.zeros([1, 1])],
    ids=["list", "np(1,)", "np(2,2)", "tf(3,)", "tf(1,1)"],
)
def test_non_scalar_padding_value_is_a_value_error(fn, padding_value):
    y = tf.zeros([2, 3])
    with pytest.raises(ValueError, match="padding_value must be a scalar"):
        fn(y, y, padding_value=padding_value)


@both_functions
@pytest.mark.parametrize(
    "nan",
    [
        float("nan"),
        np.nan,
        np.float64("nan"),
        np.float32("nan"),
        np.float16("nan"),
        np.array(np.nan),
    ],
    ids=["float", "np.nan", "np.float64", "np.float32", "np.float16", "np.array0d"],
)
def test_nan_padding_value_is_a_value_error(fn, nan):
    y = tf.zeros([2, 3])
    with pytest.raises(ValueError) as err:
        fn(y, y, padding_value=nan)
    assert "padding_value=NaN" in str(err.value)
    assert "is_nan" in str(err.value)  # points at the alternative


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "none", "", None, "sum_over_batch_size"])
def test_unknown_reduction_is_a_value_error_naming_the_allowed_values(reduction):
    y = tf.zeros([2, 3])
    with pytest.raises(ValueError) as err:
        masked_ops.masked_mse(y, y, reduction=reduction)
    msg = str(err.value)
    assert "'mean'" in msg and "'sum'" in msg and repr(reduction) in msg


def test_unknown_reduction_in_function_is_a_value_error():
    @tf.function
    def f(y):
        return masked_ops.masked_mse(y, y, reduction="avg")

    with pytest.raises(ValueError, match="'mean'.*'sum'"):
        f(tf.zeros([2]))


# ---------------------------------------------------------------------------
# The raw op: attribute errors are errors, not crashes.


def raw_inputs(dtype):
    y = tf.zeros([4, 3], dtype)
    # has_padding_value defaults to False: the padding value is not read.
    padding = tf.constant(0.0, tf.float64)
    return {
        "y_true": y,
        "y_pred": y,
        "mask": tf.constant(True),
        "padding_value": padding,
        "params": tf.zeros([0], tf.float64),
        "extra_masks": [],
    }


@pytest.mark.parametrize(
    "dtype, tout",
    [
        (tf.float16, tf.float64),
        (tf.bfloat16, tf.float64),
        (tf.float32, tf.float64),
        (tf.float64, tf.float32),
    ],
    ids=lambda x: x.name,
)
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_raw_op_with_wrong_tout_is_invalid_argument(dtype, tout, mode):
    def call():
        return op_library.masked_ops_squared_error(**raw_inputs(dtype), Tout=tout)

    if mode == "function":
        call = tf.function(call)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        call()
    msg = str(err.value)
    tf_names = {
        tf.float16: "half",
        tf.bfloat16: "bfloat16",
        tf.float32: "float",
        tf.float64: "double",
    }
    assert f"Tout must be {tf_names[tout]}" not in msg
    assert f"inputs of dtype {tf_names[dtype]}, got {tf_names[tout]}" in msg


def test_raw_op_with_right_tout_works():
    # Control for the test above: the same call with the accumulator dtype runs.
    loss, s, w, c = op_library.masked_ops_squared_error(**raw_inputs(tf.float16), Tout=tf.float32)
    assert (float(loss), float(s), float(w), int(c)) == (0.0, 0.0, 12.0, 12)


def test_raw_op_with_non_scalar_padding_value_is_invalid_argument():
    args = raw_inputs(tf.float32)
    args["padding_value"] = tf.zeros([2], tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="padding_value must be a scalar"):
        op_library.masked_ops_squared_error(**args, Tout=tf.float32)


def test_raw_op_with_unknown_reduction_attr_is_rejected():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)) as err:
        op_library.masked_ops_squared_error(
            **raw_inputs(tf.float32), Tout=tf.float32, reduction="avg"
        )
    assert "avg" in str(err.value)


def test_raw_grad_op_with_bool_mask_and_want_mask_is_invalid_argument():
    args = raw_inputs(tf.float32)
    zero = tf.zeros([])
    with pytest.raises(tf.errors.InvalidArgumentError, match="boolean mask has no gradient"):
        op_library.masked_ops_squared_error_grad(
            grad_loss=zero,
            grad_sum=zero,
            grad_weight_sum=zero,
            loss=zero,
            weight_sum=zero,
            want_mask=True,
            **args,
        )


def test_raw_grad_op_with_non_scalar_upstream_is_invalid_argument():
    args = raw_inputs(tf.float32)
    zero = tf.zeros([])
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be a scalar"):
        op_library.masked_ops_squared_error_grad(
            grad_loss=tf.zeros([2]),
            grad_sum=zero,
            grad_weight_sum=zero,
            loss=zero,
            weight_sum=zero,
            **args,
        )


def test_raw_op_refuses_extra_masks_of_another_dtype_or_shape():
    args = raw_inputs(tf.float32)
    args["extra_masks"] = [tf.ones([4], tf.float64)]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask\[1\] .* must be bool, float"):
        op_library.masked_ops_squared_error(**args, Tout=tf.float32)
    args["extra_masks"] = [tf.ones([4]), tf.ones([3], tf.bool)]
    with pytest.raises(
        (tf.errors.InvalidArgumentError, ValueError), match=r"mask\[2\] .*leading prefix"
    ):
        op_library.masked_ops_squared_error(**args, Tout=tf.float32)
    args["extra_masks"] = [tf.constant(True)] * 5
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 5 masks"):
        op_library.masked_ops_squared_error(**args, Tout=tf.float32)


def test_raw_grad_op_refuses_a_mask_gradient_with_extra_masks():
    args = raw_inputs(tf.float32)
    args["mask"] = tf.ones([4])
    args["extra_masks"] = [tf.ones([4, 3], tf.bool)]
    zero = tf.zeros([])
    with pytest.raises(tf.errors.InvalidArgumentError, match="extra_masks"):
        op_library.masked_ops_squared_error_grad(
            grad_loss=zero,
            grad_sum=zero,
            grad_weight_sum=zero,
            loss=zero,
            weight_sum=zero,
            want_mask=True,
            **args,
        )


def test_raw_op_refuses_float_labels_of_another_dtype_and_label_gradients():
    args = raw_inputs(tf.float32)
    args["y_true"] = tf.zeros([4, 3], tf.float16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bool, int32 or int64 labels"):
        op_library.masked_ops_squared_error(**args, Tout=tf.float32)
    args["y_true"] = tf.zeros([4, 3], tf.int32)
    zero = tf.zeros([])
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels have no gradient"):
        op_library.masked_ops_squared_error_grad(
            grad_loss=zero,
            grad_sum=zero,
            grad_weight_sum=zero,
            loss=zero,
            weight_sum=zero,
            want_y_true=True,
            **args,
        )
