"""pytest-benchmark cases at N = 2^24 float32, boolean mask keeping 70 %: fused
vs reference, eager / tf.function / XLA, forward and forward+backward, plus the
two bandwidth ceilings. Run with `pytest benchmarks/ --benchmark-only`; each
group is one device and direction, so the table compares like with like."""

import time

import numpy as np
import tensorflow as tf
from tolerances import tolerance

from masked_ops import _bench_cases as bc

CASE = bc.PYTEST_CASE

# Rounds are sized so each case takes about this long after warm-up.
TARGET_S = 2.0
MIN_ROUNDS, MAX_ROUNDS = 5, 50


def _group(device, direction):
    return f"{device.split('device:')[-1]} N={CASE.label} {direction}"


def _run(benchmark, fn, device, nbytes):
    sync = bc.synchronizer(device)

    def call():
        outputs = fn()
        sync(outputs)
        return outputs

    with tf.device(device):
        t0 = time.perf_counter()
        call()
        rounds = int(np.clip(TARGET_S / (time.perf_counter() - t0), MIN_ROUNDS, MAX_ROUNDS))
        outputs = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9
    return outputs


def test_masked_mse(benchmark, loss_path, inputs_for, build):
    device, path = loss_path
    inputs = inputs_for(device)
    benchmark.group = _group(device, path.direction)
    fn = build(device, path)
    outputs = _run(benchmark, fn, device, inputs.bytes_moved(path.direction))
    loss_err, grad_err = bc.relative_errors(inputs, outputs)
    benchmark.extra_info["loss_rel_err"] = loss_err
    if grad_err is not None:
        benchmark.extra_info["grad_rel_err"] = grad_err
    if path.impl == "fused":
        # A fast wrong answer is no result: the fused paths must match float64.
        loss_ref, grad_ref = inputs.expected
        rtol, atol = tolerance(CASE.dtype, "reduction")
        np.testing.assert_allclose(float(outputs[0]), loss_ref, rtol=rtol, atol=atol)
        if len(outputs) > 1:
            rtol, atol = tolerance(CASE.dtype, "elementwise")
            np.testing.assert_allclose(
                np.asarray(outputs[1], np.float64), grad_ref, rtol=rtol, atol=atol
            )


def test_bandwidth_ceiling(benchmark, ceiling_path, inputs_for, build):
    device, path = ceiling_path
    inputs = inputs_for(device)
    benchmark.group = _group(device, path.direction)
    fn = build(device, path)
    outputs = _run(benchmark, fn, device, inputs.ceiling_bytes(path.mode))
    # The ceilings run over ones: the sum is the element count, the product 2.
    rtol, atol = tolerance(tf.float32, "reduction")
    if path.mode == "read":
        expected = inputs.ceiling_bytes("read") // 4
        np.testing.assert_allclose(float(outputs[0]), expected, rtol=rtol, atol=atol)
    else:
        np.testing.assert_allclose(float(outputs[0][-1]), 2.0, rtol=rtol, atol=atol)
