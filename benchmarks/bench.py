"""Every fused masked loss against the strongest peers: `python benchmarks/bench.py`.

For each loss of the package's table (masked_ops/specs.py), on every device
TensorFlow sees, the fused op runs beside its peers on the same inputs: the
hand-written formula users write, Keras's built-in loss with the mask as
sample_weight, and the select-based reference (masked_ops.reference); eager,
tf.function or tf.function(jit_compile=True); forward, or forward+backward
(gradient with respect to y_pred). Each path is traced once and warmed up
(tracing and compiling excluded), then the paths of a case are timed
round-robin, each call followed by a sync, so the noise of a shared machine
hits all of them alike. Ratios are against the fastest peer of the same run.
Bandwidth ceilings (and for the cross-entropies, a log and an exp pass) are
timed in the same rounds on the same thread pool. Peak memory of
forward+backward at the largest size is measured per implementation in a
fresh subprocess.

Prints the tables, appends the run to benchmarks/results/<family>.{json,csv}
(one family per public loss function); benchmarks/plot.py draws them.
"""

import argparse
import contextlib
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
import tempfile
import time

# TensorFlow reads this when it loads; the memory subprocesses inherit it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_logs_held():
    """TensorFlow's C++ libraries print a few lines while loading, before absl
    logging is initialized, so TF_CPP_MIN_LOG_LEVEL cannot stop them: stderr
    goes to a temporary file during the imports and is replayed only if they fail."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with _native_logs_held():
    import absl.logging
    import cases as bc
    import numpy as np
    import tensorflow as tf

absl.logging.set_verbosity(absl.logging.ERROR)

QUICK = {
    "sizes": {"mse": (10, 14, 18, 22, 24), "other": (20, 24)},
    "variant_size": None,
    "rounds": {"mse": 5, "other": 3},
    "min_sample_s": 0.002,
}
FULL = {
    "sizes": {"mse": tuple(range(10, 27)), "other": tuple(range(10, 27, 2))},
    "variant_size": 24,
    "rounds": {"mse": 11, "other": 7},
    "min_sample_s": 0.01,
}
REFERENCE_PATHS = [f"reference/{m}" for m in bc.MODES]
MEMORY_METHOD_CPU = (
    "peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS before the call, "
    "on the call after warm-up, in a fresh process per implementation with "
    "TF_ENABLE_ONEDNN_OPTS=0 and MALLOC_MMAP_THRESHOLD_=131072 so freed buffers return to the OS"
)
MEMORY_JOBS = 2
MEMORY_METHOD_GPU = (
    "tf.config.experimental.get_memory_info peak minus current before the call, "
    "after reset_memory_stats, on the call after warm-up, in a fresh process per implementation"
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0]
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", dest="full", action="store_false", help="quick run (default)")
    which.add_argument("--full", dest="full", action="store_true", help="full run")
    parser.add_argument(
        "--losses",
        nargs="+",
        choices=list(bc.LOSSES),
        default=list(bc.LOSSES),
        help="losses to run (default: all)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", metavar="LOG2N", help="log2 of the sizes, for every loss"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per path")
    parser.add_argument(
        "--device", action="append", default=[], help="only devices whose name contains this"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--results-dir",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
        help="where to append",
    )
    parser.set_defaults(full=False)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-probe", nargs=3, metavar=("IMPL", "N", "DEVICE"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def _per_loss(setting, key):
    return setting.get(key, setting["other"])


def plan(settings, loss, sizes):
    """[(case, in_sweep)]: float32 boolean 70 % masks over the sizes; for MSE in
    full mode, variants at one size: bfloat16, float weights, densities, a
    prefix mask."""
    cases = [(bc.Case(1 << s), True) for s in sizes]
    if loss.key == "mse" and settings["variant_size"]:
        n = 1 << settings["variant_size"]
        variants = [
            bc.Case(n, dtype="bfloat16"),
            bc.Case(n, mask="weights"),
            bc.Case(n, density=0.1),
            bc.Case(n, density=0.5),
            bc.Case(n, density=0.9),
            bc.Case(n, prefix=True),
        ]
        cases += [(c, False) for c in variants]
    return cases


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
        elapsed = time.perf_counter() - self.start
        if self.tty:
            filled = self.width * self.done // self.total
            bar = "#" * filled + "." * (self.width - filled)
            line = f"[{bar}] {100 * self.done // self.total:3d}% {elapsed:5.0f}s {label}"
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif changed:
            self.stream.write(f"[{100 * self.done // self.total:3d}% {elapsed:4.0f}s] {label}\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\r" + " " * 120 + "\r")
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


def _short(device):
    return device.split("device:")[-1]


def run_case(loss, case, in_sweep, device, rounds, settings, progress, seed):
    label = f"{_short(device)} {loss.key} {case.label}"
    progress.step(f"{label}: warm-up")
    inputs = bc.Inputs(case, device, loss.data, seed)
    sync = bc.synchronizer(device)
    fns, rows = {}, {}
    for path in bc.loss_paths() + bc.baseline_paths(loss):
        key = (path.name, path.direction)
        row = {
            "device": device,
            "loss": loss.key,
            "spec": loss.spec.name,
            "params": list(loss.params),
            **{f"case_{k}": v for k, v in case.as_dict().items()},
            "sweep": in_sweep,
            "direction": path.direction,
            "impl": path.impl,
            "mode": path.mode,
            "path": path.name,
            "bytes": inputs.bytes_moved(path.direction)
            if path.is_loss
            else inputs.baseline_bytes(path),
        }
        rows[key] = row
        try:
            fn, outputs = bc.first_call(loss, path, inputs)
        except bc.Unsupported as e:
            row.update(status="unsupported", note=str(e))
            continue
        row["status"] = "ok"
        if path.is_loss:
            row["loss_rel_err"], row["grad_rel_err"] = bc.relative_errors(inputs, loss, outputs)
        del outputs
        fns[key] = fn
    progress.step(f"{label}: timing", 1)
    with tf.device(device):
        samples, repeats = time_paths(
            fns,
            sync,
            rounds,
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
    """GB/s, time per element, fraction of the measured bandwidth, floors and
    ratios (fastest peer, reference) of one case."""
    read = rows.get(("ceiling/read", "fwd"), {})
    write = rows.get(("ceiling/read+write", "fwd+bwd"), {})
    read_bw = read["bytes"] / read["median_s"] if "median_s" in read else None
    rw_bw = write["bytes"] / write["median_s"] if "median_s" in write else None
    fwd_bytes = inputs.bytes_moved("fwd")
    bwd_bytes = inputs.bytes_moved("fwd+bwd") - fwd_bytes
    n = inputs.case.n
    fastest = {}
    for (name, direction), row in rows.items():
        if row["impl"] in bc.PEERS and "median_s" in row:
            if direction not in fastest or row["median_s"] < fastest[direction][1]:
                fastest[direction] = (name, row["median_s"])
    for (_, direction), row in rows.items():
        row["read_gbps"] = read_bw / 1e9 if read_bw else None
        row["read_write_gbps"] = rw_bw / 1e9 if rw_bw else None
        if "median_s" not in row:
            continue
        row["gbps"] = row["bytes"] / row["median_s"] / 1e9
        row["ns_per_element"] = row["median_s"] / n * 1e9
        if row["impl"] not in bc.IMPLS:
            continue
        if direction in fastest:
            peer, peer_s = fastest[direction]
            row.update(
                fastest_peer=peer,
                fastest_peer_s=peer_s,
                speedup_vs_fastest_peer=peer_s / row["median_s"],
            )
        for ref in REFERENCE_PATHS:
            other = rows.get((ref, direction), {})
            if "median_s" in other:
                row[f"speedup_vs_{ref.replace('/', '_')}"] = other["median_s"] / row["median_s"]
        if not (read_bw and rw_bw):
            continue
        # The floor: the forward's bytes at the read ceiling, the backward's at
        # the read+write ceiling.
        floor = fwd_bytes / read_bw + (bwd_bytes / rw_bw if direction == "fwd+bwd" else 0.0)
        row["floor_s"] = floor
        row["bandwidth_fraction"] = floor / row["median_s"]
        row["read_floor_s"] = row["bytes"] / read_bw


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _peak_extra(fn, sync, device):
    """(peak extra bytes of one call beyond what exists before it, method), or
    (None, why) when the peak cannot be reset. fn has been called once."""
    gc.collect()
    if bc.is_gpu(device):
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        outputs = fn()
        sync(outputs)
        return tf.config.experimental.get_memory_info(device)["peak"] - before, MEMORY_METHOD_GPU
    before = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        return None, f"cannot reset VmHWM: {e}"
    outputs = fn()
    sync(outputs)
    return _status_kb("VmHWM") - before, MEMORY_METHOD_CPU


def memory_probe(impl, n, device, loss_keys):
    """Runs in its own process, one per implementation (see measure_memory):
    for each loss and mode, the extra memory at the peak of one forward+backward
    call beyond the inputs, which already exist."""
    sync = bc.synchronizer(device)
    results = []
    for key in loss_keys:
        loss = bc.LOSSES[key]
        inputs = bc.Inputs(bc.Case(n), device, loss.data)
        for mode in bc.IMPL_MODES[impl]:
            path = bc.Path(impl, mode, "fwd+bwd")
            result = {
                "loss": key,
                "impl": impl,
                "mode": mode,
                "path": path.name,
                "device": device,
                "n": n,
                "grad_bytes": inputs.grad_bytes(),
            }
            results.append(result)
            try:
                fn, outputs = bc.first_call(loss, path, inputs)
            except bc.Unsupported as e:
                result.update(status="unsupported", note=str(e))
                continue
            del outputs
            with tf.device(device):
                extra, method = _peak_extra(fn, sync, device)
            del fn
            gc.collect()
            if extra is None:
                result.update(status="unavailable", note=method)
                continue
            result.update(
                status="ok",
                peak_extra_bytes=extra,
                peak_extra_in_grads=extra / result["grad_bytes"],
                method=method,
            )
        del inputs
        gc.collect()
    return results


def measure_memory(n, device, loss_keys, progress):
    """Each implementation in a fresh process, so none inherits another's
    allocations; the losses and modes one after the other in it. On a CPU the
    processes run two at a time (each one's peak is its own resident set, and
    their tracing and compiling, mostly single-threaded, overlap); a GPU's
    memory is shared, so there they run one at a time."""
    # Freed buffers must go back to the OS for the resident set to show the
    # peak: oneDNN's allocator caches them, and glibc's adaptive mmap threshold
    # would serve later buffers from its heap.
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", MALLOC_MMAP_THRESHOLD_="131072")
    label = f"memory {_short(device)} 2^{n.bit_length() - 1}"
    progress.step(label)
    jobs = 1 if bc.is_gpu(device) else MEMORY_JOBS
    waiting, running, rows = list(bc.IMPLS), {}, {}
    while waiting or running:
        while waiting and len(running) < jobs:
            impl = waiting.pop(0)
            command = [sys.executable, os.path.abspath(__file__), "--memory-probe", impl]
            command += [str(n), device, "--losses", *loss_keys]
            running[impl] = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        impl, proc = next(iter(running.items()))
        out, err = proc.communicate()
        del running[impl]
        if proc.returncode == 0:
            rows[impl] = json.loads(out.strip().splitlines()[-1])
        else:
            tail = err.strip().splitlines()[-1:] or ["no output"]
            rows[impl] = [
                {
                    "loss": key,
                    "impl": impl,
                    "mode": mode,
                    "path": f"{impl}/{mode}",
                    "device": device,
                    "n": n,
                    "status": "failed",
                    "note": f"exit {proc.returncode}: {tail[0]}",
                }
                for key in loss_keys
                for mode in bc.IMPL_MODES[impl]
            ]
        progress.step(f"{label} ({impl} done)", 1)
    return [row for impl in bc.IMPLS for row in rows[impl]]


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
    import keras

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpus": gpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default",
    }


# --- Tables ---


def _fmt_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def _layout(header, body):
    """Columns padded to their widest cell; one-cell rows are headings."""
    widths = [
        max(len(str(r[i])) for r in [header, *body] if len(r) > i and len(r) > 1)
        for i in range(len(header))
    ]
    lines = []
    for r in [header, *body]:
        if len(r) == 1:
            lines.append(r[0])
        else:
            lines.append(
                "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
            )
    return "\n".join(lines)


def _cells(row):
    """median, GB/s, %BW, x fastest peer of one row, or its status."""
    if row is None:
        return ["", "", "", ""]
    if row.get("status") != "ok":
        return [row.get("status", "-"), "", "", ""]
    fraction = row.get("bandwidth_fraction")
    return [
        _fmt_time(row["median_s"]),
        _fmt(row.get("gbps"), ".1f"),
        _fmt(None if fraction is None else 100 * fraction, ".0f"),
        _fmt(row.get("speedup_vs_fastest_peer"), ".2f"),
    ]


def _max_error(*rows):
    errors = [
        e
        for row in rows
        if row
        for e in (row.get("loss_rel_err"), row.get("grad_rel_err"))
        if e is not None
    ]
    return _fmt(max(errors) if errors else None, ".1e")


def headline_case(rows):
    """The largest sweep case: the one each loss's full table shows."""
    sweep = [r for r in rows if r["sweep"]]
    return max((r["case_n"] for r in sweep), default=None)


