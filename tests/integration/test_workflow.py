"""The workflow end to end on real services: Prefect flows under the test server, a real MLflow
store and registry, real Optuna sqlite storage, the CLI through typer's runner.

Deliberately worse and better candidates are forecasters defined here: ``Offset`` moves every
weight by 10 (far worse than any trained model), ``Oracle`` looks the true trajectory up in the
dataset (error 0, better than any model). They go through the same registry gate as GFM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from gfm import ops, saved, tracking
from gfm.cli import app
from gfm.config import Settings, load_settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index, target_times
from gfm.ops.layout import MACHINE_KEYS, read_step
from tests.helpers import write_request

pytestmark = pytest.mark.integration
runner = CliRunner()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout.strip()


@saved.register("test-offset")
class Offset:
    """w(t) = w_k + offset for every later t: a deliberately bad forecaster."""

    name = "test-offset"

    def __init__(self, offset: float = 10.0) -> None:
        self.offset = offset

    def fit(self, train, val=None) -> Offset:
        return self

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        return prefix.w[-1].expand(len(t), -1) + self.offset  # (T, D)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"offset": self.offset}))

    @classmethod
    def load(cls, path: Path) -> Offset:
        return cls(json.loads((path / "config.json").read_text())["offset"])


@saved.register("test-oracle")
class Oracle:
    """The recorded weights of the run whose first checkpoint matches: error 0 on known runs."""

    name = "test-oracle"

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self._runs: dict[bytes, np.ndarray] | None = None

    def fit(self, train, val=None) -> Oracle:
        return self

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        if self._runs is None:
            self._runs = {r.weights[0].tobytes(): r.weights for r in Trajectories(self.root)}
        W = self._runs.get(prefix.w[0].numpy().tobytes())
        if W is None:  # not a recorded run: persistence
            return prefix.w[-1].expand(len(t), -1).clone()
        i = torch.round(t * prefix.M).long().numpy()
        return torch.from_numpy(W[i])  # (T, D)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"root": self.root}))

    @classmethod
    def load(cls, path: Path) -> Oracle:
        return cls(json.loads((path / "config.json").read_text())["root"])


def candidate(forecaster, settings: Settings, folder: Path) -> tuple[Path, Path]:
    """Log a forecaster as a training run would, score it like evaluate; (train.json, metrics.json)."""
    ds = Trajectories(settings.data.root)
    version = ops.dataset_version(ds.root)
    record = ds.select("seed", "test")[0]
    prefix = Prefix.from_record(record, observed_index(record.weights.shape[0] - 1, 0.5))
    tracking.configure(settings.tracking)
    with tracking.start_run("candidate", dataset_version=version) as run:
        tracking.log_params_flat({"kind": forecaster.name}, "test")
        info = tracking.log_forecaster(forecaster, input_example=prefix)
    folder.mkdir(parents=True)
    train_json = folder / "train.json"
    train_json.write_text(json.dumps({"run_id": run.info.run_id, "model_uri": info.model_uri}))
    metrics_json = folder / "metrics.json"
    scores = {"metrics": ops.score(forecaster, settings, ds), "dataset_version": version}
    metrics_json.write_text(json.dumps(scores))
    return train_json, metrics_json


def aliases(settings: Settings) -> dict[str, str]:
    model = MlflowClient().get_registered_model(settings.registry.model_name)
    return {a: str(v) for a, v in model.aliases.items()}


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_retrain_promotes_then_gates_worse_and_better_models(workflow, prefect_harness, tmp_path):  # noqa: PLR0915 - one scenario: champion, worse, better
    from flows.promote import promote
    from flows.retrain import retrain

    settings = load_settings(workflow, environ={})
    out = ops.layout(settings)

    # when the whole workflow runs for the first time
    summary = retrain(str(workflow))

    # then the model is the first champion, and every step left its files
    decision = summary["decision"]
    assert (decision["alias"], decision["version"], decision["promoted"]) == ("champion", "1", True)
    for path in (out.tune_json, out.train_json, out.metrics_json, out.results_md, out.horizon_png):
        assert path.is_file(), path
    assert (out.model_dir / "forecaster.json").is_file()
    tuned = json.loads(out.tune_run.read_text())
    trained = json.loads(out.train_run.read_text())
    assert tuned["n_complete"] + tuned["n_pruned"] == 2
    assert summary["dataset_version"] == trained["dataset_version"]
    # and the files git keeps hold what any machine reproduces: no MLflow ids, paths, timings
    for step in ("tune", "train", "evaluate"):
        tracked = json.loads(out.tracked(step).read_text())
        assert not set(tracked) & set(MACHINE_KEYS[step]), step
        assert read_step(out, step)["run_id"], step  # this machine's record has them
    assert "seconds" not in out.history_csv.read_text()
    assert "seconds" not in out.results_csv.read_text().splitlines()[0]

    # and MLflow holds the training run with its provenance, losses, test metrics and plots
    client = MlflowClient()
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["gfm.depth"] == "1"
    assert run.data.params["gfm.width"] == str(tuned["best_params"]["gfm.width"])
    assert run.data.tags["mlflow.source.git.commit"] == git(workflow.parent, "rev-parse", "HEAD")
    assert run.data.tags["gfm.dataset_version"] == trained["dataset_version"]
    # named for its step, model and data version, not just "train"
    short = trained["dataset_version"].removeprefix("gfm-")[:8]
    prior = "+prior" if run.data.params["gfm.prior"] == "True" else ""
    assert run.info.run_name == f"train gfm-{run.data.params['gfm.variant']}{prior} data-{short}"
    (dataset,) = {i.dataset.digest for i in run.inputs.dataset_inputs}
    assert dataset == trained["dataset_version"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert "test/rel_mse_persistence" in run.data.metrics
    artifacts = {
        a.path
        for folder in ("reports", "evaluation")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"reports/loss.png", "evaluation/horizon.png", "evaluation/results.md"} <= artifacts
    # each trial is a nested run of the tune run, with its params and metrics
    trials = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{tuned['run_id']}'"
    )
    assert len(trials) == 2
    assert all(
        "gfm.width" in t.data.params and "val/rel_mse_persistence" in t.data.metrics for t in trials
    )
    # the version carries dataset version, commit, params and metrics
    tags = client.get_model_version("gfm", "1").tags
    assert tags["gfm.dataset_version"] == trained["dataset_version"]
    assert tags["gfm.git_commit"] == run.data.tags["mlflow.source.git.commit"]
    assert tags["param.gfm.width"] == run.data.params["gfm.width"]
    assert float(tags["metric.test/rel_mse_persistence"]) == pytest.approx(
        run.data.metrics["test/rel_mse_persistence"]
    )

    # and the Prefect markdown artifact shows the table
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gfm-evaluation"])), limit=1
        )
    assert "test/rel_mse_persistence" in artifact.data and "| linear |" in artifact.data

    # and the champion serves through pyfunc in a fresh process, as it forecasts natively
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
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking.uri}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tracking.frame_to_forecast(pd.read_parquet(tmp_path / "answer.parquet"))

    native = tracking.load_model("models:/gfm@champion", settings)
    t = target_times(prefix)
    np.testing.assert_allclose(served, native.forecast(prefix, t).numpy(), rtol=1e-5, atol=1e-7)

    # and `gfm forecast` writes the champion's forecast of a prefix given as .npy + sidecar
    write_request(prefix, tmp_path)
    result = runner.invoke(
        app,
        [
            "forecast",
            "-p",
            str(workflow),
            "--input",
            str(tmp_path / "prefix.npy"),
            "--output",
            str(tmp_path / "f.npy"),
        ],
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), served, rtol=1e-5, atol=1e-7)

    # when a deliberately worse model is judged: challenger, the champion does not move
    worse = candidate(Offset(), settings, tmp_path / "worse")
    d2 = promote(str(workflow), train_info=str(worse[0]), metrics=str(worse[1]))
    assert (d2["alias"], d2["promoted"], d2["previous_champion"]) == ("challenger", False, "1")
    # re-scored exactly as evaluated: the value it was registered with, bit for bit
    assert (
        d2["champion_value"]
        == json.loads(out.metrics_json.read_text())["metrics"][settings.registry.metric]
    )
    assert aliases(settings) == {"champion": "1", "challenger": "2"}
    # and the flow run shows the decision, its reason and the figures compared
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["gfm-promotion"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert "| alias | challenger |" in artifact.data and d2["reason"] in artifact.data

    # when a better one is judged: it takes champion, the challenger stays
    better = candidate(Oracle(str(settings.data.root)), settings, tmp_path / "better")
    d3 = promote(str(workflow), train_info=str(better[0]), metrics=str(better[1]))
    assert (d3["alias"], d3["promoted"], d3["previous_champion"]) == ("champion", True, "1")
    assert aliases(settings) == {"champion": "3", "challenger": "2"}

    # and promoting the same run again adds no version and moves nothing
    d4 = promote(str(workflow), train_info=str(better[0]), metrics=str(better[1]))
    assert d4["version"] == "3" and d4["reason"].startswith("already champion")
    assert len(MlflowClient().search_model_versions("name = 'gfm'")) == 3


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_tuning_killed_midway_resumes_without_losing_trials(workflow):
    settings = load_settings(workflow, {"tune.n_trials": 4}, environ={})
    name = optuna_name(settings)
    # given `gfm tune` killed (SIGKILL) once two trials finished
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gfm")),
            "tune",
            "-p",
            str(workflow),
            "--set",
            "tune.n_trials=4",
        ],
        cwd=workflow.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        done: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                done = _finished(optuna.load_study(study_name=name, storage=settings.tune.storage))
            except KeyError:  # the study is not created yet
                continue
            if len(done) >= 2:
                break
        assert len(done) >= 2, (
            f"tuning did not get going: {proc.stderr.read() if proc.poll() is not None else ''}"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.params, t.value, t.state) for t in done}
    time.sleep(2.5)  # past the heartbeat grace period: a trial cut off mid-run is stale now

    # when tuning runs again
    doc = ops.tune_step(settings)

    # then the finished trials are kept as they were, the missing ones ran, none is left running
    study = optuna.load_study(study_name=name, storage=settings.tune.storage)
    after = {t.number: (t.params, t.value, t.state) for t in _finished(study)}
    assert {n: after[n] for n in before} == before
    assert len(after) == 4 and doc["n_complete"] + doc["n_pruned"] == 4
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert doc["study"] == name


def optuna_name(settings: Settings) -> str:
    from gfm.ops.study import study_name

    return study_name(settings, ops.dataset_version(settings.data.root))


def test_tuning_stopped_by_an_error_keeps_its_trials(workflow):
    from gfm.ops.study import tune

    settings = load_settings(workflow, {"tune.n_trials": 3}, environ={})
    ds = Trajectories(settings.data.root)
    train, val = ds.select("seed", "train"), ds.select("seed", "val")
    version = ops.dataset_version(ds.root)
    seen = []

    def crash_after_first(trial):
        seen.append(trial.number)
        raise RuntimeError("logging backend down")

    # given a search stopped by an error after its first trial
    with pytest.raises(RuntimeError, match="backend down"):
        tune(settings, train, val, dataset_version=version, on_trial=crash_after_first)
    # when it runs again, then it continues from there
    result = tune(settings, train, val, dataset_version=version)
    assert seen == [0]
    assert result.n_new == 2 and result.n_complete + result.n_pruned == 3
    assert [t["number"] for t in result.trials] == [0, 1, 2]


def test_compare_lists_runs_of_two_experiments_sorted_by_a_metric(workflow, tmp_path):
    # given runs by two people in two experiments
    base = load_settings(workflow, environ={})
    for experiment, user, values in (("gfm", "alice", [0.5, 0.2]), ("gfm-bob", "bob", [0.3])):
        cfg = base.tracking.model_copy(update={"experiment": experiment})
        tracking.configure(cfg)
        for value in values:
            with tracking.start_run(
                "train",
                dataset_version="abc123.dir",
                tags={"mlflow.user": user, "gfm.step": "train"},
            ):
                tracking.log_params_flat({"width": 8}, "gfm")
                tracking.log_metrics({"test/rel_mse_persistence": value})
    # when
    md, csv = tmp_path / "runs.md", tmp_path / "runs.csv"
    args = [
        "runs",
        "-p",
        str(workflow),
        "--sort",
        "test/rel_mse_persistence",
        "--param",
        "gfm.width",
    ]
    first = runner.invoke(app, [*args, "--output", str(md)])
    second = runner.invoke(app, [*args, "--user", "bob", "--output", str(csv)])
    # then every run is listed across experiments, best first, with user and dataset version
    assert first.exit_code == 0, first.output
    rows = [line for line in md.read_text().splitlines()[2:]]
    assert len(rows) == 3
    assert [r.split(" | ")[1] for r in rows] == ["gfm", "gfm-bob", "gfm"]
    assert all("abc123.dir" in r for r in rows)
    assert "alice" in rows[0] and "bob" in rows[1]
    table = pd.read_csv(csv)
    assert second.exit_code == 0 and table["user"].tolist() == ["bob"]
    assert table["gfm.width"].tolist() == [8]
    # and the terminal table fits the console (100 columns here), no header folded letter by
    # letter: the columns that fit, the rest named; --columns picks them
    from gfm.cli.render import console

    console.width = 100
    try:
        wide = runner.invoke(app, args)
        picked = runner.invoke(app, [*args, "--columns", "user,gfm.width"])
    finally:
        console.width = None  # back to the detected width
    assert wide.exit_code == 0 and max(len(line) for line in wide.output.splitlines()) <= 100
    assert "run_id" in wide.output and "more column(s)" in wide.output
    assert picked.exit_code == 0 and "bob" in picked.output and "run_id" not in picked.output
    # and an unknown experiment is named
    bad = runner.invoke(app, [*args, "--experiment", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_forecast_rejects_bad_input_by_name(workflow, tmp_path):
    # given a local forecaster folder and a valid request
    from gfm.config import GFMSettings
    from gfm.model import GFM

    model = tmp_path / "model"
    GFM(GFMSettings(width=8, depth=1, history=2)).save(model)
    w = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    meta = {
        "optimizer": "sgd",
        "lr": 0.1,
        "record_every": 2,
        "total_checkpoints": 6,
        "layout": [["w", [5]]],
    }

    def run(weights, metadata, *extra):
        np.save(tmp_path / "p.npy", weights)
        (tmp_path / "p.json").write_text(json.dumps(metadata))
        args = [
            "forecast",
            "-p",
            str(workflow),
            "--model",
            str(model),
            "--input",
            str(tmp_path / "p.npy"),
            "--output",
            str(tmp_path / "f.npy"),
            *extra,
        ]
        return runner.invoke(app, args)

    ok = run(w, meta)
    assert ok.exit_code == 0, ok.output
    assert np.load(tmp_path / "f.npy").shape == (3, 5)  # checkpoints k+1=3..M=5
    cases = [
        (w[0], meta, "must be 2-D"),
        (w, {k: v for k, v in meta.items() if k != "optimizer"}, "`optimizer` is missing"),
        (w, {k: v for k, v in meta.items() if k != "layout"}, "`layout` is missing"),
        (np.where(np.arange(5) == 3, np.nan, w).astype(np.float32), meta, "must be finite"),
        (w, {**meta, "total_checkpoints": 3}, "`total_checkpoints` (3) must exceed"),
        (w, {**meta, "layout": [["w", [4]]]}, "D=4"),
        (w, {**meta, "optimizer": "adagrad"}, "adagrad"),
    ]
    for weights, metadata, needle in cases:
        result = run(weights, metadata)
        assert result.exit_code == 2, (needle, result.output)
        assert needle in " ".join(result.output.split()), (needle, result.output)
    # and options override the sidecar
    fixed = run(w, {k: v for k, v in meta.items() if k != "optimizer"}, "--optimizer", "adam")
    assert fixed.exit_code == 0, fixed.output
    # and a state_dict folder needs no layout: the files give it
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for i in range(3):
        torch.save(
            {"net.weight": torch.randn(2, 2), "net.bias": torch.randn(2)},
            ckpts / f"step_{2 * i}.pt",
        )
    (tmp_path / "ckpts.json").write_text(
        json.dumps({"optimizer": "sgd", "lr": 0.1, "total_checkpoints": 5})
    )
    folder = runner.invoke(
        app,
        [
            "forecast",
            "-p",
            str(workflow),
            "--model",
            str(model),
            "--input",
            str(ckpts),
            "--output",
            str(tmp_path / "g.npy"),
        ],
    )
    assert folder.exit_code == 0, folder.output
    assert np.load(tmp_path / "g.npy").shape == (2, 6)
    # and a missing model is a clear failure
    run(w, meta)
    missing = runner.invoke(
        app, ["forecast", "-p", str(workflow), "--input", str(tmp_path / "p.npy")]
    )
    assert missing.exit_code == 1 and "models:/gfm@champion" in missing.output
