"""Forecast later weights of a run by integrating a learned vector field from its prefix.

    ŵ(t_k) = 0,  s(t_k) = s_k,   d(ŵ, s)/dt = field(ŵ, s, t)   ->   w(t) = w_k + c · ŵ(t)

References:
    Shou, Ding, Gao, "Gradient Flow Matching for Learning Update Dynamics in Neural Network
    Training", arXiv 2505.20221 (2025), Sec. 3 (forecasting by integrating the learned ODE).
    Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018 (torchdiffeq, adjoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS

from gfm._torch import one_thread
from gfm.data.names import OPTIMIZERS
from gfm.features import (
    Normalizer,
    context,
    layer_rms,
    lr_at,
    lr_features,
    n_context,
    run_context,
)
from gfm.fields import Cond, VectorField, interval_step
from gfm.forecaster import Prefix
from gfm.prior import prior_velocity, quadfit

__all__ = ["FIXED_STEP", "forecast"]

FIXED_STEP = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
INTERVAL = "interval"  # one ``interval_step`` per recorded interval (not a torchdiffeq solver)
_METHODS = (INTERVAL, *(m for m in SOLVERS if m not in ("scipy_solver", "fixed_adams")))
_HPARAM_RANGES: dict[str, tuple[float, float, str]] = {
    # key: (low, high, interval) with "[)" = low <= x < high, "()" = low < x < high
    "momentum": (0.0, 1.0, "[)"),
    "alpha": (0.0, 1.0, "()"),
    "beta1": (0.0, 1.0, "[)"),
    "beta2": (0.0, 1.0, "()"),
    "weight_decay": (0.0, math.inf, "[)"),
    "eps": (0.0, math.inf, "()"),
    "lr": (0.0, math.inf, "()"),
}


class _Dynamics(nn.Module):
    """Right-hand side d(ŵ, s)/dt of one run's ODE for a chunk of N parameters."""

    def __init__(
        self,
        field: VectorField,
        cond: Cond,
        trunk_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        alpha_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.field, self.cond, self.trunk_fn, self.alpha_fn = field, cond, trunk_fn, alpha_fn
        self.rates = [1 - beta for beta in field.decays(cond)]  # κ_j = 1 − β_j per step

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Velocity of the state y (N, 1 + n_state) at time t ()."""
        tt = t.reshape(1).to(y.dtype)  # (T=1,)
        w_hat = y[:, :1]  # (N, 1)
        states = [y[:, 1 + j : 2 + j] for j in range(self.field.n_state)]  # n_state × (N, 1)
        trunk = self.trunk_fn(tt) if self.trunk_fn is not None else None  # (1, K)
        g = self.field.gradient(w_hat, tt, self.cond, trunk)  # (N, 1)
        alpha_t = self.alpha_fn(tt).view(1, 1)  # (1, T=1)
        dw = self.field.drift(w_hat, states, g, alpha_t, tt, self.cond)
        phis = self.field.targets(g, w_hat, self.cond)
        ds = [
            self.cond.S * kappa * (phi - s)
            for kappa, phi, s in zip(self.rates, phis, states, strict=True)
        ]
        return torch.cat([dw, *ds], -1)  # (N, 1 + n_state)


def _check_inputs(  # noqa: C901, PLR0912, PLR0913 - one check per argument (torchdiffeq style)
    field: VectorField,
    prefix: Prefix,
    t: torch.Tensor,
    method: str,
    step_size: float | None,
    solver_steps: int,
    rtol: float,
    atol: float,
    chunk_size: int | None,
    index: torch.Tensor | None,
) -> torch.Tensor:
    """Validate everything ``forecast`` is given; return the target times as float64 (T,)."""
    if not isinstance(field, VectorField):
        raise TypeError(f"`field` must be a gfm.fields.VectorField, got {type(field).__name__}")
    if not isinstance(prefix, Prefix):
        raise TypeError(f"`prefix` must be a gfm.forecaster.Prefix, got {type(prefix).__name__}")
    prefix.check()  # shapes: w (k+1, D), 1 <= k < M, lr (M+1,), params D
    w = prefix.w
    # the extremes, not a mask: NaN propagates to both and ±inf is one of them (30x faster)
    if w.numel() and not all(torch.isfinite(v) for v in torch.aminmax(w)):
        raise ValueError("`prefix.w` must be finite, got NaN or inf values")
    if not isinstance(prefix.record_every, int) or prefix.record_every < 1:
        raise ValueError(
            f"`prefix.record_every` must be a positive integer, got {prefix.record_every!r}"
        )
    lr = prefix.lr
    if not torch.isfinite(lr).all() or (lr < 0).any() or not lr[prefix.k] > 0:
        raise ValueError(
            f"`prefix.lr` must be finite and >= 0 with lr[k] > 0, got min {float(lr.min())}, "
            f"lr[k] = {float(lr[prefix.k])}"
        )
    if prefix.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"`prefix.optimizer` must be one of {list(OPTIMIZERS)}, got {prefix.optimizer!r}"
        )
    if prefix.optimizer not in field.optimizers:
        raise ValueError(
            f"`prefix.optimizer` must be one of {list(field.optimizers)} for "
            f"{type(field).__name__}, got {prefix.optimizer!r}"
        )
    for key, value in prefix.hparams.items():
        if key == "nesterov":
            continue
        if key not in _HPARAM_RANGES:
            continue
        low, high, kind = _HPARAM_RANGES[key]
        x = float(value)
        ok = (low <= x if kind[0] == "[" else low < x) and x < high
        if not ok:
            raise ValueError(
                f"`prefix.hparams['{key}']` must be in {kind[0]}{low}, {high}{kind[1]}, got {value!r}"
            )
    if field.net is not None and getattr(field.net, "prior", False) and method != INTERVAL:
        raise ValueError(
            f"`method` must be '{INTERVAL}' for a field trained with the prior (its velocity is "
            f"given per recorded interval), got {method!r}"
        )
    n_ctx = n_context(field.net.history, field.net.prior) if field.net is not None else 0
    if field.net is not None and field.net.n_context != n_ctx:
        raise ValueError(
            f"`field.net` must take {n_ctx} context features for "
            f"history={field.net.history}, got {field.net.n_context}"
        )
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"`t` must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("`t` must be finite, got NaN or inf")
    t_k = prefix.k / prefix.M
    if not (t.min() > t_k + 1e-12 and t.max() <= 1.0 + 1e-12):
        raise ValueError(
            f"`t` must lie in (t_k, 1] = ({t_k:.6g}, 1], got min {float(t.min()):.6g}, "
            f"max {float(t.max()):.6g}"
        )
    if (t[1:] <= t[:-1]).any():
        raise ValueError(f"`t` must be strictly increasing, got {t.tolist()}")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {list(_METHODS)}, got {method!r}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"`step_size` must be positive, got {step_size}")
    if not isinstance(solver_steps, int) or solver_steps < 1:
        raise ValueError(f"`solver_steps` must be a positive integer, got {solver_steps!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"`rtol` and `atol` must be positive, got rtol={rtol}, atol={atol}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}")
    if index is not None:
        if not field.per_parameter:
            raise ValueError(
                "`index` must be None for a field with an injected gradient function "
                "(its velocity couples all parameters)"
            )
        if index.dim() != 1 or index.numel() == 0 or index.min() < 0 or index.max() >= prefix.D:
            raise ValueError(
                f"`index` must be a non-empty 1-D tensor of parameter indices in [0, {prefix.D}), "
                f"got shape {tuple(index.shape)}"
            )
    return t


def forecast(  # noqa: PLR0913 - the solver's options, keyword-only, as odeint takes them
    field: VectorField,
    prefix: Prefix,
    t: torch.Tensor,
    *,
    method: str = "rk4",
    step_size: float | None = None,
    solver_steps: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    adjoint: bool = False,
    chunk_size: int | None = None,
    index: torch.Tensor | None = None,
    prior_cache: Path | None = None,
) -> torch.Tensor:
    """Integrate the field from the last observed checkpoint to the target times.

        ŵ(t_k) = 0,  s(t_k) = field.initial_state(prefix)
        d(ŵ, s)/dt = field(ŵ, s, t)  on [t_k, max t]
        w(t) = w_k + c · ŵ(t)        (``gfm.features.Normalizer``)

    The per-layer normaliser, context and run features are computed once on the full prefix;
    parameters are then integrated in chunks of ``chunk_size``. A per-parameter field (the
    network) gives every parameter its own ODE, so chunking changes nothing: with a fixed-step
    solver the result equals the unchunked one (adaptive solvers choose steps per chunk and agree
    to their tolerance). A field with an injected gradient function runs in one chunk.

    Source: Shou et al. 2025, Sec. 3.

    Args:
        field: the vector field (``gfm.fields.FIELDS``), matching ``prefix.optimizer``.
        prefix: the observed run.
        t: (T,) strictly increasing target times in (t_k, 1].
        method: ``interval`` (one ``gfm.fields.interval_step`` per recorded interval, what the
            field is trained on; required with a prior) or a torchdiffeq solver name (``rk4``,
            ``euler``, ``dopri5``, ...). A field trained with the prior (``Surrogate.prior``) fits
            ``gfm.prior.quadfit`` to each chunk's parameters first and adds its gated velocity.
        step_size: fixed-step solvers' step; default one recorded interval / ``solver_steps``.
            The grid also contains every target time, so no output is interpolated.
        solver_steps: fixed-step substeps per recorded interval (when ``step_size`` is None).
        rtol: relative tolerance of adaptive solvers.
        atol: absolute tolerance of adaptive solvers (in normalised units ŵ).
        adjoint: integrate with ``odeint_adjoint`` (constant memory backward through the field).
        chunk_size: parameters integrated at once (all when None).
        index: (N,) forecast only these parameters (per-parameter fields only).
        prior_cache: a folder of fitted priors to read and fill (``gfm.prior_cache``).

    Runs on one intra-op thread (``one_thread``): its ops are small.

    Returns:
        (T, D) weights at t (T, N with ``index``), in ``prefix.w``'s dtype.

    Raises:
        TypeError: ``field`` or ``prefix`` has the wrong type.
        ValueError: an argument does not match the field, the prefix or the time range; the
            message names the argument.
    """
    t = _check_inputs(
        field, prefix, t, method, step_size, solver_steps, rtol, atol, chunk_size, index
    )
    with one_thread():
        return _integrate(
            field,
            prefix,
            t,
            method,
            step_size,
            solver_steps,
            rtol,
            atol,
            adjoint,
            chunk_size,
            index,
            prior_cache,
        )


def _integrate(  # noqa: PLR0913 - forecast's arguments, checked, passed on
    field: VectorField,
    prefix: Prefix,
    t: torch.Tensor,
    method: str,
    step_size: float | None,
    solver_steps: int,
    rtol: float,
    atol: float,
    adjoint: bool,
    chunk_size: int | None,
    index: torch.Tensor | None,
    prior_cache: Path | None,
) -> torch.Tensor:
    """The body of ``forecast`` on checked inputs (same arguments, t as float64)."""
    dtype = prefix.w.dtype
    net = field.net
    device = next(net.parameters()).device if net is not None else torch.device("cpu")
    norm = Normalizer.from_prefix(prefix)
    idx = torch.arange(prefix.D) if index is None else index.long()
    N = idx.numel()
    chunk = N if chunk_size is None or not field.per_parameter else chunk_size

    t_k = prefix.k / prefix.M
    fixed = method in FIXED_STEP
    h = step_size if step_size is not None else 1.0 / (prefix.M * solver_steps)
    times = torch.cat([torch.tensor([t_k], dtype=torch.float64), t])  # (T+1,)
    options = {"grid_constructor": _grid(h)} if fixed else None

    lr_cache: dict[float, torch.Tensor] = {}

    def alpha_fn(tt: torch.Tensor) -> torch.Tensor:
        return lr_at(prefix, tt).to(dtype=dtype, device=device)

    trunk_fn = None
    if net is not None:
        run = run_context(prefix, norm, history=net.history).to(device)

        def trunk_fn(tt: torch.Tensor) -> torch.Tensor:
            key = float(tt.detach()[0]) if tt.numel() == 1 else None
            if key is not None and key in lr_cache:
                return lr_cache[key]
            tt_cpu = tt.detach().double().cpu()
            feats = lr_features(prefix, tt_cpu).to(device)  # (T, N_LR)
            out = net.trunk(tt_cpu.float().to(device), feats, run).to(dtype)  # (T, K)
            if key is not None and not torch.is_grad_enabled():
                lr_cache[key] = out
            return out

    # (k+1, N) -> (N, k+1): the forecast parameters' normalised prefix (not all D's)
    w_hat_prefix = ((prefix.w[:, idx] - norm.center[idx]) / norm.scale[idx]).T.contiguous()
    out = torch.empty(len(t), N, dtype=dtype)
    trend = layer_rms(prefix, norm, net.history) if net is not None else None  # once, all D
    for start in range(0, N, chunk):
        ci = idx[start : start + chunk]  # (n,)
        code, prior = None, None
        if net is not None:
            prior = None
            if net.prior:  # NumPy on the CPU, torch on an accelerator
                on = None if device.type == "cpu" else device
                prior = quadfit(prefix, index=ci, cache=prior_cache, device=on)
            ctx = context(
                prefix, norm, history=net.history, index=ci, prior=prior, layer_trend=trend
            )  # (n, F)
            code = net.encode(ctx.to(device)).to(dtype)  # (n, rows, K)
        cond = Cond.from_prefix(prefix, norm, index=ci, code=code, dtype=dtype).to(device)
        rows = w_hat_prefix[start : start + chunk].to(device)  # the chunk's (n, k+1)
        s0 = field.initial_state(rows, cond, trunk_fn)  # (n, n_state)
        if method == INTERVAL:
            pv = None if prior is None else prior_velocity(prior, prefix.M, norm.scale[ci])
            pv = None if pv is None else pv.to(device=device, dtype=dtype)  # (n, M − k)
            w_hat = _interval_solve(field, prefix, cond, s0, t, trunk_fn, alpha_fn, pv)
        else:
            y0 = torch.cat([s0.new_zeros(len(ci), 1), s0], -1)  # (n, 1 + n_state)
            func = _Dynamics(field, cond, trunk_fn, alpha_fn)
            solve = odeint_adjoint if adjoint else odeint
            kwargs = {"adjoint_params": tuple(field.parameters())} if adjoint else {}
            ys = solve(
                func,
                y0,
                times.to(dtype),
                method=method,
                rtol=rtol,
                atol=atol,
                options=options,
                **kwargs,
            )  # (T+1, n, 1 + n_state)
            w_hat = ys[1:, :, 0]  # (T, n)
        out[:, start : start + chunk] = norm.center[ci] + norm.scale[ci] * w_hat.to("cpu")
    return out


def _interval_solve(  # noqa: PLR0913 - what one chunk's integration needs
    field: VectorField,
    prefix: Prefix,
    cond: Cond,
    s0: torch.Tensor,
    t: torch.Tensor,
    trunk_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    alpha_fn: Callable[[torch.Tensor], torch.Tensor],
    prior_v: torch.Tensor | None,
) -> torch.Tensor:
    """One ``interval_step`` per recorded interval from t_k to max t; linear between checkpoints.

        ŵ_k = 0,  (ŵ_{i+1}, s_{i+1}) = interval_step(ŵ_i, s_i),  i = k..⌈max t · M⌉ − 1
        ŵ(t) = (1 − s) ŵ_i + s ŵ_{i+1},  t = (i + s) / M

    Args:
        field: the vector field.
        prefix: the observed run.
        cond: the chunk's conditioning.
        s0: (n, n_state) optimizer states at t_k.
        t: (T,) target times in (t_k, 1].
        trunk_fn: times (G,) -> trunk features (G, K) (network only).
        alpha_fn: times (G,) -> step sizes (G,).
        prior_v: (n, M − k) the prior's velocity per interval, or None.

    Returns:
        (T, n) ŵ at the target times t (T,).
    """
    k, M = prefix.k, prefix.M
    last = min(M, math.ceil(float(t.max()) * M - 1e-9))
    grid = torch.arange(k, last + 1, dtype=torch.float64) / M  # (G,) checkpoints k..last
    trunk = trunk_fn(grid) if trunk_fn is not None else None  # (G, K)
    alpha = alpha_fn(grid)  # (G,)
    w = s0.new_zeros(s0.shape[0], 1)  # (n, 1)
    states = [s0[:, j : j + 1] for j in range(field.n_state)]
    path = [w]
    for i in range(len(grid) - 1):
        tt = grid[i : i + 1].to(w.dtype)
        tr = trunk[i : i + 1] if trunk is not None else None
        ci = cond if prior_v is None else replace(cond, prior_v=prior_v[:, i : i + 1])
        w, states = interval_step(field, w, states, tt, alpha[i].view(1, 1), tr, ci)
        path.append(w)
    P = torch.cat(path, -1)  # (n, G)
    x = (t.to(P.device) * M - k).clamp(0, len(grid) - 1)  # (T,) position on the grid
    lo = x.floor().long().clamp(max=max(len(grid) - 2, 0))
    hi = (lo + 1).clamp(max=len(grid) - 1)
    frac = (x - lo).to(P.dtype)
    return (P[:, lo] * (1 - frac) + P[:, hi] * frac).T  # (T, n)


def _grid(h: float) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Fixed-step grid t_0 ± j·h with every requested time added as a grid point.

    Either direction: the adjoint integrates backwards.
    """

    def construct(func: nn.Module, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start, end = float(t[0]), float(t[-1])
        sign = 1.0 if end >= start else -1.0
        n = max(1, math.ceil(abs(end - start) / h - 1e-9))
        uniform = start + sign * h * torch.arange(n + 1, dtype=torch.float64)
        uniform[-1] = end
        grid = torch.unique(torch.cat([uniform, t.double()]))  # sorted ascending, deduplicated
        keep = torch.cat([torch.tensor([True]), grid[1:] - grid[:-1] > 1e-9 * h])
        grid = grid[keep]  # drop near-duplicates that would make zero-length steps
        if sign < 0:
            grid = grid.flip(0)
        grid[0], grid[-1] = start, end
        return grid.to(t.dtype)

    return construct
