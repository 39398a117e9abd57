"""gfm.ops: the pure parts: metrics from a results table, the layout DVC names, the mode."""

import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from gfm import ops
from gfm.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_model_metrics_are_means_over_runs_and_fractions():
    # given two rows of one method and one of another
    table = pl.DataFrame(
        {
            "method": ["gfm", "gfm", "linear"],
            "mse_final": [1.0, 3.0, 9.0],
            "rel_mse_persistence": [0.5, 1.5, 4.0],
            "downstream_acc": [0.8, math.nan, 0.1],
            "true_final_acc": [0.9, math.nan, 0.9],
            "last_observed_acc": [0.5, math.nan, 0.5],
        }
    )
    # when / then: accuracies are means over the classification rows (the second is regression)
    assert ops.model_metrics(table, "gfm") == {
        "test/mse_final": 2.0,
        "test/rel_mse_persistence": 1.0,
        "test/rel_mse_persistence_median": 1.0,
        "test/acc_gap": pytest.approx(-0.1),
        "test/acc_forecast": pytest.approx(0.8),
        "test/acc_last": 0.5,
        "test/acc_final": 0.9,
    }
    assert ops.model_metrics(table, "linear", prefix="test/linear")["test/linear/mse_final"] == 9.0
    with pytest.raises(ValueError, match="no rows of method 'lstm'"):
        ops.model_metrics(table, "lstm")


def test_dvc_stages_write_where_the_steps_do():
    # given the stages of dvc.yaml and the layout of the committed params.yaml
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = ops.layout(load_settings(ROOT / "params.yaml", environ={}))

    def declared(stage: str, kind: str) -> set[Path]:
        items = stages[stage].get(kind, [])
        return {ROOT / (next(iter(i)) if isinstance(i, dict) else i) for i in items}

    # then every file a step writes is an output of its stage, and read by the next one
    assert [*stages] == list(ops.STEPS)
    assert declared("tune", "metrics") == {out.tune_json}
    assert declared("train", "outs") == {out.model_dir}
    assert declared("train", "metrics") == {out.train_json}
    assert declared("train", "plots") == {out.history_csv}
    assert declared("evaluate", "metrics") == {out.metrics_json}
    assert declared("evaluate", "outs") == {out.results_csv, out.results_md}
    assert declared("evaluate", "plots") == {out.horizon_csv, out.horizon_png, out.trajectories_png}
    assert {out.tune_json} <= declared("train", "deps")
    assert {out.model_dir, out.train_json} <= declared("evaluate", "deps")
    assert all(stages[s]["cmd"] == f"gfm {s}" for s in ("tune", "train", "evaluate"))


def test_steps_run_through_dvc_only_for_the_repository_params(tmp_path):
    # given a DVC repository with the project's stages
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text("")
    (tmp_path / "other.yaml").write_text("")
    # then its own params.yaml goes through DVC; overrides or another file run directly
    assert ops.dvc_repo(tmp_path / "params.yaml") == tmp_path
    assert ops.dvc_repo(tmp_path / "params.yaml", ["gfm.width=8"]) is None
    assert ops.dvc_repo(tmp_path / "other.yaml") is None
    assert ops.dvc_repo(ROOT / "tests" / "confs" / "valid" / "tiny.yaml") is None


def test_storage_urls_lose_their_password():
    assert ops.redact("postgresql+psycopg://me:s3cret@db:5432/optuna") == (
        "postgresql+psycopg://me:***@db:5432/optuna"
    )
    assert ops.redact("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
