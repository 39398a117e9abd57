"""Train GFM with the best trial's params on the train split; returns the path of train.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_repo, git_root, repro, settings
from gfm import ops
from gfm.config import Settings
from gfm.ops import versioning
from gfm.ops.layout import step_run_id


@task(name="dvc-push-model", retries=3, retry_delay_seconds=[5, 20, 60], cache_policy=NO_CACHE)
def push_model(repo: Path, remote: str) -> None:
    """``dvc push train``: the model folder to the DVC remote, beside the data it came from."""
    versioning.push_outputs(repo, "train", remote)


@task(name="train-gfm", cache_policy=NO_CACHE)
def train_model(cfg: Settings, tuned: Path, repo: Path) -> dict:
    """``gfm.ops.train_step``: fit, log the run and the pyfunc model, write the folder."""
    return ops.train_step(cfg, tuned=tuned, repo=repo)


@flow(name="train")
def train(
    params: str = "params.yaml",
    overrides: Sequence[str] | None = None,
    tuned: str | None = None,
) -> str:
    """Train GFM (GPU when present: ``train.device`` auto); returns the path of its record.

    Args:
        params: the settings file.
        overrides: ``section.key=value`` overrides.
        tuned: tune.json whose best params to train with (default: the layout's).

    In the project's DVC repository this is ``dvc repro train`` (run again when this machine
    has no record of the training run, e.g. a fresh clone whose train.json came with git),
    then ``dvc push`` of the model; else the step directly. The record
    (reports/local/train.json) names the MLflow run and the logged model.
    """
    cfg = settings(params, overrides)
    out = ops.layout(cfg)
    repo = dvc_repo(params, overrides)
    if repo is not None:
        repro("train", repo, force=step_run_id(out, "train") is None)
        push_model(repo, cfg.data.remote)
    else:
        train_model(cfg, Path(tuned or out.tune_json), git_root(params))
    return str(out.train_run)
