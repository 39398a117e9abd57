"""gfm.tracking against a real MLflow sqlite store: runs, pyfunc, registry gate, fresh-process load.

One store is migrated per session and copied per test (migrations take seconds; a copy does not).
The forecaster here is tiny but real: it saves a stored scalar with safetensors and rebuilds from
it, exactly as GFM and the baselines do.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import convert_input_example_to_serving_input
from safetensors.torch import load_file, save_file

from gfm.config import RegistrySettings, TrackingSettings
from gfm.forecaster import Prefix
from gfm.saved import load as load_forecaster
from gfm.saved import register as register_forecaster
from gfm.saved import save as save_forecaster
from gfm.tracking import (
    PromotionError,
    configure,
    forecast_frame,
    frame_to_forecast,
    git_commit,
    load,
    load_pyfunc,
    log_dataset,
    log_forecaster,
    log_history,
    log_params_flat,
    log_table_and_plots,
    model_uri,
    prefix_to_frame,
    promote,
    register,
    start_run,
)
from tests import helpers

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
METRIC = RegistrySettings().metric  # test/rel_mse_persistence_median, lower is better
M, K = 8, 3


@register_forecaster("tiny-linear")
class TinyLinear:
    """w(t) = w_k + c · (t − t_k) · M · (w_k − w_{k−1}): linear extrapolation scaled by c."""

    name = "tiny-linear"

    def __init__(self, c: float = 1.0) -> None:
        self.c = torch.tensor([c], dtype=torch.float32)

    def fit(self, train, val=None) -> TinyLinear:
        return self

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        step = prefix.w[-1] - prefix.w[-2]  # (D,)
        return prefix.w[-1] + self.c * (t[:, None] - prefix.t_k) * prefix.M * step  # (T, D)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"name": self.name}))
        save_file({"c": self.c}, str(path / "state.safetensors"))

    @classmethod
    def load(cls, path: Path) -> TinyLinear:
        assert json.loads((path / "config.json").read_text())["name"] == cls.name
        model = cls()
        model.c = load_file(str(path / "state.safetensors"))["c"]
        return model


def make_prefix() -> Prefix:
    layout = [("net.0.weight", (3, 2)), ("net.0.bias", (3,))]
    lr = torch.full((M + 1,), 1e-3, dtype=torch.float64)
    hparams = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999}
    return helpers.make_prefix(
        k=K, M=M, layout=layout, seed=1, lr=lr, hparams=hparams, task="mlp_regression"
    )


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty store, made once per session."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking(template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh copy of the store, configured as gfm's tracking settings would."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    cfg = TrackingSettings(uri=f"sqlite:///{db}", experiment="gfm-test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.uri)
    configure(cfg)
    yield cfg
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def logged(tracking: TrackingSettings) -> str:
    """One tiny forecaster logged as a pyfunc model in a finished run; returns its model URI."""
    with start_run("train", dataset_version="md5-abc", repo=REPO):
        log_params_flat({"lr": 1e-3, "steps": 10}, "train")
        info = log_forecaster(TinyLinear(c=0.8), input_example=make_prefix())
    return info.model_uri


def aliases(cfg: RegistrySettings) -> dict[str, str]:
    return {
        a: str(v) for a, v in MlflowClient().get_registered_model(cfg.model_name).aliases.items()
    }


def test_run_records_params_metrics_dataset_and_provenance(tracking, tmp_path):
    # given
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    runs_table = pl.DataFrame({"run_id": ["a", "b"], "optimizer": ["sgd", "adam"]})
    # when
    with start_run("train", dataset_version="0123abcd.dir", repo=REPO) as run:
        log_params_flat({"lr": 1e-3, "schedule": {"kind": "cosine"}, "hidden": [8, 8]}, "train")
        n = log_history(
            [
                {"step": 0, "train/loss": 1.0},
                {"step": 10, "train/loss": np.float32(0.5), "val": {"forecast_mse": 0.25}},
            ]
        )
        log_dataset("0123abcd.dir", tmp_path / "data", runs_table)
        written = log_table_and_plots(
            pl.DataFrame({"method": ["gfm", "linear"], "mse": [0.1, 0.2]}),
            "results",
            plots={"curve": fig},
        )
        with pytest.raises(ValueError, match=r"`split/name`"):
            log_history([{"step": 1, "loss": 1.0}])
    plt.close(fig)
    # then
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {
        "train.lr": "0.001",
        "train.schedule.kind": "cosine",
        "train.hidden": "[8, 8]",
    }
    assert n == 3
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (10, 0.5)]
    assert got.data.metrics["val/forecast_mse"] == 0.25
    assert got.data.tags["mlflow.user"] == getpass.getuser()
    assert got.data.tags["mlflow.source.git.commit"] == git_commit(REPO)
    assert got.data.tags["gfm.dataset_version"] == "0123abcd.dir"
    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "0123abcd.dir"
    assert dataset_input.dataset.name == "trajectories"
    assert json.loads(dataset_input.dataset.source)["uri"].endswith("/data")
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert written == ["reports/curve.png", "reports/results.csv", "reports/results.md"]
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert listed == set(written)
    md = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=written[2]))
    assert md.read_text().splitlines()[2] == "| gfm | 0.1 |"
    # artifacts sit beside the store, not in the working directory
    experiment = client.get_experiment_by_name(tracking.experiment)
    assert experiment.artifact_location.startswith((tmp_path / "store").as_uri())


def test_dataset_version_longer_than_a_digest_is_refused(tracking, tmp_path):
    with start_run("x"), pytest.raises(ValueError, match="`version`"):
        log_dataset("v" * 37, tmp_path)


def test_gate_first_champion_then_challenger_then_champion_moves(logged):
    cfg = RegistrySettings()
    # first version: champion
    v1 = register(logged, cfg)
    d1 = promote(v1, {METRIC: 0.5, "test/forecast_mse": 0.01}, cfg)
    assert (d1.alias, d1.promoted, d1.previous_champion) == ("champion", True, None)
    assert aliases(cfg) == {"champion": v1}
    # worse: challenger, champion stays
    v2 = register(logged, cfg)
    d2 = promote(v2, {METRIC: 0.6}, cfg)
    assert (d2.alias, d2.promoted, d2.champion_value) == ("challenger", False, 0.5)
    assert aliases(cfg) == {"champion": v1, "challenger": v2}
    # better: champion moves, the challenger keeps its alias
    v3 = register(logged, cfg)
    d3 = promote(v3, {METRIC: 0.4}, cfg)
    assert (d3.alias, d3.promoted, d3.previous_champion) == ("champion", True, v1)
    assert aliases(cfg) == {"champion": v3, "challenger": v2}
    # better, but not by the relative margin: challenger
    strict = cfg.model_copy(update={"margin": 0.1})
    v4 = register(logged, strict)
    d4 = promote(v4, {METRIC: 0.38}, strict)
    assert not d4.promoted and aliases(cfg) == {"champion": v3, "challenger": v4}
    # re-scoring the champion on the same split decides instead of its stored value
    v5 = register(logged, cfg)
    d5 = promote(v5, {METRIC: 0.3}, cfg, compare=lambda version: 0.2)
    assert not d5.promoted and d5.champion_value == 0.2
    # a retried promotion of the champion changes nothing
    assert promote(v3, {METRIC: 0.4}, cfg).reason.startswith("already champion")
    assert aliases(cfg) == {"champion": v3, "challenger": v5}
    # every version carries its provenance, params, metrics and the decision
    tags = MlflowClient().get_model_version(cfg.model_name, v1).tags
    assert tags["gfm.dataset_version"] == "md5-abc"
    assert tags["gfm.git_commit"] == git_commit(REPO)
    assert tags["param.train.lr"] == "0.001"
    assert tags[f"metric.{METRIC}"] == "0.5" and tags["metric.test/forecast_mse"] == "0.01"
    assert tags["gfm.promotion"].startswith("champion: first version")


def test_failures_before_aliasing_leave_aliases_as_they_were(logged):
    cfg = RegistrySettings()
    v1 = register(logged, cfg)
    promote(v1, {METRIC: 0.5}, cfg)
    v2 = register(logged, cfg)
    client = MlflowClient()

    def boom(version: str) -> float:
        raise RuntimeError("test split unavailable")

    # compare raises: nothing written, nothing moved
    with pytest.raises(PromotionError, match="test split unavailable.*aliases unchanged"):
        promote(v2, {METRIC: 0.1}, cfg, compare=boom)
    assert not any(
        k.startswith("metric.") for k in client.get_model_version(cfg.model_name, v2).tags
    )
    # a metric the store refuses to record, after one it accepted: no alias
    with pytest.raises(PromotionError, match="aliases unchanged"):
        promote(v2, {METRIC: 0.1, "test/bad\x00name": 1.0}, cfg)
    # bad metrics are refused before anything is touched
    with pytest.raises(ValueError, match=f"registry.metric `{METRIC}`"):
        promote(v2, {"test/other": 0.1}, cfg)
    with pytest.raises(ValueError, match="must be finite"):
        promote(v2, {METRIC: float("nan")}, cfg)
    assert aliases(cfg) == {"champion": v1}


def test_model_of_a_failed_run_gets_no_alias(logged):
    cfg = RegistrySettings()
    v1 = register(logged, cfg)
    promote(v1, {METRIC: 0.5}, cfg)
    # given a model logged by a run that then failed
    with pytest.raises(RuntimeError, match="evaluation crashed"), start_run("broken"):
        info = log_forecaster(TinyLinear(c=0.1), input_example=make_prefix())
        raise RuntimeError("evaluation crashed")
    v2 = register(info.model_uri, cfg)
    # when / then
    with pytest.raises(PromotionError, match="FAILED"):
        promote(v2, {METRIC: 0.01}, cfg)
    assert aliases(cfg) == {"champion": v1}


def test_champion_serves_the_same_forecast_in_a_fresh_process(logged, tracking, tmp_path):
    # given: the champion, and the forecast the forecaster itself makes
    cfg = RegistrySettings()
    promote(register(logged, cfg), {METRIC: 0.5}, cfg)
    prefix = make_prefix()
    frame = prefix_to_frame(prefix)
    expected = forecast_frame(TinyLinear(c=0.8), prefix)
    closed_form = prefix.w[-1] + 0.8 * torch.arange(1, M - K + 1)[:, None] * (
        prefix.w[-1] - prefix.w[-2]
    )
    np.testing.assert_allclose(frame_to_forecast(expected), closed_form.numpy(), rtol=1e-6)
    # when: loaded natively and as pyfunc in this process
    native = forecast_frame(load(cfg=cfg), prefix)
    served = load_pyfunc(cfg=cfg).predict(frame)
    # and as pyfunc in a fresh interpreter that knows only the tracking URI
    frame.to_parquet(tmp_path / "request.parquet")
    script = f"""
