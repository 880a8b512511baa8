"""Quick single-thread timing of the CPU row-loss engine through the binding:
sparse categorical cross-entropy from logits, float32, forward and the
one-pass forward_backward (in place and into a new array). Best of --repeat
calls; bandwidth counts the logits read once.

    python benchmarks/row_timing.py --rows 4096 --classes 32768
"""

import argparse
import time

import numpy as np

from masked_ops import kernels


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kernels.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    labels = rng.integers(0, args.classes, args.rows).astype(np.int32)
    scratch = logits.copy()
    timings = {
        "forward": lambda: kernels.row_forward(labels, logits, from_logits=True),
        "forward_backward (in place)": lambda: kernels.row_forward_backward(
            labels, scratch, from_logits=True, in_place=True
        ),
        "forward_backward (new array)": lambda: kernels.row_forward_backward(
            labels, logits, from_logits=True
        ),
    }
    gigabytes = logits.nbytes / 1e9
    print(f"rows {args.rows} x classes {args.classes}, float32, {args.threads} thread(s)")
    for name, fn in timings.items():
        seconds = best_of(fn, args.repeat)
        elements = logits.size / seconds / 1e9
        print(
            f"  {name:30s} {seconds * 1e3:8.1f} ms  {elements:5.2f} G logits/s"
            f"  {gigabytes / seconds:5.2f} GB/s"
        )


if __name__ == "__main__":
    main()
