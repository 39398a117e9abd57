"""What a forecast costs against what it replaces: GFM forecast time vs the remaining training steps.

For a 14k-parameter network (mnist_cnn 16-32-32) and a ~1M-parameter network (digits MLP with
hidden 1024-896), record a real training run, then time (a) the remaining optimizer steps from
the observed fraction to the end and (b) a GFM forecast from the same point to t = 1. The GFM is
fitted briefly on the default dataset (forecast speed does not depend on how well it was
trained). Writes `benchmarks/results/forecast_cost.csv` and `forecast_cost.png` (both sides'
seconds per network, log scale).

    python -m benchmarks.forecast_cost [--params params.yaml] [--fraction 0.25]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import polars as pl
import torch

from benchmarks import recorded_run
from gfm.config import load_settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index
from gfm.model import GFM

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NETWORKS = {
    "mnist_cnn 16-32-32": ("mnist_cnn", (16, 32, 32)),
    "digits_mlp 1024-896": ("digits_mlp", (1024, 896)),
}


def plot(table: pl.DataFrame, path: Path) -> None:
    """Grouped bars: remaining training vs one GFM forecast, seconds (log scale), per network."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(table.height)
    ax.bar([i - 0.2 for i in x], table["remaining_train_seconds"], 0.4, label="remaining steps")
    ax.bar([i + 0.2 for i in x], table["gfm_forecast_seconds"], 0.4, label="GFM forecast")
    ax.set_xticks(
        list(x), [f"{n}\n{p:,} params" for n, p in table.select("network", "params").rows()]
    )
    ax.set_yscale("log")
    ax.set_ylabel("seconds (1 thread)")
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
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for both sides: a like-for-like comparison

    settings = load_settings(args.params, [f"train.steps={args.fit_steps}"])
    ds = Trajectories(settings.data.root)
    model = GFM(settings.gfm, settings.train).fit(ds.select("seed", "train"))

    rows = []
    for label, (task, hidden) in NETWORKS.items():
        record, train_seconds = recorded_run(settings, task, hidden)  # includes recording
        M = record.weights.shape[0] - 1
        k = observed_index(M, args.fraction)
        prefix = Prefix.from_record(record, k)
        t = torch.tensor([1.0], dtype=torch.float64)
        model.forecast(prefix, t)  # warm-up
        start = time.perf_counter()
        model.forecast(prefix, t)
        forecast_seconds = time.perf_counter() - start
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
                "threads": 1,
            }
        )
        print(rows[-1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = pl.DataFrame(rows)
    table.write_csv(RESULTS / "forecast_cost.csv")
    plot(table, RESULTS / "forecast_cost.png")
    print(f"wrote {RESULTS / 'forecast_cost.csv'} and forecast_cost.png")


if __name__ == "__main__":
    main()
