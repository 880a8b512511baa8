"""Plots the latest run of benchmarks/bench_rows.py: per case, the median time
of each path (forward and forward+backward bars, log scale) with its peak
extra memory in units of the logits' bytes, and the floor of the logits'
bytes at the bandwidth measured in the same run.

    python benchmarks/plot_rows.py [--results benchmarks/results/rows_crossentropy.json]
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLORS = {"fused": "C0", "two_pass": "C9", "reference": "C7", "tf.nn": "C2", "keras": "C1"}


def plot(run, out):
    cases = list(dict.fromkeys(r["case"] for r in run["results"]))
    fig, axes = plt.subplots(len(cases), 1, figsize=(12, 4.2 * len(cases)), squeeze=False)
    for ax, case in zip(axes[:, 0], cases, strict=True):
        rows = [r for r in run["results"] if r["case"] == case]
        paths = list(dict.fromkeys(r["path"] for r in rows))
        for k, direction in enumerate(("fwd", "fwd+bwd")):
            for i, path in enumerate(paths):
                r = next(
                    (r for r in rows if r["path"] == path and r["direction"] == direction), None
                )
                if r is None:
                    continue
                x = i + (k - 0.5) * 0.4
                ax.bar(
                    x, r["median_s"] * 1e3, 0.38, color=COLORS[r["impl"]],
                    alpha=0.55 if direction == "fwd" else 1.0,
                )  # fmt: skip
                peak = r.get("peak_extra_in_logits")
                if peak is not None:
                    ax.annotate(f"{peak:.2f}x", (x, r["median_s"] * 1e3), ha="center",
                                va="bottom", fontsize=7)  # fmt: skip
            first = rows[0]
            floor = first["logit_bytes"] / (first["read_gbps"] * 1e9)
            if direction == "fwd+bwd":
                floor = 2 * first["logit_bytes"] / (first["read_write_gbps"] * 1e9)
            ax.axhline(floor * 1e3, color="black", linestyle=":" if k == 0 else "--", linewidth=1)
        ax.set_xticks(range(len(paths)), paths, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median time (ms)")
        ax.set_title(
            f"{case}, {rows[0]['padding']:.0%} rows masked. Light: forward, dark: forward+backward"
            f" (label: peak extra memory / logits).\nDotted: the logits read once at the measured"
            f" bandwidth; dashed: read, plus the gradient written",
            fontsize=9,
        )
        ax.grid(True, axis="y", which="both", alpha=0.3)
    machine = run["machine"]
    fig.suptitle(
        f"masked sparse categorical cross-entropy from logits\n{machine['cpu']}, "
        f"{machine['cores']} cores ({machine['isa']}), TF {machine['tensorflow']} — run "
        f"{run['run_id']}"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(RESULTS, "rows_crossentropy.json"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with open(args.results) as f:
        run = json.load(f)[-1]
    out = args.out or os.path.splitext(args.results)[0] + ".png"
    print(plot(run, out))


if __name__ == "__main__":
    main()
