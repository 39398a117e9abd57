"""Evaluate GFM and the baselines on the test split; the results table becomes an artifact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_repo, git_root, repro, settings
from gfm import ops
from gfm.config import Settings
from gfm.ops.layout import read_step, step_run_id


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_models(cfg: Settings, train_info: Path, repo: Path) -> dict:
    """``gfm.ops.evaluate_step``: metrics, table and plots to files and to MLflow."""
    return ops.evaluate_step(cfg, train_info=train_info, repo=repo)


@task(name="publish-results", cache_policy=NO_CACHE)
def publish(cfg: Settings) -> str:
    """A markdown artifact in Prefect: the model's test metrics and the results table."""
    out = ops.layout(cfg)
    doc = read_step(out, "evaluate")
    metrics_json, results_md = out.metrics_json, out.results_md
    lines = [
        f"# gfm evaluation (split `{doc['split']}`, {doc['n_test_runs']} test runs)",
        "",
        f"MLflow run `{doc.get('run_id')}`, dataset `{doc['dataset_version']}`",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {v:.4g} |" for k, v in doc["metrics"].items()),
        "",
        results_md.read_text(),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="gfm-evaluation", description="GFM vs baselines on the test split"
    )
    return str(metrics_json)


@flow(name="evaluate")
def evaluate(
    params: str = "params.yaml",
    overrides: Sequence[str] | None = None,
    train_info: str | None = None,
) -> str:
    """Evaluate the trained model and the workflow baselines; returns the path of metrics.json.

    In the project's DVC repository this is ``dvc repro evaluate`` (run again when this
    machine's evaluation record is not of the training run of its train record: the test
    metrics then reach that MLflow run), else the step directly.
    """
    cfg = settings(params, overrides)
    out = ops.layout(cfg)
    repo = dvc_repo(params, overrides)
    if repo is not None:
        trained = step_run_id(out, "train")
        repro("evaluate", repo, force=trained is None or step_run_id(out, "evaluate") != trained)
    else:
        evaluate_models(cfg, Path(train_info or out.train_run), git_root(params))
    return publish(cfg)
