"""Context features: normalisation round trip, schedule features, shapes and names."""

import numpy as np
import pytest
import torch

from gfm.data.schema import ParamMeta
from gfm.features import (
    N_LR,
    N_RUN,
    Normalizer,
    context,
    context_names,
    layer_ids,
    layer_rms,
    lr_at,
    lr_features,
    n_context,
    resolve_hparams,
    run_context,
    trend_features,
)
from gfm.forecaster import Prefix

NAMED = [("b.weight", (3, 4)), ("b.bias", (3,)), ("a.weight", (2, 3))]


def _prefix(k: int = 5, M: int = 10) -> Prefix:
    params = ParamMeta.from_named_shapes(NAMED)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(k + 1, len(params), generator=g).cumsum(0)
    w[:, 12:15] *= 100.0  # a layer that moves 100× faster
    lr = torch.tensor([0.1] * 5 + [0.03] * (M - 4), dtype=torch.float64)  # step schedule
    return Prefix(
        w=w,
        M=M,
        lr=lr,
        optimizer="adamw",
        hparams={"lr": 0.1, "beta1": 0.8},
        record_every=2,
        params=params,
    )


def test_layer_ids_follow_state_dict_order():
    ids = layer_ids(ParamMeta.from_named_shapes(NAMED))
    assert ids.tolist() == [0] * 12 + [1] * 3 + [2] * 6


def test_normalizer_is_per_layer_and_inverts_exactly():
    # given
    p = _prefix()
    norm = Normalizer.from_prefix(p)
    # then: c is the RMS of the layer's recent increments M·Δw (last 4 intervals)
    inc = p.M * (p.w[2:] - p.w[1:-1])[:, 12:15]
    assert float(norm.scale[12]) == pytest.approx(float(inc.pow(2).mean().sqrt()), rel=1e-5)
    assert float(norm.scale[12]) > 30 * float(norm.scale[0])
    torch.testing.assert_close(norm.decode(norm.encode(p.w)), p.w)
    torch.testing.assert_close(norm.encode(p.w[-1]), torch.zeros(p.D))
    u = torch.randn(p.D)
    torch.testing.assert_close(norm.decode_velocity(norm.encode_velocity(u)), u)


def test_lr_schedule_features():
    p = _prefix()
    t = torch.tensor([0.0, 0.45, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        lr_at(p, t), torch.tensor([0.1, 0.1, 0.03, 0.03], dtype=torch.float64)
    )
    f = lr_features(p, t)
    assert f.shape == (4, N_LR)
    # log α(t)/α_0, log α(t)/α_k (α_k = lr[5] = 0.03), ∫_t^1 α / α_k
    np.testing.assert_allclose(f[:, 0].numpy(), np.log([1, 1, 0.3, 0.3]), rtol=1e-6)
    np.testing.assert_allclose(f[:, 1].numpy(), np.log([1 / 0.3, 1 / 0.3, 1, 1]), rtol=1e-5)
    remaining = [(0.5 * 0.1 + 0.5 * 0.03), 0.05 * 0.1 + 0.5 * 0.03, 0.5 * 0.03, 0.0]
    np.testing.assert_allclose(f[:, 2].numpy(), np.array(remaining) / 0.03, rtol=1e-5, atol=1e-7)


def test_context_shape_names_and_index():
    p = _prefix()
    norm = Normalizer.from_prefix(p)
    ctx = context(p, norm, history=3)
    names = context_names(3)
    assert ctx.shape == (p.D, n_context(3)) and len(names) == n_context(3)
    assert torch.isfinite(ctx).all()
    # inc_0: newest increment in velocity units, step-size corrected (interval 4: α=0.1, α_k=0.03)
    expected = p.M * (p.w[5] - p.w[4]) / norm.scale * (0.03 / 0.1)
    torch.testing.assert_close(ctx[:, names.index("inc_0")], expected.float())
    assert ctx[:, names.index("is_bias")].tolist() == [0.0] * 12 + [1.0] * 3 + [0.0] * 6
    idx = torch.tensor([0, 13, 20])
    torch.testing.assert_close(context(p, norm, history=3, index=idx), ctx[idx])
    # the run features close every row: AdamW one-hot
    assert ctx[0, names.index("opt_adamw")] == 1.0


def test_context_of_chunks_with_the_layer_trend_computed_once_equals_the_whole():
    # given a prefix described in chunks, the layer trend (which reads all D) computed once
    p = _prefix()
    norm = Normalizer.from_prefix(p)
    whole = context(p, norm, history=3)
    trend = layer_rms(p, norm, 3)
    # when each chunk gets it
    chunks = [
        context(p, norm, history=3, index=torch.arange(a, min(a + 4, p.D)), layer_trend=trend)
        for a in range(0, p.D, 4)
    ]
    # then the rows are bit-identical to describing every parameter at once
    assert trend.shape == (3, 3)
    assert torch.equal(torch.cat(chunks), whole)


def test_run_context_and_defaults():
    p = _prefix()
    assert run_context(p, history=3).shape == (N_RUN + 3,)
    assert trend_features(p, history=3).shape == (3,)
    hp = resolve_hparams("adamw", {"lr": 0.1, "beta1": 0.8})
    assert hp["beta1"] == 0.8 and hp["beta2"] == 0.999 and hp["weight_decay"] == 0.01
    with pytest.raises(ValueError, match="optimizer"):
        resolve_hparams("lbfgs", {})
