"""Register the trained model and move the champion or challenger alias."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import settings
from gfm import ops
from gfm.config import Settings


@task(name="register-model", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_model(cfg: Settings, train_info: Path) -> str:
    """A registry version for the trained model (reused when the run is already registered)."""
    return ops.register_step(cfg, train_info=train_info)


@task(name="promote-version", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def promote_version(cfg: Settings, version: str, train_info: Path, metrics: Path) -> dict:
    """Champion if better than the re-scored champion by the margin, else challenger.

    The decision, its reason and the figures compared go to the task's log and to the
    ``gfm-promotion`` artifact of the flow run.
    """
    doc = ops.promote_step(cfg, train_info=train_info, metrics=metrics, version=version)
    get_run_logger().info(
        "version %s -> %s (%s): %s", doc["version"], doc["alias"], doc["model_uri"], doc["reason"]
    )
    create_markdown_artifact(
        promotion_markdown(doc), key="gfm-promotion", description=doc["reason"]
    )
    return doc


def promotion_markdown(doc: dict) -> str:
    """The promotion decision as a small markdown table (the flow run's artifact)."""
    rows = [
        ("version", doc["version"]),
        ("alias", doc["alias"]),
        ("promoted", doc["promoted"]),
        ("reason", doc["reason"]),
        ("metric", doc["metric"]),
        ("value", doc["value"]),
        ("champion value (re-scored)", doc.get("champion_value")),
        ("previous champion", doc.get("previous_champion")),
        ("model", doc["model_uri"]),
        ("training run", doc.get("run_id")),
    ]
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# gfm promotion\n\n| | |\n| --- | --- |\n{body}\n"


@flow(name="promote")
def promote(
    params: str = "params.yaml",
    overrides: Sequence[str] | None = None,
    train_info: str | None = None,
    metrics: str | None = None,
) -> dict:
    """Register the model of train.json and judge it on metrics.json; returns the decision.

    Args:
        params: the settings file.
        overrides: ``section.key=value`` overrides.
        train_info: the train step's record (default: reports/local/train.json).
        metrics: metrics.json (default: the layout's).
    """
    cfg = settings(params, overrides)
    out = ops.layout(cfg)
    info = Path(train_info or out.train_run)
    version = register_model(cfg, info)
    return promote_version(cfg, version, info, Path(metrics or out.metrics_json))
