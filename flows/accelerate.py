"""Jump-ahead comparison: steps to a target accuracy with and without forecast jumps, to MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import git_root, settings
from gfm import ops, tracking
from gfm.bench import jumps
from gfm.config import Settings
from gfm.tracking.comparison import STATS, log_comparison, read_summary


@task(name="compare-jumps", cache_policy=NO_CACHE)
def compare_jumps(cfg: Settings, model: str | None) -> dict[str, str]:
    """``gfm.bench.jumps``: fit or load the forecasters, train every way, write the files."""
    source = model or cfg.accelerate.model
    gfm = tracking.load_model(source, cfg) if source and "gfm" in cfg.accelerate.methods else None
    models = jumps.forecasters(cfg, gfm=gfm)
    comparison = jumps.compare(cfg, models)
    return {k: str(v) for k, v in jumps.write(comparison, cfg.accelerate.output_dir).items()}


@task(name="log-comparison", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_results(cfg: Settings, paths: dict[str, str], repo: Path) -> str:
    """One MLflow run: the ``accelerate`` settings, speedups per panel, the files; its id."""
    root = cfg.data.root
    version = ops.dataset_version(root) if root.is_dir() else None  # a --model run needs none
    return log_comparison(cfg, paths, dataset_version=version, repo=repo)


@task(name="publish-speedups", cache_policy=NO_CACHE)
def publish(summary_csv: str, run_id: str) -> None:
    """A markdown artifact in Prefect: steps to target and speedup per method, task and arch."""
    summary = read_summary(summary_csv)
    cols = ["method", "task", "arch", "holdout_arch", *[s for s in STATS[:7]]]
    lines = [
        f"# gfm accelerate (MLflow run `{run_id}`)",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for row in summary.select(cols).iter_rows():
        lines.append(
            "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |"
        )
    create_markdown_artifact(
        "\n".join(lines), key="gfm-accelerate", description="steps to target with forecast jumps"
    )


@flow(name="accelerate")
def accelerate(
    params: str = "params.yaml",
    overrides: Sequence[str] | None = None,
    model: str | None = None,
    tuned: bool = True,
) -> dict[str, str]:
    """Base optimizer alone vs GFM, linear and WNN jumps; returns the files and the run id.

    Args:
        params: the settings file (the ``accelerate`` section).
        overrides: ``section.key=value`` overrides.
        model: GFM's source, a folder or ``models:/gfm@champion`` (default:
            ``accelerate.model``; null fits one on the architecture split).
        tuned: fit that GFM with the best params of tune.json, as ``gfm train`` does.
    """
    cfg = settings(params, overrides)
    if tuned and model is None and cfg.accelerate.model is None:
        cfg, _ = jumps.with_tuned(cfg, ops.layout(cfg).tune_json)
    paths = compare_jumps(cfg, model)
    run_id = log_results(cfg, paths, git_root(params))
    publish(paths["summary"], run_id)
    return {**paths, "run_id": run_id}
