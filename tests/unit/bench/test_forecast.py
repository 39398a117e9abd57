"""The forecast benchmark harness on tiny data: every method fitted and scored on a split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from gfm.bench.forecast import build, fit_and_evaluate, headline, methods
from gfm.config import DataSettings, load_settings
from gfm.data.trajectories import Trajectories
from gfm.data.writer import DatasetWriter
from gfm.evaluation import COLUMNS
from gfm.model import GFM
from tests.helpers import gd_run

FAST_GFM = {"gfm.width": 8, "gfm.depth": 1, "gfm.time_embedding": 4, "gfm.history": 2}
FAST_TRAIN = {"train.steps": 4, "train.eval_every": 2, "train.batch_runs": 2}


@pytest.fixture
def dataset(tmp_path: Path) -> Trajectories:
    """Four gradient-descent runs of one group: seeds 0-1 train, 2 val, 3 test (seed split)."""
    writer = DatasetWriter(tmp_path / "data")
    for seed in range(4):
        writer.write_run(gd_run(seed, M=12, spec={"run_id": f"ls-{seed}"}))
    writer.commit(DataSettings(seeds=4))
    return Trajectories(tmp_path / "data")


def test_every_method_is_fitted_on_train_and_scored_on_test(dataset):
    # given: the fixed baselines and a tiny GFM, one seed, two observed fractions
    settings = load_settings(
        None,
        {**FAST_GFM, **FAST_TRAIN, "evaluate.observed_fractions": [0.25, 0.5]},
        environ={},
    )
    names = ["gfm", "persistence", "linear"]
    fitted = []
    # when
    table, costs = fit_and_evaluate(
        settings,
        dataset,
        method_names=names,
        splits=["seed"],
        downstream=False,
        on_fitted=lambda name, split, seed, cost: fitted.append((name, split, seed)),
    )
    # then: one row per method x test run x fraction, the evaluation's columns and the seed
    assert set(COLUMNS) <= set(table.columns) and {"seed", "run_seed"} <= set(table.columns)
    assert table.height == len(names) * 1 * 2
    assert sorted(table["method"].unique()) == sorted(names)
    assert set(table["run_id"]) == {"ls-3"}
    persistence = table.filter(pl.col("method") == "persistence")
    assert (persistence["rel_mse_persistence"] - 1.0).abs().max() < 1e-9
    # ... one cost row per method, fitted on the two train runs
    assert costs.height == len(names) and (costs["train_runs"] == 2).all()
    assert fitted == [(n, "seed", 0) for n in names]
    # ... and the headline has one row per method and split
    assert headline(table).height == len(names)


def test_methods_and_build_name_gfm_variants_and_baselines():
    settings = load_settings(None, environ={})
    names = methods(settings)
    assert names[:2] == ["gfm", "gfm_optimizer"] and "persistence" in names
    other = build("gfm_optimizer", settings, seed=3)
    assert isinstance(other, GFM) and other.cfg.variant == "optimizer" and other.train_cfg.seed == 3
    assert build("linear", settings).config["window"] == settings.evaluate.linear_window
    with pytest.raises(ValueError, match="`method` must be one of .*persistence"):
        build("prophet", settings)