def format_loss_table(loss, device, rows, memory):
    """One loss, one device, its headline case: every path, forward and
    forward+backward side by side, with the peak memory of forward+backward."""
    n = headline_case(rows)
    mine = {(r["path"], r["direction"]): r for r in rows if r["sweep"] and r["case_n"] == n}
    if not mine:
        return ""
    label = next(iter(mine.values()))["case_label"]
    mem = {
        m["path"]: m
        for m in memory
        if m["loss"] == loss.key and m["device"] == device and m["n"] == n
    }
    header = [
        "path",
        "fwd",
        "GB/s",
        "%BW",
        "x fastest",
        "fwd+bwd",
        "GB/s",
        "%BW",
        "x fastest",
        "peak mem",
        "max rel err",
    ]
    body = []
    for path in bc.loss_paths():
        if path.direction != "fwd":
            continue
        fwd, both = mine.get((path.name, "fwd")), mine.get((path.name, "fwd+bwd"))
        m = mem.get(path.name)
        peak = f"+{m['peak_extra_bytes'] / 2**20:.0f} MiB" if m and m["status"] == "ok" else "-"
        body.append([path.name, *_cells(fwd), *_cells(both), peak, _max_error(fwd, both)])
    lines = [f"== {loss.key} ({loss.spec.name}), {_short(device)}, {label}"]
    lines.append(_layout(header, body))
    notes = []
    for direction in bc.DIRECTIONS:
        some = next(
            (r for (_, d), r in mine.items() if d == direction and "fastest_peer" in r), None
        )
        if some:
            notes.append(f"{direction} {some['fastest_peer']} {_fmt_time(some['fastest_peer_s'])}")
    if notes:
        lines.append("fastest peer: " + "; ".join(notes))
    one, two = mine.get(("fused/graph", "fwd+bwd"), {}), mine.get(("two_pass/graph", "fwd+bwd"), {})
    if one.get("median_s") and two.get("median_s"):
        lines.append(
            f"fwd+bwd in one pass (fused/graph) vs the two-pass ops: "
            f"{two['median_s'] / one['median_s']:.2f}x"
        )
    read = mine.get(("ceiling/read", "fwd"), {})
    if read.get("read_gbps"):
        lines.append(
            f"measured bandwidth: read {read['read_gbps']:.1f} GB/s, "
            f"read+write {read['read_write_gbps']:.1f} GB/s"
        )
    return "\n".join(lines)


