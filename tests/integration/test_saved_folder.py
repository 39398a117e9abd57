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
    return out.model_dir, json.loads(out.train_json.read_text()), prefix


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
