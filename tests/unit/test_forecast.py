"""forecast: chunking is exact, parameter subsets are exact, inputs are checked by name."""

import dataclasses

import numpy as np
import pytest
import torch

from gfm.data.schema import ParamMeta
from gfm.features import n_context
from gfm.fields import FIELDS, AdamField, SGDField
from gfm.forecast import forecast
from gfm.forecaster import Prefix
from gfm.surrogate import Surrogate
from tests.helpers import make_prefix

NAMED = [
    ("net.0.weight", (8, 5)),
    ("net.0.bias", (8,)),
    ("net.2.weight", (3, 8)),
    ("net.2.bias", (3,)),
]


def _prefix(optimizer: str = "adam", k: int = 6, M: int = 20, seed: int = 0) -> Prefix:
    """A drifting, noisy random walk over a small two-layer net's parameters."""
    return make_prefix(optimizer=optimizer, k=k, M=M, seed=seed, layout=NAMED)


def _field(optimizer: str = "adam", history: int = 3):
    torch.manual_seed(0)
    net = Surrogate(n_context(history), width=16, depth=2, time_embedding=4, history=history)
    return FIELDS[optimizer](net).eval()


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam", "adamw"])
def test_chunked_equals_unchunked(optimizer):
    # given
    field, prefix = _field(optimizer), _prefix(optimizer)
    t = torch.tensor([0.5, 0.75, 1.0])
    # when
    with torch.no_grad():
        full = forecast(field, prefix, t)
        chunked = forecast(field, prefix, t, chunk_size=7)
    # then
    assert full.shape == (3, prefix.D) and torch.isfinite(full).all()
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-7)


def test_index_forecasts_exactly_those_parameters():
    field, prefix = _field(), _prefix()
    idx = torch.tensor([3, 40, 41, 70])
    t = torch.tensor([1.0])
    with torch.no_grad():
        torch.testing.assert_close(
            forecast(field, prefix, t, index=idx),
            forecast(field, prefix, t)[:, idx],
            rtol=1e-6,
            atol=1e-7,
        )


def test_targets_on_the_grid_are_not_interpolated():
    # given an SGD field with a constant gradient: w(t) = w_k − S α g (t − t_k) exactly
    prefix = _prefix("sgd")
    g = torch.full((prefix.D,), 0.3, dtype=torch.float64)
    lr = torch.full((prefix.M + 1,), 0.01, dtype=torch.float64)
    prefix = dataclasses.replace(prefix, w=prefix.w.double(), lr=lr)
    t = torch.tensor([0.333, 0.8, 1.0], dtype=torch.float64)  # 0.333 is off the step grid
    # when
    pred = forecast(SGDField(grad_fn=lambda w, t: g), prefix, t, method="euler")
    # then
    S = prefix.M * prefix.record_every
    expected = prefix.w[-1] - S * 0.01 * g * (t[:, None] - prefix.t_k)
    torch.testing.assert_close(pred, expected)


def test_adjoint_gives_the_same_forecast_and_gradients_flow():
    field, prefix = _field("sgd"), _prefix("sgd")
    t = torch.tensor([1.0])
    plain = forecast(field, prefix, t)
    adj = forecast(field, prefix, t, adjoint=True)
    torch.testing.assert_close(adj, plain, rtol=1e-5, atol=1e-6)
    adj.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


def test_dopri5_agrees_with_rk4():
    field, prefix = _field("adam"), _prefix("adam")
    t = torch.tensor([1.0])
    with torch.no_grad():
        a = forecast(field, prefix, t, method="rk4", solver_steps=4)
        b = forecast(field, prefix, t, method="dopri5", rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# --- _check_inputs: every bad input names the argument ------------------------------------


def _bad(**changes):
    return dataclasses.replace(_prefix(), **changes)


@pytest.mark.parametrize(
    ("prefix", "t", "match"),
    [
        (_bad(params=ParamMeta.from_named_shapes(NAMED[:2])), [1.0], r"prefix\.params"),
        (_bad(w=_prefix().w[:, :10]), [1.0], r"prefix\.params"),
        (_bad(optimizer="sgd"), [1.0], r"prefix\.optimizer"),
        (_bad(optimizer="lbfgs"), [1.0], r"prefix\.optimizer"),
        (_bad(lr=torch.ones(5, dtype=torch.float64)), [1.0], r"prefix\.lr"),
        (_bad(w=torch.full((7, 75), float("nan"))), [1.0], r"prefix\.w"),
        (_bad(w=torch.zeros(1, 75)), [1.0], r"prefix\.w"),
        (_bad(w=torch.zeros(21, 75)), [1.0], r"prefix\.w"),
        (_bad(hparams={"lr": 0.01, "beta1": 1.5}), [1.0], r"prefix\.hparams\['beta1'\]"),
        (_bad(record_every=0), [1.0], r"prefix\.record_every"),
        (_prefix(), [0.1, 1.0], r"`t` must lie in \(t_k, 1\]"),
        (_prefix(), [0.5, 1.5], r"`t` must lie"),
        (_prefix(), [1.0, 0.5], r"`t` must be strictly increasing"),
        (_prefix(), [[0.5, 1.0]], r"`t` must be a non-empty 1-D"),
        (_prefix(), [float("nan")], r"`t` must be finite"),
    ],
)
def test_bad_inputs_name_the_argument(prefix, t, match):
    with pytest.raises(ValueError, match=match):
        forecast(_field("adam"), prefix, torch.tensor(t))


def test_bad_options_name_the_argument():
    field, prefix, t = _field(), _prefix(), torch.tensor([1.0])
    with pytest.raises(ValueError, match="`method` must be one of .*rk4"):
        forecast(field, prefix, t, method="rk5")
    with pytest.raises(ValueError, match="`chunk_size`"):
        forecast(field, prefix, t, chunk_size=0)
    with pytest.raises(ValueError, match="`step_size`"):
        forecast(field, prefix, t, step_size=-1.0)
    with pytest.raises(ValueError, match="`index`"):
        forecast(field, prefix, t, index=torch.tensor([1000]))
    with pytest.raises(ValueError, match="`index`"):
        forecast(AdamField(grad_fn=lambda w, t: w), prefix, t, index=torch.tensor([0]))
    with pytest.raises(TypeError, match="`field`"):
        forecast("adam", prefix, t)


def test_prefix_from_record_shape_is_accepted():
    # a prefix built the way the evaluation builds it (numpy record) forecasts finite weights
    prefix = _prefix()
    p = dataclasses.replace(prefix, w=torch.from_numpy(np.ascontiguousarray(prefix.w.numpy())))
    with torch.no_grad():
        assert torch.isfinite(forecast(_field(), p, torch.tensor([1.0]))).all()