def format_other_cases(rows):
    """Every case but the headline ones, compactly: each fused mode's time and
    its ratio to the fastest peer, and which peer that was."""
    headline = {}
    for r in rows:
        key = (r["device"], r["loss"])
        if r["sweep"]:
            headline[key] = max(headline.get(key, 0), r["case_n"])
    found = {}
    for r in rows:
        if r["sweep"] and r["case_n"] == headline[(r["device"], r["loss"])]:
            continue
        key = (r["device"], r["loss"], r["case_label"], r["direction"])
        found.setdefault(key, {})[r["path"]] = r
    if not found:
        return ""
    header = ["device", "loss", "case", "dir", *[f"fused/{m}" for m in bc.MODES], "fastest peer"]
    body = []
    for (device, loss, label, direction), paths in found.items():
        cells = []
        for mode in bc.MODES:
            r = paths.get(f"fused/{mode}")
            if not r or r.get("status") != "ok":
                cells.append(r.get("status", "-") if r else "-")
            else:
                cells.append(
                    f"{_fmt_time(r['median_s'])} x{_fmt(r.get('speedup_vs_fastest_peer'), '.2f')}"
                )
        some = next((r for r in paths.values() if "fastest_peer" in r), None)
        peer = f"{some['fastest_peer']} {_fmt_time(some['fastest_peer_s'])}" if some else "-"
        body.append([_short(device), loss, label, direction, *cells, peer])
    return _layout(header, body)


