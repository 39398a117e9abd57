"""Per-parameter context features shared by GFM and the learned baselines.

Every learned forecaster sees the same, scale-free description of a prefix (Shou et al. 2025,
Sec. 3: the field is conditioned on the observed trajectory and on what is known about the run).

Normalisation (per layer, from the observed prefix only):

    c_l = max( RMS_{j in layer l, i in last `window` intervals} M · (w_{i+1,j} − w_{i,j}),
               floor · RMS_{all j, same intervals} M · (w_{i+1,j} − w_{i,j}),  1e-12 )
    ŵ = (w − w_k) / c        (the weights, centred on the last observed checkpoint)
    û = u / c                (a velocity dw/dt, t in units of the whole run)

``c`` is a velocity per unit t, so over the rest of the run ŵ moves by O(1 − t_k) and normalised
target velocities are O(1) in every layer whatever the layer's size, learning rate or optimizer.
A forecaster that predicts ŵ (or û) undoes it with ``Normalizer.decode`` (w = w_k + c · ŵ) or
``Normalizer.decode_velocity`` (u = c · û); both are exact inverses.

Learning rates enter as ratios to α_k = α(t_k), the step size in effect at the last observed
checkpoint, because every optimizer's update is proportional to its step size: an increment
divided by its step-size ratio is the optimizer's (normalised) update direction.

What is provided:
    ``Normalizer``                  the per-layer scale c and centre w_k (D,)
    ``context(prefix)``             (D, F_ctx) per-parameter features, F_ctx = ``n_context(H)``
                                    (names: ``context_names(H)``); ends with the run features
    ``run_features(prefix)``        (N_RUN,) optimizer one-hot, hyperparameters, S, t_k
    ``trend_features(prefix)``      (H,) how fast the whole run still moves, recent intervals
    ``run_context(prefix)``         (N_RUN + H,) both, the run-level input of GFM's trunk
    ``lr_features(prefix, t)``      (T, N_LR) the known step-size schedule at times t
    ``lr_at``, ``resolve_hparams``, ``layer_ids``  the helpers behind them

Shapes: k+1 observed checkpoints, M intervals in the full run, D parameters, T times,
H = ``history`` recent increments.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

from gfm.data.names import OPTIMIZERS
from gfm.data.schema import ParamMeta
from gfm.forecaster import Prefix

if TYPE_CHECKING:
    from gfm.prior import QuadFit

__all__ = [
    "HPARAM_DEFAULTS",
    "N_LR",
    "N_RUN",
    "RUN_NAMES",
    "Normalizer",
    "context",
    "context_names",
    "layer_ids",
    "lr_at",
    "lr_features",
    "n_context",
    "resolve_hparams",
    "run_context",
    "run_features",
    "trend_features",
]

# torch's defaults for each optimizer key (torch.optim.SGD/RMSprop/Adam/AdamW docs), except
# momentum = 0.9 for "momentum" (as gfm.data.optim.DEFAULTS: momentum 0 would be plain SGD).
HPARAM_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"momentum": 0.0, "nesterov": 0.0, "weight_decay": 0.0, "eps": 1e-8},
    "momentum": {"momentum": 0.9, "nesterov": 0.0, "weight_decay": 0.0, "eps": 1e-8},
    "rmsprop": {"alpha": 0.99, "weight_decay": 0.0, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "eps": 1e-8},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01, "eps": 1e-8},
}
_RATE_FLOOR = 1e-6  # α(t) is floored at 1e-6·α_0 before taking logs (cosine ends at 0)
_LOG_WD_ZERO = -6.0  # log10(weight_decay) reported for weight_decay = 0


def resolve_hparams(optimizer: str, hparams: dict[str, float | bool]) -> dict[str, float]:
    """The optimizer's hyperparameters with torch's defaults filled in.

    Args:
        optimizer: one of ``gfm.config.OPTIMIZERS``.
        hparams: the run's hyperparameters (``RunSpec.hparams``); absent keys take the default
            in ``HPARAM_DEFAULTS`` (torch's, but momentum 0.9 for ``momentum``).

    Returns:
        ``{"momentum", "nesterov", "alpha", "beta1", "beta2", "weight_decay", "eps"}`` (the keys
        that apply to ``optimizer``, plus ``lr`` when given) as floats; ``nesterov`` is 0.0 or 1.0.

    Raises:
        ValueError: ``optimizer`` is not a known key.
    """
    if optimizer not in HPARAM_DEFAULTS:
        raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    out = dict(HPARAM_DEFAULTS[optimizer])
    for key, value in hparams.items():
        if key in out or key == "lr":
            out[key] = float(value)
    return out


_PER_PARAMS: dict[int, tuple[weakref.ref, dict]] = {}
_T = TypeVar("_T")
# Normalizer.from_prefix per weights tensor: (its version counter, {(window, floor, M, params):
# normaliser}); a tensor modified in place bumps its version and is fitted again
_NORM_MEMO: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _layer_starts(params: ParamMeta) -> np.ndarray:
    """Where each run of one tensor's parameters starts in the flat vector (int64, sorted).

    A tensor's flat indices count 0..n−1, so a run starts where ``index`` is 0; the runs found
    so are accepted when each one's last index is its length − 1 and its first and last names
    agree (a read of the integer index, not a compare of D name strings: 10M names take 0.4 s).
    Any other layout is found by comparing neighbouring names.
    """
    names, index = params.layer, params.index
    if not len(names):
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(index == 0)
    ends = np.append(starts[1:], len(names))
    if (
        len(starts)
        and starts[0] == 0
        and np.array_equal(index[ends - 1], ends - starts - 1)
        and all(
            names[a] == names[b - 1] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
        )
    ):
        return starts
    return np.concatenate([[0], np.flatnonzero(names[1:] != names[:-1]) + 1])


def remember(params: ParamMeta, what: str, fn: Callable[[ParamMeta], _T]) -> _T:
    """``fn(params)``, computed once per ``ParamMeta`` object and ``what``.

    Runs of one architecture share their metadata, and what is derived from it (layer ids,
    spans, rows) costs milliseconds per million parameters; entries go when the object does.
    """
    hit = _PER_PARAMS.get(id(params))
    if hit is None or hit[0]() is not params:
        try:
            hit = _PER_PARAMS[id(params)] = (weakref.ref(params), {})
        except TypeError:  # not weak-referenceable: no caching
            return fn(params)
        if len(_PER_PARAMS) > 256:  # drop entries whose ParamMeta is gone
            for key in [key for key, (ref, _) in _PER_PARAMS.items() if ref() is None]:
                del _PER_PARAMS[key]
    if what not in hit[1]:
        hit[1][what] = fn(params)
    return hit[1][what]


def layer_ids(params: ParamMeta) -> np.ndarray:
    """Integer layer index of every parameter, in order of first appearance.

    Remembered per ``ParamMeta`` object (``remember``).

    Returns:
        (D,) int64, equal for parameters of the same ``ParamMeta.layer`` tensor.
    """
    return remember(params, "layer_ids", _layer_ids_of)


def _layer_ids_of(params: ParamMeta) -> np.ndarray:
    # run-length encode first (a layer's parameters are contiguous in a state_dict's flat
    # vector), so only one name per run is sorted: 1M names would take 60 ms as strings
    names = params.layer
    starts = _layer_starts(params)
    lengths = np.diff(np.append(starts, len(names)))
    run_names = names[starts].astype(str) if len(names) else np.array([], dtype=str)
    _, first, inverse = np.unique(run_names, return_index=True, return_inverse=True)
    # renumber so that ids follow state_dict order (np.unique sorts names alphabetically)
    order = np.argsort(np.argsort(first))
    ids = np.repeat(order[inverse].astype(np.int64), lengths)
    ids.flags.writeable = False
    return ids


def layer_spans(params: ParamMeta) -> list[tuple[int, int]] | None:
    """[(start, end)] of layer 0, 1, ... in the flat vector, or None if a layer is not one slice.

    A state_dict's flat vector stores each tensor as one contiguous slice, in order, so every
    per-layer pass can read slices instead of gathering by index. Remembered per ``ParamMeta``.
    """
    return remember(params, "layer_spans", _layer_spans_of)


def _layer_spans_of(params: ParamMeta) -> list[tuple[int, int]] | None:
    ids = layer_ids(params)
    if len(ids) and not np.all(ids[1:] >= ids[:-1]):
        return None
    ends = np.cumsum(np.bincount(ids)).tolist() if len(ids) else []
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _layer_sumsq(
    rows: Iterable[torch.Tensor],
    params: ParamMeta,
    ids: torch.Tensor,
    n_layers: int,
) -> torch.Tensor:
    """Σ_{j in layer l} x_j², accumulated in float64, for each (D,) row x -> (rows, L).

    Rows come one at a time (an increment w_{i+1} − w_i is formed, summed and freed, in the
    weights' precision: nearby values, exact differences), and each layer of a state_dict
    layout is summed as a slice (``layer_spans``): no (rows, D) float64 copy, which at millions
    of parameters is the cost. Ids in any other order are summed with ``index_add_``.
    """
    spans = layer_spans(params)
    out = []
    for x in rows:
        if spans is None:
            sums = torch.zeros(n_layers, dtype=torch.float64).index_add_(
                0, ids, x.double().square()
            )
        else:
            sums = torch.zeros(n_layers, dtype=torch.float64)
            for layer, (a, b) in enumerate(spans):
                if b > a:
                    sums[layer] = torch.linalg.vector_norm(x[a:b], dtype=torch.float64).square()
        out.append(sums)
    return torch.stack(out) if out else torch.zeros(0, n_layers, dtype=torch.float64)


@dataclass(frozen=True)
class Normalizer:
    """Per-layer affine normalisation of one run's weights, fitted on its observed prefix.

        ŵ = (w − center) / scale,   û = u / scale,   w = center + scale · ŵ

    Attributes:
        center: (D,) w_k, the last observed weights.
        scale: (D,) c of the parameter's layer (velocity per unit t, see module docstring).
        weight_scale: (D,) RMS of w_k over the parameter's layer (floored like ``scale``).
        layer: (D,) int64 layer index (``layer_ids``), None when restricted by ``index``.
    """

    center: torch.Tensor
    scale: torch.Tensor
    weight_scale: torch.Tensor
    layer: torch.Tensor | None = None

    @staticmethod
    def from_prefix(prefix: Prefix, *, window: int = 4, floor: float = 1e-3) -> Normalizer:
        """Fit the per-layer scales on the last ``window`` observed intervals.

            c_l = max(RMS_l(M · Δw), floor · RMS_all(M · Δw), 1e-12)

        Recent increments are used (not all of them) because the future moves like the recent
        past, not like the first, largest steps.

        Args:
            prefix: the observed run.
            window: number of most recent intervals used (all of them when fewer are observed).
            floor: relative floor against the all-layer RMS, for layers that barely moved.

        Returns:
            The normaliser; tensors of shape (D,) in ``prefix.w``'s dtype. Remembered for the
            same (unmodified) weights tensor: a forecast asks for it from several places.
        """
        key = (window, floor, prefix.M, id(prefix.params))
        memo = _NORM_MEMO.get(prefix.w)
        if memo is not None and memo[0] == prefix.w._version and key in memo[1]:
            return memo[1][key]
        norm = Normalizer._fit(prefix, window, floor)
        if memo is None or memo[0] != prefix.w._version:
            memo = _NORM_MEMO[prefix.w] = (prefix.w._version, {})
        memo[1][key] = norm
        return norm

    @staticmethod
    def _fit(prefix: Prefix, window: int, floor: float) -> Normalizer:
        start = max(0, prefix.k - window)
        w = prefix.w[start:]  # the rows it reads: (min(k, window) + 1, D)
        ids_np = layer_ids(prefix.params)
        ids = torch.from_numpy(ids_np.copy())
        n_layers = int(ids_np.max()) + 1 if len(ids_np) else 0
        # increments in the weights' precision (nearby values: exact), their squares summed in
        # float64; M is applied to the (L,) sums
        n_inc = w.shape[0] - 1  # min(k, window) increments
        count = torch.bincount(ids, minlength=n_layers).double()  # (L,)
        increments = (w[i + 1] - w[i] for i in range(n_inc))
        sq = _layer_sumsq(increments, prefix.params, ids, n_layers).sum(0)  # (L,)
        rms = prefix.M * (sq / (count * n_inc).clamp_min(1.0)).sqrt()
        total = prefix.M * (sq.sum() / max(n_inc * w.shape[1], 1)).sqrt()
        c = torch.maximum(rms, floor * total).clamp_min(1e-12)
        sq_k = _layer_sumsq([w[-1]], prefix.params, ids, n_layers)[0]  # (L,)
        w_rms = (sq_k / count.clamp_min(1.0)).sqrt()
        w_total = (sq_k.sum() / max(w.shape[1], 1)).sqrt()
        w_rms = torch.maximum(w_rms, floor * w_total).clamp_min(1e-12)
        dtype = prefix.w.dtype
        return Normalizer(
            center=prefix.w[-1].clone(),
            scale=c[ids].to(dtype),
            weight_scale=w_rms[ids].to(dtype),
            layer=ids,
        )

    def encode(self, w: torch.Tensor) -> torch.Tensor:
        """Normalised weights ŵ = (w − center) / scale for w (..., D)."""
        return (w - self.center) / self.scale

    def decode(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Weights w = center + scale · ŵ for ŵ (..., D)."""
        return self.center + self.scale * w_hat

    def encode_velocity(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised velocity û = u / scale for u (..., D)."""
        return u / self.scale

    def decode_velocity(self, v_hat: torch.Tensor) -> torch.Tensor:
        """Velocity u = scale · û for û (..., D)."""
        return self.scale * v_hat

    def index(self, idx: torch.Tensor) -> Normalizer:
        """The normaliser restricted to the parameters ``idx`` (N,) (scales stay per full layer)."""
        return Normalizer(self.center[idx], self.scale[idx], self.weight_scale[idx], None)


def lr_at(prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
    """Step size α(t) in effect at time t: the recorded value of the interval's start.

        α(t) = α_i = ``prefix.lr[i]``  for t in [i/M, (i+1)/M)   (α(1) = α_M)

    ``lr[i]`` is the step size of the update from w_i; holding it over the interval is exact for
    constant and step schedules that change at recorded steps, and lags a smooth schedule by at
    most one interval.

    Args:
        prefix: the run (only ``lr`` and ``M`` are used; the schedule is known in advance).
        t: (T,) times in [0, 1].

    Returns:
        (T,) float64 α(t).
    """
    lr = prefix.lr.double()
    i = (t.double().clamp(0.0, 1.0) * prefix.M).floor().long().clamp(max=prefix.M)
    return lr[i]


def _lr_integral(prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
    """∫_t^1 α(s) ds of the piecewise-constant schedule of ``lr_at``, (T,) float64."""
    lr = prefix.lr.double()
    M = prefix.M
    cum = torch.cat([lr.new_zeros(1), torch.cumsum(lr[:-1] / M, 0)])  # (M+1,) ∫_0^{t_i} α
    x = t.double().clamp(0.0, 1.0) * M
    i = x.floor().long().clamp(max=M - 1)
    return cum[-1] - (cum[i] + (x - i) * lr[i] / M)


N_LR = 3
_WINDOWS = (2, 4, 8)  # intervals over which ``context`` averages the recent velocity


def lr_features(prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
    """Known learning-rate schedule at times t, as ratios.

        [ log(α(t)/α_0),  log(α(t)/α_k),  ∫_t^1 α(s) ds / α_k ]

    The last one is how far the rest of the run can still move in units of the current step
    size (cosine and step schedules shrink it; a forecaster that knows it need not guess).

    Args:
        prefix: the run.
        t: (T,) times in [0, 1].

    Returns:
        (T, N_LR) float32.
    """
    a = lr_at(prefix, t)
    lr = prefix.lr.double()
    a0 = lr[0].clamp_min(1e-30)
    ak = lr[prefix.k].clamp_min(_RATE_FLOOR * a0)
    a = a.clamp_min(_RATE_FLOOR * a0)
    feats = [torch.log(a / a0), torch.log(a / ak), _lr_integral(prefix, t) / ak]
    return torch.stack(feats, -1).float()  # (T, N_LR)


RUN_NAMES = [*(f"opt_{o}" for o in OPTIMIZERS)] + [
    "neg_log10_1m_momentum",
    "nesterov",
    "neg_log10_1m_alpha",
    "neg_log10_1m_beta1",
    "neg_log10_1m_beta2",
    "log10_weight_decay",
    "log10_lr0",
    "log10_steps",
    "t_k",
]
N_RUN = len(RUN_NAMES)


def _neg_log_1m(x: float) -> float:
    return -math.log10(max(1.0 - x, 1e-6))


def run_features(prefix: Prefix) -> torch.Tensor:
    """Features of the whole run, the same for every parameter.

        [ one-hot optimizer (5), −log10(1 − μ), nesterov, −log10(1 − ρ_rmsprop),
          −log10(1 − β1), −log10(1 − β2), log10 λ (−6 when 0), log10 α_0,
          log10 S (S = M · record_every optimizer steps), t_k ]

    Hyperparameters that do not apply to the optimizer are 0 (momentum for Adam, ...).

    Returns:
        (N_RUN,) float32, names in ``RUN_NAMES``.
    """
    hp = resolve_hparams(prefix.optimizer, prefix.hparams)
    onehot = [1.0 if prefix.optimizer == o else 0.0 for o in OPTIMIZERS]
    wd = hp.get("weight_decay", 0.0)
    feats = onehot + [
        _neg_log_1m(hp["momentum"]) if "momentum" in hp else 0.0,
        hp.get("nesterov", 0.0),
        _neg_log_1m(hp["alpha"]) if "alpha" in hp else 0.0,
        _neg_log_1m(hp["beta1"]) if "beta1" in hp else 0.0,
        _neg_log_1m(hp["beta2"]) if "beta2" in hp else 0.0,
        math.log10(wd) if wd > 0 else _LOG_WD_ZERO,
        math.log10(max(float(prefix.lr[0]), 1e-30)),
        math.log10(prefix.M * prefix.record_every),
        prefix.t_k,
    ]
    return torch.tensor(feats, dtype=torch.float32)


def _recent(prefix: Prefix, history: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Step-size corrected recent increments M · Δ_{k−1−j} · α_k / ᾱ_{k−1−j}, j = 0..H−1.

    ᾱ_i = lr[i] is the step size of interval i (floored at 1e-6 α_0); when k < H the
    oldest observed interval is repeated.

    Returns:
        (H, N) float64 for the parameters ``index`` (all D when None).
    """
    lr = prefix.lr.double()
    a0 = lr[0].clamp_min(1e-30)
    ak = lr[prefix.k].clamp_min(_RATE_FLOOR * a0)
    i = (prefix.k - 1 - torch.arange(history)).clamp_min(0)  # (H,) interval indices
    mid = lr[i].clamp_min(_RATE_FLOOR * a0)  # (H,) step size of each interval
    w = prefix.w if index is None else prefix.w[:, index]
    inc = (w[i + 1] - w[i]).double()  # (H, N)
    return prefix.M * inc * (ak / mid).unsqueeze(-1)


_TREND_MEMO: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _layer_ids(prefix: Prefix, norm: Normalizer) -> torch.Tensor:
    return norm.layer if norm.layer is not None else torch.tensor(layer_ids(prefix.params))


def layer_rms(prefix: Prefix, norm: Normalizer, history: int) -> torch.Tensor:
    """RMS over each layer of the recent increments: RMS_layer(M Δ_{k−1−j} α_k/ᾱ), j < history.

    Returns:
        (history, L) float64, one column per layer. It reads every parameter, so a caller that
        describes a run's parameters in chunks computes it once and passes it to ``context``.
    """
    key = (history, prefix.lr.data_ptr(), prefix.M, norm.scale.data_ptr())
    memo = _TREND_MEMO.get(prefix.w)
    if memo is not None and memo[:2] == (prefix.w._version, key):
        return memo[2]
    ids = _layer_ids(prefix, norm)
    n_layers = int(ids.max()) + 1
    lr = prefix.lr.double()
    a0 = lr[0].clamp_min(1e-30)
    ak = lr[prefix.k].clamp_min(_RATE_FLOOR * a0)
    i = (prefix.k - 1 - torch.arange(history)).clamp_min(0)  # (H,) as in _recent
    mid = lr[i].clamp_min(_RATE_FLOOR * a0)
    count = torch.bincount(ids, minlength=n_layers).clamp_min(1).double()  # (L,)
    scale = (prefix.M * ak / mid).unsqueeze(-1)  # (H, 1)
    w = prefix.w
    sq = _layer_sumsq((w[j + 1] - w[j] for j in i.tolist()), prefix.params, ids, n_layers)
    rms = scale * (sq / count).sqrt()
    _TREND_MEMO[prefix.w] = (prefix.w._version, key, rms)
    return rms


def trend_features(
    prefix: Prefix, normalizer: Normalizer | None = None, *, history: int = 4
) -> torch.Tensor:
    """How fast the whole run is still moving, over the recent intervals.

        trend_j = ln RMS_all( M · Δ_{k−1−j} / c · α_k / ᾱ_{k−1−j} ),   j = 0..history−1

    (each parameter normalised by its layer's c, so every layer counts alike; the oldest observed
    interval is repeated when k < history). Differences trend_j − trend_{j+1} are the run's
    recent log contraction rates per interval, what a geometric extrapolation would use.

    Returns:
        (history,) float32.
    """
    norm = Normalizer.from_prefix(prefix) if normalizer is None else normalizer
    ids = _layer_ids(prefix, norm)
    n_layers = int(ids.max()) + 1
    # from the per-layer RMS: mean_j (inc_j / c_j)² = Σ_l n_l RMS_l² / c_l² / D (c is per layer)
    count = torch.bincount(ids, minlength=n_layers).double()  # (L,)
    # c is one value per layer, so any of a layer's entries gives it
    c = torch.zeros(n_layers, dtype=torch.float64).scatter_(0, ids, norm.scale.double())
    rms2 = layer_rms(prefix, norm, history).square()  # (H, L)
    rms = ((rms2 * count / c.square().clamp_min(1e-300)).sum(-1) / count.sum()).sqrt()  # (H,)
    return torch.log(rms.clamp_min(1e-30)).clamp_min(-20.0).float()


def run_context(
    prefix: Prefix, normalizer: Normalizer | None = None, *, history: int = 4
) -> torch.Tensor:
    """Run-level inputs of a learned field: ``run_features`` then ``trend_features``.

    Returns:
        (N_RUN + history,) float32.
    """
    return torch.cat([run_features(prefix), trend_features(prefix, normalizer, history=history)])


PRIOR_NAMES = ["prior_final", "prior_fit", "prior_z", "prior_log_h"]


def n_context(history: int, prior: bool = False) -> int:
    """Number of per-parameter context features F_ctx for ``history`` increments."""
    return len(context_names(history, prior))


def context_names(history: int, prior: bool = False) -> list[str]:
    """Names of the columns of ``context``, in order (``PRIOR_NAMES`` with a prior)."""
    per_param = ["w0", "wk", *(f"inc_{j}" for j in range(history))]
    per_param += [f"layer_trend_{j}" for j in range(history)]
    per_param += [f"vel_{m}" for m in _WINDOWS]
    per_param += ["mean_velocity", "log10_speed", "is_bias", "log_fan_in"]
    return per_param + (PRIOR_NAMES if prior else []) + RUN_NAMES


def context(
    prefix: Prefix,
    normalizer: Normalizer | None = None,
    *,
    history: int = 4,
    index: torch.Tensor | None = None,
    prior: QuadFit | None = None,
    layer_trend: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-parameter context of a prefix, scale-free.

    Columns (c = ``normalizer.scale``, ω = ``normalizer.weight_scale``, Δ_i = w_{i+1} − w_i):

        w0            (w_0 − w_k) / c                 where the run started, in velocity units
        wk            w_k / ω                          current weight relative to its layer
        inc_j         M · Δ_{k−1−j} / c · α_k / ᾱ_{k−1−j}  j = 0..history−1, newest first: the
                      recent normalised velocities divided by their step-size ratio (ᾱ_i = lr[i],
                      the step size of interval i); when k < history the oldest observed
                      increment is repeated
        layer_trend_j ln RMS_layer(M · Δ_{k−1−j} · α_k / ᾱ_{k−1−j}) − ln c   j = 0..history−1: how
                      the whole layer's (step-size corrected) speed changed over the recent
                      intervals, i.e. its contraction rate
        vel_m         M · (w_k − w_{k−m}) / (m · c) · α_k / mean(ᾱ_{k−m..k−1})   m = 2, 4, 8
                      (clamped to k): the recent velocity averaged over m intervals, less noisy
                      than single increments under minibatch noise
        mean_velocity (w_k − w_0) / (t_k · c)          average velocity over the prefix
        log10_speed   log10(c / ω)                     how fast the layer moves relative to its size
        is_bias       1 for biases, 0 for weights
        log_fan_in    ln(fan_in)
        with a prior (``gfm.prior.QuadFit`` of the same N parameters), what the gate needs to
        know how far to trust it:
        prior_final   asinh((p_M − w_k) / c)           where the prior ends
        prior_fit     log10 of its RMS fit residual on the prefix (interval velocities)
        prior_z       asinh(z), its optimum (w* − w_k) in interval velocities
        prior_log_h   log(h α_k S), its curvature in units of the run's remaining step budget
        + run_features(prefix) repeated for every parameter (N_RUN columns)

    Args:
        prefix: the observed run.
        normalizer: its normaliser (fitted on the full prefix when None).
        history: number of recent increments H.
        index: (N,) parameters to describe (all D when None); scales still come from whole layers.
        prior: the prior's fit of exactly these N parameters, or None (no prior columns).
        layer_trend: ``layer_rms(prefix, normalizer, history)`` when already computed (it reads
            all D parameters: a forecast in chunks computes it once, not once per chunk).

    Returns:
        (N, n_context(history, prior is not None)) float32, N = D or len(index).
    """
    norm = Normalizer.from_prefix(prefix) if normalizer is None else normalizer
    idx = torch.arange(prefix.D) if index is None else index.long()
    w = prefix.w[:, idx].double()  # (k+1, N)
    c = norm.scale[idx].double()  # (N,)
    omega = norm.weight_scale[idx].double()

    cols = [(w[0] - w[-1]) / c, w[-1] / omega]
    cols += list(_recent(prefix, history, idx) / c)  # history × (N,)
    rms = layer_rms(prefix, norm, history) if layer_trend is None else layer_trend  # (H, L)
    trend = torch.log(rms[:, _layer_ids(prefix, norm)[idx]].clamp_min(1e-30) / c).clamp_min(-20.0)
    cols += list(trend)  # history × (N,): ln RMS_layer − ln c
    lr = prefix.lr.double()
    a0 = lr[0].clamp_min(1e-30)
    mid = lr[:-1].clamp_min(_RATE_FLOOR * a0)  # (M,) step size of each interval
    ak = lr[prefix.k].clamp_min(_RATE_FLOOR * a0)
    for m in _WINDOWS:
        m = min(m, prefix.k)
        corr = ak / mid[prefix.k - m : prefix.k].mean()
        cols.append(prefix.M * (w[-1] - w[-1 - m]) / (m * c) * corr)
    cols.append((w[-1] - w[0]) / (prefix.t_k * c))
    cols.append(torch.log10(c / omega))
    kind = prefix.params.kind[idx.numpy()]
    fan_in = prefix.params.fan_in[idx.numpy()]
    cols.append(torch.from_numpy((kind == "bias").astype(np.float64)))
    cols.append(torch.from_numpy(np.log(np.maximum(fan_in, 1)).astype(np.float64)))
    if prior is not None:
        cols += _prior_columns(prefix, prior, c)
    per_param = torch.stack(cols, -1).float()  # (N, F_ctx − N_RUN)
    run = run_features(prefix).expand(len(idx), N_RUN)  # (N, N_RUN)
    return torch.cat([per_param, run], -1)


def _prior_columns(prefix: Prefix, prior: QuadFit, c: torch.Tensor) -> list[torch.Tensor]:
    """The ``PRIOR_NAMES`` columns of ``context`` (N,) each, float64."""
    budget = math.log(max(float(prefix.lr[prefix.k]) * prefix.M * prefix.record_every, 1e-30))
    return [
        torch.from_numpy(np.arcsinh((prior.path[-1] - prior.path[0]) / c.numpy())),
        torch.from_numpy(np.log10(np.maximum(prior.fit, 1e-6))),
        torch.from_numpy(np.arcsinh(prior.z)),
        torch.from_numpy(np.clip(prior.log_h + budget, -20.0, 20.0)),
    ]
