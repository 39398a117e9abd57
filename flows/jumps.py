"""The jump benchmark: steps to a target accuracy with and without forecast jumps, to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import git_root, settings
from gfm import ops
from gfm.bench.jumps import AccelerateSettings
from gfm.config import Settings, product_overrides
from gfm.evaluation import to_markdown
from gfm.tracking.jumps import STATS, read_summary


@task(name="run-jump-benchmark", cache_policy=NO_CACHE)
def run_benchmark(cfg: Settings, acc: AccelerateSettings, model: str | None, tuned: bool) -> dict:
    """``gfm.ops.jump_step`` without MLflow: forecasters, every training run, the files."""
    doc = ops.jump_step(cfg, acc, model=model, tuned=tuned, log_mlflow=False)
    paths = {k: str(v) for k, v in doc["paths"].items()}
    return {"settings": doc["settings"], "paths": paths, "fitted": doc["fitted"]}


@task(name="log-jump-benchmark", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_results(cfg: Settings, acc: AccelerateSettings, done: dict, repo: Path) -> str:
    """One MLflow run: the ``accelerate`` settings, speedups per panel, the files; its id."""
    return ops.log_jumps(cfg, acc, done["paths"], fitted=done["fitted"], repo=repo)


@task(name="publish-speedups", cache_policy=NO_CACHE)
def publish(summary_csv: str, run_id: str) -> None:
    """A markdown artifact in Prefect: steps to target and speedup per method, task and arch."""
    cols = ["method", "task", "arch", "holdout_arch", *STATS[:7]]
    table = to_markdown(read_summary(summary_csv).select(cols), precision=3)
    create_markdown_artifact(
        f"# gfm bench jumps (MLflow run `{run_id}`)\n\n{table}",
        key="gfm-jump-benchmark",
        description="steps to target with forecast jumps",
    )


@flow(name="jump-benchmark")
def jump_benchmark(
    params: str = "params.yaml",
    overrides: Sequence[str] | None = None,
    bench: str | None = None,
    model: str | None = None,
    tuned: bool = True,
) -> dict[str, str]:
    """Base optimizer alone vs GFM, linear and WNN jumps; returns the files and the run id.

    Args:
        params: the settings file.
        overrides: ``section.key=value`` overrides (``accelerate.*`` for the benchmark's own).
        bench: the benchmark's settings file (default: benchmarks/accelerate.yaml beside params).
        model: GFM's source, a folder or ``models:/gfm@champion`` (default:
            ``accelerate.model``; null fits one on the architecture split).
        tuned: fit that GFM with the best params of tune.json, as ``gfm train`` does.
    """
    cfg = settings(params, product_overrides(list(overrides or []), ["accelerate"]))
    acc = ops.bench_settings(params, bench, list(overrides or []))
    done = run_benchmark(cfg, acc, model, tuned)
    run_id = log_results(done["settings"], acc, done, git_root(params))
    publish(done["paths"]["summary"], run_id)
    return {**done["paths"], "run_id": run_id}
