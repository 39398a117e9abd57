"""Vector fields with the true gradient injected: they must reproduce the optimizers they model.

Closed forms (torchdiffeq ``problems.py`` style): full-batch gradient descent on least squares
and torch's own optimizers on a quadratic are run step by step, recorded, and compared with the
fields' forecasts from a prefix of the same run.
"""

import dataclasses

import numpy as np
import pytest
import torch

from gfm.data.schema import ParamMeta
from gfm.features import Normalizer
from gfm.fields import (
    FIELDS,
    AdamField,
    AdamWField,
    Cond,
    FreeField,
    MomentumField,
    RMSpropField,
    SGDField,
    scan_states,
)
from gfm.forecast import forecast
from gfm.forecaster import Prefix
from gfm.surrogate import Surrogate
from tests.helpers import make_prefix

D = 6


def _quadratic(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """L(w) = ½ wᵀAw − bᵀw with eigenvalues of A in [0.5, 2]."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(0.5, 2.0, D, dtype=torch.float64)) @ Q.T
    return A, torch.randn(D, generator=g, dtype=torch.float64)


def _torch_run(optimizer: str, hparams: dict, lr: float, steps: int, record_every: int):
    """Record w every `record_every` steps of the real torch optimizer on the quadratic."""
    A, b = _quadratic()
    w = torch.nn.Parameter(torch.ones(D, dtype=torch.float64))
    if optimizer in ("sgd", "momentum"):
        opt = torch.optim.SGD([w], lr=lr, **hparams)
    elif optimizer == "rmsprop":
        opt = torch.optim.RMSprop([w], lr=lr, **hparams)
    else:
        cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
        kw = {"betas": (hparams["beta1"], hparams["beta2"])}
        kw |= {"weight_decay": hparams["weight_decay"]} if "weight_decay" in hparams else {}
        opt = cls([w], lr=lr, **kw)
    ws = [w.detach().clone()]
    for s in range(steps):
        opt.zero_grad()
        w.grad = A @ w.detach() - b
        opt.step()
        if (s + 1) % record_every == 0:
            ws.append(w.detach().clone())
    return torch.stack(ws), (lambda w, t: A @ w - b)


def _prefix(W: torch.Tensor, k: int, optimizer: str, hparams: dict, lr: float, r: int) -> Prefix:
    M = W.shape[0] - 1
    return Prefix(
        w=W[: k + 1],
        M=M,
        lr=torch.full((M + 1,), lr, dtype=torch.float64),
        optimizer=optimizer,
        hparams={"lr": lr, **hparams},
        record_every=r,
        params=ParamMeta.from_named_shapes([("weight", (1, W.shape[1]))]),
    )


def _rel_err(pred: torch.Tensor, truth: torch.Tensor, w_k: torch.Tensor) -> float:
    """Largest error over the horizon relative to the distance the run still travels."""
    return float((pred - truth).norm(dim=-1).max() / (truth[-1] - w_k).norm())


# --- least squares with full-batch gradient descent: the SGD field is exact -------------------


def _least_squares_gd(lr: float = 0.05, steps: int = 120, r: int = 3, d: int = 5):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, d))
    X = (X - X.mean(0)) / X.std(0)
    y = X @ rng.standard_normal(d) + 0.5 + 0.1 * rng.standard_normal(64)
    Xb = torch.from_numpy(np.hstack([X, np.ones((64, 1))]))  # weight columns, then bias
    yt = torch.from_numpy(y)

    def grad(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return Xb.T @ (Xb @ w - yt) / len(yt)  # ∇ of |Xw + b − y|² / (2n)

    w = torch.zeros(d + 1, dtype=torch.float64)
    ws = [w]
    for s in range(steps):
        w = w - lr * grad(w, None)
        if (s + 1) % r == 0:
            ws.append(w)
    W = torch.stack(ws)
    H = Xb.T @ Xb / len(yt)
    w_star = torch.linalg.solve(H, Xb.T @ yt / len(yt))
    params = ParamMeta.from_named_shapes([("weight", (1, d)), ("bias", (1,))])
    M = W.shape[0] - 1

    def prefix(k: int) -> Prefix:
        return Prefix(
            w=W[: k + 1],
            M=M,
            lr=torch.full((M + 1,), lr, dtype=torch.float64),
            optimizer="sgd",
            hparams={"lr": lr},
            record_every=r,
            params=params,
        )

    return W, grad, prefix, H, w_star, steps


def test_sgd_field_euler_with_step_one_over_S_reproduces_gradient_descent_exactly():
    # given a GD run and a prefix of it
    W, grad, prefix, _, _, S = _least_squares_gd()
    k = 10
    t = torch.arange(k + 1, W.shape[0], dtype=torch.float64) / (W.shape[0] - 1)
    # when integrating the SGD field with Euler steps of one optimizer step
    pred = forecast(SGDField(grad_fn=grad), prefix(k), t, method="euler", step_size=1 / S)
    # then every later checkpoint is the GD iterate (to float64 round-off)
    torch.testing.assert_close(pred, W[k + 1 :], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_sgd_field_with_higher_order_solver_follows_the_gradient_flow(method):
    # given: the ODE dw/dt = −S α ∇L(w) has the closed form
    #   w(t) = w* + V exp(−S α Λ (t − t_k)) Vᵀ (w_k − w*)
    W, grad, prefix, H, w_star, S = _least_squares_gd()
    lr, k, M = 0.05, 10, W.shape[0] - 1
    t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
    lam, V = torch.linalg.eigh(H)
    decay = torch.exp(-S * lr * lam[None, :] * (t[:, None] - k / M))  # (T, D)
    flow = w_star + ((V.T @ (W[k] - w_star))[None, :] * decay) @ V.T
    # when
    pred = forecast(SGDField(grad_fn=grad), prefix(k), t, method=method, rtol=1e-9, atol=1e-12)
    # then: on the flow to solver tolerance (rk4: one step per interval of 3 GD steps) ...
    tol = 1e-4 if method == "rk4" else 1e-7
    assert _rel_err(pred, flow, W[k]) < tol
    # ... which differs from discrete GD by its O(α) discretisation gap, (1 − αλ)^n vs e^{−αλn}
    gap = _rel_err(flow, W[k + 1 :], W[k])
    assert 1e-3 < gap < 0.1


# --- momentum, RMSprop, Adam, AdamW against torch's optimizers -------------------------------

CASES = [
    ("momentum", MomentumField, {"momentum": 0.9}, 0.01),
    ("momentum", MomentumField, {"momentum": 0.9, "nesterov": True}, 0.01),
    ("rmsprop", RMSpropField, {"alpha": 0.9}, 0.01),
    ("adam", AdamField, {"beta1": 0.9, "beta2": 0.99}, 0.01),
    ("adamw", AdamWField, {"beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1}, 0.01),
]


@pytest.mark.parametrize(("optimizer", "cls", "hparams", "lr"), CASES)
def test_field_euler_at_one_optimizer_step_reproduces_torch_exactly(optimizer, cls, hparams, lr):
    # given a run recorded at every step (the prefix recurrence then gives torch's exact state);
    # 60 steps: RMSprop near its optimum is chaotic, so round-off grows after a few hundred
    W, grad = _torch_run(optimizer, hparams, lr, steps=60, record_every=1)
    k = 15
    p = _prefix(W, k, optimizer, hparams, lr, r=1)
    t = torch.arange(k + 1, 61, dtype=torch.float64) / 60
    # when
    pred = forecast(cls(grad_fn=grad), p, t, method="euler", step_size=1 / 60)
    # then
    torch.testing.assert_close(pred, W[k + 1 :], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("optimizer", "cls", "hparams", "lr"), CASES)
def test_interval_solver_at_one_optimizer_step_per_interval_is_torch_exactly(
    optimizer, cls, hparams, lr
):
    # given a run recorded at every step: one interval is one optimizer step
    W, grad = _torch_run(optimizer, hparams, lr, steps=60, record_every=1)
    k = 15
    p = _prefix(W, k, optimizer, hparams, lr, r=1)
    t = torch.arange(k + 1, 61, dtype=torch.float64) / 60
    # when each interval is one interval_step (state advanced by its exact decay)
    pred = forecast(cls(grad_fn=grad), p, t, method="interval")
    # then the forecast is torch's iterate
    torch.testing.assert_close(pred, W[k + 1 :], rtol=0, atol=1e-10)


def test_drift_adds_the_gated_prior_velocity():
    # given a prior-gated surrogate (4 branch rows: a, b, n and the gate γ) on a small prefix
    torch.manual_seed(0)
    prefix = make_prefix(k=3, M=8)  # D = 7
    net = Surrogate(5, width=8, depth=1, time_embedding=2, history=1, prior=True)
    code = net.encode(torch.randn(prefix.D, 5))
    assert code.shape == (prefix.D, 4, 8)
    g = net.combine(code, torch.randn(2, 8), torch.zeros(prefix.D, 2), torch.tensor(8.0))
    assert g.gate is not None and g.gate.shape == (prefix.D, 2)
    cond = Cond.from_prefix(prefix, Normalizer.from_prefix(prefix))
    prior_v = torch.randn(prefix.D, 2)
    args = (torch.zeros(prefix.D, 2), [], g, torch.ones(1, 2), torch.zeros(2))
    # when / then: drift = velocity + γ ṗ, and the velocity alone without a prior velocity
    field = FreeField(net)
    with_prior = dataclasses.replace(cond, prior_v=prior_v)
    torch.testing.assert_close(field.drift(*args, with_prior), -g.mean + g.gate * prior_v)
    torch.testing.assert_close(field.drift(*args, cond), -g.mean)


# tolerance: largest error over the forecast relative to the distance still travelled, for one
# rk4 step per recorded interval; the gap is the discrete optimizer vs its continuous-time limit
# (heavy-ball's is the largest: O(α/(1 − μ)) per unit curvature).
TRACKING_TOL = {"momentum": 0.1, "rmsprop": 0.03, "adam": 0.005, "adamw": 0.005}


@pytest.mark.parametrize(("optimizer", "cls", "hparams", "lr"), CASES)
@pytest.mark.parametrize("record_every", [1, 4])
def test_field_rk4_tracks_torch_optimizer(optimizer, cls, hparams, lr, record_every):
    # given 200 optimizer steps of torch on the quadratic, observed for the first quarter
    W, grad = _torch_run(optimizer, hparams, lr, steps=200, record_every=record_every)
    M = W.shape[0] - 1
    k = M // 4
    p = _prefix(W, k, optimizer, hparams, lr, r=record_every)
    t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
    # when
    pred = forecast(cls(grad_fn=grad), p, t, method="rk4")
    # then
    assert _rel_err(pred, W[k + 1 :], W[k]) < TRACKING_TOL[optimizer]


# --- building blocks -----------------------------------------------------------------------


def test_scan_states_matches_the_recurrence():
    # given
    phi = torch.randn(2, 3, 7, dtype=torch.float64)
    decay = torch.tensor([0.5, 0.9], dtype=torch.float64).view(2, 1, 1)
    # when
    s = scan_states(phi, decay)
    # then: s_0 = 0, s_{i+1} = d s_i + (1 − d) φ_i
    ref = [torch.zeros(2, 3, dtype=torch.float64)]
    for i in range(7):
        ref.append(decay[:, :, 0] * ref[-1] + (1 - decay[:, :, 0]) * phi[..., i])
    torch.testing.assert_close(s, torch.stack(ref, -1))


def test_surrogate_slope_is_bounded_and_variance_positive():
    # given a network with random weights and extreme inputs
    torch.manual_seed(0)
    net = Surrogate(10, width=8, depth=2, time_embedding=4, history=1)
    code = 100 * torch.randn(5, 3, 8)
    trunk = torch.randn(4, 8)
    M = torch.tensor(50.0)
    # when
    g0 = net.combine(code, trunk, torch.zeros(5, 4), M)
    g1 = net.combine(code, trunk, torch.ones(5, 4), M)
    # then: 0 <= d ĝ / d ŵ <= 2 per recorded interval, σ̂² >= 0
    slope = g1.mean - g0.mean
    assert torch.all(slope >= 0) and torch.all(slope <= 2 * 50 + 1e-4)
    assert torch.all(g0.var >= 0)


def test_registry_and_constructor_errors():
    assert set(FIELDS) == {"free", "sgd", "momentum", "rmsprop", "adam", "adamw"}
    with pytest.raises(ValueError, match="grad_fn"):
        SGDField()
    with pytest.raises(ValueError, match="grad_fn"):
        SGDField(Surrogate(4), grad_fn=lambda w, t: w)
