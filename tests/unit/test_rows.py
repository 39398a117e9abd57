"""gfm.rows: which weights form rows, and the per-row mean of a forecast displacement."""

import numpy as np
import pytest
import torch

from gfm.config import GFMSettings, TrainSettings
from gfm.data.schema import ParamMeta
from gfm.model import GFM
from gfm.rows import row_index, shrink_row_means
from tests.helpers import make_prefix

# a 3-unit hidden layer of 2 inputs, its bias, and a single-output layer (one row)
LAYOUT = [("0.weight", (3, 2)), ("0.bias", (3,)), ("2.weight", (1, 3)), ("2.bias", (1,))]
PARAMS = ParamMeta.from_named_shapes(LAYOUT)


def test_rows_are_the_output_units_of_layers_with_more_than_one():
    pos, rows, n = row_index(PARAMS)
    # the hidden layer's 6 weights, 2 per unit; the biases and the single-row layer are left out
    assert pos.tolist() == [0, 1, 2, 3, 4, 5]
    assert rows.tolist() == [0, 0, 1, 1, 2, 2] and n == 3


def test_a_convolution_row_is_a_filter():
    params = ParamMeta.from_named_shapes([("c.weight", (2, 1, 3, 3)), ("c.bias", (2,))])
    _, rows, n = row_index(params)
    assert n == 2 and rows.tolist() == [0] * 9 + [1] * 9


@pytest.mark.parametrize("factor", [0.0, 0.5])
def test_shrinking_scales_each_rows_mean_displacement_and_keeps_the_rest(factor):
    # given a forecast at two times from w_k
    g = torch.Generator().manual_seed(0)
    w_k = torch.randn(len(PARAMS), generator=g, dtype=torch.float64)
    w_hat = w_k + torch.randn(2, len(PARAMS), generator=g, dtype=torch.float64)
    # when
    out = shrink_row_means(w_hat, w_k, PARAMS, factor)
    # then each row's mean displacement is scaled by the factor and its pattern kept
    d, d_out = (w_hat - w_k)[:, :6].reshape(2, 3, 2), (out - w_k)[:, :6].reshape(2, 3, 2)
    torch.testing.assert_close(d_out.mean(-1), factor * d.mean(-1))
    torch.testing.assert_close(d_out - d_out.mean(-1, keepdim=True), d - d.mean(-1, keepdim=True))
    # and biases and the single-row layer are as forecast
    torch.testing.assert_close(out[:, 6:], w_hat[:, 6:])


def test_factor_one_is_the_forecast_itself():
    w = torch.randn(1, len(PARAMS))
    assert shrink_row_means(w, w[0], PARAMS, 1.0) is w


def test_gfm_forecasts_with_row_means_held_at_the_last_checkpoint():
    # given an (untrained) GFM whose forecasts hold each row's mean weight
    prefix = make_prefix(k=3, M=8, layout=LAYOUT)
    model = GFM(GFMSettings(width=16, depth=2, row_mean=0.0), TrainSettings(seed=1))
    plain = GFM(GFMSettings(width=16, depth=2), TrainSettings(seed=1))
    t = torch.tensor([0.75, 1.0], dtype=torch.float64)
    # when both forecast
    held, free = model.forecast(prefix, t), plain.forecast(prefix, t)
    # then the rows' means stay at w_k's, and the rest is the plain forecast's
    w_k = prefix.w[-1]
    rows = (held - w_k)[:, :6].reshape(2, 3, 2).mean(-1)
    np.testing.assert_allclose(rows.numpy(), 0.0, atol=1e-6)
    torch.testing.assert_close(held[:, 6:], free[:, 6:])


def test_a_one_dimensional_weight_has_no_rows_so_its_forecast_is_kept():
    # given the layout of a run imported without one: a single 1-D weight tensor of 4 weights
    params = ParamMeta.from_named_shapes([("w", (4,))])
    w_k = torch.zeros(4)
    w_hat = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    # then none of its weights is a row (each would be its own mean), and halving changes nothing
    assert row_index(params)[2] == 0
    assert torch.equal(shrink_row_means(w_hat, w_k, params, 0.5), w_hat)
    # (measured: with each weight its own row, imported 2-parameter runs' test MSE doubled)
