"""The workflow's commands: `gfm run`, `tune`, `tune-worker`, `train`, `evaluate`, `promote`, `schedule`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gfm.cli._app import ParamsOpt, SetOpt, app, read_settings
from gfm.cli.render import (
    StepErrors,
    console,
    fail,
    held_out_table,
    produced,
    score_rows,
    tuned_rows,
)
from gfm.config import Settings


@app.command()
def run(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the whole workflow (the Prefect `retrain` flow): generate, tune, train, evaluate, promote.

    The data is generated (or updated), validated and versioned with DVC (`dvc add` + `dvc push`);
    Optuna tunes GFM (resuming an interrupted study), GFM trains with the best trial's params,
    it and the baselines are evaluated on the test split, and the model is registered in MLflow
    as `champion` (better than the current champion) or `challenger`. In the project's DVC
    repository (its own params.yaml, no `--set`) the first four steps are `dvc repro <stage>`,
    so `dvc repro` afterwards has nothing to do. Examples:

        gfm run
        gfm run --set tune.n_trials=0 --set train.steps=300    # quick: no tuning, short training
    """
    cfg = read_settings(params, set_)
    from flows.retrain import retrain
    from gfm import ops
    from gfm.ops.layout import read_step

    try:
        summary = retrain(params=str(params), overrides=list(set_ or []))
    except StepErrors as err:
        raise fail("gfm run", err) from None
    out = ops.layout(cfg)
    tuned = read_step(out, "tune") if out.tune_json.is_file() else {}
    trained = ops.read_json(Path(summary["train"]), "train")
    scores = read_step(out, "evaluate")
    d = summary["decision"]
    if scores.get("held_out"):
        console.print(held_out_table(scores["held_out"]))
    produced(
        "gfm run",
        [
            ("dataset version", f"{summary['dataset_version']} ({cfg.data.root})"),
            *tuned_rows(tuned),
            ("train run", f"{trained['run_id']} (experiment {cfg.tracking.experiment})"),
            ("model", f"{cfg.train.model_dir} and {trained['model_uri']}"),
            *score_rows(scores),
            (
                "registry",
                f"{d['model_name']} version {d['version']} -> @{d['alias']} ({d['model_uri']})",
            ),
            ("decision", d["reason"]),
            ("reports", f"{out.reports} (this machine's MLflow ids and paths: {out.local})"),
            ("to commit", commit_hint(params, set_, cfg)),
        ],
        cfg,
    )


def commit_hint(params: Path, set_: list[str] | None, cfg: Settings) -> str | None:
    """What the run changed that git tracks (the pinned versions and reports), or None."""
    from gfm import ops
    from gfm.ops import versioning

    repo = ops.dvc_repo(params, list(set_ or []))
    if repo is None:
        return None
    paths = [repo / "dvc.lock", cfg.data.root.with_suffix(".dvc"), ops.layout(cfg).reports]
    changed = versioning.to_commit(repo, [*paths, *repo.glob("**/.gitignore")])
    if not changed:
        return "nothing: the run reproduced the committed data, model and reports"
    return (
        f"git add {' '.join(changed)} && git commit -m 'gfm run'  "
        "(the dataset and model versions and the metrics of this run)"
    )


@app.command()
def tune(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes on the study (default tune.workers; >1: PostgreSQL)."
        ),
    ] = None,
) -> None:
    """Search GFM hyperparameters with Optuna (`tune` in params.yaml); write reports/tune.json.

    A seeded TPE sampler draws from `tune.space`; a median pruner stops trials whose validation
    forecast loss (`tune.metric`) lags. The study lives in `tune.storage` (sqlite beside the
    MLflow store by default) and resumes where an interrupted run stopped. Each trial is a
    nested MLflow run under a `tune` run. With `--workers N` (PostgreSQL storage, team mode)
    N processes share the study; `gfm tune-worker` adds more from other machines. A trial whose
    process was killed or interrupted (Ctrl-C: exit 130) runs again with its parameters on the
    next start, and no other configuration is tried twice. Examples:

        gfm tune
        gfm tune --set tune.n_trials=20 --set tune.trial_steps=600
        gfm tune --set 'tune.space.gfm.width={choices: [64, 128, 256]}'
        GFM_TEAM__ENABLED=true gfm tune --workers 4 --set tune.n_trials=40
    """
    cfg = read_settings(params, set_)
    from gfm import ops

    try:
        doc = ops.tune_step(
            cfg,
            repo=params.resolve().parent,
            workers=workers,
            overrides=ops.override_sources(set_),
        )
    except StepErrors as err:
        raise fail("gfm tune", err) from None
    except KeyboardInterrupt:
        raise interrupted("gfm tune", cfg) from None
    produced(
        "gfm tune",
        [
            *tuned_rows(doc),
            ("trials per worker", doc.get("workers")),
            ("file", ops.layout(cfg).tune_json),
        ],
        cfg,
    )


