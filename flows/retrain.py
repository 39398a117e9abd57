"""The whole workflow, what ``gfm run`` and the schedule run: generate, tune, train, evaluate, promote."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import prefect
from prefect import flow
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.evaluate import evaluate
from flows.generate import generate
from flows.promote import promote
from flows.train import train
from flows.tune import tune


@flow(name="retrain")
def retrain(params: str = "params.yaml", overrides: Sequence[str] | None = None) -> dict:
    """Generate and version the data, tune, train, evaluate and promote; returns a summary.

    Each step is a subflow; steps hand each other file paths (tune.json, train.json,
    metrics.json) and the registry version. In the project's DVC repository the first four
    are ``dvc repro <stage>``, so ``dvc repro`` afterwards has nothing to do.
    """
    overrides = list(overrides or [])
    dataset_version = generate(params, overrides)
    tuned = tune(params, overrides)
    trained = train(params, overrides, tuned=tuned)
    metrics = evaluate(params, overrides, train_info=trained)
    decision = promote(params, overrides, train_info=trained, metrics=metrics)
    return {
        "dataset_version": dataset_version,
        "tune": tuned,
        "train": trained,
        "metrics": metrics,
        "decision": decision,
    }


def deployment(params: str, *, cron: str, timezone: str, name: str) -> RunnerDeployment:
    """The ``retrain`` deployment on a cron schedule, with ``params`` as an absolute path."""
    path = str(Path(params).resolve())
    return retrain.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"params": path, "overrides": []},
        description=f"gfm retrain on {path}",
    )


def serve(params: str, *, cron: str, timezone: str, name: str) -> None:
    """Serve ``retrain`` on its schedule until interrupted; runs execute in this process.

    Needs a Prefect server (``PREFECT_API_URL``): the temporary local API cannot run schedules.
    """
    prefect.serve(deployment(params, cron=cron, timezone=timezone, name=name))
