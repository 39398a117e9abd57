"""Rows of a network's weights (output units, filters) and the mean of a displacement over each.

A weight tensor of shape (out, ...) has ``out`` rows: the weights that feed one output unit or
filter, ``fan_in`` of them. An error that shifts a whole row's weights together moves that unit's
pre-activation for every input alike, and a ReLU network tolerates that far less than an error
of the same size spread over the row (BENCHMARKS.md, issue 11's diagnosis). Biases are rows of
their own and are left alone, as are the rows of layers with a single row (a single-output
regression layer, a linear model), where there is no unit to shift against the others.
"""

from __future__ import annotations

import numpy as np
import torch

from gfm.data.schema import ParamMeta
from gfm.features import layer_ids

__all__ = ["row_index", "shrink_row_means"]


def row_index(params: ParamMeta) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The weights that belong to rows, each one's row, and the number of rows.

        row(j) = (layer(j), index(j) // fan_in(j))   for weights j of layers with >= 2 rows

    Returns:
        (positions (W,) int64 into the flat vector, rows (W,) int64 in [0, R), R).
    """
    layer = layer_ids(params)
    row = params.index // np.maximum(params.fan_in, 1)
    weight = params.kind == "weight"
    n_rows = np.zeros(layer.max() + 1 if len(layer) else 0, dtype=np.int64)
    np.maximum.at(n_rows, layer[weight], row[weight] + 1)
    pos = np.flatnonzero(weight & (n_rows[layer] >= 2))
    key = layer[pos] * (int(row.max(initial=0)) + 1) + row[pos]
    _, rows = np.unique(key, return_inverse=True)
    n = int(rows.max()) + 1 if len(rows) else 0
    return torch.from_numpy(pos.astype(np.int64)), torch.from_numpy(rows.astype(np.int64)), n


def shrink_row_means(
    w_hat: torch.Tensor, w_k: torch.Tensor, params: ParamMeta, factor: float
) -> torch.Tensor:
    """Scale the per-row mean of the forecast displacement by ``factor``, keeping the rest.

        ŵ'_j = ŵ_j − (1 − β) · d̄_row(j),   d̄_r = mean_{j in row r} (ŵ_j − w_k,j)

    Args:
        w_hat: (T, D) forecast weights.
        w_k: (D,) the last observed weights.
        params: the D parameters' metadata (rows: ``row_index``).
        factor: β; 1 returns ``w_hat`` unchanged, 0 holds every row's mean weight at w_k's.

    Returns:
        (T, D) in ``w_hat``'s dtype.
    """
    if factor == 1.0:
        return w_hat
    pos, rows, n = row_index(params)
    if n == 0:
        return w_hat
    d = (w_hat[:, pos] - w_k[pos]).double()  # (T, W)
    sums = torch.zeros(len(w_hat), n, dtype=torch.float64).index_add_(1, rows, d)
    mean = sums / torch.bincount(rows, minlength=n).double()  # (T, R)
    out = w_hat.clone()
    out[:, pos] = (w_hat[:, pos].double() - (1.0 - factor) * mean[:, rows]).to(w_hat.dtype)
    return out
