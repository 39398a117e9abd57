"""Team mode on real services: an MLflow server on PostgreSQL, Optuna on PostgreSQL with several
worker processes (one of them killed), generation on a local Dask cluster.

Needs PostgreSQL at 127.0.0.1:5432 with trust auth (``TEST_POSTGRES_URL`` to change it): every
test makes its own databases and drops them. In CI a server that does not answer fails these
tests; elsewhere they are skipped with the reason in pytest's summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gfm import ops, tracking
from gfm.cli import app
from gfm.config import load_settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index, target_times

pytestmark = pytest.mark.integration
CONFS = Path(__file__).resolve().parents[1] / "confs"
GFM = str(Path(sys.executable).with_name("gfm"))
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def team_mode(params: Path, server: str, storage: str) -> str:
    """Switch the project's params.yaml to team mode on ``server`` and ``storage``; returns the
    experiment, one per test so tests sharing the server do not see each other's runs."""
    experiment = f"team-{uuid.uuid4().hex[:8]}"
    tree = yaml.safe_load(params.read_text())
    tree["team"] = {
        "enabled": True,
        "tracking": {"uri": server, "experiment": experiment},
        "tune": {"storage": storage},
        "data": {"executor": "dask"},
    }
    params.write_text(yaml.safe_dump(tree))
    return experiment


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_retrain_on_a_team_server_promotes_and_another_process_finds_the_champion(
    workflow, prefect_harness, mlflow_server, pg_database, tmp_path
):
    from flows.retrain import retrain

    # given a project switched to team mode: MLflow server on PostgreSQL, Optuna on PostgreSQL
    storage = pg_database("optuna")
    experiment = team_mode(workflow, mlflow_server["url"], storage)
    settings = load_settings(workflow, environ={})
    assert settings.tracking.uri == mlflow_server["url"] and settings.tune.storage == storage

    # when the whole workflow runs
    summary = retrain(str(workflow))

    # then its model is the first champion, its study lives in PostgreSQL, artifacts on the server
    decision = summary["decision"]
    assert (decision["alias"], decision["version"], decision["promoted"]) == ("champion", "1", True)
    tuned = json.loads(ops.layout(settings).tune_run.read_text())
    study = optuna.load_study(study_name=tuned["study"], storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 2
    trained = json.loads(ops.layout(settings).train_run.read_text())
    client = MlflowClient(tracking_uri=mlflow_server["url"])
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED" and "test/rel_mse_persistence" in run.data.metrics
    assert any(mlflow_server["artifacts"].rglob("MLmodel"))  # stored by the server, not locally

    # and a second client process finds models:/gfm@champion through the server
    ds = Trajectories(settings.data.root)
    record = ds.select("seed", "test")[0]
    prefix = Prefix.from_record(record, observed_index(record.weights.shape[0] - 1, 0.5))
    tracking.prefix_to_frame(prefix).to_parquet(tmp_path / "request.parquet")
    script = (
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/gfm@champion')\n"
        f"model.predict(pd.read_parquet({str(tmp_path / 'request.parquet')!r}))"
        f".to_parquet({str(tmp_path / 'answer.parquet')!r})\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"]}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tracking.frame_to_forecast(pd.read_parquet(tmp_path / "answer.parquet"))

    native = tracking.load_model("models:/gfm@champion", settings)
    t = target_times(prefix)
    np.testing.assert_allclose(served, native.forecast(prefix, t).numpy(), rtol=1e-5, atol=1e-7)

    # and `gfm runs` lists the training run from the server
    runs = tmp_path / "runs.csv"
    result = CliRunner().invoke(
        app, ["runs", "-p", str(workflow), "--experiment", experiment, "-o", str(runs)]
    )
    assert result.exit_code == 0, result.output
    assert trained["run_id"] in pd.read_csv(runs)["run_id"].tolist()


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_two_tune_workers_share_one_study_without_duplicates(workflow, mlflow_server, pg_database):
    # given a project in team mode
    storage = pg_database("optuna")
    experiment = team_mode(workflow, mlflow_server["url"], storage)
    settings = load_settings(workflow, ["tune.n_trials=6"], environ={})

    # when `gfm tune --workers 2` runs the study
    proc = subprocess.run(
        # heartbeat 10 s (grace 20 s): on a loaded CI machine the 1 s of the tiny settings let a
        # live worker's trial be failed as stale and run twice; no worker is killed here
        [GFM, "tune", "-p", str(workflow), "--workers", "2"]
        + ["--set", "tune.n_trials=6", "--set", "tune.heartbeat_s=10"],
        cwd=workflow.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    # then the study holds exactly the trials the two workers finished, each once
    doc = json.loads(ops.layout(settings).tune_run.read_text())
    assert len(doc["workers"]) == 2 and sum(doc["workers"]) == 6 == doc["n_new"]
    study = optuna.load_study(study_name=doc["study"], storage=storage)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == len(trials) == 6  # none failed, none left running or waiting
    assert sorted(t.number for t in trials) == list(range(6))
    by_worker = Counter(t.user_attrs["gfm.worker"] for t in finished)  # host:pid
    assert sorted(by_worker.values()) == sorted(n for n in doc["workers"] if n)
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 6  # the workers' samplers do not draw the same trials
    # and every trial is a run under the study's tune run, on the server
    client = MlflowClient(tracking_uri=mlflow_server["url"])
    exp = client.get_experiment_by_name(experiment)
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{doc['run_id']}'"
    )
    assert sorted(int(r.data.tags["gfm.trial"]) for r in children) == list(range(6))


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_a_killed_worker_trial_is_failed_retried_and_the_study_completes(
    workflow, mlflow_server, pg_database
):
    # given a study of 3 trials on PostgreSQL, with a 1 s heartbeat
    storage = pg_database("optuna")
    team_mode(workflow, mlflow_server["url"], storage)
    overrides = [
        "tune.n_trials=3",
        "tune.heartbeat_s=1",
        "tune.trial_steps=60",
        "tune.eval_every=20",
        "tune.timeout_s=300",  # a worker that cannot finish fails the test instead of hanging it
    ]
    settings = load_settings(workflow, overrides, environ={})
    from gfm.ops.study import open_study

    study = open_study(settings, ops.dataset_version(settings.data.root))
    name = study.study_name

    # and a `gfm tune-worker` killed with SIGKILL while it runs a trial
    args = [GFM, "tune-worker", "--study", name, "-p", str(workflow)]
    worker = subprocess.Popen(
        [*args, *[a for o in overrides for a in ("--set", o)]],
        cwd=workflow.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed = None
    try:
        deadline = time.monotonic() + 180
        while killed is None and time.monotonic() < deadline and worker.poll() is None:
            running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            training = [t for t in running if t.params]  # past drawing its params: mid-trial
            killed = training[0].number if training else None
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert killed is not None, worker.stderr.read().decode()[-3000:]
    before = len(study.get_trials(states=FINISHED))

    # when another worker joins the study
    doc = ops.tune_worker_step(settings, study=name)

    # then the killed trial is failed, run again with its params, and the study completes
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert retry.state in FINISHED and retry.params == trials[killed].params
    assert len(study.get_trials(states=FINISHED)) == 3 == doc["n_finished"]
    assert doc["n_new"] == 3 - before
    waiting = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    assert not study.get_trials(states=waiting)


def test_a_trial_orphaned_before_its_first_heartbeat_is_failed_and_retried(workflow, pg_database):
    from gfm.ops.study import open_study, tune

    # given a study on PostgreSQL whose first trial was created by a worker that died before
    # the trial's first heartbeat (Optuna never finds such a trial stale by itself)
    storage = pg_database("optuna")
    settings = load_settings(
        workflow,
        [f"tune.storage={storage}", "tune.n_trials=2", "tune.heartbeat_s=1"],
        environ={},
    )
    version = ops.dataset_version(settings.data.root)
    study = open_study(settings, version)
    orphan = study.ask()
    # when a worker runs the study
    ds = Trajectories(settings.data.root)
    result = tune(
        settings, ds.select("seed", "train"), ds.select("seed", "val"), dataset_version=version
    )
    # then the orphan is failed after the grace period, retried with its params, and the study
    # holds its 2 finished trials
    trials = {t.number: t for t in study.get_trials()}
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
    # (it died before drawing: its params are the enqueued first trial's, the configured ones)
    assert (
        retry.state in FINISHED
        and retry.params == trials[orphan.number].system_attrs["fixed_params"]
    )
    assert result.n_complete + result.n_pruned == 2 and result.n_failed == 1


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_dask_generation_gives_the_dataset_of_the_single_process_path(prefect_harness, tmp_path):
    from flows.generate import generate_on_dask
    from gfm.data.generate import generate

    def settings(root: Path, executor: str):
        tiny = yaml.safe_load((CONFS / "valid" / "tiny.yaml").read_text())["data"]["tasks"]
        tasks = {k: tiny[k] for k in ("least_squares", "mnist_cnn")}  # a linear model and a CNN
        return load_settings(
            CONFS / "valid" / "tiny.yaml",
            {"data.root": str(root), "data.tasks": tasks, "data.executor": executor},
            environ={},
        ).data

    # given a dataset generated in one process
    single = generate(settings(tmp_path / "single", "process"), workers=1)
    # when the same settings train on a local Dask cluster of 2 workers
    cfg = settings(tmp_path / "dask", "dask").model_copy(update={"workers": 2})
    report = generate_on_dask(cfg)
    # then every run trained there, and the dataset's hash is the same
    assert report.trained == report.planned == single.planned > 0
    assert report.manifest.hash == single.manifest.hash
    # and the manifests are byte-identical, so DVC gives both folders the same md5
    manifest = "manifest.json"
    assert (tmp_path / "dask" / manifest).read_bytes() == (
        tmp_path / "single" / manifest
    ).read_bytes()
    # and with nothing left to train no cluster is needed
    again = generate_on_dask(cfg)
    assert again.trained == 0 and again.manifest.hash == report.manifest.hash
