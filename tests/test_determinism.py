"""Bitwise reproducibility: repeated calls, eager vs tf.function, and 1 vs
several intra-op threads (each thread count in a fresh process, since the
thread pool is fixed when TensorFlow initializes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from _helpers import (
    DETERMINISM_CASES,
    determinism_case,
    determinism_digests,
    fused_raw_results,
    shape_id,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

CASE_IDS = [f"{d}-{k}-{shape_id(s)}" for d, k, s in DETERMINISM_CASES]


@pytest.mark.parametrize("index", range(len(DETERMINISM_CASES)), ids=CASE_IDS)
def test_repeated_calls_are_bitwise_equal(index):
    case = determinism_case(index)
    first = fused_raw_results(case)
    assert set(first) >= {"loss", "sum", "weight_sum", "count", "grad_y_true", "grad_y_pred"}
    for _ in range(3):
        again = fused_raw_results(case)
        for name in first:
            assert again[name] == first[name], f"{name} differs between calls"
    # The same results inside a tf.function (graph), called twice.
    graph = fused_raw_results(case, tf.function)
    for name in first:
        assert graph[name] == first[name], f"{name} differs between eager and tf.function"


THREAD_SCRIPT = r"""
import json, sys
threads = int(sys.argv[1])
import tensorflow as tf
# Must happen before TensorFlow initializes its runtime.
tf.config.threading.set_intra_op_parallelism_threads(threads)
sys.path.insert(0, sys.argv[2])
from _helpers import determinism_digests
digests = determinism_digests()
print("RESULT" + json.dumps({
    "threads": tf.config.threading.get_intra_op_parallelism_threads(),
    "digests": digests,
}), flush=True)
import os
os._exit(0)  # skip the slow interpreter teardown
"""


def run_with_threads(thread_counts):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-c", THREAD_SCRIPT, str(n), TESTS_DIR],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in thread_counts
    }
    results = {}
    for n, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"threads={n} failed:\n{err[-4000:]}"
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
        results[n] = json.loads(line[len("RESULT") :])
        assert results[n]["threads"] == n
    return results


def test_one_and_several_intra_op_threads_are_bitwise_equal():
    results = run_with_threads([1, 2])
    one = results[1]["digests"]
    assert set(one) == set(CASE_IDS)
    for n in (2,):
        for case, outputs in one.items():
            for name, value in outputs.items():
                other = results[n]["digests"][case][name]
                assert other == value, f"{case} {name}: 1 thread {value} vs {n} threads {other}"
    # And this process (default thread count) agrees with them too.
    here = determinism_digests()
    assert here == one
    # Sanity: the digests hold real numbers (loss is a finite non-zero float).
    for case, outputs in one.items():
        dtype = np.float64 if case.startswith("float64") else np.float32
        loss = np.frombuffer(bytes.fromhex(outputs["loss"])[-np.dtype(dtype).itemsize :], dtype)
        assert np.isfinite(loss).all() and loss[0] > 0, (case, loss)
