"""Every entry point reads the forecaster folder `gfm train` writes, and a baseline's folder.

`gfm train` on the tiny workflow writes ``models/gfm`` (the ``gfm.saved`` format) and logs the
same folder as the pyfunc model; `gfm forecast --model DIR`, the jump benchmark's ``--model DIR``,
``gfm.saved.load``/``GFM.load``, ``gfm.tracking.load_model`` and the pyfunc model must all
forecast the same weights from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from gfm import ops, saved, tracking
from gfm.baselines import make
from gfm.cli import app
from gfm.config import load_settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index, target_times
from gfm.model import GFM
from tests.helpers import TINY_JUMPS, write_request

pytestmark = pytest.mark.integration
runner = CliRunner()
JUMPS = [*TINY_JUMPS, "accelerate.methods=[base, gfm]", "accelerate.seeds=1"]


@pytest.fixture
def trained(workflow: Path) -> tuple[Path, dict, Prefix]:
    """`gfm train --no-tuned` on the tiny workflow: (model folder, train.json, a test prefix)."""
    result = runner.invoke(app, ["train", "-p", str(workflow), "--no-tuned"])
    assert result.exit_code == 0, result.output
    settings = load_settings(workflow, environ={})
    out = ops.layout(settings)
    record = Trajectories(settings.data.root).select("seed", "test")[0]
    prefix = Prefix.from_record(record, observed_index(record.weights.shape[0] - 1, 0.5))
    return out.model_dir, json.loads(out.train_run.read_text()), prefix


def _forecast_cli(workflow: Path, model: Path, prefix: Prefix, folder: Path) -> np.ndarray:
    request = write_request(prefix, folder)
    args = ["forecast", "-p", str(workflow), "--model", str(model)]
    result = runner.invoke(app, [*args, "-i", str(request), "-o", str(folder / "f.npy")])
    assert result.exit_code == 0, result.output
    return np.load(folder / "f.npy")


def test_every_entry_point_forecasts_the_same_from_the_trained_folder(workflow, trained, tmp_path):
    # given the folder `gfm train` wrote, and the run it logged
    model_dir, doc, prefix = trained
    assert json.loads((model_dir / saved.FILE).read_text())["kind"] == "gfm"
    t = target_times(prefix)
    expected = GFM.load(model_dir).forecast(prefix, t).numpy()
    # when each entry point reads it, then each forecasts the same weights
    np.testing.assert_array_equal(saved.load(model_dir).forecast(prefix, t).numpy(), expected)
    native = tracking.load_model(str(model_dir))
    np.testing.assert_array_equal(native.forecast(prefix, t).numpy(), expected)
    cli = _forecast_cli(workflow, model_dir, prefix, tmp_path)
    np.testing.assert_allclose(cli, expected, rtol=1e-5, atol=1e-7)
    settings = load_settings(workflow, environ={})
    tracking.use_store(settings.tracking)
    served = mlflow.pyfunc.load_model(doc["model_uri"]).predict(tracking.prefix_to_frame(prefix))
    np.testing.assert_allclose(tracking.frame_to_forecast(served), expected, rtol=1e-5, atol=1e-7)


def test_a_baseline_folder_serves_the_cli_and_the_jump_benchmark(workflow, tmp_path):
    # given a saved baseline (the linear extrapolation) and a test prefix
    folder = tmp_path / "linear"
    make("linear", {"window": 3}).save(folder)
    settings = load_settings(workflow, environ={})
    record = Trajectories(settings.data.root).select("seed", "test")[0]
    prefix = Prefix.from_record(record, observed_index(record.weights.shape[0] - 1, 0.5))
    # when `gfm forecast --model DIR` reads it, it forecasts what the baseline does
    expected = make("linear", {"window": 3}).forecast(prefix, target_times(prefix)).numpy()
    np.testing.assert_allclose(_forecast_cli(workflow, folder, prefix, tmp_path), expected)
    # and the jump benchmark jumps with it
    out = tmp_path / "results"
    args = ["bench", "jumps", "-p", str(workflow), "--model", str(folder), "--no-mlflow"]
    args += ["--output-dir", str(out), "--steps", "12", *[a for s in JUMPS for a in ("--set", s)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out / "accelerate.csv", schema_overrides={"arch": pl.String})
    assert table.filter(pl.col("method") == "gfm")["n_jumps"].min() >= 1


def test_the_jump_benchmark_jumps_with_the_trained_folder(workflow, trained, tmp_path):
    model_dir, _, _ = trained
    out = tmp_path / "results"
    args = ["bench", "jumps", "-p", str(workflow), "--model", str(model_dir), "--no-mlflow"]
    args += ["--output-dir", str(out), "--steps", "12", *[a for s in JUMPS for a in ("--set", s)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out / "accelerate.csv", schema_overrides={"arch": pl.String})
    assert sorted(table["method"].unique()) == ["base", "gfm"]
    assert torch.isfinite(torch.tensor(table["final_acc"].to_list())).all()


def test_forecast_writes_a_state_dict_and_a_plot_and_scores_a_dataset_run(
    workflow, trained, tmp_path
):
    # given the trained folder and a test run's prefix whose sidecar names the run
    model_dir, _, prefix = trained
    settings = load_settings(workflow, environ={})
    record = Trajectories(settings.data.root).select("seed", "test")[0]
    request = write_request(prefix, tmp_path)
    meta = json.loads((tmp_path / "prefix.json").read_text())
    (tmp_path / "prefix.json").write_text(json.dumps({**meta, "run_id": record.spec.run_id}))
    # when the forecast is asked for as a state_dict, with a plot
    args = ["forecast", "-p", str(workflow), "--model", str(model_dir), "-i", str(request)]
    result = runner.invoke(
        app, [*args, "-o", str(tmp_path / "final.pt"), "--plot", str(tmp_path / "f.png")]
    )
    # then the state_dict loads into the run's own network with the forecast final weights
    assert result.exit_code == 0, result.output
    from gfm.data.tasks import flatten, make_task

    task = make_task(record.spec.task, settings.data.tasks[record.spec.task], 0)
    net = task.build(record.spec.hidden, 0)
    net.load_state_dict(torch.load(tmp_path / "final.pt", weights_only=True))
    expected = saved.load(model_dir).forecast(prefix, target_times(prefix))[-1].numpy()
    np.testing.assert_array_equal(flatten(net), expected)
    assert (tmp_path / "f.png").stat().st_size > 1000
    # and the run's network is scored with the last checkpoint, the forecast and the truth
    for row in ("last checkpoint", "forecast", "true final"):
        assert row in result.output


def test_backtest_hides_the_tail_of_a_run_and_scores_the_forecast(workflow, trained, tmp_path):
    # given the trained folder and a whole test run, once from the dataset, once as a file
    model_dir, _, _ = trained
    settings = load_settings(workflow, environ={})
    record = Trajectories(settings.data.root).select("seed", "test")[0]
    np.save(tmp_path / "run.npy", record.weights)
    full = write_request(Prefix.from_record(record, 1), tmp_path, stem="meta")
    meta = json.loads(full.with_suffix(".json").read_text())
    meta.pop("total_checkpoints")
    (tmp_path / "run.json").write_text(json.dumps(meta))
    base = ["backtest", "-p", str(workflow), "--model", str(model_dir)]
    # when both are backtested from the middle of the run
    by_id = runner.invoke(
        app,
        [*base, "--run", record.spec.run_id, "--observed-fraction", "0.5"]
        + ["-o", str(tmp_path / "bt.csv"), "--plot", str(tmp_path / "bt.png")],
    )
    by_file = runner.invoke(
        app, [*base, "--input", str(tmp_path / "run.npy"), "--observed-fraction", "0.5"]
    )
    # then both forecast the same weights; the dataset run is also scored on held-out data
    assert by_id.exit_code == 0, by_id.output
    assert by_file.exit_code == 0, by_file.output
    table = pl.read_csv(tmp_path / "bt.csv")
    assert set(table["method"]) == {"gfm", *settings.evaluate.workflow_baselines}
    gfm_row = table.filter(pl.col("method") == "gfm").row(0, named=True)
    prefix = Prefix.from_record(record, gfm_row["k"])
    final = saved.load(model_dir).forecast(prefix, target_times(prefix))[-1].numpy()
    assert gfm_row["mse_final"] == pytest.approx(float(np.mean((final - record.weights[-1]) ** 2)))
    assert "last checkpoint" in by_id.output and "true final" in by_file.output
    assert (tmp_path / "bt.png").is_file()
    # and a run that is not in the dataset is named
    bad = runner.invoke(app, [*base, "--run", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
