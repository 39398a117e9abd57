"""Team-mode throughput: tuning workers on PostgreSQL storage, generation on a local Dask cluster.

Tuning: the tiny dataset of the tests, `gfm tune` with 1, 2 and 4 worker processes on one study in
a fresh PostgreSQL database each (MLflow on PostgreSQL too, no pruning so every trial does the
same work); finished trials per minute over the wall time of the call (process start-up
included) and over the busy span (first trial start to last trial end). Generation: `mnist_cnn`
runs of the default params (about 2 s each on one core) in this process, then through Prefect's
DaskTaskRunner on a local cluster of 1 and 2 workers; runs per minute over the wall time (the
Prefect API, cluster and worker start-up included) and at the steady rate between the first and
the last finished run (`busy_s`); the dataset hash must not change. `cpu_s` is the CPU time this
process and its worker processes used (so `per_cpu_min` is throughput per CPU-minute, what the
engines cost whatever else runs; the temporary Prefect server's is not counted) and `load_1m` the
machine's 1-minute load average at the end of each measurement: on a shared machine other jobs
take cores too. Writes `benchmarks/results/team.csv` and `team.png`.

    python -m benchmarks.team [--postgres postgresql+psycopg://postgres@127.0.0.1:5432]
    python -m benchmarks.team --parts generate     # measure one part, keep the other's rows
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import machine_title

RESULTS = Path(__file__).parent / "results"


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its reaped worker processes."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CONFS = Path(__file__).resolve().parents[1] / "tests" / "confs"


def _tuning(postgres: str, folder: Path, workers: list[int], n_trials: int) -> list[dict]:
    import optuna

    from gfm import ops
    from gfm.config import load_settings
    from gfm.data.generate import generate
    from gfm.ops import stack

    data = folder / "tiny-data"
    tiny = CONFS / "valid" / "tiny.yaml"
    generate(load_settings(tiny, {"data.root": str(data)}, environ={}).data, workers=1)
    mlflow_db = f"{postgres}/gfm_bench_mlflow_{uuid.uuid4().hex[:8]}"
    stack.create_database(mlflow_db)
    rows = []
    try:
        for n in workers:
            storage = f"{postgres}/gfm_bench_optuna_{uuid.uuid4().hex[:8]}"
            stack.create_database(storage)
            try:
                settings = load_settings(
                    tiny,
                    {
                        "data.root": str(data),
                        "evaluate.output_dir": str(folder / f"reports-{n}"),
                        "tracking.uri": mlflow_db,
                        "tracking.experiment": f"bench-tune-{n}",
                        "tracking.artifact_location": (folder / "mlartifacts").as_uri(),
                        "tune.storage": storage,
                        "tune.n_trials": n_trials,
                        "tune.trial_steps": 200,
                        "tune.eval_every": 100,
                        "tune.pruner_startup_trials": 1000,  # no pruning: equal work per trial
                        "tune.heartbeat_s": 5,
                        "gfm.width": 32,
                        "gfm.depth": 2,
                        "tune.space": {"train": {"lr": {"low": 3e-4, "high": 3e-3, "log": True}}},
                    },
                    environ={},
                )
                start, cpu = time.perf_counter(), _cpu_s()
                doc = ops.tune_step(settings, workers=n)
                wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
                study = optuna.load_study(study_name=doc["study"], storage=storage)
                done = [t for t in study.trials if t.datetime_complete is not None]
                busy = (
                    max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
                ).total_seconds()
                rows.append(
                    {
                        "kind": "tune",
                        "engine": "optuna-postgresql",
                        "workers": n,
                        "items": doc["n_complete"] + doc["n_pruned"],
                        "wall_s": round(wall, 1),
                        "busy_s": round(busy, 1),
                        "cpu_s": round(cpu, 1),
                        "load_1m": round(os.getloadavg()[0], 1),
                    }
                )
                print(rows[-1], flush=True)
            finally:
                stack.drop_database(storage)
    finally:
        stack.drop_database(mlflow_db)
    return rows


def _timed(runner):
    """``runner`` (a ``gfm.data.generate.Runner``) noting when each record arrives."""
    stamps: list[float] = []

    def timed(specs, cfg):
        for record in runner(specs, cfg):
            stamps.append(time.perf_counter())
            yield record

    return timed, stamps


def _steady_s(stamps: list[float]) -> float | None:
    """The time all runs would take at the rate between the first and the last finished one
    (start-up of servers, clusters and worker processes left out)."""
    if len(stamps) < 2:
        return None
    return (stamps[-1] - stamps[0]) * len(stamps) / (len(stamps) - 1)


def _generation(folder: Path, workers: list[int], seeds: int) -> list[dict]:
    import flows.generate as flow
    from gfm.config import load_settings
    from gfm.data.generate import generate, train_run

    def cfg(root: Path, executor: str, n: int):
        return load_settings(
            None,
            {
                "data.root": str(root),
                "data.tasks": {
                    "mnist_cnn": {
                        "archs": [[16, 32, 32], [8, 16, 16]],
                        "steps": 200,
                        "record_every": 4,
                        "batch_sizes": [64],
                    }
                },
                "data.seeds": seeds,
                "data.splits.holdout_archs": {"mnist_cnn": "8-16-16"},
                "data.splits.val_seeds": 0,  # two seeds: one test, one train
                "data.executor": executor,
                "data.workers": n,
            },
            environ={},
        ).data

    def inline(specs, settings):  # the process path with one worker: train_run in this process
        return (train_run(spec, settings.tasks[spec.task]) for spec in specs)

    def row(engine: str, n: int, report, wall: float, cpu: float, stamps: list[float]) -> dict:
        steady = _steady_s(stamps)
        out = {
            "kind": "generate",
            "engine": engine,
            "workers": n,
            "items": report.trained,
            "wall_s": round(wall, 1),
            "busy_s": None if steady is None else round(steady, 1),
            "cpu_s": round(cpu, 1),
            "load_1m": round(os.getloadavg()[0], 1),
            "hash": report.manifest.hash[:16],
        }
        print(out, flush=True)
        return out

    runner, stamps = _timed(inline)
    start, cpu = time.perf_counter(), _cpu_s()
    base = generate(cfg(folder / "gen-process", "process", 1), runner=runner)
    rows = [row("process", 1, base, time.perf_counter() - start, _cpu_s() - cpu, stamps)]
    original = flow._on_dask
    for n in workers:
        flow._on_dask, stamps = _timed(original)  # the flow looks its runner up when it runs
        try:
            start, cpu = time.perf_counter(), _cpu_s()
            report = flow.generate_on_dask(cfg(folder / f"gen-dask-{n}", "dask", n))
            wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
        finally:
            flow._on_dask = original
        rows.append(row("prefect-dask", n, report, wall, cpu, stamps))
        if report.manifest.hash != base.manifest.hash:
            raise AssertionError(f"dask with {n} workers changed the dataset hash")
    return rows


def _plot(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import polars as pl

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    panels = (
        ("tune", "finished trials / minute", "Optuna on PostgreSQL: tuning workers"),
        ("generate", "runs / minute", "Generation: mnist_cnn runs"),
    )
    for ax, (kind, ylabel, title) in zip(axes, panels, strict=True):
        part = frame.filter(pl.col("kind") == kind)
        labels = [
            f"{e}\n{w} worker(s)" for e, w in zip(part["engine"], part["workers"], strict=True)
        ]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, part["per_min_wall"].to_list(), 0.4, label="per wall minute")
        ax.bar(x + 0.2, part["per_cpu_min"].to_list(), 0.4, label="per CPU minute")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(machine_title("Team-mode throughput", frame["load_1m"].to_list()), fontsize=9)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432"),
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2, help="mnist_cnn runs per (optimizer, arch)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["tune", "generate"],
        default=["tune", "generate"],
        help="what to measure; the rows of the other part are kept from team.csv",
    )
    args = parser.parse_args()
    for name, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }.items():
        os.environ.setdefault(name, value)
    import polars as pl

    with tempfile.TemporaryDirectory(prefix="gfm-bench-team-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("PREFECT_HOME", str(folder / "prefect"))
        rows = []
        if "tune" in args.parts:
            rows += _tuning(args.postgres, folder, [1, 2, 4], args.trials)
        if "generate" in args.parts:
            rows += _generation(folder, [1, 2], args.seeds)
    kept = []
    if (RESULTS / "team.csv").is_file() and set(args.parts) != {"tune", "generate"}:
        old = pl.read_csv(RESULTS / "team.csv")
        kept = old.filter(~pl.col("kind").is_in(args.parts)).select(list(rows[0])).to_dicts()
    frame = pl.DataFrame(kept + rows, infer_schema_length=None).with_columns(
        per_min_wall=(pl.col("items") / pl.col("wall_s") * 60).round(1),
        per_min_busy=(pl.col("items") / pl.col("busy_s") * 60).round(1),
        per_cpu_min=(pl.col("items") / pl.col("cpu_s") * 60).round(1),
        cores=pl.lit(os.cpu_count()),
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.write_csv(RESULTS / "team.csv")
    _plot(frame, RESULTS / "team.png")
    print(frame)


if __name__ == "__main__":
    main()