import importlib.util, mlflow, pandas as pd
spec = importlib.util.spec_from_file_location("tiny_tracking_test", {str(Path(__file__))!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers kind tiny-linear
model = mlflow.pyfunc.load_model("models:/gfm@champion")
answer = model.predict(pd.read_parquet({str(tmp_path / "request.parquet")!r}))
answer.to_parquet({str(tmp_path / "answer.parquet")!r})
"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking.uri,
        "PYTHONPATH": str(REPO),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = pd.read_parquet(tmp_path / "answer.parquet")
    # then
    for answer in (native, served, fresh):
        assert answer["checkpoint"].tolist() == list(range(K + 1, M + 1))
        np.testing.assert_allclose(answer["t"], expected["t"])
        np.testing.assert_array_equal(frame_to_forecast(answer), frame_to_forecast(expected))
    # and the JSON a scoring server receives (`dataframe_split`, nulls for future rows) agrees
    # (mlflow.models.predict with env_manager="local" is `mlflow models predict` in this process)
    request = tmp_path / "request.json"
    request.write_text(convert_input_example_to_serving_input(frame))
    assert '"dataframe_split"' in request.read_text()
    mlflow.models.predict(
        model_uri(cfg),
        input_path=str(request),
        content_type="json",
        output_path=str(tmp_path / "answer.json"),
        env_manager="local",
    )
    via_json = pd.DataFrame(json.loads((tmp_path / "answer.json").read_text())["predictions"])
    np.testing.assert_array_equal(frame_to_forecast(via_json), frame_to_forecast(expected))
    # and a malformed request is refused by name through the pyfunc face too (HTTP 400 served)
    with pytest.raises(MlflowException, match=r"missing column\(s\) `kind`"):
        load_pyfunc(cfg=cfg).predict(frame.drop(columns=["kind"]))


def _gfm_forecaster():
    model = pytest.importorskip("gfm.model")
    from gfm.config import GFMSettings

    torch.manual_seed(0)
    return model.GFM(GFMSettings(width=8, depth=1))


def _linear_baseline():
    return pytest.importorskip("gfm.baselines").BASELINES["linear"]()


@pytest.mark.parametrize("build", [_gfm_forecaster, _linear_baseline], ids=["gfm", "linear"])
def test_project_forecasters_round_trip_through_their_folder(build, tmp_path):
    # given: the project's own classes, found by kind without registration
    prefix = make_prefix()
    model = build()
    # when
    again = load_forecaster(save_forecaster(model, tmp_path / "forecaster"))
    # then
    assert type(again) is type(model)
    assert json.loads((tmp_path / "forecaster" / "forecaster.json").read_text())["kind"] == (
        model.name
    )
    np.testing.assert_array_equal(
        frame_to_forecast(forecast_frame(again, prefix)),
        frame_to_forecast(forecast_frame(model, prefix)),
    )


def test_a_dvc_experiment_names_itself_on_its_runs(tracking, monkeypatch):
    # given the environment `dvc exp run` gives its stages
    monkeypatch.setenv("DVC_EXP_NAME", "wider-net")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123456789abcdef")
    # when a step starts its run
    with start_run("train") as run:
        pass
    # then the MLflow run says which DVC experiment made it
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["dvc.exp_name"] == "wider-net"
    assert tags["dvc.exp_baseline_rev"] == "0123456789abcdef"
