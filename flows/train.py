"""Train GFM with the best trial's params on the train split; returns the path of train.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_repo, git_root, repro, settings
from gfm import ops
from gfm.config import Settings


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
    """Train GFM (GPU when present: ``train.device`` auto); returns the path of train.json.

    Args:
        params: the settings file.
        overrides: ``section.key=value`` overrides.
        tuned: tune.json whose best params to train with (default: the layout's).

    In the project's DVC repository this is ``dvc repro train``, else the step directly.
    """
    cfg = settings(params, overrides)
    repo = dvc_repo(params, overrides)
    if repo is not None:
        repro("train", repo)
    else:
        train_model(cfg, Path(tuned or ops.layout(cfg).tune_json), git_root(params))
    return str(ops.layout(cfg).train_json)
