"""Generate or update the dataset, validate it, version it with DVC; returns the dataset version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dvc_repo, repro, settings
from gfm import pipeline, versioning
from gfm.config import DataSettings
from gfm.data.generate import generate as generate_runs
from gfm.data.validate import check


@task(name="restore-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def restore_data(root: Path, remote: str) -> bool:
    """Pull the pinned dataset from the DVC remote when the folder is missing."""
    return versioning.restore(root, remote)


@task(name="generate-data", cache_policy=NO_CACHE)
def generate_data(cfg: DataSettings) -> dict:
    """Train the planned runs the dataset lacks (``gfm.data.generate``); returns the counts."""
    report = generate_runs(cfg, progress=False)
    return {
        "planned": report.planned,
        "reused": report.skipped,
        "trained": report.trained,
        "diverged": len(report.diverged),
        "seconds": round(report.seconds, 1),
    }


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(root: Path) -> dict:
    """Check the whole dataset (``gfm.data.validate.check``); fails listing every problem."""
    manifest = check(root)
    return {"runs": manifest.counts.runs, "hash": manifest.hash}


@task(name="dvc-add", cache_policy=NO_CACHE)
def add_data(root: Path, remote: str) -> str:
    """``dvc add`` the dataset folder; returns the md5 recorded in its ``.dvc`` file."""
    return versioning.add_and_push(root, remote, push=False)


@task(name="dvc-push", retries=3, retry_delay_seconds=[5, 20, 60], cache_policy=NO_CACHE)
def push_data(root: Path, remote: str) -> None:
    """``dvc push`` the dataset to the configured remote (retried: storage can be flaky)."""
    versioning.push(root, remote)


@task(name="dataset-version", cache_policy=NO_CACHE)
def version_of(root: Path) -> str:
    """The dataset version outside DVC: its content hash (``gfm.pipeline.dataset_version``)."""
    return pipeline.dataset_version(root)


@flow(name="generate")
def generate(params: str = "params.yaml", overrides: Sequence[str] | None = None) -> str:
    """Generate or update the dataset, validate it and version it; returns its version.

    In the project's DVC repository this is ``dvc repro generate`` (skipped when the data
    settings and code are unchanged; a missing folder is pulled from the remote first), else
    ``gfm.data.generate`` directly. Then ``dvc add`` + ``dvc push`` when the folder is inside a
    DVC repository: the version is the md5 in ``data.dvc``.
    """
    cfg = settings(params, overrides)
    root, remote = cfg.data.root, cfg.data.remote
    repo = dvc_repo(params, overrides)
    if repo is not None:
        present = restore_data(root, remote)
        repro("generate", repo, force=not present)
    else:
        generate_data(cfg.data)
    validate_data(root)
    if versioning.find_repo(root) is None:
        return version_of(root)
    md5 = add_data(root, remote)
    push_data(root, remote)
    return md5
