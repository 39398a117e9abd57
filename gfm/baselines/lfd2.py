"""LFD-2: ridge regression from a prefix's recent steps to its later weights, learned from runs."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gfm.baselines._base import _Baseline, _interp_rows
from gfm.data.schema import RunRecord
from gfm.features import Normalizer, context, context_names
from gfm.forecaster import Prefix, observed_index


class LFD2(_Baseline):
    """Direct linear forecaster ("farcasting"): ridge regression from the prefix to w(t).

        x_j = [w0, wk, inc_0, inc_1, 1]_j    (columns of gfm.features.context, history 2)
        (ŵ_j(t) − w_k,j)/c_j = β_{b,g}·x_j   (c: the per-layer velocity scale of Normalizer)

    i.e. a linear map of (w_0 − w_k, w_k, w_k − w_{k−1}, w_{k−1} − w_{k−2}) normalised per layer.
    One coefficient vector β per (observed-fraction bucket b, target-time node g/G, g = 1..G),
    fitted by ridge regression (penalty ``ridge``·tr(XᵀX)/5) over all training runs, each sample
    weighted by c_j² / n_run (``weighting: raw``: the least-squares fit of the raw weights, every
    run counting alike, which is what the benchmark scores) or not at all (``none``); at forecast
    time the nearest bucket is used and β is interpolated linearly in t between the nodes, with
    β = 0 at t_k (so ŵ(t_k) = w_k); a warning says when no bucket lies within 0.05 of the
    observed fraction. The normal equations are accumulated run by run (one run in
    memory at a time), on at most ``params_per_run`` random parameters of each run.

    Config: fractions 0.05, 0.10, …, 0.95; time_grid G = 20; ridge 1e-3; params_per_run 4096;
    weighting raw; seed 0. Budget: one pass over the training runs (closed-form solve).
    """

    name = "lfd2"
    defaults: ClassVar[dict[str, Any]] = {
        "fractions": [round(0.05 * i, 2) for i in range(1, 20)],
        "time_grid": 20,
        "ridge": 1e-3,
        "params_per_run": 4096,
        "weighting": "raw",
        "seed": 0,
    }
    min_train_runs = 1
    _COLUMNS = ("w0", "wk", "inc_0", "inc_1")  # context columns used, plus an intercept
    _P = len(_COLUMNS) + 1

    def __init__(self, config: Mapping[str, Any] | None = None, *, device: str = "cpu") -> None:
        """Build an unfitted LFD-2 (see the class docstring for ``config``)."""
        super().__init__(config, device=device)
        self.coef: np.ndarray | None = None  # (B, G, P)
        self.valid: np.ndarray | None = None  # (B, G) node fitted with data

    def _check_config(self) -> None:
        f = self.config["fractions"]
        if not f or any(not 0.0 < x < 1.0 for x in f) or sorted(f) != list(f):
            raise ValueError(
                f"lfd2: `config.fractions` must be increasing values in (0, 1), got {f!r}"
            )
        for key in ("time_grid", "params_per_run"):
            if not isinstance(self.config[key], int) or self.config[key] < 1:
                raise ValueError(
                    f"lfd2: `config.{key}` must be a positive integer, got {self.config[key]!r}"
                )
        self._positive("ridge")
        if self.config["weighting"] not in ("raw", "none"):
            raise ValueError(
                f"lfd2: `config.weighting` must be one of ['raw', 'none'], "
                f"got {self.config['weighting']!r}"
            )

    @classmethod
    def _features(cls, prefix: Prefix, idx: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Features x (n, P) and velocity scale c (n,) of the parameters idx (all when None)."""
        norm = Normalizer.from_prefix(prefix)
        ctx = context(prefix, norm, history=2, index=idx).double().numpy()  # (n, F_ctx)
        names = context_names(2)
        x = ctx[:, [names.index(col) for col in cls._COLUMNS]]
        c = norm.scale.double().numpy() if idx is None else norm.scale[idx].double().numpy()
        return np.concatenate([x, np.ones((len(x), 1))], axis=1), c

    def _fit(self, train: Sequence[RunRecord]) -> None:
        cfg = self.config
        fractions = np.asarray(cfg["fractions"], dtype=np.float64)
        G, P = cfg["time_grid"], self._P
        nodes = np.arange(1, G + 1) / G  # (G,)
        xtx = np.zeros((len(fractions), G, P, P))
        xty = np.zeros((len(fractions), G, P))
        rng = np.random.default_rng(cfg["seed"])
        for i in range(len(train)):
            record = train[i]  # one run in memory at a time
            record.check_shapes("lfd2.fit")
            M, D = record.weights.shape[0] - 1, record.weights.shape[1]
            n = min(D, cfg["params_per_run"])
            idx = np.sort(rng.choice(D, size=n, replace=False))
            W = np.asarray(record.weights[:, idx], dtype=np.float64)  # (M+1, n)
            for b, f in enumerate(fractions):
                k = observed_index(M, f)
                x, c = self._features(Prefix.from_record(record, k), torch.from_numpy(idx))
                later = nodes > k / M + 1e-12
                y = (_interp_rows(W, nodes[later] * M) - W[k]) / c  # (G', n)
                s = c**2 / n if cfg["weighting"] == "raw" else np.ones(n)  # (n,) sample weights
                xtx[b, later] += (x * s[:, None]).T @ x
                xty[b, later] += (y * s) @ x
        self.coef = np.zeros((len(fractions), G, P))
        self.valid = np.zeros((len(fractions), G), dtype=bool)
        for b in range(len(fractions)):
            for g in range(G):
                tr = np.trace(xtx[b, g])
                if tr > 0:
                    A = xtx[b, g] + cfg["ridge"] * tr / P * np.eye(P)
                    self.coef[b, g] = np.linalg.solve(A, xty[b, g])
                    self.valid[b, g] = True

    def _forecast(self, prefix: Prefix, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.coef is None or self.valid is None:
            raise ValueError(
                "lfd2.forecast: the model must be fitted (call fit) or loaded first, "
                "got an unfitted one"
            )
        G = self.config["time_grid"]
        nodes = np.arange(1, G + 1) / G
        fractions = np.asarray(self.config["fractions"])
        b = int(np.argmin(np.abs(fractions - prefix.t_k)))
        if abs(fractions[b] - prefix.t_k) > 0.05:
            warnings.warn(
                f"lfd2.forecast: observed fraction t_k = {prefix.t_k:.3g} is far from every "
                f"fitted bucket {fractions.tolist()}; using {fractions[b]:g}",
                stacklevel=3,
            )
        use = self.valid[b] & (nodes > prefix.t_k)
        xs = np.concatenate([[prefix.t_k], nodes[use]])
        ys = np.concatenate([np.zeros((1, self._P)), self.coef[b, use]])  # (nodes+1, P)
        beta = np.stack([np.interp(t, xs, ys[:, p]) for p in range(self._P)], axis=1)  # (T, P)
        x, c = self._features(prefix, None)  # (D, P), (D,)
        return w[-1] + (beta @ x.T) * c

    def _state(self) -> dict[str, Tensor]:
        if self.coef is None or self.valid is None:
            return {}
        return {"coef": torch.from_numpy(self.coef), "valid": torch.from_numpy(self.valid)}

    def _load_state(self, state: dict[str, Tensor]) -> None:
        if state:
            self.coef = state["coef"].double().numpy()
            self.valid = state["valid"].numpy().astype(bool)
