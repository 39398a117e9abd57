"""gfm.prior: the quadratic prior recovers runs of the optimizers on quadratics; checks its fit."""

import numpy as np
import pytest
import torch

from gfm import prior
from gfm.data.schema import ParamMeta
from gfm.features import resolve_hparams
from gfm.forecaster import Prefix
from gfm.prior import QuadFit, prior_velocity, quadfit

HPARAMS = {
    "sgd": {"lr": 0.05},
    "momentum": {"lr": 0.02, "momentum": 0.85, "nesterov": True},
    "rmsprop": {"lr": 0.01, "alpha": 0.95},
    "adam": {"lr": 0.01, "beta1": 0.9, "beta2": 0.99},
    "adamw": {"lr": 0.01, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.01},
}


def _quadratic_run(optimizer: str, *, D: int = 6, M: int = 40, r: int = 2, seed: int = 0):
    """The optimizer on L(w) = Σ_j ½ h_j (w_j − w*_j)², driven by torch itself: (M+1, D) weights."""
    gen = torch.Generator().manual_seed(seed)
    h = 0.5 + 1.5 * torch.rand(D, generator=gen, dtype=torch.float64)
    w_star = torch.randn(D, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(D, generator=gen, dtype=torch.float64))
    hp = {**resolve_hparams(optimizer, HPARAMS[optimizer]), **HPARAMS[optimizer]}
    opt = {
        "sgd": lambda: torch.optim.SGD([w], lr=hp["lr"]),
        "momentum": lambda: torch.optim.SGD(
            [w], lr=hp["lr"], momentum=hp["momentum"], nesterov=bool(hp["nesterov"])
        ),
        "rmsprop": lambda: torch.optim.RMSprop([w], lr=hp["lr"], alpha=hp["alpha"]),
        "adam": lambda: torch.optim.Adam([w], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"])),
        "adamw": lambda: torch.optim.AdamW(
            [w], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), weight_decay=hp["weight_decay"]
        ),
    }[optimizer]()
    rows = []
    for s in range(M * r + 1):
        if s % r == 0:
            rows.append(w.detach().clone())
        if s == M * r:
            break
        opt.zero_grad()
        (0.5 * h * (w - w_star).square()).sum().backward()
        opt.step()
    return torch.stack(rows), HPARAMS[optimizer]


def _prefix(W: torch.Tensor, optimizer: str, hparams: dict, k: int, r: int = 2) -> Prefix:
    M, D = W.shape[0] - 1, W.shape[1]
    return Prefix(
        w=W[: k + 1].float(),
        M=M,
        lr=torch.full((M + 1,), hparams["lr"], dtype=torch.float64),
        optimizer=optimizer,
        hparams=dict(hparams),
        record_every=r,
        params=ParamMeta.from_named_shapes([("w", (D,))]),
    )


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam", "adamw"])
def test_the_prior_continues_a_run_on_a_quadratic(optimizer):
    # given a noiseless run of the optimizer on a separable quadratic, a quarter observed
    W, hp = _quadratic_run(optimizer)
    k = 10
    # when
    fit = quadfit(_prefix(W, optimizer, hp, k))
    # then the prior's end is far closer to the true end than persistence
    err = np.mean((fit.path[-1] - W[-1].numpy()) ** 2)
    persistence = np.mean((W[k].numpy() - W[-1].numpy()) ** 2)
    assert fit.path.shape == (W.shape[0] - k, W.shape[1])
    np.testing.assert_allclose(fit.path[0], W[k].float().numpy().astype(np.float64), rtol=1e-6)
    assert err < 0.05 * persistence, (err, persistence)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "rmsprop", "adam", "adamw"])
