"""The optimizer-aware prior of GFM: a per-parameter quadratic, fitted by simulating the optimizer.

For every parameter j the loss is modelled as L_j(w) = ½ h_j (w − w*_j)² with minibatch gradient
noise of variance σ_j², so its gradient is g_j = h_j (w_j − w*_j) (+ λ w_j for coupled weight
decay). The run's own optimizer (SGD, momentum/Nesterov, RMSprop, Adam, AdamW with the run's
hyperparameters and learning rates) is simulated step by step from w_0 with zero state, as torch
does; (log h_j, w*_j, log σ_j) are fitted to the observed checkpoints w_1..w_k by
Levenberg–Marquardt, and the fitted model is simulated on from step k·r to M·r. The prior's path
is w_k + (w_sim(t) − w_sim(t_k)). The noise enters only the second moments of RMSprop, Adam and
AdamW (E[g²] = ḡ² + σ²): it is what makes their steps shorter than α when minibatches disagree.

GFM uses the prior's velocity as a basis that its field weighs per parameter and time
(``gfm.fields.VectorField.drift``): on quadratic problems (least squares) the prior is close to
exact; on networks the learned part carries the forecast.

References:
    torch.optim.SGD / RMSprop / Adam / AdamW documentation (the simulated update rules).
    Moré, "The Levenberg–Marquardt algorithm: implementation and theory", 1978 (the fit).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gfm import prior_cache
from gfm.features import Normalizer, resolve_hparams
from gfm.forecaster import Prefix

__all__ = ["QuadFit", "is_cached", "prior_velocity", "quadfit", "stable_curvature"]

_STEP_LIMIT = (3.0, 50.0, 3.0)  # largest LM step in log h, z, log σ per iteration
_FD = 1e-4  # forward-difference step of the Jacobian
_VERSION = 3  # of the fit; part of the cache key, so a changed fit never reads an old entry
_STARTS = (1.0, 4.0, -1.0)  # quadfit's defaults: starting optima, iterations, penalties
_ITERS = 12
_PENALTY = (1e-2, 1e-6, 1e-2)


def _settings(
    starts: tuple[float, ...] = _STARTS,
    iters: int = _ITERS,
    penalty: tuple[float, float, float] = _PENALTY,
) -> tuple:
    """What a fit's cache key holds besides its inputs: its settings and the code's version."""
    return (tuple(starts), iters, tuple(penalty), _VERSION)


@dataclass(frozen=True)
class QuadFit:
    """The fitted prior of N parameters of one prefix.

    Attributes:
        path: (M−k+1, N) the prior's weights at checkpoints k..M (row 0 is w_k).
        fit: (N,) RMS fit residual over the prefix, in units of the layer's interval velocity.
        log_h: (N,) fitted log curvature.
        z: (N,) fitted optimum, (w* − w_k) / c with c the layer's velocity per interval.
    """

    path: np.ndarray
    fit: np.ndarray
    log_h: np.ndarray
    z: np.ndarray

    def take(self, pos: np.ndarray) -> QuadFit:
        """The fit of the parameters at positions ``pos``."""
        return QuadFit(self.path[:, pos], self.fit[pos], self.log_h[pos], self.z[pos])


class _Ops:
    """The fit's array operations in float64: NumPy on the CPU (``device`` None) or torch on ``device``.

    Both run the same code: names that NumPy and torch share (exp, where, einsum, linalg, ...)
    pass through; the rest (array creation, repeats, axis orders, error states) are here.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = None if device is None else torch.device(device)
        self.xp = np if self.device is None else torch

    def __getattr__(self, name: str):  # noqa: ANN204 - a function of NumPy or torch
        return getattr(self.xp, name)

    def asarray(self, a) -> np.ndarray | torch.Tensor:  # noqa: ANN001 - array-like
        if self.device is None:
            return np.asarray(a, dtype=np.float64)
        return torch.as_tensor(a, dtype=torch.float64, device=self.device)

    def from_torch(self, a: torch.Tensor) -> np.ndarray | torch.Tensor:
        """A torch tensor as this backend's float64 array."""
        a = a.double()
        return a.numpy() if self.device is None else a.to(self.device)

    def numpy(self, a: np.ndarray | torch.Tensor) -> np.ndarray:
        return a if self.device is None else a.cpu().numpy()

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray | torch.Tensor:
        return self.asarray(np.zeros(shape))

    def eye(self, n: int) -> np.ndarray | torch.Tensor:
        return self.asarray(np.eye(n))

    def full(self, n: int, value: float) -> np.ndarray | torch.Tensor:
        return self.asarray(np.full(n, value))

    def arange(self, n: int) -> np.ndarray | torch.Tensor:
        return np.arange(n) if self.device is None else torch.arange(n, device=self.device)

    def repeat(self, a: np.ndarray | torch.Tensor, n: int) -> np.ndarray | torch.Tensor:
        """Each element n times in a row (np.repeat)."""
        return np.repeat(a, n) if self.device is None else a.repeat_interleave(n)

    def permute(self, a: np.ndarray | torch.Tensor, axes: tuple[int, ...]):  # noqa: ANN201
        return a.transpose(axes) if self.device is None else a.permute(axes)

    def copy(self, a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return a.copy() if self.device is None else a.clone()

    def quiet(self) -> np.errstate | contextlib.nullcontext:
        """Overflow gives inf and 0/0 nan without a warning (torch's behaviour already)."""
        if self.device is None:
            return np.errstate(over="ignore", invalid="ignore")
        return contextlib.nullcontext()


@dataclass
class _Optimizer:
    """The run's optimizer as a vectorised simulator on g = h (w − w*) (+ λ w coupled decay)."""

    name: str
    hp: dict[str, float]
    lr: list[float]  # (M+1,) the recorded step sizes; step s uses lr[s // r]
    r: int
    ops: _Ops
    state: dict = field(default_factory=dict)

    def run(
        self,
        w: np.ndarray | torch.Tensor,
        model: tuple,
        steps: range,
        record: bool = False,
    ) -> tuple[np.ndarray | torch.Tensor, list]:
        """Take ``steps`` from w under model (h, w*, σ²); return w and, with record, the checkpoints."""
        h, ws, noise = model
        hp, st, out, sqrt = self.hp, self.state, [], self.ops.sqrt
        mom, nesterov = hp.get("momentum", 0.0), hp.get("nesterov", 0.0) > 0.5
        b1, b2, eps = hp.get("beta1", 0.9), hp.get("beta2", 0.999), hp.get("eps", 1e-8)
        rho, wd = hp.get("alpha", 0.99), hp.get("weight_decay", 0.0)
        for s in steps:
            if record and s % self.r == 0:
                out.append(w)
            a = self.lr[min(s // self.r, len(self.lr) - 1)]
            g = h * (w - ws)
            if self.name != "adamw" and wd:
                g = g + wd * w
            if self.name == "sgd":
                w = w - a * g
            elif self.name == "momentum":
                b = g if "b" not in st else mom * st["b"] + g
                st["b"] = b
                w = w - a * (g + mom * b if nesterov else b)
            elif self.name == "rmsprop":
                st["v"] = rho * st.get("v", 0.0) + (1 - rho) * (g * g + noise)
                w = w - a * g / (sqrt(st["v"]) + eps)
            else:  # adam, adamw
                n = st.get("n", 0) + 1
                st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
                st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * (g * g + noise)
                st["n"] = n
                step = (st["m"] / (1 - b1**n)) / (sqrt(st["v"] / (1 - b2**n)) + eps)
                w = w * (1 - a * wd) - a * step if self.name == "adamw" else w - a * step
        if record and steps.stop % self.r == 0:
            out.append(w)
        return w, out


def _unpack(ops: _Ops, x, w_k, c, adaptive: bool) -> tuple:  # noqa: ANN001 - ops' arrays
    """(h, w*, σ²) of parameters x = (log h, z[, log σ/(h c)]) (B, P)."""
    h = ops.exp(x[:, 0])
    noise = ops.square(ops.exp(x[:, 2]) * h * c) if adaptive else 0.0
    return h, w_k + c * x[:, 1], noise


def quadfit(
    prefix: Prefix,
    *,
    index: torch.Tensor | None = None,
    starts: tuple[float, ...] = _STARTS,
    iters: int = _ITERS,
    penalty: tuple[float, float, float] = _PENALTY,
    cache: Path | None = None,
    device: torch.device | str | None = None,
) -> QuadFit:
    """Fit the per-parameter quadratic to the prefix and simulate it to the end of the run.

        min_x  Σ_{i=1..k} ((w_sim,i(x) − w_i) / c)²  +  λ_h (u − u_0)²  +  λ_z z²  +  λ_σ (s − s_0)²
        x = (u, z, s):  h = e^u,  w* = w_k + c z,  σ = e^s h c  (s only for RMSprop, Adam, AdamW)
        c = the layer's velocity per recorded interval (``Normalizer.scale / M``)

    solved per parameter by Levenberg–Marquardt with forward-difference Jacobians (2 × 2 or
    3 × 3 systems), from several starting optima z_0 = m·k·sign(recent velocity), keeping per
    parameter the start with the lowest objective. Starts, parameters and Jacobian columns are
    stacked into one wide simulation, so a fit costs 2 simulations of the prefix per iteration.

    Args:
        prefix: the observed run.
        index: (N,) only these parameters (all D when None).
        starts: the multipliers m of the starting optima.
        iters: Levenberg–Marquardt iterations.
        penalty: (λ_h, λ_z, λ_σ), the weights pulling log h to u_0 = −log(α_0 k r) (a time
            constant as long as the prefix), z to 0 and log σ to s_0 = 0.
        cache: a folder of fitted parameters (``gfm.prior_cache``) shared by processes: a fit
            of the same prefix, parameters and settings is read from it instead of solved again
            (the result is the same: the path is simulated from the fitted x either way).
        device: None: fit and simulate in NumPy on the CPU (fastest for the few thousand
            numbers of a chunk there); a torch device (e.g. ``"cuda"``): in torch on it, for
            millions of parameters at once. The same equations in float64 either way; the
            results agree to rounding (not bit for bit).

    Returns:
        ``QuadFit`` of the N parameters.
    """
    ops = _Ops(device)
    key = None
    if cache is not None:
        key = prior_cache.key(prefix, index, _settings(starts, iters, penalty))
        hit = prior_cache.load(cache, key, n=len(prefix.params) if index is None else len(index))
        if hit is not None:
            return _simulate(ops, prefix, index, *hit)
    x, fit = _fit(ops, prefix, index, starts, iters, penalty)
    if key is not None:
        prior_cache.store(cache, key, x, fit)
    return _simulate(ops, prefix, index, x, fit)


def is_cached(prefix: Prefix, cache: Path, *, index: torch.Tensor | None = None) -> bool:
    """Whether ``cache`` holds the default-settings ``quadfit`` of these parameters of ``prefix``."""
    return prior_cache.exists(cache, prior_cache.key(prefix, index, _settings()))


def _inputs(ops: _Ops, prefix: Prefix, index: torch.Tensor | None) -> tuple:
    """(hyperparameters, weights W (k+1, N), velocity scale c (N,), adaptive) of the fit.

    On the CPU the fit and the simulation run in NumPy float64: a chunk's arrays are small (a
    few thousand numbers) and the simulation takes thousands of elementwise steps, where
    NumPy's per-call cost is a fifth of torch's (24 numbers) to two thirds (12k).
    """
    hp = {key: float(v) for key, v in resolve_hparams(prefix.optimizer, prefix.hparams).items()}
    cols = slice(None) if index is None else index
    W1 = ops.from_torch(prefix.w[:, cols])  # (k+1, N)
    c1 = (Normalizer.from_prefix(prefix).scale.double()[cols] / prefix.M).clamp_min(1e-12)
    return hp, W1, ops.from_torch(c1), prefix.optimizer in ("rmsprop", "adam", "adamw")


def _fit(
    ops: _Ops,
    prefix: Prefix,
    index: torch.Tensor | None,
    starts: tuple[float, ...],
    iters: int,
    penalty: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fitted x = (log h, z[, log σ/(h c)]) (N, P) and RMS residual (N,) of ``quadfit``."""
    hp, W1, c1, adaptive = _inputs(ops, prefix, index)
    k, r, lr = prefix.k, prefix.record_every, prefix.lr.double().tolist()
    P = 3 if adaptive else 2
    N, S = W1.shape[1], len(starts)
    W, c = ops.tile(W1, (1, S)), ops.tile(c1, (S,))  # (k+1, S·N), start-major
    vel = ops.sign(W[k] - W[max(0, k - 2)])
    x = ops.zeros((S * N, P))
    x[:, 0] = -math.log(max(lr[0], 1e-12) * max(k * r, 1))
    x[:, 1] = ops.repeat(ops.asarray(starts), N) * k * (vel + (vel == 0))
    target = ops.copy(x)
    target[:, 1] = 0.0  # the penalty pulls the optimum to w_k: no motion without evidence
    lam = ops.asarray(penalty[:P])

    def residuals(x, reps: int):  # noqa: ANN001, ANN202 - ops' arrays
        """(k, reps·S·N) fit residuals of the stacked rows x (reps·S·N, P)."""
        Wr, cr = ops.tile(W, (1, reps)), ops.tile(c, (reps,))
        sim = _Optimizer(prefix.optimizer, hp, lr, r, ops)
        _, rec = sim.run(Wr[0], _unpack(ops, x, Wr[k], cr, adaptive), range(k * r), record=True)
        return (ops.stack(rec[1:]) - Wr[1:]) / cr

    with ops.quiet():  # a diverging trial step is refused
        x, res, obj = _levenberg_marquardt(ops, x, target, lam, residuals, iters)
    best = obj.reshape(S, N).argmin(0) * N + ops.arange(N)  # the best start of each parameter
    rms = ops.sqrt(ops.square(res[:, best]).mean(0))
    return torch.from_numpy(ops.numpy(x[best])), torch.from_numpy(ops.numpy(rms))


def stable_curvature(optimizer: str, hp: dict[str, float], lr: float) -> float | None:
    """The largest curvature h on which the simulated SGD or momentum does not diverge.

    On L = ½ h (w − w*)² (+ ½ λ w² for coupled weight decay) with step size α:

        SGD:                              α (h + λ) < 2
        momentum μ (heavy ball, torch):   α (h + λ) < 2 (1 + μ)
        Nesterov:                         α (h + λ) < 2 (1 + μ) / (1 + 2μ)

    Returns 0.98 of that bound at the run's largest α, or None for RMSprop, Adam and AdamW,
    whose steps are bounded by α and cannot grow geometrically.
    """
    if optimizer not in ("sgd", "momentum") or lr <= 0:
        return None
    mu = hp.get("momentum", 0.0) if optimizer == "momentum" else 0.0
    bound = 2.0 * (1.0 + mu)
    if optimizer == "momentum" and hp.get("nesterov", 0.0) > 0.5:
        bound /= 1.0 + 2.0 * mu
    return max(0.98 * bound / lr - hp.get("weight_decay", 0.0), 1e-12)


def _simulate(
    ops: _Ops, prefix: Prefix, index: torch.Tensor | None, x: torch.Tensor, fit: torch.Tensor
) -> QuadFit:
    """The fitted quadratic's path: the optimizer simulated from w_0 to step k·r, then on to M·r.

        p(t_i) = w_k + (w_sim,i − w_sim,k),   i = k..M

    with the model (h, w*, σ²) of the fitted x (N, P), h at most ``stable_curvature``: a run
    that trains (it does, or it would not be recorded) is stable, and a fit above the bound
    (the prefix is short, the fit loose) made the simulated SGD or momentum grow geometrically
    to the end of the run (a momentum run's bias: −3.5e10 where the run ends at 0.08; the
    forecast, clipped, was 200× persistence's error). ``fit`` is the RMS residual it carries;
    ``log_h`` stays the fitted value.
    """
    hp, W1, c1, adaptive = _inputs(ops, prefix, index)
    k, M, r = prefix.k, prefix.M, prefix.record_every
    xn = x.numpy()
    h, w_star, noise = _unpack(ops, ops.from_torch(x), W1[k], c1, adaptive)
    h_max = stable_curvature(prefix.optimizer, hp, float(prefix.lr.max()))
    model = (h if h_max is None else ops.clip(h, None, h_max), w_star, noise)
    sim = _Optimizer(prefix.optimizer, hp, prefix.lr.double().tolist(), r, ops)
    with ops.quiet():  # as torch: inf, not a warning
        w_k_sim, _ = sim.run(W1[0], model, range(k * r))
        _, rec = sim.run(w_k_sim, model, range(k * r, M * r), record=True)
    path = ops.stack(rec)  # (M−k+1, N) at checkpoints k..M
    path = ops.numpy(W1[k] + path - path[0])
    return QuadFit(path=path, fit=fit.numpy(), log_h=xn[:, 0], z=xn[:, 1])


def _levenberg_marquardt(  # noqa: PLR0913 - the problem and its backend
    ops: _Ops,
    x,  # noqa: ANN001 - ops' arrays, as target and lam
    target,  # noqa: ANN001
    lam,  # noqa: ANN001
    residuals,  # noqa: ANN001 - (rows (R, P), reps) -> (k, R) residuals
    iters: int,
) -> tuple:
    """Damped Gauss–Newton on every row of x (B, P) at once; returns x, residuals, objective.

    (JᵀJ + Λ + μ diag(JᵀJ + Λ)) δ = −(Jᵀ r + Λ (x − x̄)),   μ × 0.3 on success, × 10 on failure
    """
    B, P = x.shape
    shifts = ops.asarray(_FD * np.eye(P))  # (P, P)
    limit = ops.asarray(_STEP_LIMIT[:P])
    mu = ops.full(B, 1e-2)
    diag = ops.arange(P)

    def objective(res, x):  # noqa: ANN001, ANN202 - ops' arrays
        return ops.square(res).sum(0) + (ops.square(x - target) * lam).sum(1)

    # the residuals of the current x are kept from the step that made it (columns simulate
    # independently, so simulating x again, as a Jacobian's base column, gives the same bits)
    res = residuals(x, 1)  # (k, B)
    obj = objective(res, x)
    for _ in range(iters):
        # one simulation of the P forward-difference neighbours of every row
        xs = (x[None] + shifts[:, None]).reshape(-1, P)  # (P·B, P)
        R = residuals(xs, P).reshape(-1, P, B)  # (k, P, B)
        J = ops.permute((R - res[:, None]) / _FD, (0, 2, 1))  # (k, B, P)
        A = ops.einsum("kbp,kbq->bpq", J, J)
        A[:, diag, diag] += lam
        A[:, diag, diag] *= 1 + mu[:, None]
        grad = ops.einsum("kbp,kb->bp", J, res) + lam * (x - target)
        step = -ops.linalg.solve(A, grad[..., None])[..., 0]
        x_new = x + ops.clip(step, -limit, limit)
        res_new = residuals(x_new, 1)
        obj_new = objective(res_new, x_new)
        ok = ops.isfinite(obj_new) & (obj_new < obj)
        x = ops.where(ok[:, None], x_new, x)
        res = ops.where(ok, res_new, res)
        obj = ops.where(ok, obj_new, obj)
        mu = ops.clip(ops.where(ok, mu * 0.3, mu * 10), 1e-6, 1e6)
    return x, res, obj


def prior_velocity(qf: QuadFit, M: int, scale: torch.Tensor) -> torch.Tensor:
    """The prior's normalised velocity on each interval k..M−1.

        ṗ_i = M · (p_{i+1} − p_i) / c        (clipped to ±100)

    Args:
        qf: the fit of N parameters.
        M: intervals of the run.
        scale: (N,) the parameters' velocity scale c (``Normalizer.scale``).

    Returns:
        (N, M−k) float32.
    """
    path = torch.from_numpy(np.asarray(qf.path, dtype=np.float64))
    v = M * (path[1:] - path[:-1]) / scale.double()  # (M−k, N)
    return v.clamp(-100, 100).T.float()
