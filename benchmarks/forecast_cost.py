"""What a forecast costs against what it replaces: GFM forecast time vs the remaining training steps.

For networks of about 1k, 14k, 100k, 1M and 10M parameters (MNIST CNNs 4-8-8, 16-32-32 and
32-96-96; digits MLPs 1024-896 and 3072-3072), record a real Adam training run, then time (a) the
remaining optimizer steps from the observed fraction to the end (the recorded run's time, scaled
to the remaining share of its steps) and (b) a GFM forecast from the same point to t = 1, both on
one thread. The GFM is fitted briefly on the default dataset (forecast speed does not depend on
how well it was trained). Writes `benchmarks/results/forecast_cost.csv` and `forecast_cost.png`
(seconds against parameters, log-log, both sides).

    python -m benchmarks.forecast_cost [--params params.yaml] [--fraction 0.25]
        [--set gfm.sample_params=256 ...] [--networks "mnist_cnn 16-32-32" ...] [--out NAME]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import matplotlib
import polars as pl
import torch

from benchmarks import recorded_run
from gfm.config import load_settings
from gfm.data.atomic import atomic_path
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index
from gfm.model import GFM

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NETWORKS = {
    "mnist_cnn 4-8-8": ("mnist_cnn", (4, 8, 8)),
    "mnist_cnn 16-32-32": ("mnist_cnn", (16, 32, 32)),
    "mnist_cnn 32-96-96": ("mnist_cnn", (32, 96, 96)),
    "digits_mlp 1024-896": ("digits_mlp", (1024, 896)),
    "digits_mlp 3072-3072": ("digits_mlp", (3072, 3072)),
}


def plot(table: pl.DataFrame, path: Path) -> None:
    """Seconds against parameters (log-log): the remaining training and one GFM forecast."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    table = table.sort("params")
    ax.plot(table["params"], table["remaining_train_seconds"], "o-", label="remaining steps")
    ax.plot(table["params"], table["gfm_forecast_seconds"], "s-", label="GFM forecast")
    for name, p, t in table.select("network", "params", "remaining_train_seconds").rows():
        ax.annotate(name, (p, t), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("seconds (1 thread)")
    ax.set_title(str(table["gfm_settings"][0]), fontsize=8)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--fit-steps", type=int, default=100)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides")
    parser.add_argument("--networks", nargs="*", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--out", default="forecast_cost", help="results/<out>.csv and .png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for both sides: a like-for-like comparison

    settings = load_settings(args.params, [f"train.steps={args.fit_steps}", *args.set])
    ds = Trajectories(settings.data.root)
    model = GFM(settings.gfm, settings.train).fit(ds.select("seed", "train"))

    rows = []
    for label in args.networks:
        task, hidden = NETWORKS[label]
        record, train_seconds = recorded_run(settings, task, hidden)  # includes recording
        M = record.weights.shape[0] - 1
        k = observed_index(M, args.fraction)
        t = torch.tensor([1.0], dtype=torch.float64)
        model.forecast(Prefix.from_record(record, k), t)  # warm-up (imports, first allocations)
        # timed: the median of 3 cold forecasts, each of a new prefix with its own copy of the
        # parameter metadata, so nothing a forecast remembers (normaliser, layer and row index)
        # carries over from the warm-up
        seconds = []
        for _ in range(3):
            fresh = dataclasses.replace(record, params=copy.deepcopy(record.params))
            prefix = Prefix.from_record(fresh, k)
            start = time.perf_counter()
            model.forecast(prefix, t)
            seconds.append(time.perf_counter() - start)
        forecast_seconds = statistics.median(seconds)
        remaining = train_seconds * (M - k) / M
        rows.append(
            {
                "network": label,
                "params": record.weights.shape[1],
                "steps_total": settings.data.tasks[task].steps,
                "observed_fraction": args.fraction,
                "remaining_steps": (M - k) * settings.data.tasks[task].record_every,
                "remaining_train_seconds": round(remaining, 3),
                "gfm_forecast_seconds": round(forecast_seconds, 3),
                "speed_ratio": round(remaining / forecast_seconds, 2),
                "solver": settings.gfm.solver,
                "gfm_settings": ", ".join(args.set) or "params.yaml",
                "threads": 1,
            }
        )
        print(rows[-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame(rows)
    csv = RESULTS / f"{args.out}.csv"
    with atomic_path(csv) as tmp:
        table.write_csv(tmp)
    plot(table, RESULTS / f"{args.out}.png")
    print(f"wrote {csv} and {args.out}.png")


if __name__ == "__main__":
    main()
