"""Plots the masked-loss benchmark runs: median time vs N (log-log) per path,
one row of panels per device and loss, one column per direction, with the
bandwidth floor (the bytes the case must move at the read bandwidth measured
in the same run). One PNG per results file (loss family), from its latest run.

    python benchmarks/plot.py                 # every benchmarks/results/<family>.json
    python benchmarks/plot.py --results benchmarks/results/masked_mse.json [--run RUN_ID]
                              [--out benchmarks/results/masked_mse.png]
"""

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DIRECTIONS = ("fwd", "fwd+bwd")
COLORS = {"fused": "C0", "two_pass": "C9", "handwritten": "C2", "keras": "C1", "reference": "C7"}
STYLES = {"eager": ":", "graph": "--", "xla": "-"}
MARKERS = {"eager": "o", "graph": "s", "xla": "^"}
# Results files that are not size sweeps of bench.py.
SKIP = ("gpu_check_", "rows_")  # rows_: plot_rows.py


def load_run(path, run_id):
    with open(path) as f:
        runs = json.load(f)
    if not runs:
        raise SystemExit(f"{path} holds no runs")
    if run_id is None:
        return runs[-1]
    for run in runs:
        if run["run_id"] == run_id:
            return run
    raise SystemExit(f"no run {run_id} in {path}; runs: {[r['run_id'] for r in runs]}")


def plot(run, out, title):
    rows = [r for r in run["results"] if r["sweep"] and r.get("status") == "ok"]
    if not rows:
        raise SystemExit(f"run {run['run_id']} has no size-sweep results to plot")
    # Runs from before the loss table hold only the masked MSE.
    panels = list(dict.fromkeys((r["device"], r.get("loss", "mse")) for r in rows))
    fig, axes = plt.subplots(
        len(panels), len(DIRECTIONS), figsize=(13, 4.8 * len(panels)), squeeze=False
    )
    for i, (device, loss) in enumerate(panels):
        for j, direction in enumerate(DIRECTIONS):
            ax = axes[i][j]
            mine = [
                r
                for r in rows
                if r["device"] == device
                and r.get("loss", "mse") == loss
                and r["direction"] == direction
            ]
            for path in dict.fromkeys(r["path"] for r in mine if r["impl"] in COLORS):
                pts = sorted((r["case_n"], r["median_s"]) for r in mine if r["path"] == path)
                impl, mode = path.split("/")
                ax.plot(
                    *zip(*pts, strict=False),
                    STYLES[mode],
                    color=COLORS[impl],
                    marker=MARKERS[mode],
                    linewidth=2.2 if impl == "fused" else 1.2,
                    label=path,
                )
            floor = sorted(
                (r["case_n"], r["read_floor_s"])
                for r in mine
                if r["path"] == "fused/eager" and r.get("read_floor_s")
            )
            if floor:
                ax.plot(
                    *zip(*floor, strict=False), ":", color="black", label="bytes / read bandwidth"
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (elements)")
            ax.set_ylabel("median time (s)")
            ax.set_title(f"{loss} — {device} — {direction}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    machine = run["machine"]
    fig.suptitle(
        f"{title}, float32, bool mask 70 % — {machine['cpu']}, {machine['cores']} cores, "
        f"TF {machine['tensorflow']} — run {run['run_id']} ({run['mode']})"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", help="one results file (default: every family in results/)")
    parser.add_argument("--run", help="run_id to plot (default: the latest)")
    parser.add_argument("--out", help="PNG to write (default: the results file's name)")
    args = parser.parse_args(argv)
    if args.results:
        files = [args.results]
    else:
        files = [
            f
            for f in sorted(glob.glob(os.path.join(RESULTS, "*.json")))
            if not os.path.basename(f).startswith(SKIP)
        ]
    if not files:
        print(f"no results in {RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    if args.out and len(files) > 1:
        parser.error("--out needs --results")
    for path in files:
        if not os.path.exists(path):
            print(f"{path} does not exist: run `make bench` first", file=sys.stderr)
            return 1
        name = os.path.splitext(os.path.basename(path))[0]
        out = args.out or os.path.splitext(path)[0] + ".png"
        print(plot(load_run(path, args.run), out, name.replace("_", " ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
