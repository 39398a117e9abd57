"""Cost proportional to the data: a small imported set, fitted and evaluated with the defaults.

Issue 12's case: 160 least-squares runs of 2 parameters (w ∈ R², minibatch SGD, 200 steps
recorded at every step: 201 checkpoints; 100 train, 10 val, 50 test runs), written as a user
would bring them (`runs.npz` + `runs.csv`), then, as separate commands in a fresh folder holding
a copy of `params.yaml`: `gfm data import`, `gfm train --no-tuned`, `gfm evaluate`. Each is
timed from process start to exit (imports, prior fits into a cold cache, MLflow logging
included); the test median of GFM's final-weight MSE over persistence's comes from
`reports/metrics.json`. Configurations: the defaults, and the defaults with
`train.min_steps=6000` (the full 6,000 steps: what training did before it was sized to the
data). Writes `benchmarks/results/small_data.csv` and `small_data.png`.

    python -m benchmarks.small_data [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import machine_title

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
GFM = [str(Path(sys.executable).parent / "gfm")]  # the console script a user runs
CONFIGS = {"defaults": [], "6,000 steps": ["--set", "train.min_steps=6000"]}
PHASES = ("import", "train", "evaluate")


def write_runs(folder: Path, seed: int = 0, n: tuple[int, int, int] = (100, 10, 50)) -> None:
    """Two-parameter least-squares SGD runs: L(w) = |X w − y|²/b over minibatches of b = 32.

    X (256, 2) with column scales U(0.5, 2), y = X w* + 0.1 ε, w_0 ~ N(0, 0.01), lr
    log-uniform in [0.01, 0.1]; w recorded at all 201 steps. Split by position: train, val, test.
    """
    rng = np.random.default_rng(seed)
    runs, steps = sum(n), 200
    weights = np.zeros((runs, steps + 1, 2), np.float32)
    rows = []
    for r in range(runs):
        X = rng.normal(size=(256, 2)) * rng.uniform(0.5, 2.0, size=2)
        y = X @ rng.normal(size=2) + 0.1 * rng.normal(size=256)
        w = rng.normal(size=2) * 0.1
        lr = float(np.exp(rng.uniform(np.log(0.01), np.log(0.1))))
        weights[r, 0] = w
        for s in range(steps):
            batch = rng.integers(0, 256, 32)
            w = w - lr * 2 * X[batch].T @ (X[batch] @ w - y[batch]) / 32
            weights[r, s + 1] = w
        split = "train" if r < n[0] else "val" if r < n[0] + n[1] else "test"
        rows.append(
            {"run_id": f"run-{r}", "optimizer": "sgd", "lr": lr, "batch_size": 32, "split": split}
        )
    np.savez(folder / "runs.npz", weights=weights)
    with (folder / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _timed(args: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[1:3])} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def measure(config: str, seed: int, runs: Path) -> dict:
    """Import, train and evaluate in a fresh folder; seconds per phase and the test median."""
    with tempfile.TemporaryDirectory(prefix="gfm-small-") as tmp:
        folder = Path(tmp)
        shutil.copy(REPO / "params.yaml", folder / "params.yaml")
        log = folder / "log.txt"
        extra = [*CONFIGS[config], "--set", f"train.seed={seed}"]
        row = {"config": config, "seed": seed}
        row["import_s"] = _timed(
            [*GFM, "data", "import", str(runs / "runs.npz"), "--metadata", str(runs / "runs.csv")]
            + ["--dest", "data"],
            folder,
            log,
        )
        row["train_s"] = _timed([*GFM, "train", "--no-tuned", *extra], folder, log)
        row["evaluate_s"] = _timed([*GFM, "evaluate", *extra], folder, log)
        row["total_s"] = row["import_s"] + row["train_s"] + row["evaluate_s"]
        metrics = json.loads((folder / "reports" / "metrics.json").read_text())["metrics"]
        row["steps"] = int(float(_last_step(folder / "reports" / "train_history.csv")))
        row["test_rel_mse_median"] = metrics["test/rel_mse_persistence_median"]
        row["test_mse_final"] = metrics["test/mse_final"]
        row["load_1m"] = os.getloadavg()[0]
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def _last_step(history: Path) -> str:
    return history.read_text().strip().splitlines()[-1].split(",")[0]


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    names = list(dict.fromkeys(r["config"] for r in rows))
    left = np.zeros(len(names))
    for phase in PHASES:
        mean = np.array(
            [np.mean([r[f"{phase}_s"] for r in rows if r["config"] == c]) for c in names]
        )
        ax.barh(names, mean, left=left, label=phase)
        left += mean
    ax.axvline(60, color="k", ls="--", lw=1, label="60 s")
    ax.set_xlabel("seconds, mean over seeds (process start to exit)")
    ax.legend(fontsize=8)
    ax.set_title("100 train runs × 201 checkpoints × 2 parameters", fontsize=10)
    for i, c in enumerate(names):
        vals = [r["test_rel_mse_median"] for r in rows if r["config"] == c]
        bx.scatter([i] * len(vals), vals)
    bx.set_xticks(range(len(names)), names)
    bx.set_ylabel("test median MSE / persistence's")
    bx.set_ylim(bottom=0)
    bx.set_title("forecast error (one point per training seed)", fontsize=10)
    title = machine_title("gfm on a small imported set", [r["load_1m"] for r in rows])
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gfm-small-runs-") as tmp:
        runs = Path(tmp)
        write_runs(runs)
        rows = [measure(c, s, runs) for s in args.seeds for c in args.configs]
    table = args.out / "small_data.csv"
    partial = table.with_suffix(".csv.partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(table)
    _plot(rows, args.out / "small_data.png")
    print(f"wrote {table} and {args.out / 'small_data.png'}")


if __name__ == "__main__":
    main()
