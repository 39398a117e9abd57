"""The pruning benchmark's measures on small hand-made studies (pure tables, no training)."""

import math
from pathlib import Path

import polars as pl
import pytest

from gfm.bench.pruning import Config, in_distribution, spearman, summarize
from gfm.config import load_settings


def _trials(pruner: str, states: list[str], steps: list[int], accs: list[float]) -> pl.DataFrame:
    n = len(states)
    return pl.DataFrame(
        {
            "task": ["digits_mlp"] * n,
            "pruner": [pruner] * n,
            "seed": [0] * n,
            "number": list(range(n)),
            "state": states,
            "steps": steps,
            "wall_s": [1.0] * n,
            "val_loss": [1.0 - a for a in accs],
            "test_acc": accs,
            "in_distribution": [True] * n,
        }
    )


def test_summarize_counts_steps_to_a_near_best_trial_and_whether_the_best_was_pruned():
    # given a study without pruning whose best trial (number 2, 0.95) comes third, and a pruner
    # that stops trials 0 and 1 early and finishes trial 2
    none = _trials("none", ["COMPLETE"] * 3, [200, 200, 200], [0.80, 0.90, 0.95])
    fast = _trials("median", ["PRUNED", "PRUNED", "COMPLETE"], [40, 60, 200], [0.5, 0.6, 0.95])
    forecasts = pl.DataFrame(
        {
            "task": ["digits_mlp"] * 3,
            "seed": [0] * 3,
            "number": [0, 1, 2],
            "forecaster": ["persistence"] * 3,
            "fraction": [0.5] * 3,
            "forecast_val_loss": [0.3, 0.2, 0.1],
        }
    )
    replay = pl.DataFrame(
        {
            "task": ["digits_mlp"] * 3,
            "pruner": ["median"] * 3,
            "seed": [0] * 3,
            "number": [0, 1, 2],
            "pruned": [True, True, False],
        }
    )
    # when
    table = summarize(pl.concat([none, fast]), forecasts, replay, {})
    rows = {r["pruner"]: r for r in table.iter_rows(named=True)}
    # then steps are summed up to the first finished trial within 0.5 points of 0.95
    assert rows["none"]["steps_to_near"] == 600 and rows["median"]["steps_to_near"] == 300
    assert rows["median"]["optimizer_steps"] == 300 and rows["median"]["pruned"] == 2
    # and the replay says the pruner would not have pruned the best trial
    assert rows["median"]["best_pruned"] is False and rows["median"]["replay_pruned"] == 2
    # and the forecasts rank the trials as their true losses do
    assert rows["median"]["spearman_0.5"] == pytest.approx(1.0)


def test_spearman_needs_three_finite_pairs():
    assert math.isnan(spearman([1.0, math.nan, 2.0], [1.0, 2.0, 3.0]))
    assert spearman([1.0, 2.0, 3.0, math.inf], [3.0, 2.0, 1.0, 0.0]) == pytest.approx(-1.0)


def test_a_trial_outside_the_dataset_is_named_with_why():
    # given the default dataset's digits_mlp runs (one hidden layer of 32 or 64, Adam without decay)
    data = load_settings(None, environ={}).data
    lr = data.optimizers["adam"].lr.low * data.tasks["digits_mlp"].lr_scale
    # then a trial like them is inside, and one unlike them in three ways says all three
    assert in_distribution(Config("digits_mlp", "adam", lr * 1.01, 32, 0.0), data) == (True, "")
    ok, why = in_distribution(Config("digits_mlp", "adam", lr / 100, 999, 0.05), data)
    assert not ok and "lr" in why and "architecture" in why and "weight decay" in why


def test_the_search_space_dataset_covers_every_trial_of_the_digits_space():
    # given the overrides that describe a dataset for the pruning benchmark's digits space
    from benchmarks.pruning import read_overrides
    from gfm.bench.pruning import LR, WD, WIDTHS

    path = Path(__file__).parents[2] / "benchmarks" / "pruning_data.yaml"
    data = load_settings(None, read_overrides(path), environ={}).data
    # then the corners of the searched space are inside it, for every optimizer and width
    for optimizer in data.optimizers:
        for width in WIDTHS["digits_mlp"]:
            for lr, wd in ((LR[0], WD[0]), (LR[1], WD[1])):
                cfg = Config("digits_mlp", optimizer, lr, width, wd)
                assert in_distribution(cfg, data) == (True, ""), (cfg, in_distribution(cfg, data))


def test_an_overrides_file_that_is_not_a_mapping_names_the_file(tmp_path):
    from benchmarks.pruning import read_overrides

    bad = tmp_path / "o.yaml"
    bad.write_text("- data.root\n")
    with pytest.raises(SystemExit, match="o.yaml: must be a mapping"):
        read_overrides(bad)
