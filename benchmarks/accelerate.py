"""Jump-ahead training: optimizer steps to a target accuracy with GFM, linear and WNN jumps.

``gfm.ops.jump_step`` without MLflow, as ``gfm bench jumps --no-mlflow`` runs it: for each task,
architecture (a seen one and the holdout one) and seed, the base optimizer alone vs the same
optimizer with GFM, linear-extrapolation and WNN-style jumps (``benchmarks/accelerate.yaml``).
Writes, under ``accelerate.output_dir`` (default ``benchmarks/results/``):

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
import logging

import torch

from gfm import ops
from gfm.config import load_settings, product_overrides
from gfm.evaluation import to_markdown
from gfm.ops.jumps import jump_overrides


def main() -> None:
    """Run the benchmark on the settings and overrides given; print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--bench", default=None, help="default: benchmarks/accelerate.yaml")
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

    extra = jump_overrides(
        seeds=args.seeds, first_seed=args.first_seed, tasks=args.tasks, steps=args.steps
    )
    overrides = [*args.overrides, *extra]
    settings = load_settings(args.params, product_overrides(overrides, ["accelerate"]))
    acc = ops.bench_settings(args.params, args.bench, overrides)
    doc = ops.jump_step(settings, acc, model=args.model, tuned=args.tuned, log_mlflow=False)
    print(to_markdown(doc["summary"], precision=3))
    print("\n".join(str(p) for p in doc["paths"].values()))


if __name__ == "__main__":
    main()
