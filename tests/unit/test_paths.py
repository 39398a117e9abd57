"""LinearPath: mean, velocity and samples recomputed independently (torchcfm's test_fm style)."""

import numpy as np
import pytest
import torch

from gfm.paths import LinearPath


def _reference(W: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-linear interpolation written out with a loop over intervals."""
    M = W.shape[0] - 1
    for i in range(M):
        lo, hi = i / M, (i + 1) / M
        if lo <= t < hi or (i == M - 1 and t == 1.0):
            s = (t - lo) / (hi - lo)
            return W[i] + s * (W[i + 1] - W[i]), (W[i + 1] - W[i]) / (hi - lo)
    raise AssertionError(t)


@pytest.fixture
def W() -> torch.Tensor:
    return torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_w_at_and_velocity_match_reference(W):
    # given
    path = LinearPath()
    t = torch.tensor([0.0, 0.05, 1 / 6, 0.5, 0.99, 1.0], dtype=torch.float64)
    # when
    mu, u = path.w_at(W, t), path.velocity(W, t)
    # then
    for j, tj in enumerate(t.tolist()):
        ref_mu, ref_u = _reference(W.numpy(), tj)
        np.testing.assert_allclose(mu[j].numpy(), ref_mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(u[j].numpy(), ref_u, rtol=1e-12, atol=1e-12)


def test_path_passes_through_checkpoints(W):
    M = W.shape[0] - 1
    t = torch.arange(M + 1, dtype=torch.float64) / M
    torch.testing.assert_close(LinearPath().w_at(W, t), W)


def test_velocity_is_finite_difference_of_mean(W):
    path = LinearPath()
    t = torch.tensor([0.1, 0.37, 0.8], dtype=torch.float64)
    h = 1e-6
    fd = (path.w_at(W, t + h) - path.w_at(W, t - h)) / (2 * h)
    torch.testing.assert_close(path.velocity(W, t), fd, rtol=1e-6, atol=1e-6)


def test_batched_trajectories(W):
    # given two runs and per-run times
    Wb = torch.stack([W, 2 * W])  # (2, M+1, D)
    t = torch.tensor([[0.2, 0.9], [0.2, 0.9]], dtype=torch.float64)
    # when
    mu = LinearPath().w_at(Wb, t)
    # then
    assert mu.shape == (2, 2, W.shape[1])
    torch.testing.assert_close(mu[1], 2 * mu[0])


def test_sample_stratified_has_one_time_per_interval(W):
    M = W.shape[0] - 1
    t, w_t, u = LinearPath().sample(W, stratified=True, generator=torch.Generator().manual_seed(1))
    assert t.shape == (M,) and w_t.shape == (M, W.shape[1]) and u.shape == (M, W.shape[1])
    torch.testing.assert_close(torch.floor(t * M), torch.arange(M, dtype=t.dtype))
    torch.testing.assert_close(u, M * (W[1:] - W[:-1]))


def test_sample_tube_keeps_velocity_and_adds_noise_of_width_sigma():
    # given a constant trajectory, samples are pure tube noise
    W = torch.zeros(3, 20000, dtype=torch.float64)
    t = torch.full((1,), 0.3, dtype=torch.float64)
    # when
    _, w_t, u = LinearPath(sigma=0.5).sample(W, t, generator=torch.Generator().manual_seed(0))
    # then
    assert torch.all(u == 0)
    assert abs(float(w_t.std()) - 0.5) < 0.01


def test_negative_sigma_is_rejected():
    with pytest.raises(ValueError, match="sigma"):
        LinearPath(sigma=-1.0)