def interrupted(what: str, cfg: Settings) -> typer.Exit:
    """Ctrl-C of a tuning command: one line saying where the study is kept; exit status 130.

    The trial it interrupted is failed and runs again on the next start (``gfm.ops.study``).
    """
    from gfm.services import redact

    console.print(
        f"interrupted: {what} stopped, study kept at {redact(cfg.tune.storage or '')}, "
        "rerun to resume",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(130)


@app.command("tune-worker")
def tune_worker(
    study: Annotated[
        str,
        typer.Option(help="The study `gfm tune` printed (name-fingerprint), or tune.study_name."),
    ],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Join a running study from this machine and work on it until it is finished.

    Needs the same params.yaml and dataset version as the machine that started the study (its
    name carries their fingerprint) and the shared PostgreSQL storage, i.e. team mode. Trials
    are logged under the study's `tune` run. A worker that dies mid-trial is noticed by its
    heartbeat; its trial is failed and run again by another worker. Examples:

        GFM_TEAM__ENABLED=true gfm tune-worker --study gfm-1a2b3c4d
        gfm tune-worker --study gfm --set team.enabled=true --set data.root=/shared/data
    """
    cfg = read_settings(params, set_)
    from gfm import ops

    try:
        doc = ops.tune_worker_step(
            cfg, study=study, repo=params.resolve().parent, overrides=ops.override_sources(set_)
        )
    except StepErrors as err:
        raise fail("gfm tune-worker", err) from None
    except KeyboardInterrupt:
        raise interrupted("gfm tune-worker", cfg) from None
    produced(
        "gfm tune-worker",
        [
            ("study", doc["study"]),
            ("trials by this worker", doc["n_new"]),
            ("study trials finished", f"{doc['n_finished']} of {doc['n_trials']}"),
        ],
        cfg,
    )


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    tuned: Annotated[
        Path | None,
        typer.Option(
            help="tune.json whose best params to train with (default: reports/tune.json when present)."
        ),
    ] = None,
    use_tuned: Annotated[
        bool, typer.Option("--use-tuned/--no-tuned", help="Apply the tuned params at all.")
    ] = True,
) -> None:
    """Train GFM on the train part of `train.split`, log it to MLflow, write the model folder.

    The best trial's params (reports/tune.json) override `gfm`/`train`; `train.device: auto`
    trains on CUDA when present. Writes `train.model_dir`, reports/train.json and
    reports/train_history.csv; logs params, losses, the dataset version and the model (pyfunc).
    For example:

        gfm train
        gfm train --no-tuned --set gfm.width=128      # exactly the settings given
    """
    cfg = read_settings(params, set_)
    from gfm import ops

    out = ops.layout(cfg)
    try:
        doc = ops.train_step(
            cfg,
            tuned=(tuned or out.tune_json) if use_tuned else None,
            repo=params.resolve().parent,
            overrides=ops.override_sources(set_),
        )
    except StepErrors as err:
        raise fail("gfm train", err) from None
    produced(
        "gfm train",
        [
            ("train run", doc["run_id"]),
            ("tuned params", doc["params"] or "none (settings as given)"),
            (
                "val metrics",
                ", ".join(
                    f"{k}={v:.4g}" for k, v in doc["metrics"].items() if k.startswith("val/")
                ),
            ),
            ("model folder", doc["model_dir"]),
            ("logged model", doc["model_uri"]),
            ("files", f"{out.train_json}, {out.history_csv} (ids and paths: {out.train_run})"),
        ],
        cfg,
    )


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="Forecaster folder (default: train.model_dir).")
    ] = None,
    train_info: Annotated[
        Path | None,
        typer.Option(
            help="The train step's record naming the MLflow run to add the results to "
            "(default: reports/local/train.json)."
        ),
    ] = None,
) -> None:
    """Evaluate the trained model and `evaluate.workflow_baselines` on the test split.

    Forecasts every test run of `train.split` from each `evaluate.observed_fractions`; writes
    reports/metrics.json, results.csv/.md, horizon.csv/.png and trajectories.png, and logs
    the metrics, table and plots to the training run. Examples:

        gfm evaluate
        gfm evaluate --set 'evaluate.workflow_baselines=[persistence, linear, dmd]'
    """
    cfg = read_settings(params, set_)
    from gfm import ops

    out = ops.layout(cfg)
    try:
        doc = ops.evaluate_step(
            cfg,
            model_dir=model,
            train_info=train_info,
            repo=params.resolve().parent,
            overrides=ops.override_sources(set_),
        )
    except StepErrors as err:
        raise fail("gfm evaluate", err) from None
    console.print(out.results_md.read_text().split("\n## ")[0], highlight=False)
    console.print(held_out_table(doc["held_out"]))
    produced(
        "gfm evaluate",
        [
            ("run", doc["run_id"]),
            *score_rows(doc),
            ("files", f"{out.metrics_json}, {out.results_md}, {out.horizon_png}"),
        ],
        cfg,
    )


@app.command()
def promote(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    train_info: Annotated[
        Path | None,
        typer.Option(help="The train step's record (default: reports/local/train.json)."),
    ] = None,
    metrics: Annotated[Path | None, typer.Option(help="metrics.json (default: reports/).")] = None,
) -> None:
    """Register the trained model; make it `champion` if it beats the champion, else `challenger`.

    The champion is re-scored on the same test split; the new version must be better on
    `registry.metric` by the relative `registry.margin`. Versions are tagged with the dataset
    version, git commit, params and metrics. Examples:

        gfm promote
        gfm promote --set registry.margin=0.02
    """
    cfg = read_settings(params, set_)
    from gfm import ops

    try:
        d = ops.promote_step(cfg, train_info=train_info, metrics=metrics)
    except StepErrors as err:
        raise fail("gfm promote", err) from None
    produced(
        "gfm promote",
        [
            ("version", f"{d['model_name']} version {d['version']}"),
            ("alias", f"@{d['alias']} ({d['model_uri']})"),
            ("decision", d["reason"]),
            ("file", ops.layout(cfg).promotion_json),
        ],
        cfg,
    )


@app.command()
def schedule(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    cron: Annotated[
        str | None, typer.Option(help="Cron expression (default: schedule.cron).")
    ] = None,
) -> None:
    """Serve the `retrain` flow on the cron of `schedule.cron` until stopped (Ctrl-C).

    Needs a Prefect server (the temporary local API cannot run schedules):

        prefect server start                                  # in another terminal
        export PREFECT_API_URL=http://127.0.0.1:4200/api
        gfm schedule                                          # every Monday 03:00 UTC by default
        prefect deployment run 'retrain/gfm-retrain'          # a run now, besides the schedule
    """
    cfg = read_settings(params, set_)
    if set_:
        console.print(
            "[red]gfm schedule serves a params file: put the settings in it instead of --set[/red]"
        )
        raise typer.Exit(2)
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        console.print(
            "[red]No Prefect server: PREFECT_API_URL is not set.[/red]\n"
            "Start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`; the temporary local API "
            "cannot run schedules.",
            highlight=False,
        )
        raise typer.Exit(2)
    from flows.retrain import serve

    when = cron or cfg.schedule.cron
    console.print(
        f"serving retrain as deployment [bold]retrain/{cfg.schedule.deployment}[/bold] on "
        f"cron '{when}' ({cfg.schedule.timezone}) against {PREFECT_API_URL.value()}"
    )
    serve(str(params), cron=when, timezone=cfg.schedule.timezone, name=cfg.schedule.deployment)
