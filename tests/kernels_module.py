"""The compiled binding without TensorFlow: test files that need only NumPy
and the kernels (the fuzz suite of the binding, which `make sanitize` runs on
an AddressSanitizer build; the row-loss tests) load it from here."""

import glob
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_kernels():
    """The compiled binding, without importing masked_ops (whose __init__ loads
    TensorFlow): a `_kernels` module first on sys.path (make sanitize puts its
    instrumented build there), else the one built into masked_ops/."""
    spec = importlib.util.find_spec("_kernels")
    if spec is None:
        built = sorted(glob.glob(os.path.join(ROOT, "masked_ops", "_kernels*.so")))
        if not built:
            raise ImportError(
                "masked_ops/_kernels*.so is missing: build it with "
                "`pip install --no-build-isolation -e .` (or `make build`)"
            )
        spec = importlib.util.spec_from_file_location("_kernels", built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
