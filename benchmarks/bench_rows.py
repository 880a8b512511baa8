"""Masked sparse categorical cross-entropy from logits (the row losses) on the
CPU: the fused op against the TF peers of the same run, forward and
forward+backward (loss and the gradient of the logits both consumed), with
the bandwidth and the peak memory of each path.

    python benchmarks/bench_rows.py [--quick] [--no-memory] [--repeat 5]

Cases (--quick: the small one only): rows 2^12 x V 2^15 in float32 and
bfloat16, rows 2^14 x V 2^10 in float32; 30 % of the rows masked (padding).
Paths: the fused op (`masked_sparse_categorical_crossentropy`: in a tape it
writes the gradient in its forward pass, "one pass"; "two_pass" takes the
forward op and the gradient op), eager and tf.function; the peers: the
masked pure-TF reference (`masked_ops.reference`, eager, tf.function, XLA),
`tf.nn.sparse_softmax_cross_entropy_with_logits` masked with `tf.where`
(tf.function, XLA) and Keras's `SparseCategoricalCrossentropy(from_logits=True)`
with the mask as `sample_weight` (tf.function, XLA). Ratios are against the
fastest peer of the same case. GB/s counts the logits once (and their
gradient once for forward+backward); "% BW" is the time the logits' bytes
take at the read (+write) bandwidth measured in the same run, over the
path's time. Peak memory: the extra resident memory of one forward+backward
call beyond its inputs, each path in a fresh process, in units of the
logits' bytes. Rows go to benchmarks/results/rows_crossentropy.json/.csv;
benchmarks/plot_rows.py draws them.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import masked_ops  # noqa: E402
from masked_ops import ops, reference, specs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CASES = {
    "4096x32768 float32": (1 << 12, 1 << 15, "float32"),
    "4096x32768 bfloat16": (1 << 12, 1 << 15, "bfloat16"),
    "16384x1024 float32": (1 << 14, 1 << 10, "float32"),
}
QUICK = ("16384x1024 float32",)
PADDING = 0.3
PEERS = ("reference", "tf.nn", "keras")
PATHS = (
    ("fused", "eager"),
    ("fused", "graph"),
    ("two_pass", "graph"),
    ("reference", "eager"),
    ("reference", "graph"),
    ("reference", "xla"),
    ("tf.nn", "graph"),
    ("tf.nn", "xla"),
    ("keras", "graph"),
    ("keras", "xla"),
)
SPEC = specs.SPARSE_CATEGORICAL_CROSSENTROPY_FROM_LOGITS


def make_inputs(rows, classes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    logits = tf.cast(tf.constant(rng.standard_normal((rows, classes), dtype=np.float32)), dtype)
    labels = tf.constant(rng.integers(0, classes, rows).astype(np.int32))
    mask = tf.constant(rng.random(rows) >= PADDING)
    return logits, labels, mask


def loss_fn(impl):
    """loss(x, y, m) of one implementation, as its users write it."""
    if impl == "fused":
        return lambda x, y, m: masked_ops.masked_sparse_categorical_crossentropy(
            y, x, m, from_logits=True
        )
    if impl == "two_pass":
        return lambda x, y, m: ops.fused_rows(SPEC, y, x, m, "mean")[0]
    if impl == "reference":
        return lambda x, y, m: reference.masked_sparse_categorical_crossentropy(
            y, x, m, from_logits=True
        )
    if impl == "tf.nn":

        def tf_nn(x, y, m):
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.where(m, y, 0), logits=tf.cast(x, tf.float32)
            )
            return tf.reduce_sum(tf.where(m, ce, 0.0)) / tf.reduce_sum(tf.cast(m, tf.float32))

        return tf_nn
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return lambda x, y, m: keras_loss(y, x, sample_weight=tf.cast(m, tf.float32))


def build(impl, mode, direction):
    fn = loss_fn(impl)
    if direction == "fwd+bwd":
        inner = fn

        def fn(x, y, m):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = inner(x, y, m)
            return loss, tape.gradient(loss, x)

    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=mode == "xla")


def finish(out):
    """Reads a scalar back: the outputs exist (CPU work is synchronous)."""
    out = out if isinstance(out, tuple) else (out,)
    float(tf.reshape(out[0], [-1])[0])
    return out


def median_time(fn, args, repeat):
    finish(fn(*args))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        finish(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ceilings(nbytes, repeat):
    """(read, read+write) bandwidth in bytes/s over a float32 buffer of nbytes."""
    x = tf.ones([nbytes // 4], tf.float32)
    two = tf.constant(2.0)
    read = median_time(lambda: tf.reduce_sum(x), (), repeat)
    write = median_time(lambda: (x * two,), (), repeat)
    return nbytes / read, 2 * nbytes / write


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_probe(case, impl, mode):
    """In a fresh process: the peak extra resident bytes of one forward+backward
    call beyond its inputs (after a first call that traced/compiled it)."""
    rows, classes, dtype = CASES[case]
    args = make_inputs(rows, classes, dtype)
    fn = build(impl, mode, "fwd+bwd")
    finish(fn(*args))
    gc.collect()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    out = finish(fn(*args))
    peak = _status_bytes("VmHWM") - before
    del out
    return peak


def measure_memory(case, impl, mode):
    # Freed buffers go back to the OS, so the resident set shows the peak.
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", case, impl, mode]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None
    return int(proc.stdout.strip().splitlines()[-1])


def run_case(case, repeat, memory):
    rows, classes, dtype = CASES[case]
    args = make_inputs(rows, classes, dtype)
    logit_bytes = rows * classes * tf.as_dtype(dtype).size
    read_bw, rw_bw = ceilings(logit_bytes, repeat)
    results = []
    for direction in ("fwd", "fwd+bwd"):
        for impl, mode in PATHS:
            if impl == "two_pass" and direction == "fwd":
                continue  # the same forward op as fused/graph
            seconds = median_time(build(impl, mode, direction), args, repeat)
            moved = logit_bytes * (2 if direction == "fwd+bwd" else 1)
            # fwd: the logits read once; fwd+bwd: read once, the gradient written once.
            floor = logit_bytes / read_bw if direction == "fwd" else moved / rw_bw
            row = {
                "case": case,
                "rows": rows,
                "classes": classes,
                "dtype": dtype,
                "padding": PADDING,
                "impl": impl,
                "mode": mode,
                "path": f"{impl}/{mode}",
                "direction": direction,
                "median_s": seconds,
                "gbps": moved / seconds / 1e9,
                "bandwidth_fraction": floor / seconds,
                "read_gbps": read_bw / 1e9,
                "read_write_gbps": rw_bw / 1e9,
                "logit_bytes": logit_bytes,
            }
            if memory and direction == "fwd+bwd":
                peak = measure_memory(case, impl, mode)
                row["peak_extra_bytes"] = peak
                row["peak_extra_in_logits"] = None if peak is None else peak / logit_bytes
            results.append(row)
    for direction in ("fwd", "fwd+bwd"):
        peers = [r for r in results if r["direction"] == direction and r["impl"] in PEERS]
        fastest = min(peers, key=lambda r: r["median_s"])
        for r in results:
            if r["direction"] == direction:
                r["fastest_peer"] = fastest["path"]
                r["speedup_vs_fastest_peer"] = fastest["median_s"] / r["median_s"]
    return results


def print_case(case, rows):
    first = rows[0]
    print(
        f"\n{case}, {PADDING:.0%} of rows masked; measured bandwidth: read "
        f"{first['read_gbps']:.1f} GB/s, read+write {first['read_write_gbps']:.1f} GB/s"
    )
    print(
        f"  {'path':18s} {'dir':8s} {'time':>9s} {'GB/s':>6s} {'% BW':>5s} "
        f"{'x fastest peer':>15s} {'peak extra':>11s}"
    )
    for r in rows:
        peak = r.get("peak_extra_in_logits")
        peak_text = "-" if peak is None else f"{peak:.2f}x"
        ratio = f"{r['speedup_vs_fastest_peer']:.2f} ({r['fastest_peer']})"
        print(
            f"  {r['path']:18s} {r['direction']:8s} {r['median_s'] * 1e3:7.1f}ms "
            f"{r['gbps']:6.1f} {r['bandwidth_fraction']:5.0%} {ratio:>15s} {peak_text:>11s}"
        )


def append_results(run):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "rows_crossentropy.json")
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)
    runs.append(run)
    with open(path + ".tmp", "w") as f:
        json.dump(runs, f, indent=1)
    os.replace(path + ".tmp", path)
    csv_path = os.path.join(RESULTS, "rows_crossentropy.csv")
    fields = ["run_id", *run["results"][0].keys()]
    new = not os.path.exists(csv_path)
    with open(csv_path, "a") as f:
        if new:
            f.write(",".join(fields) + "\n")
        for r in run["results"]:
            values = [run["run_id"], *(r.get(k) for k in fields[1:])]
            f.write(",".join("" if v is None else str(v) for v in values) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small case only")
    parser.add_argument("--cases", nargs="*", choices=list(CASES), default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-save", dest="save", action="store_false")
    parser.add_argument("--memory-probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(memory_probe(*args.memory_probe))
        return
    cases = args.cases or (QUICK if args.quick else tuple(CASES))
    from masked_ops import kernels

    print(
        f"masked sparse categorical cross-entropy from logits, CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{kernels.cpu_isa()}), TensorFlow {tf.__version__}"
    )
    results = []
    for case in cases:
        rows = run_case(case, args.repeat, args.memory)
        print_case(case, rows)
        results.extend(rows)
    if args.save:
        run = {
            "run_id": datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "tensorflow": tf.__version__,
                "isa": kernels.cpu_isa(),
            },
            "results": results,
        }
        print(f"\nresults: {append_results(run)}")


if __name__ == "__main__":
    main()
