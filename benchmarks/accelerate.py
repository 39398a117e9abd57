"""Jump-ahead training: optimizer steps to a target accuracy with GFM, linear and WNN jumps.

A thin wrapper over ``gfm.jumpahead`` (what ``gfm accelerate`` runs, without MLflow): for each
task, architecture (a seen one and the holdout one) and seed, the base optimizer alone vs the
same optimizer with GFM, linear-extrapolation and WNN-style jumps (``accelerate`` in
params.yaml). Writes, under ``accelerate.output_dir`` (default ``benchmarks/results/``):

  accelerate.csv          one row per method × task × arch × seed
  accelerate_curves.csv   held-out accuracy per evaluated step (the plot's data)
  accelerate_jumps.csv    one row per jump: horizon, kept or rolled back, loss spike, scale
  accelerate_summary.csv  steps to target (mean ± std), speedup, steps saved, final accuracy
  accelerate.png          mean held-out accuracy vs step per method, one panel per task × arch

    python -m benchmarks.accelerate [--model DIR | models:/gfm@champion] [--seeds 10]
        [--first-seed 0] [--tasks digits_mlp mnist_cnn] [--set accelerate.period=40 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import polars as pl
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gfm import jumpahead
from gfm.config import load_settings

console = Console()


def main() -> None:
    """Run the comparison on the settings and overrides given; print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[])
    parser.add_argument("--model", default=None, help="GFM folder or models:/gfm@champion")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--first-seed", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="step budget")
    parser.add_argument(
        "--no-tuned", dest="tuned", action="store_false", help="ignore reports/tune.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("gfm").setLevel(logging.INFO)
    torch.set_num_threads(1)  # the machine is shared; every method gets the same single core

    options = {
        "accelerate.seeds": args.seeds,
        "accelerate.first_seed": args.first_seed,
        "accelerate.tasks": args.tasks,
        "accelerate.steps": args.steps,
    }
    extra = [f"{k}={json.dumps(v)}" for k, v in options.items() if v is not None]
    settings = load_settings(args.params, [*args.overrides, *extra])
    if args.tuned and args.model is None and settings.accelerate.model is None:
        tune_json = settings.evaluate.output_dir / "tune.json"  # what `gfm tune` wrote
        settings, tuned = jumpahead.with_tuned(settings, tune_json)
        console.print(f"GFM fitted with the tuned params of {tune_json}: {tuned or 'none'}")
    start = time.perf_counter()
    models = jumpahead.forecasters(settings, model=args.model)
    runs = len(jumpahead.jobs(settings)) * len({"base", *settings.accelerate.methods})
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("runs", total=runs)

        def on_run(job: jumpahead.Job, method: str, finished: bool) -> None:
            label = f"{job.task} {job.arch} seed {job.seed} {method}"
            progress.update(bar, advance=int(finished), description=label)

        comparison = jumpahead.compare(settings, models, on_run=on_run)
    paths = jumpahead.write(comparison, settings.accelerate.output_dir)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=220, float_precision=3):
        print(jumpahead.summarize(comparison.table))
    console.print(
        f"{len(comparison.table)} rows -> {', '.join(str(p) for p in paths.values())} "
        f"in {(time.perf_counter() - start) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
