"""The jump-benchmark flow under the Prefect test server, jumping with the registry's champion."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow import MlflowClient

from gfm import tracking
from gfm.config import GFMSettings, load_settings
from gfm.model import GFM

pytestmark = pytest.mark.integration
CONFS = Path(__file__).resolve().parents[1] / "confs"


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_jump_flow_jumps_with_the_champion_and_logs_the_benchmark(
    tmp_path, template_store, prefect_harness
):
    # given: tiny digits settings, an MLflow store whose champion is a (tiny, untrained) GFM
    shutil.copy(template_store, tmp_path / "mlflow.db")
    tree = yaml.safe_load((CONFS / "valid" / "tiny.yaml").read_text())
    tree["data"]["root"] = str(tmp_path / "no-data")  # a registry model needs no dataset
    tree["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "acc"}
    bench = {
        "tasks": ["digits_mlp"],
        "methods": ["base", "gfm", "linear"],
        "seeds": 1,
        "steps": 12,
        "period": 4,
        "horizon_start": 2,
        "horizon_end": 1,
        "output_dir": str(tmp_path / "results"),
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(bench))  # the benchmark's own file
    cfg = load_settings(params, environ={})
    tracking.configure(cfg.tracking)
    with tracking.start_run("champion"):
        info = tracking.log_forecaster(GFM(GFMSettings(width=8, depth=1, history=2)))
    version = tracking.register(info.model_uri, cfg.registry)
    MlflowClient().set_registered_model_alias("gfm", "champion", version)
    from flows.jumps import jump_benchmark

    # when
    out = jump_benchmark(
        str(params), bench=str(tmp_path / "bench.yaml"), model="models:/gfm@champion"
    )
    # then: the table has every method × arch, and the run holds the speedups and files
    table = pl.read_csv(out["table"], schema_overrides={"arch": pl.String})
    assert sorted(table["method"].unique()) == ["base", "gfm", "linear"]
    assert sorted(table["arch"].unique()) == ["8", "8-8"]
    run = MlflowClient().get_run(out["run_id"])
    assert run.data.tags["gfm.step"] == "accelerate"
    assert "digits_mlp_8-8/gfm_steps_mean" in run.data.metrics
