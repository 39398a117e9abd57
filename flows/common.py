"""What every flow shares: settings at the entry, and running a DVC stage as a task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from gfm import ops
from gfm.config import Settings, load_settings
from gfm.ops import versioning


def settings(params: str, overrides: Sequence[str] | None) -> Settings:
    """Load the settings once, at the flow's entry (``SettingsError`` names the bad key)."""
    return load_settings(params, list(overrides or []))


def dvc_repo(params: str, overrides: Sequence[str] | None) -> Path | None:
    """The DVC repository whose stages run these settings (``gfm.ops.dvc_repo``)."""
    return ops.dvc_repo(Path(params), list(overrides or []))


def git_root(params: str) -> Path:
    """The folder whose git commit runs record: the params file's."""
    return Path(params).resolve().parent


@task(name="dvc-repro", task_run_name="dvc repro {stage}", cache_policy=NO_CACHE)
def repro(stage: str, repo: Path, force: bool = False) -> bool:
    """``dvc repro <stage>``: the stage's ``gfm`` command, skipped when it is up to date.

    Returns whether it ran; the task's log says so.
    """
    ran = versioning.reproduce(stage, repo, force=force)
    get_run_logger().info("dvc repro %s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran
