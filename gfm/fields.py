"""Vector fields of Gradient Flow Matching: one small class per field, chosen from ``FIELDS``.

Every field works in normalised units (``gfm.features.Normalizer``): ŵ = (w − w_k)/c, time t in
units of the whole run (t_i = i/M), and returns dŵ/dt. A gradient step w_{s+1} = w_s − α_s ∇L(w_s)
is one Euler step of dw/dt = −S·α(t)·∇L(w) with S = M · record_every optimizer steps per unit t
(Shou et al. 2025, Sec. 3), so each optimizer-aware field is the optimizer's own update in
continuous time, with the optimizer's state as extra ODE state and a gradient surrogate g.

The surrogate is either the shared network ``Surrogate`` or an injected gradient function
g(w, t) in original units (the true gradient, for tests). In the fields it appears normalised:

    ĝ = g / g_s,   g_s = c / (S · α_k)      (α_k = α(t_k); times 1 − μ for SGD with momentum)

so that for SGD dŵ/dt = −(α(t)/α_k) · ĝ and ĝ is O(1) for every layer and optimizer.

Optimizer states are exponential moving averages; one optimizer step is s ← β s + (1 − β) φ(g)
(φ = g, g², or g/(1 − μ) for a momentum buffer). Its continuous form, with the step taken at t
using the updated state s⁺ as the discrete optimizer does,

    ds/dt = S · (1 − β) · (φ(ĝ) − s),     s⁺ = β s + (1 − β) φ(ĝ),     dŵ/dt = velocity(ŵ, s⁺, ĝ)

makes an Euler step of size 1/S exactly one optimizer step (as for SGD), so with the true
gradient the fields reproduce torch's optimizers step by step, and coarser rk4/dopri5 steps
integrate the optimizer's gradient-flow limit. Along the observed path, where the states are
accumulated from one ĝ per recorded interval (``scan_states``), the exact per-interval decay β^r
of r discrete steps is used.

References:
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025).
    torch.optim.SGD / RMSprop / Adam / AdamW documentation (the update rules written below).
    Lu et al., "Learning nonlinear operators via DeepONet", Nat. Mach. Intell. 2021 (the
    branch/trunk factorisation of ``Surrogate``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from gfm.data.names import OPTIMIZERS
from gfm.features import Normalizer, resolve_hparams
from gfm.forecaster import Prefix
from gfm.surrogate import Grad, Surrogate

__all__ = [
    "FIELDS",
    "AdamField",
    "AdamWField",
    "Cond",
    "FreeField",
    "GradFn",
    "MomentumField",
    "RMSpropField",
    "SGDField",
    "VectorField",
    "interval_step",
    "scan_states",
]

GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""g = grad_fn(w, t): w (D,) weights in original units, t () time -> g (D,) gradient."""

_TINY = 1e-20  # keeps sqrt differentiable at 0 in the second-moment fields


