"""The ablation ledger's scoring: an ensemble (the mean forecast and each member, one pass) and row variants."""

import numpy as np
import pytest
import torch

from benchmarks.ablations import FRACTIONS, RowShrunk, score_members, score_run
from gfm.forecaster import Prefix
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


def test_a_row_variant_scales_each_rows_mean_displacement_of_the_wrapped_forecast():
    # given a run of a 2x3 weight matrix (two rows of three) and a bias of two,
    # and a forecaster that moves every weight of the matrix by +1 from w_k
    W = np.linspace(0.0, 1.0, 11)[:, None] * np.arange(1.0, 9.0)
    record = make_record(W, layout=[("fc.weight", (2, 3)), ("fc.bias", (2,))])
    prefix = Prefix.from_record(record, 5)
    w_k = prefix.w[-1]
    moved = w_k + torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    # when it is wrapped with factor 0 and 0.5
    zero = RowShrunk(_Fixed(moved.numpy()), 0.0).forecast(prefix, torch.tensor([1.0]))[-1]
    half = RowShrunk(_Fixed(moved.numpy()), 0.5).forecast(prefix, torch.tensor([1.0]))[-1]
    # then the matrix rows keep their mean at w_k (0) or move half way (0.5); the bias as forecast
    assert torch.allclose(zero[:6], w_k[:6], atol=1e-6)
    assert torch.allclose(half[:6], w_k[:6] + 0.5, atol=1e-6)
    assert torch.allclose(zero[6:], moved[6:]) and torch.allclose(half[6:], moved[6:])
