"""Plots a masked_ops benchmark run: median time vs N (log-log) per path, one
panel per device and direction, with the bandwidth floor (the bytes the case
must move at the read bandwidth measured in the same run).

    python benchmarks/plot.py [--results benchmarks/results/masked_mse.json]
                              [--run RUN_ID] [--out benchmarks/results/masked_mse.png]
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DIRECTIONS = ("fwd", "fwd+bwd")
STYLES = {"fused": "-", "reference": "--"}
MARKERS = {"eager": "o", "graph": "s", "xla": "^"}


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


def plot(run, out):
    rows = [r for r in run["results"] if r["sweep"] and r.get("status") == "ok"]
    if not rows:
        raise SystemExit(f"run {run['run_id']} has no size-sweep results to plot")
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, axes = plt.subplots(
        len(devices), len(DIRECTIONS), figsize=(12, 4.5 * len(devices)), squeeze=False
    )
    for i, device in enumerate(devices):
        for j, direction in enumerate(DIRECTIONS):
            ax = axes[i][j]
            mine = [r for r in rows if r["device"] == device and r["direction"] == direction]
            for path in dict.fromkeys(r["path"] for r in mine if r["impl"] != "ceiling"):
                pts = sorted((r["case_n"], r["median_s"]) for r in mine if r["path"] == path)
                impl, mode = path.split("/")
                ax.plot(*zip(*pts, strict=False), STYLES[impl], marker=MARKERS[mode], label=path)
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
            ax.set_title(f"{device} — {direction}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    machine = run["machine"]
    fig.suptitle(
        f"masked MSE, float32, bool mask 70 % — {machine['cpu']}, {machine['cores']} cores, "
        f"TF {machine['tensorflow']} — run {run['run_id']} ({run['mode']})"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(RESULTS, "masked_mse.json"))
    parser.add_argument("--run", help="run_id to plot (default: the latest)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "masked_mse.png"))
    args = parser.parse_args(argv)
    if not os.path.exists(args.results):
        print(f"{args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 1
    print(plot(load_run(args.results, args.run), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