def _bound(row, n):
    fraction = row.get("bandwidth_fraction")
    if n < 1 << 20:
        return "per-call overhead"
    if fraction is not None and fraction >= 0.5:
        return "memory"
    return "compute"


def format_bounds(rows):
    """What bounds the transcendental losses, at each device's headline case:
    time per element of the fused paths and of the fastest peer, in units of one
    log and one exp per element in pure TF (reduce_sum(log(x)) and
    reduce_sum(exp(-x)) under XLA, timed in the same rounds), and their
    fraction of the measured bandwidth."""
    header = ["device", "loss", "case", "dir", "path", "ns/element", "logs", "exps", "%BW", "bound"]
    body, units = [], []
    for device in dict.fromkeys(r["device"] for r in rows):
        for key, loss in bc.LOSSES.items():
            if not loss.transcendental:
                continue
            mine = [r for r in rows if r["device"] == device and r["loss"] == key]
            n = headline_case(mine)
            at = {
                (r["path"], r["direction"]): r
                for r in mine
                if r["sweep"] and r["case_n"] == n and r.get("status") == "ok"
            }
            log, exp = at.get(("compute/log", "fwd")), at.get(("compute/exp", "fwd"))
            if not (log and exp):
                continue
            log_ns, exp_ns = log["ns_per_element"], exp["ns_per_element"]
            units.append(
                f"{_short(device)} {key}: one log {log_ns:.2f} ns/element, "
                f"one exp {exp_ns:.2f} ns/element"
            )
            for direction in bc.DIRECTIONS:
                paths = [f"fused/{m}" for m in bc.MODES]
                peer = next(
                    (
                        r.get("fastest_peer")
                        for r in at.values()
                        if r["direction"] == direction and r.get("fastest_peer")
                    ),
                    None,
                )
                if peer:
                    paths.append(peer)
                for path in paths:
                    r = at.get((path, direction))
                    if not r:
                        continue
                    ns = r["ns_per_element"]
                    fraction = r.get("bandwidth_fraction")
                    body.append(
                        [
                            _short(device),
                            key,
                            r["case_label"],
                            direction,
                            path + (" (fastest peer)" if path == peer else ""),
                            f"{ns:.2f}",
                            f"{ns / log_ns:.1f}",
                            f"{ns / exp_ns:.1f}",
                            _fmt(None if fraction is None else 100 * fraction, ".0f"),
                            _bound(r, n),
                        ]
                    )
    if not body:
        return ""
    return _layout(header, body) + "\n" + "\n".join(units)


