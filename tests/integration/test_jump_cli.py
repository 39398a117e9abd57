"""`gfm bench jumps` end to end: a tiny digits setup, a saved GFM, an MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gfm.bench import jumps
from gfm.cli import app
from gfm.config import GFMSettings
from gfm.model import GFM
from tests.helpers import TINY_JUMPS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "confs" / "valid" / "tiny.yaml"
# digits only (sklearn's, no download), 12 steps, a jump every 4 base steps


@pytest.fixture
def tiny_gfm(tmp_path: Path) -> Path:
    """An untrained, tiny GFM saved to a folder: a forecaster that needs no dataset."""
    folder = tmp_path / "gfm"
    GFM(GFMSettings(width=8, depth=1, time_embedding=4, history=2)).save(folder)
    return folder


def _params(tmp_path: Path, db: Path) -> Path:
    params = tmp_path / "params.yaml"
    tree = yaml.safe_load(TINY.read_text())
    tree["data"]["root"] = str(tmp_path / "no-data")  # a --model run needs no dataset
    tree["tracking"] = {"uri": f"sqlite:///{db}", "experiment": "jumps-test"}
    params.write_text(yaml.safe_dump(tree))
    return params


def test_gfm_bench_jumps_writes_the_table_and_logs_an_mlflow_run(tmp_path, tiny_gfm):
    # given: the tiny settings, a saved GFM and an MLflow store in the temp folder
    db = tmp_path / "mlflow.db"
    out = tmp_path / "results"
    args = ["bench", "jumps", "-p", str(_params(tmp_path, db)), "--model", str(tiny_gfm)]
    args += ["--output-dir", str(out), *[a for s in TINY_JUMPS for a in ("--set", s)]]
    # when
    result = CliRunner().invoke(app, [*args, "--steps", "12", "--seeds", "2"])
    # then: one row per method × task × arch × seed, with the required columns
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out / "accelerate.csv", schema_overrides={"arch": pl.String})
    assert table.columns[: len(jumps.COLUMNS)] == list(jumps.COLUMNS)
    assert len(table) == 3 * 1 * 2 * 2
    assert sorted(table["method"].unique()) == ["base", "gfm", "linear"]
    assert table.filter(pl.col("method") != "base")["n_jumps"].min() >= 1
    # ... and a finished MLflow run with the settings, speedups and files
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("jumps-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id in " ".join(result.output.split())
    assert run.data.params["accelerate.period"] == "4"
    assert run.data.metrics["digits_mlp_8/base_speedup_mean"] == 1.0
    assert "accelerate/gfm_steps_mean" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "accelerate")}
    assert "accelerate/accelerate.csv" in logged and "accelerate/accelerate.png" in logged


def test_the_old_name_gfm_accelerate_still_runs_it_hidden(tmp_path, tiny_gfm):
    params = _params(tmp_path, tmp_path / "mlflow.db")
    args = ["accelerate", "-p", str(params), "--model", str(tiny_gfm), "--no-mlflow"]
    args += ["--output-dir", str(tmp_path / "r"), *[a for s in TINY_JUMPS for a in ("--set", s)]]
    result = CliRunner().invoke(app, [*args, "--steps", "8", "--seeds", "1", "--methods", "base"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "accelerate.csv").is_file()
    assert "accelerate" not in CliRunner().invoke(app, ["--help"]).output


def test_gfm_bench_jumps_has_help_with_examples_and_rejects_bad_settings():
    result = CliRunner().invoke(app, ["bench", "jumps", "--help"])
    assert result.exit_code == 0 and "gfm bench jumps --model models/gfm" in result.output
    bad = CliRunner().invoke(
        app, ["bench", "jumps", "-p", str(TINY), "--set", "accelerate.guard=0"]
    )
    assert bad.exit_code == 2 and "accelerate.guard" in bad.output
