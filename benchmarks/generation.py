"""Generation throughput and peak memory per task, one process per task on one core.

Each task runs `--runs` planned runs of the default params (first optimizers in plan order) in a
fresh single-threaded process, so peak RSS is that task's own. Writes
`benchmarks/results/generation.csv` and `benchmarks/results/generation.png`.

    python -m benchmarks.generation [--params params.yaml] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _measure(params: str, task: str, runs: int) -> dict:
    """Train `runs` planned runs of `task` in this process; report throughput and peak RSS."""
    import torch

    from gfm.config import load_settings
    from gfm.data.generate import plan_runs, train_run

    torch.set_num_threads(1)
    cfg = load_settings(params).data
    specs = [s for s in plan_runs(cfg) if s.task == task]
    # spread over optimizers: every len/runs-th planned run
    stride = max(1, len(specs) // runs)
    specs = specs[::stride][:runs]
    train_run(specs[0], cfg.tasks[task])  # warm-up: dataset load, kernels
    start = time.perf_counter()
    checkpoints = 0
    params_n = 0
    for spec in specs:
        rec = train_run(spec, cfg.tasks[task])
        checkpoints += rec.weights.shape[0]
        params_n = rec.weights.shape[1]
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "task": task,
        "runs": len(specs),
        "params": params_n,
        "steps_per_run": cfg.tasks[task].steps,
        "checkpoints": checkpoints,
        "seconds": round(seconds, 3),
        "seconds_per_run": round(seconds / len(specs), 3),
        "checkpoints_per_s_per_core": round(checkpoints / seconds, 1),
        "optimizer_steps_per_s_per_core": round(len(specs) * cfg.tasks[task].steps / seconds, 1),
        "peak_rss_mib": round(peak_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--task", help="internal: measure one task in this process")
    args = parser.parse_args()
    if args.task:
        print(json.dumps(_measure(args.params, args.task, args.runs)))
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    from gfm.config import load_settings

    rows = []
    for task in load_settings(args.params).data.tasks:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.generation",
                "--params",
                args.params,
                "--runs",
                str(args.runs),
                "--task",
                task,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["machine"] = f"{platform.machine()} {platform.processor() or ''}".strip()
        rows.append(row)
        print(row)
    df = pl.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.write_csv(RESULTS / "generation.csv")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.bar(df["task"], df["checkpoints_per_s_per_core"])
    a.set_ylabel("checkpoints / s / core")
    a.set_yscale("log")
    b.bar(df["task"], df["peak_rss_mib"])
    b.set_ylabel("peak RSS (MiB)")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("Trajectory generation, default params, one core")
    fig.tight_layout()
    fig.savefig(RESULTS / "generation.png", dpi=120)
    print(f"wrote {RESULTS / 'generation.csv'} and generation.png")


if __name__ == "__main__":
    main()
