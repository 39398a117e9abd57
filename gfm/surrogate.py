"""The one network of GFM: a branch/trunk surrogate shared by all parameters, runs and optimizers.

References:
    Lu et al., "Learning nonlinear operators via DeepONet", Nat. Mach. Intell. 2021 (the
    branch/trunk factorisation).
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025) (the surrogate as the fields' gradient or velocity).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from gfm.features import N_LR, N_RUN

__all__ = ["Grad", "Surrogate"]

_SLOPE_MAX = 2.0  # largest relaxation rate of ŵ, per recorded interval (rk4 is stable below 2.78)
_SLOPE_SHIFT = 4.0  # initial slope ≈ sigmoid(−4) · 2 ≈ 0.04 per interval: start nearly linear


class Grad(NamedTuple):
    """Normalised gradient surrogate on a grid (..., N, T).

    Attributes:
        mean: ĝ, the expected (minibatch) gradient in units g_s.
        var: σ̂² >= 0, the minibatch gradient noise variance in units g_s² (0 for an injected
            gradient). Only the second moments of RMSprop and Adam see it: with noise, their
            update m/√v is smaller than sign(ĝ), which a deterministic ĝ alone cannot express.
        gate: γ, the weight of the prior's velocity (``gfm.prior``), None without a prior.
    """

    mean: torch.Tensor
    var: torch.Tensor
    gate: torch.Tensor | None = None


class Surrogate(nn.Module):
    """The one network of GFM, shared by all parameters, runs and optimizers.

        f(ŵ, t) = ⟨a, τ⟩ + ŵ · 2M · σ(⟨b, τ⟩ − 4),   σ̂²(t) = softplus(⟨n, τ⟩),   γ(t) = ⟨p, τ⟩
        (a, b, n[, p]) = branch(ctx) (3 or 4 × K),   τ = trunk(t, lr features, run context) (K)

    The branch depends only on a parameter's context and is computed once per forecast; the
    trunk is shared by all parameters of a run. Evaluating the field then costs O(K) per
    parameter, so an ODE step over 14k parameters is one small matrix product (DeepONet's
    branch/trunk factorisation, Lu et al. 2021). f is affine in ŵ with a slope in
    [0, 2 per recorded interval]: locally a loss is quadratic along the path, a non-negative
    slope makes every field relax instead of blow up, and bounding it keeps a fixed-step rk4
    step per interval stable.

    Args:
        n_context: F_ctx, columns of ``gfm.features.context``.
        width: hidden width of branch and trunk, and K.
        depth: hidden layers of branch and trunk.
        time_embedding: sinusoidal features of t (even; 0: t only).
        history: H, recent increments in the context (recorded so forecasting rebuilds it).
        prior: a fourth branch row for γ, the gate of the prior's velocity (``gfm.prior``).
    """

    def __init__(
        self,
        n_context: int,
        *,
        width: int = 64,
        depth: int = 3,
        time_embedding: int = 16,
        history: int = 4,
        prior: bool = False,
    ) -> None:
        super().__init__()
        self.prior = prior
        self.rows = 4 if prior else 3
        self.n_context, self.width, self.depth = n_context, width, depth
        self.time_embedding, self.history = time_embedding, history
        n_freq = time_embedding // 2
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32))
        self.branch = _mlp(n_context, width, self.rows * width, depth)
        self.branch_skip = nn.Linear(
            n_context, self.rows * width
        )  # linear path for near-linear maps
        self.trunk_net = _mlp(1 + 2 * n_freq + N_LR + N_RUN + history, width, width, depth)

    def encode(self, ctx: torch.Tensor) -> torch.Tensor:
        """Branch code of each parameter: (..., F_ctx) -> (..., rows, K)."""
        code = self.branch(ctx) + self.branch_skip(ctx)  # (..., rows·K)
        return code.unflatten(-1, (self.rows, self.width))  # (..., rows, K)

    def trunk(self, t: torch.Tensor, lr_feat: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
        """Trunk features of times t.

        Args:
            t: (..., T) times.
            lr_feat: (..., T, N_LR) ``gfm.features.lr_features`` at t.
            run: (..., N_RUN + history) ``gfm.features.run_context``.

        Returns:
            (..., T, K).
        """
        x = t.unsqueeze(-1) * self.freqs  # (..., T, n_freq)
        run = run.unsqueeze(-2).expand(*t.shape, run.shape[-1])  # (..., T, F_run)
        inp = torch.cat([t.unsqueeze(-1), x.sin(), x.cos(), lr_feat, run], -1)
        return self.trunk_net(inp) / math.sqrt(self.width)

    @staticmethod
    def combine(
        code: torch.Tensor, trunk: torch.Tensor, w_hat: torch.Tensor, M: torch.Tensor
    ) -> Grad:
        """Surrogate on a grid of parameters × times.

        Args:
            code: (..., N, rows, K) branch codes.
            trunk: (..., T, K) trunk features.
            w_hat: (..., N, T) normalised weights.
            M: recorded intervals of the run, 0-d or (..., 1, 1).

        Returns:
            ``Grad`` of (..., N, T) tensors.
        """
        abn = torch.einsum("...npk,...tk->...npt", code, trunk)  # (..., N, rows, T)
        slope = _SLOPE_MAX * M * torch.sigmoid(abn[..., 1, :] - _SLOPE_SHIFT)
        gate = abn[..., 3, :] if abn.shape[-2] > 3 else None
        return Grad(abn[..., 0, :] + slope * w_hat, nn.functional.softplus(abn[..., 2, :]), gate)


def _mlp(n_in: int, width: int, n_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.SiLU()]
    layers.append(nn.Linear(width if depth else n_in, n_out))
    return nn.Sequential(*layers)
