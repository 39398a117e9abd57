"""The jump benchmark harness: its grid of jobs, its summary arithmetic, its files on a tiny run."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gfm import ops
from gfm.bench import jumps
from gfm.bench.jumps import AccelerateSettings, load_accelerate
from gfm.config import SettingsError, load_settings
from gfm.jumps import jump_baseline
from tests.helpers import TINY_JUMPS

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "tests" / "confs" / "valid" / "tiny.yaml"
# digits only (sklearn's, no download), 12 steps, a jump every 4 base steps
TINY_ACCELERATE = [*TINY_JUMPS, "accelerate.seeds=2"]


def test_the_benchmark_file_holds_the_defaults_and_is_not_in_params_yaml():
    loaded = ops.bench_settings(ROOT / "params.yaml")
    assert loaded.model_copy(update={"output_dir": None}) == AccelerateSettings().model_copy(
        update={"output_dir": None}
    )
    assert loaded.output_dir == ROOT / "benchmarks" / "results"
    # and the product's settings refuse the old section, saying where it went
    with pytest.raises(SettingsError, match="benchmarks/accelerate.yaml"):
        load_settings(None, ["accelerate.period=40"], environ={})


def test_bad_benchmark_settings_name_the_key(tmp_path):
    with pytest.raises(SettingsError, match=r"accelerate\.guard"):
        load_accelerate(None, ["accelerate.guard=0"])
    with pytest.raises(SettingsError, match=r"accelerate\.row_mean"):
        load_accelerate(None, ["accelerate.row_mean=2"])
    # the fitted GFM's settings are checked as gfm.* settings, at load
    with pytest.raises(SettingsError, match=r"accelerate\.gfm\.rowmean: unknown key"):
        load_accelerate(None, ["accelerate.gfm={rowmean: 0}"])
    with pytest.raises(SettingsError, match=r"accelerate\.gfm\.prior"):
        load_accelerate(None, ["accelerate.gfm={prior: 3}"])
    (tmp_path / "b.yaml").write_text("perod: 3\n")
    with pytest.raises(SettingsError, match=r"b\.yaml: accelerate\.perod: unknown key"):
        load_accelerate(tmp_path / "b.yaml")


def test_jobs_are_a_seen_and_the_holdout_architecture_per_task_and_seed():
    settings = load_settings(TINY, environ={})
    acc = load_accelerate(None, [*TINY_ACCELERATE, "accelerate.tasks=[digits_mlp, mnist_cnn]"])
    jobs = jumps.jobs(settings, acc)
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
            "guard_evals": [0, 0, 6, 8],
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
    assert gfm["guard_evals"] == pytest.approx(7.0)  # forward passes of the guard batch
    assert gfm["spike_max"] == 3.0


@pytest.mark.slow  # trains networks every way
def test_a_tiny_run_measures_steps_to_target_and_writes_its_files(tmp_path):
    # given: digits, 12 steps, one seed, the base optimizer and linear-extrapolation jumps
    overrides = [*TINY_ACCELERATE, "accelerate.methods=[base, linear]", "accelerate.seeds=1"]
    settings = load_settings(TINY, environ={})
    acc = load_accelerate(None, [*overrides, "accelerate.steps=12"])
    models = {"linear": jump_baseline("linear", config={"window": 3})}
    seen = []
    # when
    results = jumps.run(settings, acc, models, on_run=lambda job, m, done: seen.append((m, done)))
    paths = jumps.write(results, tmp_path)
    # then: one row per method x arch (a seen and the holdout one), base first for each job
    table = results.table
    assert table.columns[: len(jumps.COLUMNS)] == list(jumps.COLUMNS)
    assert sorted(zip(table["method"], table["arch"], strict=True)) == [
        ("base", "8"),
        ("base", "8-8"),
        ("linear", "8"),
        ("linear", "8-8"),
    ]
    assert (table.filter(pl.col("method") == "base")["speedup"] == 1.0).all()
    assert table.filter(pl.col("method") == "linear")["n_jumps"].min() >= 1
    assert seen[:2] == [("base", False), ("base", True)]
    assert set(results.curves["step"].to_list()) >= {0, 12}
    assert {p.name for p in paths.values()} == {
        "accelerate.csv",
        "accelerate_curves.csv",
        "accelerate_jumps.csv",
        "accelerate_summary.csv",
        "accelerate.png",
    }
    assert all(p.is_file() for p in paths.values())
