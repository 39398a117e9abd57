"""GFM against every baseline on the default dataset: all splits, all observed fractions, 3 seeds.

Writes, under `benchmarks/results/`:
  forecast.csv        one row per method × task × optimizer × observed_fraction × split × seed
                      (means over that group's test runs)
  forecast_runs.parquet  the raw table, one row per method × test run × fraction × seed
  forecast_costs.csv  fit time, forecast time per run, forecaster parameters per method × split × seed
  forecast_summary.md mean ± std over seeds per method × split, and per task (the BENCHMARKS.md tables)
  forecast_horizon.png, forecast_trajectories.png

    python -m benchmarks.forecast [--params params.yaml] [--seeds 0 1 2] [--splits seed architecture optimizer]

Each split × method's raw table is saved as `results/forecast_parts/<split>__<method>.parquet` as
soon as it is done, and a part already saved is not recomputed (`--force` recomputes it), so a
long run survives interruption and can be spread over processes (`--splits seed --methods lstm`
in one, `--splits seed --methods transformer` in another); `--merge` only rebuilds the outputs
from all saved parts.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import polars as pl
import torch

from gfm import baselines
from gfm.bench.forecast import fit_and_evaluate, headline, methods, score_for
from gfm.config import load_settings
from gfm.data.trajectories import Trajectories
from gfm.evaluation import horizon_table, to_markdown
from gfm.forecaster import Prefix, observed_index
from gfm.plots import plot_horizon, plot_trajectories

RESULTS = Path(__file__).parent / "results"
GROUP = ["method", "task", "optimizer", "observed_fraction", "split", "seed"]


def per_group(table: pl.DataFrame) -> pl.DataFrame:
    """Means over test runs within method × task × optimizer × fraction × split × seed."""
    return (
        table.group_by(GROUP)
        .agg(
            pl.col("mse_final").mean(),
            pl.col("mae_final").mean(),
            pl.col("rel_mse_persistence").mean(),
            pl.col("rel_mse_persistence").median().alias("rel_mse_persistence_median"),
            pl.col("downstream_acc").mean(),
            pl.col("true_final_acc").mean(),
            pl.col("last_observed_acc").mean(),
            pl.col("downstream_loss").mean(),
            pl.col("true_final_loss").mean(),
            pl.col("forecast_seconds").mean(),
            pl.len().alias("test_runs"),
        )
        .sort(GROUP)
    )


def sample_plot(settings, ds: Trajectories, models: dict, path: Path) -> None:
    """Forecast vs true trajectories of a few parameters of one test run."""
    test = ds.select("seed", "test")
    record = test[len(test) // 2]
    M = record.weights.shape[0] - 1
    k = observed_index(M, 0.25)
    prefix = Prefix.from_record(record, k)
    t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
    forecasts = {name: m.forecast(prefix, t).numpy() for name, m in models.items()}
    plot_trajectories(record, forecasts, t.numpy(), k, path)


def seeded_method(name: str) -> bool:
    """Whether a method's fit depends on the training seed (GFM and the learned baselines)."""
    return name.startswith("gfm") or "seed" in baselines.BASELINES[name].defaults


def save_part(frame: pl.DataFrame, path: Path) -> None:
    """Write a part atomically (temp file, then rename): a killed run leaves no half part."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".csv":
        frame.write_csv(tmp)
    else:
        frame.write_parquet(tmp)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge", action="store_true", help="only rebuild outputs from saved parts"
    )
    parser.add_argument("--force", action="store_true", help="recompute parts already saved")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    settings = load_settings(args.params, args.overrides)
    ds = Trajectories(settings.data.root)
    names = args.methods or methods(settings)
    last_models: dict = {}

    def keep(name, split, seed, fitted):
        if split == "seed" and seed == args.seeds[0]:
            last_models[name] = fitted.forecaster

    score = score_for(settings)  # one memo: true and last observed weights are scored once
    parts = args.out / "forecast_parts"
    parts.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.merge:
        for split in args.splits or settings.evaluate.splits:
            for name in names:
                part = parts / f"{split}__{name}.parquet"
                if part.exists() and not args.force:
                    logging.info("%s exists: skipped (--force recomputes it)", part)
                    continue
                # a method with no training seed gives the same forecasts for every seed:
                # computed once, its rows are repeated per seed (zero spread, honestly so)
                seeded = seeded_method(name)
                table, costs = fit_and_evaluate(
                    settings,
                    ds,
                    method_names=[name],
                    splits=[split],
                    seeds=args.seeds if seeded else args.seeds[:1],
                    score=score,
                    on_fitted=keep,
                )
                if not seeded:
                    table, costs = (
                        pl.concat([f.with_columns(pl.lit(s).alias("seed")) for s in args.seeds])
                        for f in (table, costs)
                    )
                save_part(table, part)
                save_part(costs, part.with_name(f"{split}__{name}_costs.csv"))
    elapsed = time.perf_counter() - start
    table = pl.concat([pl.read_parquet(p) for p in sorted(parts.glob("*__*.parquet"))])
    costs = pl.concat([pl.read_csv(p) for p in sorted(parts.glob("*__*_costs.csv"))])
    out = args.out
    table.drop("horizon_t", "horizon_mse", "horizon_mse_persistence").write_parquet(
        out / "forecast_runs.parquet"
    )
    per_group(table).write_csv(out / "forecast.csv")
    costs.write_csv(out / "forecast_costs.csv")
    head = headline(table)
    tasks = headline(table, by=("method", "task", "split"))
    horizon = horizon_table(table)
    plot_horizon(horizon, out / "forecast_horizon.png")
    shown = {
        n: m
        for n, m in last_models.items()
        if n in ("gfm", "gfm_free", "gfm_optimizer", "linear", "lstm", "transformer", "dmd")
    }
    if shown:
        sample_plot(settings, ds, shown, out / "forecast_trajectories.png")
    cost_summary = (
        costs.group_by("method")
        .agg(
            pl.col("fit_seconds").mean().round(1),
            pl.col("forecast_seconds_per_run").mean().round(4),
            pl.col("n_parameters").first(),
        )
        .sort("method")
    )
    md = [
        f"<!-- written by `python -m benchmarks.forecast` in {elapsed / 60:.1f} min; "
        f"seeds {args.seeds}; torch threads {torch.get_num_threads()} -->",
        "## Headline: mean over tasks, optimizers and fractions (spread over training seeds)",
        "",
        to_markdown(head),
        "",
        "## Per task (mean ± std over seeds)",
        "",
        to_markdown(tasks),
        "",
        "## Compute costs (mean over splits and seeds)",
        "",
        to_markdown(cost_summary),
        "",
    ]
    (out / "forecast_summary.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
