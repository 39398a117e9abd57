"""The promote step: register the trained model, judge it against the champion, move one alias."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gfm.config import Settings
from gfm.data.atomic import write_json
from gfm.ops.evaluate import score
from gfm.ops.layout import (
    dataset_version,
    layout,
    open_dataset,
    read_json,
)

log = logging.getLogger("gfm.ops")

# ----------------------------------------------------------------------------- promote


def register_step(settings: Settings, *, train_info: Path | None = None) -> str:
    """Register the model of train.json as a version of ``registry.model_name`` (idempotent).

    The version is tagged with its run's dataset version, git commit and params; a version
    already registered from the same run is returned instead of adding a duplicate.

    Returns:
        The version.
    """
    from gfm import tracking

    info = read_json(Path(train_info or layout(settings).train_run), "train")
    tracking.configure(settings.tracking)
    version = tracking.find_version(info["run_id"], settings.registry)
    if version is not None:
        log.info("run %s is already version %s", info["run_id"], version)
        return version
    return tracking.register(info["model_uri"], settings.registry)


def promote_step(
    settings: Settings,
    *,
    train_info: Path | None = None,
    metrics: Path | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Judge the trained model against the champion on the same test split; move one alias.

    The version (``register_step`` when not given) is tagged with its test metrics; the champion
    is re-scored on the current test split with ``score`` (same data, same metric), and the
    version takes ``registry.champion_alias`` only if better by ``registry.margin``, else
    ``registry.challenger_alias``. Aliases move last, never onto a version whose run failed.

    Returns:
        The content of promotion.json: ``version``, ``alias``, ``promoted``, ``reason``,
        ``metric``, ``value``, ``champion_value``, ``previous_champion``, ``model_uri``.
    """
    from gfm import tracking

    out = layout(settings)
    train_info = Path(train_info or out.train_run)
    info = read_json(train_info, "train")
    scores = read_json(Path(metrics or out.metrics_json), "evaluate")
    ds = open_dataset(settings)
    current = dataset_version(ds.root)
    if scores.get("dataset_version") != current:
        raise ValueError(
            f"{metrics or out.metrics_json}: scored on dataset {scores.get('dataset_version')}, "
            f"but {ds.root} is now {current}; run `gfm evaluate` again before promoting"
        )
    if version is None:
        version = register_step(settings, train_info=train_info)
    tracking.configure(settings.tracking)
    cfg = settings.registry

    def rescore(champion: str) -> float:
        log.info("re-scoring champion version %s on the current test split", champion)
        values = score(tracking.load(cfg=cfg, version=champion), settings, ds)
        if cfg.metric not in values:
            raise ValueError(f"re-scoring gives {sorted(values)}, not registry.metric {cfg.metric}")
        return values[cfg.metric]

    decision = tracking.promote(version, scores["metrics"], cfg, compare=rescore)
    doc = {
        **vars(decision),
        "model_name": cfg.model_name,
        "model_uri": tracking.model_uri(cfg, decision.alias),
        "run_id": info["run_id"],
    }
    write_json(out.promotion_json, doc)
    log.info("version %s -> %s: %s", decision.version, decision.alias, decision.reason)
    return doc
