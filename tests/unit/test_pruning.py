"""gfm.ops.pruning without storage: forecaster sources that need no registry, and bad options."""

from __future__ import annotations

import optuna
import pytest

from gfm import saved
from gfm.baselines import make
from gfm.ops import ForecastPruner, load_forecaster


def test_sources_without_a_registry_load_the_forecaster(tmp_path):
    folder = saved.save(make("geometric"), tmp_path / "geo")
    assert load_forecaster("persistence").name == "persistence"
    assert load_forecaster(folder).name == "geometric"
    assert load_forecaster(str(folder)).name == "geometric"
    mine = make("linear")
    assert load_forecaster(mine) is mine


def test_the_pruner_is_an_optuna_pruner():
    pruner = ForecastPruner(lambda m: 0.0, forecaster="persistence")
    assert isinstance(pruner, optuna.pruners.BasePruner)
    assert (pruner.n_best, pruner.min_trials, pruner.forecaster_name) == (3, 5, "persistence")


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"n_best": 0}, ValueError, "n_best"),
        ({"margin": -0.1}, ValueError, "margin"),
        ({"warmup_steps": 1.5}, ValueError, "warmup_steps"),
        ({"min_trials": -1}, ValueError, "min_trials"),
        ({"store": "checkpoints"}, TypeError, "store"),
        ({"forecaster": 3}, ValueError, "forecaster"),
    ],
)
def test_bad_options_are_named(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        ForecastPruner(lambda m: 0.0, **{"forecaster": "persistence", **kwargs})
    with pytest.raises(TypeError, match="score"):
        ForecastPruner(0.5, forecaster="persistence")
