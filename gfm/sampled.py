"""Forecast a large layer from a sample of its parameters: the field on S of them, a fit for the rest.

A per-parameter field costs the same for every weight (about 95k FLOPs with the default GFM),
far more than a training step of a dense layer costs per weight (BENCHMARKS.md, the cost model).
Within one layer of one run, though, the field's forecast is a smooth function of a few numbers
each weight's own prefix gives. So a layer l of n_l > S parameters is forecast by the field on S
of them (drawn without replacement, seeded by the layer and the prefix's shape), and the rest by a
ridge regression fitted to those S, per layer and target time:

    y_j = (ŵ_j(t) − w_k,j) / c_l                  the field's normalised displacement (sample)
    φ_j = [1, v_1, v_2, v_4, v_8, v̄, w_k,j / ω_l, asinh(v_4), |v_4|]
    v_m = M (w_k,j − w_{k−m},j) / (m c_l),   v̄ = (w_k,j − w_0,j) / (t_k c_l)   (m clamped to k)
    β_l = argmin_β Σ_{j in sample} (φ_j β − y_j)² + ε S ||β||²,   ŵ_j(t) = w_k,j + c_l φ_j β_l

with c_l and ω_l the layer's velocity and weight scales (``gfm.features.Normalizer``). The sampled
parameters keep the field's forecasts. Since c_l and ω_l are one value per layer, the fitted map
is applied as one weight per prefix row read (``_apply``): a dozen passes over the layer per target
time, against the field's ~95k FLOPs per weight. BENCHMARKS.md (ledger rows ``sampled_64``,
``sampled_256``) measures what it costs in accuracy: nothing beyond the seeds' noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gfm.features import Normalizer, layer_ids, layer_spans
from gfm.forecaster import Prefix

__all__ = ["N_FEATURES", "features", "sample_index", "sampled_forecast"]

N_FEATURES = 9
_RIDGE = 1e-6  # ε, relative to the sample size


def sample_index(
    prefix: Prefix, max_per_layer: int
) -> tuple[torch.Tensor, list[tuple[slice | np.ndarray, np.ndarray]]]:
    """The parameters the field forecasts, and each large layer with its drawn parameters.

    Returns:
        (the sorted indices forecast by the field (N_s,), [(the layer's positions: a slice when
        contiguous, as a state_dict's are, else an index array; its S drawn positions, sorted)
        for every layer of more than ``max_per_layer`` parameters]). Draws are seeded by
        (D, k, layer): the same prefix shape always gives the same sample.
    """
    spans = layer_spans(prefix.params)
    if spans is None:  # layers not laid out as slices: each one's positions
        ids = layer_ids(prefix.params)
        layers = [np.flatnonzero(ids == layer) for layer in range(int(ids.max()) + 1)]
    else:
        layers = [slice(a, b) for a, b in spans]
    keep, large = [], []
    for layer, sel in enumerate(layers):
        start, n = (sel.start, sel.stop - sel.start) if isinstance(sel, slice) else (0, len(sel))
        if n > max_per_layer:
            rng = np.random.default_rng([prefix.D, prefix.k, layer])
            j = np.sort(rng.choice(n, max_per_layer, replace=False))
            chosen = start + j if isinstance(sel, slice) else sel[j]
            keep.append(chosen)
            large.append((sel, chosen))
        else:
            keep.append(np.arange(start, start + n) if isinstance(sel, slice) else sel)
    return torch.from_numpy(np.sort(np.concatenate(keep))), large


def features(prefix: Prefix, norm: Normalizer, pos: np.ndarray) -> torch.Tensor:
    """φ of the parameters at ``pos`` (see the module docstring) -> (n, N_FEATURES) float64.

    What the fit reads on the sample; ``_apply`` evaluates the fitted map on a whole layer.
    """
    w = prefix.w
    k, M = prefix.k, prefix.M
    idx = torch.from_numpy(pos)
    c = norm.scale[idx].float()
    wk = w[k, idx]
    cols = [torch.ones_like(wk)]
    for m in (1, 2, 4, 8):
        m = min(m, k)
        cols.append((wk - w[k - m, idx]) * (M / m) / c)
    cols.append((wk - w[0, idx]) * (M / k) / c)
    cols.append(wk / norm.weight_scale[idx].float())
    cols += [torch.asinh(cols[3]), cols[3].abs()]
    return torch.stack(cols, -1).double()


def _apply(
    prefix: Prefix, norm: Normalizer, sel: slice | np.ndarray, beta: list[float]
) -> torch.Tensor:
    """ŵ = w_k + c·φβ for the parameters ``sel`` of one layer, as weighted rows of the prefix.

    c and ω are one value per layer, so φβ's linear terms fold into one weight per row read:

        ŵ = (1 + A + β₆c/ω) w_k − Σ_m β_m (M/m) w_{k−m} − β₅ (M/k) w_0
            + c (β₀ + β₇ asinh(v_4) + β₈ |v_4|),      A = Σ_m β_m M/m + β₅ M/k

    (m = 1, 2, 4, 8 clamped to k): a dozen passes over the layer instead of the columns' ~35.
    """
    w, k, M = prefix.w, prefix.k, prefix.M
    first = sel.start if isinstance(sel, slice) else int(sel[0])
    c = float(norm.scale[first])
    omega = float(norm.weight_scale[first])
    b0, b1, b2, b4, b8, b_mean, b_w, b_asinh, b_abs = beta
    lags = [(min(m, k), b * M / min(m, k)) for m, b in ((1, b1), (2, b2), (4, b4), (8, b8))]
    lags.append((k, b_mean * M / k))  # w_0 = w_{k−k}
    wk = w[k, sel]
    A = sum(weight for _, weight in lags)
    out = wk * (1.0 + A + b_w * c / omega) + c * b0
    for lag, weight in lags:
        out.sub_(w[k - lag, sel], alpha=weight)
    m4 = min(4, k)
    v4 = (wk - w[k - m4, sel]).mul_(M / m4 / c)
    out.add_(torch.asinh(v4), alpha=c * b_asinh).add_(v4.abs_(), alpha=c * b_abs)
    return out


def sampled_forecast(
    field_forecast: Callable[[torch.Tensor | None], torch.Tensor],
    prefix: Prefix,
    max_per_layer: int,
) -> torch.Tensor:
    """Forecast every parameter, with the field on at most ``max_per_layer`` of each layer.

    Args:
        field_forecast: index (N,) or None -> (T, N) weights forecast by the field.
        prefix: the observed run.
        max_per_layer: S; layers of at most S parameters are forecast by the field in full.

    Returns:
        (T, D) in the field forecast's dtype.
    """
    sample, large = sample_index(prefix, max_per_layer)
    if not large:
        return field_forecast(None)
    pred_s = field_forecast(sample)  # (T, N_s)
    out = torch.empty(pred_s.shape[0], prefix.D, dtype=pred_s.dtype)
    norm = Normalizer.from_prefix(prefix)
    for sel, chosen in large:
        at = torch.from_numpy(np.searchsorted(sample.numpy(), chosen))  # their columns in pred_s
        fit = torch.from_numpy(chosen)
        y = (pred_s[:, at].double() - norm.center[fit].double()) / norm.scale[fit].double()
        phi = features(prefix, norm, chosen)  # (S, F)
        gram = phi.T @ phi + _RIDGE * len(chosen) * torch.eye(N_FEATURES, dtype=torch.float64)
        beta = torch.linalg.solve(gram, phi.T @ y.T)  # (F, T)
        # the whole layer from the fit (a slice: no gathers), the sample's own forecasts after
        for ti in range(beta.shape[1]):
            out[ti, sel] = _apply(prefix, norm, sel, beta[:, ti].tolist()).to(out.dtype)
    out[:, sample] = pred_s  # the field's own forecasts where it made them
    return out