@dataclass(frozen=True)
class Cond:
    """What a field knows about the run and the parameters it moves.

    Per-parameter tensors have the parameter grid's shape with a trailing time axis of 1
    ((N, 1) when forecasting one run, (R, N, 1) in a training batch of R runs); per-run tensors
    broadcast against it (0-d, or (R, 1, 1)). ``code`` is (..., N, 2, K) or None.

    Attributes:
        center: w_k.
        scale: c, the layer's velocity scale.
        g_scale: g_s = c / (S · α_k) (times 1 − μ for SGD with momentum), the unit of the
            normalised gradient ĝ, chosen so that ĝ = O(1) moves ŵ by O(1) per unit t.
        S: optimizer steps in the whole run (M · record_every).
        record_every: r, optimizer steps per recorded interval.
        alpha_k: α(t_k).
        momentum, nesterov, alpha, beta1, beta2, weight_decay, eps: resolved hyperparameters
            (``gfm.features.resolve_hparams``; 0 where the optimizer has no such key).
        code: the surrogate's branch code of these parameters.
        prior_v: ṗ, the prior's normalised velocity of these parameters over the interval being
            stepped (``gfm.prior.prior_velocity``), or None.
    """

    center: torch.Tensor
    scale: torch.Tensor
    g_scale: torch.Tensor
    S: torch.Tensor
    record_every: torch.Tensor
    alpha_k: torch.Tensor
    momentum: torch.Tensor
    nesterov: torch.Tensor
    alpha: torch.Tensor
    beta1: torch.Tensor
    beta2: torch.Tensor
    weight_decay: torch.Tensor
    eps: torch.Tensor
    code: torch.Tensor | None = None
    prior_v: torch.Tensor | None = None

    _PER_PARAM: ClassVar[tuple[str, ...]] = ("center", "scale", "g_scale", "code", "prior_v")

    @staticmethod
    def from_prefix(
        prefix: Prefix,
        norm: Normalizer,
        *,
        index: torch.Tensor | None = None,
        code: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Cond:
        """Conditioning of the parameters ``index`` (N,) (all when None) of one run."""
        hp = resolve_hparams(prefix.optimizer, prefix.hparams)
        idx = slice(None) if index is None else index
        S = prefix.M * prefix.record_every
        alpha_k = float(prefix.lr[prefix.k])
        scale = norm.scale[idx].to(dtype).unsqueeze(-1)  # (N, 1)

        def run(x: float) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype)

        # the buffer of SGD with momentum settles at g/(1 − μ): measuring g in units
        # c (1 − μ)/(S α_k) keeps the network's output O(1) in velocity terms for every optimizer
        unit = 1.0 - hp["momentum"] if prefix.optimizer == "momentum" else 1.0
        return Cond(
            center=norm.center[idx].to(dtype).unsqueeze(-1),
            scale=scale,
            g_scale=scale * max(unit, 1e-6) / (S * max(alpha_k, 1e-30)),
            S=run(S),
            record_every=run(prefix.record_every),
            alpha_k=run(alpha_k),
            momentum=run(hp.get("momentum", 0.0)),
            nesterov=run(hp.get("nesterov", 0.0)),
            alpha=run(hp.get("alpha", 0.0)),
            beta1=run(hp.get("beta1", 0.0)),
            beta2=run(hp.get("beta2", 0.0)),
            weight_decay=run(hp.get("weight_decay", 0.0)),
            eps=run(hp.get("eps", 1e-8)),
            code=code,
        )

    @staticmethod
    def stack(conds: list[Cond]) -> Cond:
        """Batch the conditionings of R runs with the same N: (N, 1) -> (R, N, 1), 0-d -> (R, 1, 1)."""
        out = {}
        for f in fields(Cond):
            vals = [getattr(c, f.name) for c in conds]
            if f.name in ("code", "prior_v"):
                out[f.name] = None if vals[0] is None else torch.stack(vals)
            elif f.name in Cond._PER_PARAM:
                out[f.name] = torch.stack(vals)  # (R, N, 1)
            else:
                out[f.name] = torch.stack(vals).view(-1, 1, 1)  # (R, 1, 1)
        return Cond(**out)

    def select(self, rows: torch.Tensor) -> Cond:
        """The runs ``rows`` of a stacked batch."""
        return Cond(**{f.name: _take(getattr(self, f.name), rows) for f in fields(Cond)})

    def to(self, device: torch.device | str) -> Cond:
        """The same conditioning on ``device``."""
        return Cond(**{f.name: _move(getattr(self, f.name), device) for f in fields(Cond)})

    def weights(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Weights in original units, w = center + c · ŵ."""
        return self.center + self.scale * w_hat


def _take(x: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x[rows]


def _move(x: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if x is None else x.to(device)


def scan_states(phi: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """States at the checkpoints of an exponential moving average with one φ per interval.

        s_0 = 0,   s_{i+1} = d · s_i + (1 − d) · φ_i,   i.e.  s_i = Σ_{l<i} (1 − d) d^{i−1−l} φ_l

    with d = β^r the exact decay over an interval of r optimizer steps (φ held constant over
    the interval). Written as one matrix product so that a batch of runs scans at once.

    Args:
        phi: (..., N, M) one target value per interval.
        decay: per-interval decay d in [0, 1), 0-d or (..., 1, 1) (one per run).

    Returns:
        (..., N, M+1) states at checkpoints 0..M.
    """
    M = phi.shape[-1]
    d = torch.as_tensor(decay, dtype=phi.dtype, device=phi.device).clamp(1e-30, 1.0)
    i = torch.arange(M + 1, device=phi.device).unsqueeze(-1)  # (M+1, 1) checkpoint
    j = torch.arange(M, device=phi.device)  # (M,) interval
    power = (i - 1 - j).clamp_min(0).to(phi.dtype)  # (M+1, M)
    L = (1 - d) * torch.exp(power * torch.log(d))  # (..., M+1, M)
    L = torch.where(j < i, L, torch.zeros((), dtype=phi.dtype, device=phi.device))
    return phi @ L.transpose(-1, -2)  # (..., N, M) @ (..., M, M+1) -> (..., N, M+1)


class VectorField(nn.Module):
    """Base class: a field dŵ/dt and, for optimizer-aware fields, its state dynamics.

        dŵ/dt = velocity(ŵ, s, ĝ, α(t), t)
        ds_j/dt = S · (1 − β_j) · (φ_j(ĝ, ŵ) − s_j)       j = 1..n_state

    Subclasses override ``velocity`` and, with state, ``decays`` (β_j, the per-step decay) and
    ``targets`` (φ_j). All methods broadcast over a grid (..., N, T) of parameters × times.

    Args:
        net: the shared surrogate network (its output is ĝ, or minus the velocity for
            ``FreeField``).
        grad_fn: instead of ``net``, the gradient g(w, t) in original units (see ``GradFn``);
            then the field is not per-parameter (g couples all weights) and forecasts in one
            chunk.

    Raises:
        ValueError: not exactly one of ``net`` and ``grad_fn`` is given.
    """

    n_state: ClassVar[int] = 0
    optimizers: ClassVar[tuple[str, ...]] = OPTIMIZERS

    def __init__(self, net: Surrogate | None = None, *, grad_fn: GradFn | None = None) -> None:
        super().__init__()
        if (net is None) == (grad_fn is None):
            raise ValueError(
                f"{type(self).__name__}: exactly one of `net` and `grad_fn` must be given, "
                f"got net={'set' if net is not None else None}, "
                f"grad_fn={'set' if grad_fn is not None else None}"
            )
        self.net = net
        self.grad_fn = grad_fn

    @property
    def per_parameter(self) -> bool:
        """Whether each parameter's velocity depends only on its own state (chunking is exact)."""
        return self.grad_fn is None

    def gradient(
        self, w_hat: torch.Tensor, t: torch.Tensor, cond: Cond, trunk: torch.Tensor | None
    ) -> Grad:
        """Normalised surrogate on a grid.

            ĝ, σ̂² = Surrogate(ŵ, t; ctx)                 (network)
            ĝ = g(w_k + c · ŵ, t) / g_s,  σ̂² = 0          (injected gradient)

        Args:
            w_hat: (..., N, T) normalised weights.
            t: (..., T) times.
            cond: conditioning with ``code`` (network) of shape (..., N, 3, K).
            trunk: (..., T, K) ``Surrogate.trunk`` at t (network only).

        Returns:
            ``Grad`` of (..., N, T) tensors.
        """
        if self.grad_fn is None:
            return self.net.combine(cond.code, trunk, w_hat, cond.S / cond.record_every)
        w = cond.weights(w_hat)  # (N, T)
        cols = [self.grad_fn(w[:, j], t.reshape(-1)[j]) for j in range(w.shape[-1])]
        g = torch.stack(cols, -1).to(w_hat.dtype) / cond.g_scale  # (N, T)
        return Grad(g, torch.zeros_like(g))

    def decays(self, cond: Cond) -> list[torch.Tensor]:
        """β_j, the per-optimizer-step decay of each state (0-d or per run)."""
        return []

    def targets(self, g: Grad, w_hat: torch.Tensor, cond: Cond) -> list[torch.Tensor]:
        """φ_j(ĝ, ŵ), the value each state relaxes to."""
        return []

    def velocity(
        self,
        w_hat: torch.Tensor,
        states: list[torch.Tensor],
        g: Grad,
        alpha_t: torch.Tensor,
        t: torch.Tensor,
        cond: Cond,
    ) -> torch.Tensor:
        """dŵ/dt on the grid (..., N, T); ``alpha_t`` (..., 1, T) is α(t), t (..., T)."""
        raise NotImplementedError

    def drift(
        self,
        w_hat: torch.Tensor,
        states: list[torch.Tensor],
        g: Grad,
        alpha_t: torch.Tensor,
        t: torch.Tensor,
        cond: Cond,
    ) -> torch.Tensor:
        """The field's velocity plus, with a prior, the prior's velocity weighed by the gate.

            dŵ/dt = velocity(ŵ, s, ĝ, α(t), t) + γ(t) · ṗ(t)

        Every caller (the training loss, ``interval_step``, the ODE right-hand side) takes the
        velocity from here, so the prior enters every field and solver alike.
        """
        v = self.velocity(w_hat, states, g, alpha_t, t, cond)
        if g.gate is not None and cond.prior_v is not None:
            v = v + g.gate * cond.prior_v
        return v

    def _coupled(self, g: Grad, w_hat: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Gradient with L2 weight decay, ĝ + λ w / g_s (torch's coupled ``weight_decay``)."""
        return g.mean + cond.weight_decay * cond.weights(w_hat) / cond.g_scale

    def initial_state(
        self,
        w_hat: torch.Tensor,
        cond: Cond,
        trunk_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Optimizer state at t_k, accumulated along the observed prefix.

            τ_i = (i + θ)/M,  θ = (r − 1)/(2r)   (mean position of the r steps of interval i)
            φ_i = φ(ĝ(ŵ(τ_i), τ_i))              on the linear path through the prefix
            s_k = Σ_{i<k} (1 − β^r) β^{r(k−1−i)} φ_i  (``scan_states``, s_0 = 0 as in torch)

        The training loop gives the field the states of the same recurrence (the surrogate's own
        ĝ, exact per-interval decay β^r), so a forecast starts from the kind of state the field
        was trained with. With record_every = 1 and the true gradient, θ = 0 and s_k is the
        discrete optimizer's state exactly.

        Args:
            w_hat: (N, k+1) normalised observed weights.
            cond: conditioning of the N parameters.
            trunk_fn: times (T,) -> trunk features (T, K) (network only).

        Returns:
            (N, n_state) states at t_k.
        """
        N, k1 = w_hat.shape
        if self.n_state == 0:
            return w_hat.new_zeros(N, 0)
        M = float(cond.S / cond.record_every)
        r = float(cond.record_every)
        theta = (r - 1.0) / (2.0 * r)
        tau = (torch.arange(k1 - 1, dtype=w_hat.dtype, device=w_hat.device) + theta) / M  # (k,)
        w_tau = (1 - theta) * w_hat[:, :-1] + theta * w_hat[:, 1:]  # (N, k)
        trunk = trunk_fn(tau) if trunk_fn is not None else None
        g = self.gradient(w_tau, tau, cond, trunk)  # (N, k)
        phis = self.targets(g, w_tau, cond)
        states = [
            scan_states(phi, beta**cond.record_every)[:, -1]
            for phi, beta in zip(phis, self.decays(cond), strict=True)
        ]
        return torch.stack(states, -1)  # (N, n_state)


class FreeField(VectorField):
    """Free-form velocity: the network is the field.

        dw/dt = −c · f_θ(ŵ, t; ctx),   i.e.  dŵ/dt = −f_θ

    (the sign makes the surrogate's non-negative slope a relaxation, as in ``SGDField``).
    Source: Shou et al. 2025, Sec. 3 (conditional flow matching of the checkpoint path).
    """

    def velocity(self, w_hat, states, g, alpha_t, t, cond):  # noqa: D102
        return -g.mean


class SGDField(VectorField):
    """Gradient descent in continuous time.

        w ← w − α (g + λ w)       per step (torch.optim.SGD, momentum 0)
        dw/dt = −S · α(t) · (g + λ w)
        dŵ/dt = −(α(t)/α_k) · (ĝ + λ w / g_s)

    Euler with step 1/S reproduces the discrete steps exactly. Source: Shou et al. 2025, Sec. 3.
    """

    optimizers = ("sgd",)

    def velocity(self, w_hat, states, g, alpha_t, t, cond):  # noqa: D102
        return -(cond.S * alpha_t / cond.scale) * cond.g_scale * self._coupled(g, w_hat, cond)


class MomentumField(VectorField):
    """Heavy-ball / Nesterov SGD in continuous time, buffer b as ODE state.

        b⁺ = μ b + g,  w ← w − α b⁺  (Nesterov: w ← w − α (g + μ b⁺))  per step (torch.optim.SGD)
        db/dt = S · ((μ − 1) · b + g) = S · (1 − μ) · (g/(1 − μ) − b)
        dw/dt = −S · α(t) · b⁺          (Nesterov: −S · α(t) · (g + μ b⁺))

    with g including coupled weight decay λw. In ĝ units (b̂ = b / g_s, g_s = c(1 − μ)/(S α_k)):
    dŵ/dt = −(α(t)/α_k) · (1 − μ) · b̂⁺. Source: torch.optim.SGD docs; Shou et al. 2025, Sec. 3.
    """

    n_state = 1
    optimizers = ("momentum",)

    def decays(self, cond):  # noqa: D102
        return [cond.momentum]

    def targets(self, g, w_hat, cond):  # noqa: D102
        return [self._coupled(g, w_hat, cond) / (1 - cond.momentum)]

    def velocity(self, w_hat, states, g, alpha_t, t, cond):  # noqa: D102
        (b,) = states
        grad = self._coupled(g, w_hat, cond)
        b_next = cond.momentum * b + grad  # the buffer the step at t uses
        direction = torch.where(cond.nesterov > 0.5, grad + cond.momentum * b_next, b_next)
        return -(cond.S * alpha_t / cond.scale) * cond.g_scale * direction


class RMSpropField(VectorField):
    """RMSprop in continuous time, squared-gradient average s as ODE state.

        s⁺ = ρ s + (1 − ρ) g²,   w ← w − α g / (√s⁺ + ε)     per step (torch.optim.RMSprop)
        ds/dt = S · (1 − ρ) · (E[g²] − s),   E[g²] = ĝ² + σ̂²  (minibatch noise included)
        dw/dt = −S · α(t) · ĝ / (√s⁺ + ε)

    In ĝ units: dŵ/dt = −(S α(t)/c) · ĝ / (√ŝ⁺ + ε/g_s); s is clamped at 0 inside s⁺ (a solver
    stage may overshoot), so |ĝ|/√ŝ⁺ <= 1/√(1 − ρ) bounds the velocity.
    Source: torch.optim.RMSprop docs.
    """

    n_state = 1
    optimizers = ("rmsprop",)

    def decays(self, cond):  # noqa: D102
        return [cond.alpha]

    def targets(self, g, w_hat, cond):  # noqa: D102
        return [self._coupled(g, w_hat, cond).square() + g.var]

    def velocity(self, w_hat, states, g, alpha_t, t, cond):  # noqa: D102
        (s,) = states
        grad = self._coupled(g, w_hat, cond)
        s_next = cond.alpha * s.clamp_min(0) + (1 - cond.alpha) * (grad.square() + g.var)
        denom = (s_next + _TINY).sqrt() + cond.eps / cond.g_scale
        return -(cond.S * alpha_t / cond.scale) * grad / denom


class AdamField(VectorField):
    """Adam in continuous time, first and second moments as ODE state.

        m⁺ = β1 m + (1 − β1) g,  v⁺ = β2 v + (1 − β2) g²        per step (torch.optim.Adam)
        m̂ = m⁺ / (1 − β1^n),  v̂ = v⁺ / (1 − β2^n),  w ← w − α m̂ / (√v̂ + ε)
        dm/dt = S · (1 − β1) · (ĝ − m),   dv/dt = S · (1 − β2) · (ĝ² + σ̂² − v)
        n(t) = S · t + 1  (count of the step taken at t),   dw/dt = −S · α(t) · m̂ / (√v̂ + ε)

    Coupled L2 decay (Adam's ``weight_decay``) adds λw to g; ``AdamWField`` decouples it.
    In ĝ units: dŵ/dt = −(S α(t)/c) · m̂ / (√v̂ + ε/g_s); v is clamped at 0 inside v⁺.
    Source: torch.optim.Adam docs.
    """

    n_state = 2
    optimizers = ("adam",)
    decoupled: ClassVar[bool] = False

    def decays(self, cond):  # noqa: D102
        return [cond.beta1, cond.beta2]

    def _grad(self, g: Grad, w_hat: torch.Tensor, cond: Cond) -> torch.Tensor:
        return g.mean if self.decoupled else self._coupled(g, w_hat, cond)

    def targets(self, g, w_hat, cond):  # noqa: D102
        grad = self._grad(g, w_hat, cond)
        return [grad, grad.square() + g.var]

    def velocity(self, w_hat, states, g, alpha_t, t, cond):  # noqa: D102
        m, v = states
        grad = self._grad(g, w_hat, cond)
        m_next = cond.beta1 * m + (1 - cond.beta1) * grad
        v_next = cond.beta2 * v.clamp_min(0) + (1 - cond.beta2) * (grad.square() + g.var)
        n = cond.S * t.unsqueeze(-2) + 1  # (..., 1, T) count of the step taken at t
        m_hat = m_next / (1 - cond.beta1**n)
        v_hat = v_next / (1 - cond.beta2**n)
        step = m_hat / ((v_hat + _TINY).sqrt() + cond.eps / cond.g_scale)
        if self.decoupled:
            step = step + cond.weight_decay * cond.weights(w_hat)
        return -(cond.S * alpha_t / cond.scale) * step


class AdamWField(AdamField):
    """AdamW: Adam with decoupled weight decay.

        w ← (1 − αλ) w − α m̂ / (√v̂ + ε)              per step (torch.optim.AdamW)
        dw/dt = −S · α(t) · (m̂ / (√v̂ + ε) + λ w)

    Source: torch.optim.AdamW docs (Loshchilov & Hutter 2019).
    """

    optimizers = ("adamw",)
    decoupled = True


FIELDS: dict[str, type[VectorField]] = {
    "free": FreeField,
    "sgd": SGDField,
    "momentum": MomentumField,
    "rmsprop": RMSpropField,
    "adam": AdamField,
    "adamw": AdamWField,
}


def interval_step(
    field: VectorField,
    w_hat: torch.Tensor,
    states: list[torch.Tensor],
    t: torch.Tensor,
    alpha_t: torch.Tensor,
    trunk: torch.Tensor | None,
    cond: Cond,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One recorded interval: the r = record_every optimizer steps of interval i taken at once.

        ĝ_i = surrogate(ŵ_i, t_i)
        ŵ_{i+1} = ŵ_i + drift(ŵ_i, s_i, ĝ_i, α(t_i), t_i) / M
        s_{i+1} = β^r · s_i + (1 − β^r) · φ(ĝ_i)          (the exact decay of r EMA updates)

    An explicit Euler step of the weights on the checkpoint grid, with the optimizer state
    advanced by its exact decay over the interval. Flow matching trains the field on the
    interval's velocity M · (w_{i+1} − w_i); the ``interval`` solver of ``gfm.forecast`` steps
    exactly this, once per interval, where rk4 would take 4 evaluations.

    Args:
        field: the vector field.
        w_hat: (..., N, 1) normalised weights at t_i.
        states: n_state tensors (..., N, 1).
        t: (..., 1) time t_i.
        alpha_t: (..., 1, 1) step size α(t_i).
        trunk: (..., 1, K) trunk features at t_i (network only).
        cond: the conditioning (with ``code`` for the network; ``prior_v`` of interval i).

    Returns:
        (ŵ_{i+1}, [s_{i+1}]), shaped like the inputs.
    """
    M = cond.S / cond.record_every
    g = field.gradient(w_hat, t, cond, trunk)
    v = field.drift(w_hat, states, g, alpha_t, t, cond)
    nxt = []
    for phi, s, beta in zip(field.targets(g, w_hat, cond), states, field.decays(cond), strict=True):
        d = beta**cond.record_every
        nxt.append(d * s + (1 - d) * phi)
    return w_hat + v / M, nxt
