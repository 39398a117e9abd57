"""Metrics recomputed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gfm.data.schema import RunRecord
from gfm.metrics import downstream, horizon_mse, mae, mse, rel_mse
from tests.helpers import make_record


def _record(D: int = 3, M: int = 4) -> RunRecord:
    return make_record(np.zeros((M + 1, D)), spec={"run_id": "r0"}, val_acc=np.zeros(M + 1))


def test_mse_and_mae_by_hand():
    # given
    w_hat, w = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 0.0])
    # then: errors (0, 2, 3)
    assert mse(w_hat, w) == pytest.approx((0 + 4 + 9) / 3)
    assert mae(w_hat, w) == pytest.approx((0 + 2 + 3) / 3)


def test_metrics_accept_tensors_and_arrays_alike():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    assert mse(torch.from_numpy(a), torch.from_numpy(b)) == mse(a, b)
    assert mae(torch.from_numpy(a), b) == mae(a, b)


def test_rel_mse_by_hand():
    w = np.zeros(4)
    w_ref = np.full(4, 2.0)  # MSE 4
    w_hat = np.full(4, 1.0)  # MSE 1
    assert rel_mse(w_hat, w, w_ref) == pytest.approx(0.25)
    assert rel_mse(w_ref, w, w_ref) == 1.0


def test_rel_mse_with_an_exact_reference():
    w = np.ones(3)
    assert rel_mse(w, w, w) == 1.0
    assert rel_mse(w + 1, w, w) == math.inf


def test_horizon_mse_is_per_row():
    # given
    w = np.zeros((3, 2))
    w_hat = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    # then
    np.testing.assert_allclose(horizon_mse(w_hat, w), [1.0, 2.0, 0.0])


def test_horizon_mse_needs_two_dimensions():
    with pytest.raises(ValueError, match="w_hat"):
        horizon_mse(np.zeros(3), np.zeros(3))


def test_shape_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="w_hat"):
        mse(np.zeros(3), np.zeros(4))


def test_downstream_calls_the_injected_score_with_the_record_and_weights():
    # given
    record = _record()
    seen = {}

    def score(rec, w):
        seen["rec"], seen["w"] = rec, w
        return np.float64(float(np.sum(w**2))), 0.5

    # when
    loss, acc = downstream(score, record, torch.tensor([1.0, 2.0, 2.0]))
    # then
    assert (loss, acc) == (9.0, 0.5)
    assert seen["rec"] is record
    assert seen["w"].dtype == np.float32 and seen["w"].shape == (3,)
    assert isinstance(loss, float)


def test_downstream_checks_the_weights_and_the_score():
    record = _record()
    with pytest.raises(ValueError, match="`w`"):
        downstream(lambda r, w: (0.0, 0.0), record, np.zeros(4))
    with pytest.raises(TypeError, match="score"):
        downstream(lambda r, w: 1.0, record, np.zeros(3))
    with pytest.raises(TypeError, match="score"):
        downstream("evaluate_weights", record, np.zeros(3))
