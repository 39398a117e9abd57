"""Tune GFM's hyperparameters with Optuna (resumable); returns the path of tune.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_repo, git_root, repro, settings
from gfm import ops
from gfm.config import Settings


@task(name="tune-study", cache_policy=NO_CACHE)
def run_study(cfg: Settings, repo: Path) -> dict:
    """``gfm.ops.tune_step``: the study, one nested MLflow run per trial, tune.json."""
    return ops.tune_step(cfg, repo=repo)


@flow(name="tune")
def tune(params: str = "params.yaml", overrides: Sequence[str] | None = None) -> str:
    """Search GFM hyperparameters; returns the path of tune.json (best params, study).

    In the project's DVC repository this is ``dvc repro tune``, else the step directly.
    """
    cfg = settings(params, overrides)
    repo = dvc_repo(params, overrides)
    if repo is not None:
        repro("tune", repo)
    else:
        run_study(cfg, git_root(params))
    return str(ops.layout(cfg).tune_json)
