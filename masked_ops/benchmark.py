"""Fused masked MSE against the pure-TF reference: `python -m masked_ops.benchmark`.

Every path (fused or reference; eager, tf.function or tf.function(jit_compile=True);
forward or forward+backward) runs on the same inputs on every device TensorFlow
sees. Each is warmed up (tracing and compiling excluded), then the paths are
timed round-robin, each call followed by a sync, so the noise of a shared
machine hits all of them alike; medians and ratios come from the same run.
Bandwidth ceilings are measured the same way on the same thread pool: a
reduce_sum reading as many bytes as the forward, and x * 2.0 reading and
writing as many as the backward. Peak memory of forward+backward at the
largest size is measured per path in a fresh subprocess.

Prints a table, appends the run to masked_mse.json and masked_mse.csv in the
results folder; benchmarks/plot.py draws them.
"""

import argparse
import csv
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from masked_ops import _bench_cases as bc

QUICK = {"sizes": (10, 14, 18, 22, 24), "variant_size": 22, "rounds": 5, "min_sample_s": 0.002}
FULL = {
    "sizes": tuple(range(10, 27)),
    "variant_size": 24,
    "rounds": 11,
    "min_sample_s": 0.01,
}
RESULTS_NAME = "masked_mse"
REFERENCE_PATHS = [f"reference/{m}" for m in bc.MODES]
MEMORY_METHOD_CPU = (
    "peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the call, "
    "on the call after warm-up, in a fresh process per implementation with "
    "TF_ENABLE_ONEDNN_OPTS=0 and MALLOC_MMAP_THRESHOLD_=131072 so freed buffers return to the OS"
)
MEMORY_METHOD_GPU = (
    "tf.config.experimental.get_memory_info peak minus current before the call, "
    "after reset_memory_stats, on the call after warm-up, in a fresh process per implementation"
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m masked_ops.benchmark", description=__doc__.split("\n\n")[0]
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", dest="full", action="store_false", help="quick run (default)")
    which.add_argument("--full", dest="full", action="store_true", help="full run")
    parser.add_argument(
        "--sizes", type=int, nargs="+", metavar="LOG2N", help="log2 of the sweep's sizes"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per path")
    parser.add_argument(
        "--device", action="append", default=[], help="only devices whose name contains this"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--results-dir", default=os.path.join("benchmarks", "results"), help="where to append"
    )
    parser.set_defaults(full=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-probe", nargs=3, metavar=("IMPL", "N", "DEVICE"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def plan(settings, sizes):
    """[(case, in_sweep)]: float32 boolean 70 % masks over the sizes, then the
    variants at one size: bfloat16, float weights, densities, a prefix mask."""
    cases = [(bc.Case(1 << s), True) for s in sizes]
    n = 1 << settings["variant_size"]
    variants = [
        bc.Case(n, dtype="bfloat16"),
        bc.Case(n, mask="weights"),
        bc.Case(n, density=0.1),
        bc.Case(n, density=0.5),
        bc.Case(n, density=0.9),
        bc.Case(n, prefix=True),
    ]
    return cases + [(c, False) for c in variants]


class Progress:
    """A one-line progress bar on stderr; one line per step when not a terminal."""

    def __init__(self, total, stream=sys.stderr, width=30):
        self.total, self.done, self.stream, self.width = max(total, 1), 0, stream, width
        self.start = time.perf_counter()
        self.tty = stream.isatty()
        self.label = ""

    def step(self, label, amount=0):
        self.done = min(self.total, self.done + amount)
        changed = label != self.label
        self.label = label
        if self.tty:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            elapsed = time.perf_counter() - self.start
            line = f"[{bar}] {100 * self.done // self.total:3d}% {elapsed:5.0f}s {label}"
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif changed:
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"[{100 * self.done // self.total:3d}% {elapsed:4.0f}s] {label}\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def time_paths(fns, sync, rounds, min_sample_s, on_round):
    """Median seconds per call of each fns entry, timed round-robin. Each sample
    runs a path enough times to last about min_sample_s (calibrated on one warm
    call) so that timer and scheduling noise stay small for tiny calls."""
    repeats = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        sync(fn())
        repeats[name] = max(1, math.ceil(min_sample_s / max(time.perf_counter() - t0, 1e-9)))
    names = list(fns)
    samples = {name: [] for name in names}
    for r in range(rounds):
        # Rotating the order moves every path through every position.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, k = fns[name], repeats[name]
            t0 = time.perf_counter()
            for _ in range(k):
                sync(fn())
            samples[name].append((time.perf_counter() - t0) / k)
        on_round()
    return samples, repeats


def run_case(case, in_sweep, device, settings, progress, seed):
    label = f"{device.split('device:')[-1]} {case.label}"
    progress.step(f"{label}: warm-up")
    inputs = bc.Inputs(case, device, seed)
    sync = bc.synchronizer(device)
    fns, rows = {}, {}
    for path in bc.loss_paths() + bc.ceiling_paths():
        key = (path.name, path.direction)
        row = {
            "device": device,
            **{f"case_{k}": v for k, v in case.as_dict().items()},
            "sweep": in_sweep,
            "direction": path.direction,
            "impl": path.impl,
            "mode": path.mode,
            "path": path.name,
            "bytes": inputs.ceiling_bytes(path.mode)
            if path.impl == "ceiling"
            else inputs.bytes_moved(path.direction),
        }
        rows[key] = row
        try:
            fn, outputs = bc.first_call(path, inputs)
        except bc.Unsupported as e:
            row.update(status="unsupported", note=str(e))
            continue
        row["status"] = "ok"
        if path.impl != "ceiling":
            row["loss_rel_err"], row["grad_rel_err"] = bc.relative_errors(inputs, outputs)
        del outputs
        fns[key] = fn
    progress.step(f"{label}: timing", 1)
    with tf.device(device):
        samples, repeats = time_paths(
            fns,
            sync,
            settings["rounds"],
            settings["min_sample_s"],
            lambda: progress.step(f"{label}: timing", 1),
        )
    for key, times in samples.items():
        rows[key].update(
            median_s=statistics.median(times), samples_s=times, calls_per_sample=repeats[key]
        )
    derive(rows, inputs)
    return list(rows.values())


def derive(rows, inputs):
    """GB/s, fraction of the measured bandwidth, floors and speedups of one case."""
    read = rows.get(("ceiling/read", "fwd"), {})
    write = rows.get(("ceiling/read+write", "fwd+bwd"), {})
    read_bw = read["bytes"] / read["median_s"] if "median_s" in read else None
    rw_bw = write["bytes"] / write["median_s"] if "median_s" in write else None
    fwd_bytes = inputs.bytes_moved("fwd")
    bwd_bytes = inputs.bytes_moved("fwd+bwd") - fwd_bytes
    for (_, direction), row in rows.items():
        row["read_gbps"] = read_bw / 1e9 if read_bw else None
        row["read_write_gbps"] = rw_bw / 1e9 if rw_bw else None
        if "median_s" not in row:
            continue
        row["gbps"] = row["bytes"] / row["median_s"] / 1e9
        if row["impl"] == "ceiling" or not (read_bw and rw_bw):
            continue
        # The floor: the forward's bytes at the read ceiling, the backward's at
        # the read+write ceiling.
        floor = fwd_bytes / read_bw + (bwd_bytes / rw_bw if direction == "fwd+bwd" else 0.0)
        row["floor_s"] = floor
        row["bandwidth_fraction"] = floor / row["median_s"]
        row["read_floor_s"] = row["bytes"] / read_bw
        for ref in REFERENCE_PATHS:
            other = rows.get((ref, direction), {})
            if "median_s" in other:
                row[f"speedup_vs_{ref.replace('/', '_')}"] = other["median_s"] / row["median_s"]


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_probe(impl, n, device):
    """Runs in its own process, one per implementation (see measure_memory):
    for each mode, the extra memory at the peak of one forward+backward call
    beyond the inputs, which already exist."""
    inputs = bc.Inputs(bc.Case(n), device)
    sync = bc.synchronizer(device)
    results = []
    for mode in bc.MODES:
        path = bc.Path(impl, mode, "fwd+bwd")
        result = {"impl": impl, "mode": mode, "path": path.name, "device": device, "n": n}
        result["grad_bytes"] = inputs.grad_bytes()
        results.append(result)
        try:
            fn, outputs = bc.first_call(path, inputs)
        except bc.Unsupported as e:
            result.update(status="unsupported", note=str(e))
            continue
        del outputs
        with tf.device(device):
            sync(fn())
            gc.collect()
            if bc.is_gpu(device):
                tf.config.experimental.reset_memory_stats(device)
                before = tf.config.experimental.get_memory_info(device)["current"]
                outputs = fn()
                sync(outputs)
                peak = tf.config.experimental.get_memory_info(device)["peak"]
                method = MEMORY_METHOD_GPU
            else:
                before = _status_kb("VmRSS")
                try:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")
                except OSError as e:
                    result.update(status="unavailable", note=f"cannot reset VmHWM: {e}")
                    continue
                outputs = fn()
                sync(outputs)
                peak = _status_kb("VmHWM")
                method = MEMORY_METHOD_CPU
        del outputs, fn
        gc.collect()
        extra = peak - before
        result.update(
            status="ok",
            peak_extra_bytes=extra,
            peak_extra_in_grads=extra / result["grad_bytes"],
            method=method,
        )
    return results


def measure_memory(n, device, progress):
    """Fused and reference each in a fresh process, so neither inherits the
    other's allocations."""
    rows = []
    # Freed buffers must go back to the OS for the resident set to show the
    # peak: oneDNN's allocator caches them, and glibc's adaptive mmap threshold
    # would serve later buffers from its heap.
    env = dict(
        os.environ,
        TF_ENABLE_ONEDNN_OPTS="0",
        MALLOC_MMAP_THRESHOLD_="131072",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    short = device.split("device:")[-1]
    for impl in bc.IMPLS:
        progress.step(f"memory {short} 2^{n.bit_length() - 1} {impl}")
        command = [
            sys.executable,
            "-m",
            "masked_ops.benchmark",
            "--memory-probe",
            impl,
            str(n),
            device,
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode == 0:
            rows += json.loads(done.stdout.strip().splitlines()[-1])
        else:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            rows += [
                {
                    "impl": impl,
                    "mode": mode,
                    "path": f"{impl}/{mode}",
                    "device": device,
                    "n": n,
                    "status": "failed",
                    "note": f"exit {done.returncode}: {tail[0]}",
                }
                for mode in bc.MODES
            ]
        progress.step(progress.label, 1)
    return rows


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = []
    for d in tf.config.list_physical_devices("GPU"):
        gpus.append(tf.config.experimental.get_device_details(d).get("device_name", d.name))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
    }


def _fmt_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g}{unit}"
    return f"{seconds / 1e-9:.3g}ns"


def _fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def format_table(rows):
    header = [
        "case",
        "dir",
        "path",
        "median",
        "GB/s",
        "%BW",
        "x ref/eager",
        "x ref/graph",
        "x ref/xla",
        "max rel err",
    ]
    lines, device = [], None
    body = []
    for row in rows:
        if row["device"] != device:
            device = row["device"]
            body.append([f"== {device}"])
        if row.get("status") != "ok":
            body.append([row["case_label"], row["direction"], row["path"], row["status"]])
            continue
        errors = [e for e in (row.get("loss_rel_err"), row.get("grad_rel_err")) if e is not None]
        fraction = row.get("bandwidth_fraction")
        body.append(
            [
                row["case_label"],
                row["direction"],
                row["path"],
                _fmt_time(row["median_s"]),
                _fmt(row.get("gbps"), ".1f"),
                _fmt(None if fraction is None else 100 * fraction, ".0f"),
                *(
                    _fmt(row.get(f"speedup_vs_{r.replace('/', '_')}"), ".2f")
                    for r in REFERENCE_PATHS
                ),
                _fmt(max(errors) if errors else None, ".1e"),
            ]
        )
    widths = [
        max(len(str(r[i])) for r in [header, *body] if len(r) > i and len(r) > 1)
        for i in range(len(header))
    ]
    for r in [header, *body]:
        if len(r) == 1:
            lines.append(r[0])
        else:
            lines.append(
                "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
            )
    return "\n".join(lines)


def format_memory(rows):
    lines = []
    for row in rows:
        where = f"{row['device']} 2^{row['n'].bit_length() - 1} {row['path']}"
        if row["status"] != "ok":
            lines.append(f"{where}: {row['status']} ({row.get('note', '')})")
        else:
            lines.append(
                f"{where}: +{row['peak_extra_bytes'] / 2**20:.0f} MiB at peak"
                f" = {row['peak_extra_in_grads']:.2f} x the gradient"
            )
    return "\n".join(lines)


def target_report(rows, memory):
    """The project's performance targets, as measured (reported, never asserted)."""
    found = {}
    for row in rows:
        if row["sweep"] and row.get("status") == "ok":
            found[(row["device"], row["case_n"], row["direction"], row["path"])] = row
    lines = []

    def check(text, value, goal, higher=True):
        met = value >= goal if higher else value <= goal
        lines.append(
            f"  {'met   ' if met else 'MISSED'} {text}: {value:.2f} (target "
            f"{'>=' if higher else '<='} {goal})"
        )

    for device in dict.fromkeys(r["device"] for r in rows):
        lines.append(f"{device}:")

        def get(n, direction, path, device=device):
            return found.get((device, n, direction, path))

        big, small = 1 << 24, 1 << 10
        f_eager, f_graph = get(big, "fwd", "fused/eager"), get(big, "fwd", "fused/graph")
        if f_graph and "bandwidth_fraction" in f_graph:
            check(
                "fwd 2^24 fused/graph, fraction of read bandwidth",
                f_graph["bandwidth_fraction"],
                0.9,
            )
        if f_eager and "speedup_vs_reference_eager" in f_eager:
            check(
                "fwd 2^24 fused/eager vs reference/eager", f_eager["speedup_vs_reference_eager"], 15
            )
        if f_graph and "speedup_vs_reference_xla" in f_graph:
            check("fwd 2^24 fused/graph vs reference/xla", f_graph["speedup_vs_reference_xla"], 8)
        fb = get(big, "fwd+bwd", "fused/graph")
        if fb and "speedup_vs_reference_xla" in fb:
            check("fwd+bwd 2^24 fused/graph vs reference/xla", fb["speedup_vs_reference_xla"], 2)
        s_fused, s_ref = get(small, "fwd", "fused/eager"), get(small, "fwd", "reference/eager")
        if s_fused and s_ref:
            check(
                "fwd 2^10 fused/eager latency / reference/eager latency",
                s_fused["median_s"] / s_ref["median_s"],
                0.5,
                higher=False,
            )
        for m in memory:
            if m["device"] == device and m["status"] == "ok" and m["impl"] == "fused":
                # The gradient itself is one full-size buffer; anything past
                # half another one means an extra full-size temporary.
                check(
                    f"fwd+bwd 2^{m['n'].bit_length() - 1} {m['path']} peak extra memory in "
                    "gradients",
                    m["peak_extra_in_grads"],
                    1.5,
                    higher=False,
                )
    return "\n".join(lines)


CSV_SKIP = ("samples_s",)


def append_results(results_dir, run):
    os.makedirs(results_dir, exist_ok=True)
    json_path = os.path.join(results_dir, RESULTS_NAME + ".json")
    runs = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            runs = json.load(f)
    runs.append(run)
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f, indent=1)
    os.replace(tmp, json_path)

    csv_path = os.path.join(results_dir, RESULTS_NAME + ".csv")
    machine = run["machine"]
    head = {
        "run_id": run["run_id"],
        "bench_mode": run["mode"],
        "cpu": machine["cpu"],
        "cores": machine["cores"],
        "tensorflow": machine["tensorflow"],
        "numpy": machine["numpy"],
        "python": machine["python"],
    }
    records = [head | {k: v for k, v in r.items() if k not in CSV_SKIP} for r in run["results"]]
    fields = list(dict.fromkeys(k for r in records for k in r))
    old_fields = []
    if os.path.exists(csv_path):
        with open(csv_path, newline="") as f:
            old_fields = next(csv.reader(f), [])
    if old_fields and set(fields) <= set(old_fields):
        with open(csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=old_fields).writerows(records)
    else:
        # New columns: rewrite the file under one header that holds them all.
        old = []
        if old_fields:
            with open(csv_path, newline="") as f:
                old = list(csv.DictReader(f))
        fields = list(dict.fromkeys(old_fields + fields))
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(old + records)
    return json_path, csv_path


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.memory_probe:
        impl, n, device = args.memory_probe
        print(json.dumps(memory_probe(impl, int(n), device)))
        return 0

    settings = dict(FULL if args.full else QUICK)
    if args.rounds:
        settings["rounds"] = args.rounds
    sizes = args.sizes or settings["sizes"]
    cases = plan(settings, sizes)
    devices = [d for d in bc.devices() if not args.device or any(s in d for s in args.device)]
    if not devices:
        print(f"no device matches {args.device}; TensorFlow sees {bc.devices()}", file=sys.stderr)
        return 2
    largest = 1 << max(sizes)
    memory_steps = 0 if args.no_memory else len(bc.IMPLS)
    total = len(devices) * (len(cases) * (settings["rounds"] + 1) + memory_steps)
    progress = Progress(total)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc)
    rows, memory = [], []
    for device in devices:
        for case, in_sweep in cases:
            rows += run_case(case, in_sweep, device, settings, progress, args.seed)
            gc.collect()
        if not args.no_memory:
            memory += measure_memory(largest, device, progress)
    progress.close()
    duration = time.perf_counter() - started

    print(format_table(rows))
    if memory:
        print(
            "\nPeak memory, forward+backward ("
            + MEMORY_METHOD_CPU
            + "; GPU: "
            + MEMORY_METHOD_GPU
            + "):"
        )
        print(format_memory(memory))
    print("\nTargets (fused vs reference, same run):")
    print(target_report(rows, memory))
    run = {
        "run_id": date.strftime("%Y%m%dT%H%M%SZ"),
        "date": date.isoformat(timespec="seconds"),
        "mode": "full" if args.full else "quick",
        "settings": settings | {"sizes": list(sizes), "seed": args.seed},
        "machine": machine_info(),
        "duration_s": duration,
        "results": rows,
        "memory": memory,
    }
    json_path, csv_path = append_results(args.results_dir, run)
    print(f"\n{len(rows)} results in {duration:.0f}s appended to {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
