"""Forecasting large layers from a sample: which parameters the field sees, and the per-layer fit."""

from __future__ import annotations

import numpy as np
import torch

from gfm.config import GFMSettings
from gfm.features import Normalizer, layer_ids
from gfm.forecaster import Prefix
from gfm.model import GFM
from gfm.sampled import features, sample_index, sampled_forecast
from tests.helpers import make_record


def _mlp_run(seed: int = 0, M: int = 20) -> Prefix:
    """A random-walk run of a 2-layer MLP (6x20 and 20 biases, then 3x6 and 3 biases), k = 8."""
    layout = [("0.weight", (6, 20)), ("0.bias", (6,)), ("1.weight", (3, 6)), ("1.bias", (3,))]
    D = 120 + 6 + 18 + 3
    rng = np.random.default_rng(seed)
    W = np.cumsum(rng.normal(size=(M + 1, D)) * 0.01, 0) + rng.normal(size=D)
    return Prefix.from_record(make_record(W, layout=layout, spec={"optimizer": "adam"}), 8)


def test_the_sample_keeps_small_layers_whole_and_draws_s_of_each_large_one():
    prefix = _mlp_run()
    sample, large = sample_index(prefix, 16)
    ids = layer_ids(prefix.params)
    counts = np.bincount(ids[sample.numpy()], minlength=4)
    assert counts.tolist() == [16, 6, 16, 3]  # 120 -> 16, 6 whole, 18 -> 16, 3 whole
    assert [(sel.start, sel.stop) for sel, _ in large] == [(0, 120), (126, 144)]
    assert all(len(chosen) == 16 and set(chosen) <= set(sample.tolist()) for _, chosen in large)
    assert torch.equal(sample, sample_index(prefix, 16)[0])  # seeded: the same draw again


def test_a_field_linear_in_the_features_is_reproduced_exactly_off_the_sample():
    # given a "field" whose normalised displacement is a per-layer linear map of the features
    prefix = _mlp_run()
    norm = Normalizer.from_prefix(prefix)
    ids = layer_ids(prefix.params)
    coef = torch.tensor(
        [[0.1, 0.5, -0.2, 0.3, 0.1, 0.4, 0.05, 0.2, -0.1], [0.0, 1.0, 0, 0, 0, 0, 0, 0, 0]],
        dtype=torch.float64,
    )

    def field(index: torch.Tensor | None) -> torch.Tensor:
        pos = np.arange(prefix.D) if index is None else index.numpy()
        phi = features(prefix, norm, pos)
        y = (phi * coef[torch.from_numpy(ids[pos] % 2)]).sum(-1)
        return (norm.center[pos].double() + norm.scale[pos].double() * y)[None].float()

    # when only 16 parameters of each large layer are forecast by it
    out = sampled_forecast(field, prefix, 16)
    # then the fit forecasts the other parameters as the field would have
    torch.testing.assert_close(out, field(None), rtol=1e-4, atol=1e-5)


def test_a_sample_at_least_as_large_as_every_layer_changes_nothing():
    prefix = _mlp_run()
    full = GFM(GFMSettings(prior=False, width=8, depth=1))
    sampled = GFM(GFMSettings(prior=False, width=8, depth=1, sample_params=120))
    t = torch.tensor([0.6, 1.0])
    assert torch.equal(full.forecast(prefix, t), sampled.forecast(prefix, t))
    smaller = GFM(GFMSettings(prior=False, width=8, depth=1, sample_params=16))
    assert not torch.equal(full.forecast(prefix, t), smaller.forecast(prefix, t))
