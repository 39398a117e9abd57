"""`gfm forecast` against a real MLflow store that has no registered model yet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gfm.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_forecast_without_a_registered_model_says_to_run_the_workflow_or_pass_a_model(
    tmp_path: Path, template_store: Path
) -> None:
    # given: a migrated sqlite store (as after `gfm train` without `gfm promote`), no model `gfm`
    shutil.copy(template_store, tmp_path / "mlflow.db")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"uri": "sqlite:///mlflow.db"}}))
    np.save(tmp_path / "p.npy", np.zeros((3, 5), dtype=np.float32))
    meta = {"optimizer": "sgd", "lr": 0.1, "record_every": 2, "total_checkpoints": 6}
    meta["layout"] = [["w", [5]]]
    (tmp_path / "p.json").write_text(json.dumps(meta))
    # when
    result = runner.invoke(
        app,
        ["forecast", "-p", str(params), "--input", str(tmp_path / "p.npy")],
        env={"COLUMNS": "1000"},
    )
    # then: the failure, then one line naming the model and store with both ways out
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "forecast with models:/gfm@champion failed"
    (line,) = lines[1:]
    assert line.startswith(
        f"models:/gfm@champion: no such model in the MLflow store sqlite:///{tmp_path}/mlflow.db"
    )
    assert "run the workflow first (`gfm run`)" in line
    assert "pass --model DIR" in line
    assert not (tmp_path / "forecast.npy").exists()
