"""The jump-ahead comparison: its grid, its arithmetic, its files, and `gfm accelerate` end to end
(a tiny digits setup, a saved GFM, an MLflow sqlite store in a temp folder)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gfm.bench import jumps
from gfm.cli import app
from gfm.config import AccelerateSettings, GFMSettings, load_settings
from gfm.model import GFM

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "confs" / "valid" / "tiny.yaml"
# digits only (sklearn's, no download), 12 steps, a jump every 4 base steps
TINY_ACCELERATE = [
    "accelerate.tasks=[digits_mlp]",
    "accelerate.methods=[base, gfm, linear]",
    "accelerate.seeds=2",
    "accelerate.period=4",
    "accelerate.horizon_start=2",
    "accelerate.horizon_end=1",
    "accelerate.history=8",
    "accelerate.guard_rows=64",
]


def test_params_yaml_accelerate_section_equals_the_defaults():
    loaded = load_settings(ROOT / "params.yaml", environ={}).accelerate
    assert loaded.model_copy(update={"output_dir": None}) == AccelerateSettings().model_copy(
        update={"output_dir": None}
    )
    assert loaded.output_dir == ROOT / "benchmarks" / "results"


def test_jobs_are_a_seen_and_the_holdout_architecture_per_task_and_seed():
    settings = load_settings(
        TINY, [*TINY_ACCELERATE, "accelerate.tasks=[digits_mlp, mnist_cnn]"], environ={}
    )
    jobs = jumps.jobs(settings)
    # tiny.yaml: digits archs [8], [8, 8] (8-8 held out); mnist [4, 4, 4] (no holdout)
    assert [(j.task, j.arch, j.holdout, j.seed) for j in jobs] == [
        ("digits_mlp", "8", False, 0),
        ("digits_mlp", "8", False, 1),
        ("digits_mlp", "8-8", True, 0),
        ("digits_mlp", "8-8", True, 1),
        ("mnist_cnn", "4-4-4", False, 0),
        ("mnist_cnn", "4-4-4", False, 1),
    ]


def test_summary_arithmetic():
    # given: two seeds; the jumping method reaches the target in half the steps once, never once
    table = pl.DataFrame(
        {
            "method": ["base", "base", "gfm", "gfm"],
            "task": ["t"] * 4,
            "arch": ["8"] * 4,
            "holdout_arch": [False] * 4,
            "seed": [0, 1, 0, 1],
            "steps_to_target": [100, 80, 50, None],
            "base_steps_to_target": [100, 80, 100, 80],
            "final_acc": [0.9, 0.8, 0.92, 0.78],
            "target_acc": [0.9, 0.8, 0.9, 0.8],
            "speedup": [1.0, 1.0, 2.0, None],
            "steps_saved": [0.0, 0.0, 0.5, None],
            "budget": [120] * 4,
            "n_accepted": [0, 0, 3, 2],
            "n_jumps": [0, 0, 3, 4],
            "spike_max": [None, None, 1.2, 3.0],
            "wall_s": [1.0] * 4,
            "forecast_s": [0.0, 0.0, 0.1, 0.1],
        }
    )
    # when
    gfm = jumps.summarize(table).filter(pl.col("method") == "gfm").row(0, named=True)
    # then: a seed that never reaches counts as the budget in the steps, not in the speedup
    assert gfm["reached"] == 0.5
    assert gfm["steps_mean"] == pytest.approx((50 + 120) / 2)
    assert gfm["speedup_mean"] == pytest.approx(2.0)
    assert gfm["speedup_of_means"] == pytest.approx(90 / 85)
    assert gfm["acc_vs_base"] == pytest.approx(0.0)
    assert gfm["spike_max"] == 3.0


@pytest.fixture
def tiny_gfm(tmp_path: Path) -> Path:
    """An untrained, tiny GFM saved to a folder: a forecaster that needs no dataset."""
    folder = tmp_path / "gfm"
    GFM(GFMSettings(width=8, depth=1, time_embedding=4, history=2)).save(folder)
    return folder


def test_gfm_accelerate_writes_the_table_and_logs_an_mlflow_run(tmp_path, tiny_gfm):
    # given: the tiny settings, a saved GFM and an MLflow store in the temp folder
    db = tmp_path / "mlflow.db"
    params = tmp_path / "params.yaml"
    tree = yaml.safe_load(TINY.read_text())
    tree["data"]["root"] = str(tmp_path / "no-data")  # a --model run needs no dataset
    tree["tracking"] = {"uri": f"sqlite:///{db}", "experiment": "accelerate-test"}
    params.write_text(yaml.safe_dump(tree))
    out = tmp_path / "results"
    args = ["accelerate", "-p", str(params), "--model", str(tiny_gfm), "--output-dir", str(out)]
    args += [a for s in TINY_ACCELERATE for a in ("--set", s)]
    # when
    result = CliRunner().invoke(app, [*args, "--steps", "12", "--seeds", "2"])
    # then: one row per method × task × arch × seed, with the required columns
    assert result.exit_code == 0, result.output
    table = pl.read_csv(out / "accelerate.csv", schema_overrides={"arch": pl.String})
    assert table.columns[: len(jumps.COLUMNS)] == list(jumps.COLUMNS)
    assert len(table) == 3 * 1 * 2 * 2
    assert sorted(table["method"].unique()) == ["base", "gfm", "linear"]
    assert (table.filter(pl.col("method") == "base")["speedup"] == 1.0).all()
    assert table.filter(pl.col("method") != "base")["n_jumps"].min() >= 1
    for name in ("accelerate_curves.csv", "accelerate_jumps.csv", "accelerate.png"):
        assert (out / name).is_file()
    # ... and a finished MLflow run with the settings, speedups and files
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("accelerate-test").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id in " ".join(result.output.split())
    assert run.data.params["accelerate.period"] == "4"
    assert run.data.metrics["digits_mlp_8/base_speedup_mean"] == 1.0
    assert "accelerate/gfm_steps_mean" in run.data.metrics
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "accelerate")}
    assert "accelerate/accelerate.csv" in logged and "accelerate/accelerate.png" in logged


def test_gfm_accelerate_has_help_with_examples_and_rejects_bad_settings():
    result = CliRunner().invoke(app, ["accelerate", "--help"])
    assert result.exit_code == 0 and "gfm accelerate --model models:/gfm@champion" in result.output
    bad = CliRunner().invoke(app, ["accelerate", "-p", str(TINY), "--set", "accelerate.guard=0"])
    assert bad.exit_code == 2 and "accelerate.guard" in bad.output
