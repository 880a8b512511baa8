"""The loader refuses a missing or stale compiled library with an ImportError
that says how to rebuild. Each scenario imports a temporary copy of the
masked_ops package (placed first on sys.path) in one fresh subprocess, so the
real package and this process are never touched."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

import masked_ops
from masked_ops import _loader

PACKAGE_DIR = os.path.dirname(os.path.abspath(masked_ops.__file__))
LIBRARY_NAME = os.path.basename(_loader.LIBRARY_PATH)
BUILD_INFO_NAME = os.path.basename(_loader.BUILD_INFO_PATH)
REBUILD_FRAGMENTS = ("pip install --no-build-isolation -e .", "make build")

SCENARIO_SCRIPT = r"""
import importlib, json, os, sys, traceback
import tensorflow as tf

results = {}
for name, root in json.loads(sys.argv[1]).items():
    for mod in [m for m in sys.modules if m == "masked_ops" or m.startswith("masked_ops.")]:
        del sys.modules[mod]
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    try:
        import masked_ops
        loss = masked_ops.masked_mse([[1.0, 2.0, 0.0]], [[1.5, 2.0, 9.0]], padding_value=0)
        results[name] = {"ok": True, "file": masked_ops.__file__, "loss": float(loss)}
    except BaseException as e:
        results[name] = {
            "ok": False,
            "type": type(e).__name__,
            "is_import_error": isinstance(e, ImportError),
            "message": str(e),
            "traceback": traceback.format_exc(),
        }
    finally:
        sys.path.remove(root)
results["__tf_version__"] = tf.__version__
print("RESULT" + json.dumps(results), flush=True)
os._exit(0)
"""


def package_copy(root, build_info=None, library=None):
    """A copy of masked_ops/ under root: every file of the package except the op
    library and _build_info.json, which are controlled: `build_info` (a dict, a
    raw string, or None for no file) and `library` ("real" copies it, bytes
    writes those, None leaves it out)."""
    pkg = os.path.join(root, "masked_ops")
    os.makedirs(pkg)
    for name in os.listdir(PACKAGE_DIR):
        path = os.path.join(PACKAGE_DIR, name)
        if os.path.isfile(path) and name not in (LIBRARY_NAME, BUILD_INFO_NAME):
            shutil.copy2(path, pkg)
    if build_info is not None:
        with open(os.path.join(pkg, BUILD_INFO_NAME), "w") as f:
            f.write(build_info if isinstance(build_info, str) else json.dumps(build_info))
    if library == "real":
        shutil.copy2(_loader.LIBRARY_PATH, pkg)
    elif library is not None:
        with open(os.path.join(pkg, LIBRARY_NAME), "wb") as f:
            f.write(library)
    return root


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    base = tmp_path_factory.mktemp("loader")
    with open(_loader.BUILD_INFO_PATH) as f:
        current = json.load(f)  # the real build info (whatever else it records)
    assert current["tensorflow_version"] == tf.__version__
    stale = dict(current, tensorflow_version="1.2.3")
    roots = {
        "missing_library": package_copy(str(base / "a"), current, None),
        "version_mismatch": package_copy(str(base / "b"), stale, "real"),
        "no_build_info": package_copy(str(base / "c"), None, "real"),
        "corrupt_build_info": package_copy(str(base / "d"), "{not json", "real"),
        "corrupt_library": package_copy(str(base / "e"), current, b"not a shared library"),
        # Last: the only scenario that really loads the library in that process.
        "good_copy": package_copy(str(base / "f"), current, "real"),
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO_SCRIPT, json.dumps(roots)],
        cwd=str(base),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    results = json.loads(line[len("RESULT") :])
    results["__roots__"] = roots
    return results


def assert_import_error(result, *fragments):
    assert not result["ok"], result
    assert result["is_import_error"], (result["type"], result["message"])
    for fragment in (*REBUILD_FRAGMENTS, *fragments):
        assert fragment in result["message"], (fragment, result["message"])


def test_missing_library_raises_import_error_with_rebuild_command(scenarios):
    result = scenarios["missing_library"]
    root = scenarios["__roots__"]["missing_library"]
    # Names the missing file and where it was looked for (the temporary copy).
    assert_import_error(result, LIBRARY_NAME, "missing", os.path.join(root, "masked_ops"))


def test_tensorflow_version_mismatch_raises_import_error_with_rebuild_command(scenarios):
    result = scenarios["version_mismatch"]
    assert_import_error(result, "1.2.3", scenarios["__tf_version__"])


@pytest.mark.parametrize("scenario", ["no_build_info", "corrupt_build_info"])
def test_unknown_build_version_raises_import_error(scenarios, scenario):
    assert_import_error(scenarios[scenario], "unknown", scenarios["__tf_version__"])


def test_unloadable_library_raises_import_error_with_rebuild_command(scenarios):
    assert_import_error(scenarios["corrupt_library"], LIBRARY_NAME)


def test_good_copy_imports_and_works(scenarios):
    """Control: the same mechanism with an intact copy imports the copy and runs."""
    result = scenarios["good_copy"]
    assert result["ok"], result.get("traceback")
    root = scenarios["__roots__"]["good_copy"]
    assert result["file"].startswith(os.path.join(root, "masked_ops"))
    assert abs(result["loss"] - 0.125) < 1e-7  # (0.25 + 0) / 2; y_true 0 is padding


def test_real_package_is_untouched():
    assert os.path.exists(os.path.join(PACKAGE_DIR, LIBRARY_NAME))
    assert _loader._read_build_info().get("tensorflow_version") == tf.__version__
    assert float(masked_ops.masked_mse([1.0], [3.0])) == 4.0
