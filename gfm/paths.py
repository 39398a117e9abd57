"""The probability path between recorded checkpoints: piecewise linear in t, optionally a tube.

References:
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025), Sec. 3 (conditional path between checkpoints).
    Tong et al., "Improving and generalizing flow-based generative models with minibatch optimal
    transport", TMLR 2024 (torchcfm), Sec. 3.2 (Gaussian tube of constant width σ).
"""

from __future__ import annotations

import torch

__all__ = ["LinearPath"]


class LinearPath:
    """Piecewise-linear path through checkpoints w_0..w_M recorded at t_i = i/M.

        i(t) = min(⌊t·M⌋, M−1),   s = t·M − i(t)
        μ_t  = (1 − s) · w_i + s · w_{i+1}
        u_t  = M · (w_{i+1} − w_i)
        w_t  = μ_t + σ · ε,  ε ~ N(0, I)

    u_t = dμ_t/dt is the target velocity of flow matching; with a tube of constant width σ the
    conditional velocity is still u_t (Tong et al. 2024, eq. 14 with constant σ_t).
    Source: Shou et al. 2025, Sec. 3.

    Shapes: W (*batch, M+1, D) trajectories; t (*batch, T) times in [0, 1]; results
    (*batch, T, D). A single trajectory is W (M+1, D) with t (T,). σ is in the units of W
    (the training loop passes normalised weights, so σ is relative to the layer scale).
    """

    def __init__(self, sigma: float = 0.0) -> None:
        """Build the path.

        Args:
            sigma: width of the Gaussian tube around the linear path (0: the path itself).

        Raises:
            ValueError: ``sigma`` is negative.
        """
        if sigma < 0:
            raise ValueError(f"LinearPath: `sigma` must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    @staticmethod
    def _locate(W: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval index i (*batch, T) and position s in it (*batch, T, 1)."""
        M = W.shape[-2] - 1
        x = t.to(W.dtype) * M
        i = x.floor().long().clamp(0, M - 1)
        s = (x - i).unsqueeze(-1)  # (*batch, T, 1)
        return i, s

    @staticmethod
    def _gather(W: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """W[..., i, :] for per-batch indices i (*batch, T) -> (*batch, T, D)."""
        idx = i.unsqueeze(-1).expand(*i.shape, W.shape[-1])  # (*batch, T, D)
        return torch.gather(W, -2, idx)

    def w_at(self, W: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of the path.

            μ_t = (1 − s) · w_i + s · w_{i+1},  i = min(⌊tM⌋, M−1), s = tM − i

        Args:
            W: (*batch, M+1, D) checkpoints.
            t: (*batch, T) times in [0, 1].

        Returns:
            (*batch, T, D) μ_t.
        """
        i, s = self._locate(W, t)
        return (1 - s) * self._gather(W, i) + s * self._gather(W, i + 1)

    def velocity(self, W: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Target velocity of the linear path.

            u = M · (w_{i+1} − w_i)  for t in [i/M, (i+1)/M)   (t = 1 uses the last interval)

        Source: Shou et al. 2025, Sec. 3.

        Args:
            W: (*batch, M+1, D) checkpoints.
            t: (*batch, T) times in [0, 1].

        Returns:
            (*batch, T, D) u.
        """
        M = W.shape[-2] - 1
        i, _ = self._locate(W, t)
        return M * (self._gather(W, i + 1) - self._gather(W, i))

    def sample(
        self,
        W: torch.Tensor,
        t: torch.Tensor | None = None,
        *,
        stratified: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample points on the path and their target velocities.

            t ~ U[0, 1)  (or t_i = (i + U_i)/M, one per interval, when stratified)
            w_t = μ_t + σ ε,   u_t = M · (w_{i+1} − w_i)

        Args:
            W: (*batch, M+1, D) checkpoints.
            t: (*batch, T) times; drawn when None.
            stratified: when drawing, one time per interval (T = M) instead of one (T = 1).
            generator: random generator for t and ε.

        Returns:
            t (*batch, T), w_t (*batch, T, D), u_t (*batch, T, D).
        """
        if t is None:
            M = W.shape[-2] - 1
            batch = W.shape[:-2]
            if stratified:
                U = torch.rand(*batch, M, generator=generator, dtype=W.dtype, device=W.device)
                t = (torch.arange(M, dtype=W.dtype, device=W.device) + U) / M  # (*batch, M)
            else:
                t = torch.rand(*batch, 1, generator=generator, dtype=W.dtype, device=W.device)
        w_t = self.w_at(W, t)
        if self.sigma > 0:
            eps = torch.randn(w_t.shape, generator=generator, dtype=W.dtype, device=W.device)
            w_t = w_t + self.sigma * eps
        return t, w_t, self.velocity(W, t)
