"""pytest-benchmark cases at N = 2^24 float32, boolean mask keeping 70 %, for
every loss: fused, hand-written, Keras and reference; eager / tf.function / XLA;
forward and forward+backward; plus the bandwidth ceilings and, for the
cross-entropies, the log and exp passes. Run with
`pytest benchmarks/ --benchmark-only` (`-k mse` for one loss); each group is
one loss, device and direction, so the table compares like with like."""

import time

import cases as bc
import numpy as np
import tensorflow as tf
from tolerances import tolerance

CASE = bc.PYTEST_CASE

# Rounds are sized so each case takes about this long after warm-up.
TARGET_S = 2.0
MIN_ROUNDS, MAX_ROUNDS = 5, 50


def _group(device, loss, direction):
    return f"{loss.key} {device.split('device:')[-1]} N={CASE.label} {direction}"


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
    benchmark.extra_info["ns/element"] = benchmark.stats.stats.median / CASE.n * 1e9
    return outputs


def test_loss(benchmark, loss_path, inputs_for, build):
    device, loss, path = loss_path
    inputs = inputs_for(device, loss)
    benchmark.group = _group(device, loss, path.direction)
    fn = build(device, loss, path)
    outputs = _run(benchmark, fn, device, inputs.bytes_moved(path.direction))
    loss_err, grad_err = bc.relative_errors(inputs, loss, outputs)
    benchmark.extra_info["loss_rel_err"] = loss_err
    if grad_err is not None:
        benchmark.extra_info["grad_rel_err"] = grad_err
    if path.impl in ("fused", "two_pass"):
        # A fast wrong answer is no result: the fused paths must match float64.
        loss_ref, grad_ref = inputs.expected(loss)
        rtol, atol = tolerance(CASE.dtype, "reduction")
        np.testing.assert_allclose(float(outputs[0]), loss_ref, rtol=rtol, atol=atol)
        if len(outputs) > 1:
            rtol, atol = tolerance(CASE.dtype, "elementwise")
            np.testing.assert_allclose(
                np.asarray(outputs[1], np.float64), grad_ref, rtol=rtol, atol=atol
            )


def test_baseline(benchmark, baseline_path, inputs_for, build):
    device, loss, path = baseline_path
    inputs = inputs_for(device, loss)
    benchmark.group = _group(device, loss, path.direction)
    fn = build(device, loss, path)
    outputs = _run(benchmark, fn, device, inputs.baseline_bytes(path))
    if path.impl == "compute":
        assert np.isfinite(float(outputs[0]))
        return
    # The ceilings run over ones: the sum is the element count, the product 2.
    rtol, atol = tolerance(tf.float32, "reduction")
    if path.mode == "read":
        expected = inputs.baseline_bytes(path) // 4
        np.testing.assert_allclose(float(outputs[0]), expected, rtol=rtol, atol=atol)
    else:
        np.testing.assert_allclose(float(outputs[0][-1]), 2.0, rtol=rtol, atol=atol)
