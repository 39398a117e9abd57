"""Per-run extrapolators that need no training: persistence, linear, geometric, DMD."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from gfm.baselines._base import _Baseline, _interp_rows, _linear_fit
from gfm.features import layer_ids
from gfm.forecaster import Prefix


class Persistence(_Baseline):
    """The last observed weights, at every target time.

        ŵ(t) = w_k

    Budget: none (no training, O(D) per forecast).
    """

    name = "persistence"

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.broadcast_to(w[-1], (len(t), w.shape[1]))


class Linear(_Baseline):
    """Per-parameter straight line through the last K checkpoints, extrapolated.

        w_i ≈ a + b·i  (least squares on i = k−K+1..k),   ŵ(t) = a + b·(t·M)

    Exact on trajectories linear in the step. Config: ``window`` K (default 3, fed by
    ``evaluate.linear_window``). Budget: none (no training, O(K·D) per forecast).
    """

    name = "linear"
    defaults: ClassVar[dict[str, Any]] = {"window": 3}

    def _check_config(self) -> None:
        if not isinstance(self.config["window"], int) or self.config["window"] < 2:
            raise ValueError(
                f"linear: `config.window` must be an integer >= 2, got {self.config['window']!r}"
            )

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        level, slope = _linear_fit(w, self.config["window"])
        return level + slope * (t * prefix.M - prefix.k)[:, None]


class Geometric(_Baseline):
    """Per-parameter geometric decay to a limit, fitted on the last checkpoints.

        w_i ≈ a + c·r^i,   so   d_{i+1} = r·d_i  for the increments d_i = w_{i+1} − w_i
        r = Σ d_{i+1}·d_i / Σ d_i²  (over the last ``window`` increments; per parameter, or pooled
            per layer with ``pool="layer"``), raised to r_min when below it
        (a, c) by least squares on the last window+1 values;   ŵ(t) = a + c·r^(t·M)

    Exact for gradient descent on a quadratic whose Hessian is diagonal (each weight then decays
    with its own rate). Parameters whose ratio is not in (0, r_max) (oscillating, or not visibly
    converging, where a + c·r^i is ill-posed and tends to the line anyway), and all of them when
    k < 2, fall back to the ``linear`` baseline with ``linear_window`` checkpoints.

    Config: window 4, pool "param", r_min 0.01, r_max 0.999, linear_window 3.
    Budget: none (no training, O(window·D) per forecast).
    """

    name = "geometric"
    defaults: ClassVar[dict[str, Any]] = {
        "window": 4,
        "pool": "param",
        "r_min": 0.01,
        "r_max": 0.999,
        "linear_window": 3,
    }

    def _check_config(self) -> None:
        c = self.config
        if not isinstance(c["window"], int) or c["window"] < 2:
            raise ValueError(
                f"geometric: `config.window` must be an integer >= 2, got {c['window']!r}"
            )
        if c["pool"] not in ("param", "layer"):
            raise ValueError(
                f"geometric: `config.pool` must be one of ['param', 'layer'], got {c['pool']!r}"
            )
        if not 0.0 < c["r_min"] < c["r_max"] < 1.0:
            raise ValueError(
                f"geometric: `config.r_min`, `config.r_max` must satisfy 0 < r_min < r_max < 1, "
                f"got {c['r_min']!r}, {c['r_max']!r}"
            )
        if not isinstance(c["linear_window"], int) or c["linear_window"] < 2:
            raise ValueError(
                "geometric: `config.linear_window` must be an integer >= 2, "
                f"got {c['linear_window']!r}"
            )

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        c, k = self.config, prefix.k
        n = t * prefix.M - k  # (T,) steps ahead
        level, slope = _linear_fit(w, c["linear_window"])
        out = level + slope * n[:, None]  # (T, D) linear fallback
        W = min(c["window"], k)  # increments used
        if W < 2:
            return out
        d = np.diff(w[-(W + 1) :], axis=0)  # (W, D)
        num = (d[1:] * d[:-1]).sum(0)
        den = (d[:-1] ** 2).sum(0)
        if c["pool"] == "layer":
            ids = layer_ids(prefix.params)
            num = np.bincount(ids, weights=num)[ids]
            den = np.bincount(ids, weights=den)[ids]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = num / den
        # r ≥ r_max is as good as 1 (no visible convergence): the line is the better-posed fit
        ok = np.isfinite(r) & (r > 0.0) & (r < c["r_max"]) & (den > 0.0)
        r = np.clip(np.where(ok, r, 0.5), c["r_min"], c["r_max"])
        # (a, c) by least squares on w_i = a + c·x_i with x_i = r^(i−(k−W)) in (0, 1]
        x = r[None, :] ** np.arange(W + 1, dtype=np.float64)[:, None]  # (W+1, D)
        y = w[-(W + 1) :]
        xc, yc = x - x.mean(0), y - y.mean(0)
        var = (xc**2).sum(0)
        ok &= var > 1e-14
        coef = (xc * yc).sum(0) / np.where(ok, var, 1.0)
        a = y.mean(0) - coef * x.mean(0)
        geo = a + coef * r[None, :] ** (n[:, None] + W)  # (T, D)
        return np.where(ok[None, :], geo, out)


class DMD(_Baseline):
    """Dynamic mode decomposition of the run's own increments, iterated forward.

        w_{i+1} = A·w_i + b   ⇒   d_{i+1} = A·d_i  for d_i = w_{i+1} − w_i
        d_i ≈ U·z_i with U the top-r left singular vectors of [d_0 … d_{k−1}] (D, k)
        Ã = Z_1·Z_0⁺ (r, r);  eigenvalues clipped to |λ| ≤ rho_max
        ŵ_{k+n} = w_k + U·Σ_{j=1..n} Ã^j·z_{k−1},  linear in between recorded steps

    Source: projected (exact) DMD, Schmid 2010 [1], Tu et al. 2014 [2]; the affine offset b is
    removed by working on increments. Exact for full-batch GD on a quadratic once the increments
    span the dynamics (r ≤ k−1 modes). A is never formed at size D×D, so any D works: the rank
    is at most min(rank, k−1, #singular values > tol·σ_max). With fewer than 2 increments it
    falls back to ``linear`` with ``linear_window`` checkpoints.

    Config: window 0 (all increments; else the last ``window``), rank 0 (no cap), tol 1e-5,
    rho_max 1.0, linear_window 3. Budget: none (no training, one (D, k) SVD per forecast).
    """

    name = "dmd"
    defaults: ClassVar[dict[str, Any]] = {
        "window": 0,
        "rank": 0,
        "tol": 1e-5,
        "rho_max": 1.0,
        "linear_window": 3,
    }

    def _check_config(self) -> None:
        c = self.config
        for key in ("window", "rank"):
            if not isinstance(c[key], int) or c[key] < 0:
                raise ValueError(
                    f"dmd: `config.{key}` must be an integer >= 0 (0: no limit), got {c[key]!r}"
                )
        self._positive("tol", "rho_max")
        if not isinstance(c["linear_window"], int) or c["linear_window"] < 2:
            raise ValueError(
                f"dmd: `config.linear_window` must be an integer >= 2, got {c['linear_window']!r}"
            )

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        c, k = self.config, prefix.k
        n = t * prefix.M - k  # (T,) steps ahead
        d = np.diff(w, axis=0)  # (k, D) increments d_0..d_{k−1}
        if c["window"]:
            d = d[-c["window"] :]
        X = d.T  # (D, m) snapshot matrix
        U, S, _ = np.linalg.svd(X, full_matrices=False)
        m = X.shape[1]
        r = int(np.count_nonzero(S / S[0] > c["tol"])) if S[0] > 0 else 0
        r = min(r, m - 1, c["rank"] or m)
        if r < 1:
            level, slope = _linear_fit(w, c["linear_window"])
            return level + slope * n[:, None]
        U = U[:, :r]  # (D, r)
        Z = U.T @ X  # (r, m)
        A = Z[:, 1:] @ np.linalg.pinv(Z[:, :-1], rcond=1e-10)  # (r, r)
        A = _clip_spectrum(A, c["rho_max"])
        N = int(math.ceil(n.max() - 1e-9))
        z, cum = Z[:, -1], np.zeros(r)
        path = np.zeros((N + 1, r))  # Σ_{j=1..n} Ã^j z_{k−1}, n = 0..N
        for j in range(1, N + 1):
            z = A @ z
            cum = cum + z
            path[j] = cum
        traj = w[-1] + path @ U.T  # (N+1, D) at n = 0..N
        return _interp_rows(traj, np.clip(n, 0.0, N))


def _clip_spectrum(A: np.ndarray, rho_max: float) -> np.ndarray:
    """Scale every eigenvalue of A with |λ| > rho_max onto the circle |λ| = rho_max."""
    lam, V = np.linalg.eig(A)
    mag = np.abs(lam)
    if mag.max() <= rho_max:
        return A
    if np.linalg.cond(V) > 1e8:  # (near-)defective: shrink the whole operator instead
        return A * (rho_max / mag.max())
    lam = np.where(mag > rho_max, lam * rho_max / np.maximum(mag, 1e-300), lam)
    return (V @ np.diag(lam) @ np.linalg.inv(V)).real