def test_the_torch_fit_on_a_device_agrees_with_the_numpy_fit(optimizer):
    # given a run of the optimizer on a quadratic (the CPU stands in for an accelerator)
    W, hp = _quadratic_run(optimizer, D=24)
    prefix = _prefix(W, optimizer, hp, k=8)
    # when the prior is fitted in NumPy and in torch on a device
    host, device = quadfit(prefix), quadfit(prefix, device="cpu")
    # then the same equations give the same prior, to rounding, as NumPy arrays
    assert isinstance(device.path, np.ndarray) and device.path.dtype == np.float64
    scale = (W[-1] - W[0]).abs().max().item()
    np.testing.assert_allclose(device.path, host.path, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(device.z, host.z, rtol=1e-5, atol=1e-6)


def test_a_parameter_subset_is_fitted_exactly_as_in_the_whole():
    W, hp = _quadratic_run("adam", D=8)
    prefix = _prefix(W, "adam", hp, k=8)
    idx = torch.tensor([1, 4, 6])
    whole, part = quadfit(prefix), quadfit(prefix, index=idx)
    np.testing.assert_allclose(part.path, whole.path[:, idx.numpy()], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(part.z, whole.z[idx.numpy()], rtol=1e-9, atol=1e-12)


def test_without_evidence_of_an_optimum_the_prior_does_not_extrapolate_wildly():
    # given a prefix that has not moved at all
    W = torch.zeros(21, 4, dtype=torch.float64) + torch.tensor([0.1, -0.2, 0.3, 0.0])
    prefix = _prefix(W, "sgd", {"lr": 0.05}, k=5)
    # when
    fit = quadfit(prefix)
    # then it stays (at most a tiny drift), and its fit is exact
    assert np.abs(fit.path - W[5].numpy()).max() < 1e-6
    assert np.all(np.isfinite(fit.fit))


def test_the_stable_curvature_is_each_optimizers_divergence_bound():
    # α (h + λ) < 2, 2 (1 + μ) and 2 (1 + μ)/(1 + 2μ), with a 2% margin; none for adaptive steps
    assert prior.stable_curvature("sgd", {}, 0.1) == pytest.approx(0.98 * 20)
    assert prior.stable_curvature("sgd", {"weight_decay": 0.5}, 0.1) == pytest.approx(19.1)
    heavy = prior.stable_curvature("momentum", {"momentum": 0.8, "nesterov": 0.0}, 0.1)
    nesterov = prior.stable_curvature("momentum", {"momentum": 0.8, "nesterov": 1.0}, 0.1)
    assert heavy == pytest.approx(0.98 * 36) and nesterov == pytest.approx(0.98 * 36 / 2.6)
    assert all(prior.stable_curvature(o, {}, 0.1) is None for o in ("rmsprop", "adam", "adamw"))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_a_fitted_curvature_above_the_stable_bound_does_not_make_the_prior_diverge(optimizer):
    # given a fit (as a short, loose prefix can give) whose curvature is 4x the optimizer's bound
    W, hp = _quadratic_run(optimizer, D=2, M=40)
    prefix = _prefix(W, optimizer, hp, k=4)
    resolved = resolve_hparams(optimizer, hp)
    log_h = np.log(4 * prior.stable_curvature(optimizer, resolved, hp["lr"]))
    x = torch.tensor([[log_h, 1.0], [log_h, -2.0]], dtype=torch.float64)
    # when its path is simulated to the end of the run
    path = prior._simulate(prior._Ops(None), prefix, None, x, torch.zeros(2)).path
    # then it stays near the prefix (unclamped it grows geometrically: the test fails), finite
    c = prior.Normalizer.from_prefix(prefix).scale.double().numpy() / prefix.M
    reach = np.abs(path - W[4].numpy()).max(0) / c
    assert np.all(np.isfinite(path)) and np.all(reach < 10), reach


def test_prior_velocity_is_the_scaled_path_increment():
    path = np.array([[0.0, 1.0], [0.5, 1.0], [0.75, 2.0]])  # (M−k+1, N) with M−k = 2
    fit = QuadFit(path=path, fit=np.zeros(2), log_h=np.zeros(2), z=np.zeros(2))
    v = prior_velocity(fit, M=10, scale=torch.tensor([0.5, 2.0]))
    expected = torch.tensor([[10 * 0.5 / 0.5, 10 * 0.25 / 0.5], [0.0, 10 * 1.0 / 2.0]])
    torch.testing.assert_close(v, expected)
    assert fit.take(np.array([1])).path.shape == (3, 1)


def test_a_cached_fit_gives_the_same_prior_and_is_not_solved_again(tmp_path, monkeypatch):
    # given a fit stored in a cache folder
    W, hp = _quadratic_run("adam", D=8)
    prefix = _prefix(W, "adam", hp, k=8)
    idx = torch.tensor([0, 3, 5])
    fresh = quadfit(prefix, index=idx)
    first = quadfit(prefix, index=idx, cache=tmp_path)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 1
    # when the same fit is asked for again, with the solver unavailable
    monkeypatch.setattr(prior, "_fit", lambda *a: pytest.fail("the cached fit was solved again"))
    again = quadfit(prefix, index=idx, cache=tmp_path)
    # then the prior is the one a fresh fit gives, bit for bit
    for got in (first, again):
        np.testing.assert_array_equal(got.path, fresh.path)
        np.testing.assert_array_equal(got.fit, fresh.fit)
        np.testing.assert_array_equal(got.z, fresh.z)


def test_another_prefix_or_a_damaged_entry_is_a_cache_miss(tmp_path):
    W, hp = _quadratic_run("sgd", D=4)
    quadfit(_prefix(W, "sgd", hp, k=6), cache=tmp_path)
    # another observed checkpoint, other parameters, other weights: each its own entry
    quadfit(_prefix(W, "sgd", hp, k=7), cache=tmp_path)
    quadfit(_prefix(W, "sgd", hp, k=6), index=torch.tensor([1, 2]), cache=tmp_path)
    quadfit(_prefix(W * 1.01, "sgd", hp, k=6), cache=tmp_path)
    files = sorted(tmp_path.rglob("*.npz"))
    assert len(files) == 4
    # a truncated entry is fitted again and rewritten, not an error
    for f in files:
        f.write_bytes(f.read_bytes()[:10])
    fit = quadfit(_prefix(W, "sgd", hp, k=6), cache=tmp_path)
    np.testing.assert_array_equal(fit.path, quadfit(_prefix(W, "sgd", hp, k=6)).path)
    assert sum(f.stat().st_size > 10 for f in tmp_path.rglob("*.npz")) == 1


def test_levenberg_marquardt_simulates_each_point_once_and_keeps_its_residuals():
    # given a least-squares problem whose residuals count the rows they are asked to simulate
    rng = np.random.default_rng(0)
    A, y = rng.standard_normal((7, 2)), rng.standard_normal((7, 5))
    reps_asked = []

    def residuals(x, reps):  # rows x (reps·B, 2) -> (7, reps·B), each column on its own
        reps_asked.append(reps)
        return A @ x.T - np.tile(y, (1, reps))

    ops, iters = prior._Ops(None), 6
    x0, target, lam = np.zeros((5, 2)), np.zeros((5, 2)), np.asarray([1e-3, 1e-3])
    # when it is solved
    x, res, obj = prior._levenberg_marquardt(ops, x0, target, lam, residuals, iters)
    # then each iteration simulates only the P Jacobian neighbours and the trial point
    assert reps_asked == [1] + [2, 1] * iters
    # and the residuals it returns are those of the x it returns, bit for bit
    np.testing.assert_array_equal(res, residuals(x, 1))
    np.testing.assert_array_equal(obj, (res**2).sum(0) + ((x - target) ** 2 * lam).sum(1))
    # and it converges to the regularised least-squares solution
    exact = np.linalg.solve(A.T @ A + np.diag(lam), A.T @ y).T
    np.testing.assert_allclose(x, exact, rtol=1e-3, atol=1e-3)
