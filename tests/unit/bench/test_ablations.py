"""The ablation ledger's scoring of an ensemble: the mean forecast and each member, one pass."""

import numpy as np
import pytest
import torch

from benchmarks.ablations import FRACTIONS, score_members, score_run
from tests.helpers import make_record


class _Fixed:
    """A forecaster that always forecasts the same final weights (pure scoring arithmetic)."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = torch.as_tensor(w, dtype=torch.float32)

    def forecast(self, prefix, t):  # noqa: ANN001, ANN201 - the Forecaster protocol
        return self.w.expand(len(t), -1)


def test_the_ensemble_row_scores_the_mean_forecast_and_each_member_row_its_own():
    # given a run and two forecasters whose errors are opposite
    W = np.linspace(0.0, 1.0, 21)[:, None] * np.array([1.0, -2.0, 0.5, 3.0])
    record = make_record(W)
    a, b = _Fixed(W[-1] + 0.2), _Fixed(W[-1] - 0.2)
    # when both are scored as an ensemble
    mean, (rows_a, rows_b) = score_members([a, b], record, lambda r, w: (0.0, 0.0))
    # then the mean forecast is exact, each member keeps its own error, per fraction
    assert [r["fraction"] for r in mean] == list(FRACTIONS)
    assert all(r["mse"] == pytest.approx(0.0, abs=1e-12) for r in mean)
    assert all(r["mse"] == pytest.approx(0.04, rel=1e-5) for r in rows_a + rows_b)
    assert all(r["lam"] == pytest.approx(1.0) for r in mean)
    # and a member's rows are what scoring it alone gives
    assert [r["mse"] for r in rows_a] == [r["mse"] for r in score_run(a, record, None)]