def target_report(rows, memory):
    """The project's performance targets for the masked MSE, as measured
    (reported, never asserted); they are stated against the reference."""
    found = {}
    for row in rows:
        if row["loss"] == "mse" and row["sweep"] and row.get("status") == "ok":
            found[(row["device"], row["case_n"], row["direction"], row["path"])] = row
    lines = []

    def check(text, value, goal, higher=True):
        met = value >= goal if higher else value <= goal
        lines.append(
            f"  {'met   ' if met else 'MISSED'} {text}: {value:.2f} (target "
            f"{'>=' if higher else '<='} {goal})"
        )

    for device in dict.fromkeys(r["device"] for r in rows if r["loss"] == "mse"):
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
            if (
                m["loss"] == "mse"
                and m["device"] == device
                and m["status"] == "ok"
                and m["impl"] == "fused"
            ):
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


# --- Results files ---

CSV_SKIP = ("samples_s",)


def append_results(results_dir, name, run):
    os.makedirs(results_dir, exist_ok=True)
    json_path = os.path.join(results_dir, name + ".json")
    runs = []
    if os.path.exists(json_path):
        with open(json_path) as f:
            runs = json.load(f)
    runs.append(run)
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f, indent=1)
    os.replace(tmp, json_path)

    csv_path = os.path.join(results_dir, name + ".csv")
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
        print(json.dumps(memory_probe(impl, int(n), device, args.losses)))
        return 0

    settings = FULL if args.full else QUICK
    losses = [bc.LOSSES[k] for k in args.losses]
    sizes = {
        loss.key: tuple(args.sizes or _per_loss(settings["sizes"], loss.key)) for loss in losses
    }
    rounds = {loss.key: args.rounds or _per_loss(settings["rounds"], loss.key) for loss in losses}
    plans = {loss.key: plan(settings, loss, sizes[loss.key]) for loss in losses}
    devices = [d for d in bc.devices() if not args.device or any(s in d for s in args.device)]
    if not devices:
        print(f"no device matches {args.device}; TensorFlow sees {bc.devices()}", file=sys.stderr)
        return 2
    memory_n = 1 << min(max(s) for s in sizes.values())
    memory_steps = 0 if args.no_memory else len(bc.IMPLS)
    total = len(devices) * (sum(len(plans[k]) * (rounds[k] + 1) for k in plans) + memory_steps)
    progress = Progress(total)
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc)
    rows, memory = [], []
    for device in devices:
        for loss in losses:
            for case, in_sweep in plans[loss.key]:
                rows += run_case(
                    loss, case, in_sweep, device, rounds[loss.key], settings, progress, args.seed
                )
                gc.collect()
        if not args.no_memory:
            memory += measure_memory(memory_n, device, [loss.key for loss in losses], progress)
    progress.close()
    duration = time.perf_counter() - started

    print(
        "Times are medians; x fastest = the fastest peer's median (hand-written, Keras or "
        "reference, any mode, same run, same direction) over this path's; %BW = the bytes that "
        "must move at the bandwidth measured in the same run over the median; peak mem = extra "
        "memory at the peak of one forward+backward call."
    )
    for device in devices:
        for loss in losses:
            mine = [r for r in rows if r["device"] == device and r["loss"] == loss.key]
            print()
            print(format_loss_table(loss, device, mine, memory))
    other = format_other_cases(rows)
    if other:
        print("\nOther cases (each fused mode: median and x fastest peer):")
        print(other)
    bounds = format_bounds(rows)
    if bounds:
        print(
            "\nWhat bounds the cross-entropies: time per element, also in units of one log and "
            "one exp per element in pure TF (reduce_sum(log(x)), reduce_sum(exp(-x)) under XLA, "
            "same rounds); bound: memory at >= 50 % of the measured bandwidth, else compute"
        )
        print(bounds)
    if any(r["loss"] == "mse" for r in rows):
        print("\nMasked MSE targets (fused vs reference, same run):")
        print(target_report(rows, memory))
    if memory:
        failed = [m for m in memory if m["status"] not in ("ok", "unsupported")]
        for m in failed:
            print(f"memory {m['device']} {m['loss']} {m['path']}: {m['status']} ({m.get('note')})")

    run_id = date.strftime("%Y%m%dT%H%M%SZ")
    machine = machine_info()
    written = []
    for family in dict.fromkeys(loss.family for loss in losses):
        keys = {loss.key for loss in losses if loss.family == family}
        run = {
            "run_id": run_id,
            "date": date.isoformat(timespec="seconds"),
            "mode": "full" if args.full else "quick",
            "settings": {
                "sizes": {k: list(sizes[k]) for k in sorted(keys)},
                "variant_size": settings["variant_size"],
                "rounds": {k: rounds[k] for k in sorted(keys)},
                "min_sample_s": settings["min_sample_s"],
                "seed": args.seed,
                "huber_delta": bc.HUBER_DELTA,
                "label_smoothing": bc.LABEL_SMOOTHING,
            },
            "machine": machine,
            "duration_s": duration,
            "results": [r for r in rows if r["loss"] in keys],
            "memory": [m for m in memory if m["loss"] in keys],
            "memory_method": {"cpu": MEMORY_METHOD_CPU, "gpu": MEMORY_METHOD_GPU},
        }
        written += append_results(args.results_dir, family, run)
    print(
        f"\n{len(rows)} results in {duration:.0f}s appended to "
        + ", ".join(os.path.relpath(p) for p in written)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
