"""Rows of a network's weights (output units, filters) and the mean of a displacement over each.

A weight tensor of shape (out, ...) has ``out`` rows: the weights that feed one output unit or
filter, ``fan_in`` of them. An error that shifts a whole row's weights together moves that unit's
pre-activation for every input alike, and a ReLU network tolerates that far less than an error
of the same size spread over the row (BENCHMARKS.md, issue 11's diagnosis). Biases are rows of
their own and are left alone, as are the rows of layers with a single row (a single-output
regression layer, a linear model), where there is no unit to shift against the others, and rows
of a single weight (a 1-D weight tensor, as a run imported without a layout has: its "row mean"
would be each weight's own displacement, and shrinking it would shrink the whole forecast).
"""

from __future__ import annotations

import numpy as np
import torch

from gfm.data.schema import ParamMeta
from gfm.features import layer_ids, layer_spans, remember

__all__ = ["row_index", "shrink_row_means"]


def row_index(params: ParamMeta) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The weights that belong to rows, each one's row, and the number of rows.

        row(j) = (layer(j), index(j) // fan_in(j))   for weights j of layers with >= 2 rows
                                                     of fan_in(j) >= 2 weights

    Remembered per ``ParamMeta`` object (``gfm.features.remember``).

    Returns:
        (positions (W,) int64 into the flat vector, rows (W,) int64 in [0, R), R).
    """
    return remember(params, "row_index", _row_index)


def _row_blocks(params: ParamMeta) -> list[tuple[int, int, int]] | None:
    """[(start, end, rows)]: every layer with rows as one contiguous (rows × fan_in) slice, or None.

    A state_dict's weight tensor (out, ...) is stored row after row, so a layer that is one
    slice of the flat vector (``layer_spans``) with flat indices 0..n−1 has ``row_index``'s rows
    as equal, consecutive slices. Read from the layers' first entries and one pass over the
    indices, not from per-weight row numbers (a second per ten million weights). None when any
    layer is laid out otherwise (``shrink_row_means`` then groups by ``row_index``).
    """
    spans = layer_spans(params)
    if spans is None:
        return None
    blocks = []
    for a, b in spans:
        if b == a or params.kind[a] != "weight":
            continue
        fan_in = max(int(params.fan_in[a]), 1)
        size = b - a
        if not np.array_equal(params.index[a:b], np.arange(size)):
            return None
        if fan_in >= 2 and -(-size // fan_in) >= 2:  # as row_index: >= 2 rows of >= 2 weights
            if size % fan_in or np.any(params.fan_in[a:b] != params.fan_in[a]):
                return None
            blocks.append((a, b, size // fan_in))
    return blocks


def _row_index(params: ParamMeta) -> tuple[torch.Tensor, torch.Tensor, int]:
    layer = layer_ids(params)
    row = params.index // np.maximum(params.fan_in, 1)
    weight = params.kind == "weight"
    n_rows = np.zeros(layer.max() + 1 if len(layer) else 0, dtype=np.int64)
    np.maximum.at(n_rows, layer[weight], row[weight] + 1)
    # rows of >= 2 weights (fan_in >= 2) in layers of >= 2 rows: a one-weight "row" (a 1-D weight
    # tensor, as an imported run without a layout has) is no unit to shift, its mean is itself
    pos = np.flatnonzero(weight & (n_rows[layer] >= 2) & (params.fan_in >= 2))
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
    blocks = remember(params, "row_blocks", _row_blocks)
    if blocks is not None:  # each layer's rows as a (T, rows, fan_in) view: no gathers
        if not blocks:
            return w_hat
        out = w_hat.clone()
        T = len(w_hat)
        for a, b, n_rows in blocks:
            d = (w_hat[:, a:b].double() - w_k[a:b].double()).view(T, n_rows, -1)
            mean = d.mean(-1, keepdim=True)  # (T, rows, 1)
            shifted = w_hat[:, a:b].double().view(T, n_rows, -1) - (1.0 - factor) * mean
            out[:, a:b] = shifted.reshape(T, b - a).to(w_hat.dtype)
        return out
    pos, rows, n = row_index(params)
    if n == 0:
        return w_hat
    d = (w_hat[:, pos] - w_k[pos]).double()  # (T, W)
    sums = torch.zeros(len(w_hat), n, dtype=torch.float64).index_add_(1, rows, d)
    mean = sums / torch.bincount(rows, minlength=n).double()  # (T, R)
    out = w_hat.clone()
    out[:, pos] = (w_hat[:, pos].double() - (1.0 - factor) * mean[:, rows]).to(w_hat.dtype)
    return out
