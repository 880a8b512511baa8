"""The masked-loss kernels without TensorFlow's op machinery: a thin, lazily
loaded view of the compiled pybind11 module masked_ops._kernels.

    from masked_ops import kernels
    loss, total, weight_sum, count = kernels.forward(y_true, y_pred, mask)

See kernels.__doc__ of the loaded module (help(kernels.module())) for the host
(NumPy) and CUDA (__cuda_array_interface__) functions.
"""

import importlib

_BUILD_HINT = "pip install --no-build-isolation -e .  (or `make build`) in the masked_ops checkout"
_module = None


def module():
    """The compiled module; ImportError with a rebuild hint when it is missing."""
    global _module
    if _module is None:
        try:
            _module = importlib.import_module("masked_ops._kernels")
        except ImportError as e:
            raise ImportError(
                f"masked_ops: the compiled binding masked_ops._kernels is missing or does not "
                f"load ({e}). It is built with the op library when pybind11 is installed: "
                f"{_BUILD_HINT}"
            ) from e
    return _module


def __getattr__(name):
    # Importing masked_ops.kernels loads nothing; the first use does.
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(module(), name)
