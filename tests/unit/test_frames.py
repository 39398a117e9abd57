"""The request/answer frames of the pyfunc model: round trip, forecast rows, input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gfm.forecaster import Prefix
from gfm.tracking.frames import (
    forecast_frame,
    frame_to_forecast,
    frame_to_prefix,
    prefix_to_frame,
)
from tests import helpers

M, K = 6, 2
NAMED = [("net.0.weight", (2, 2)), ("net.0.bias", (2,)), ("scale", ())]  # D = 4 + 2 + 1 = 7


def make_prefix(**overrides) -> Prefix:
    fields = dict(
        lr=torch.linspace(0.1, 0.01, M + 1, dtype=torch.float64),
        hparams={"lr": 0.1, "momentum": 0.9, "nesterov": True},
        task="mlp_regression",
    )
    return helpers.make_prefix(k=K, M=M, optimizer="momentum", layout=NAMED, **fields | overrides)


class Persistence:
    """w(t) = w_k: the simplest real forecaster."""

    name = "persistence-test"

    def forecast(self, prefix: Prefix, t: torch.Tensor) -> torch.Tensor:
        return prefix.w[-1].expand(len(t), -1).clone()


def test_round_trip_keeps_every_field():
    # given
    prefix = make_prefix()
    # when
    back = frame_to_prefix(prefix_to_frame(prefix))
    # then
    assert torch.equal(back.w, prefix.w) and back.w.dtype == torch.float32
    assert torch.equal(back.lr, prefix.lr)
    assert (back.M, back.k, back.D) == (M, K, 7)
    assert back.optimizer == "momentum" and back.record_every == 4 and back.task == prefix.task
    assert back.hparams == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    assert isinstance(back.hparams["nesterov"], bool)
    for field in ("layer", "index", "kind", "fan_in"):
        assert getattr(back.params, field).tolist() == getattr(prefix.params, field).tolist()
    assert back.params.shape == prefix.params.shape


def test_frame_has_one_row_per_checkpoint_and_metadata_on_row_0():
    frame = prefix_to_frame(make_prefix())
    assert frame["checkpoint"].tolist() == list(range(M + 1))
    assert [w is None for w in frame["w"]] == [False] * (K + 1) + [True] * (M - K)
    assert len(frame["kind"].iloc[0]) == 7 and frame["kind"].iloc[1:].isna().all()
    assert {"hp_lr", "hp_momentum", "hp_nesterov"} <= set(frame.columns)


def test_minimal_frame_counts_index_and_flattens_shapes():
    # given: no checkpoint/index/shape/task/hp_* columns
    frame = prefix_to_frame(make_prefix()).drop(
        columns=["checkpoint", "index", "shape", "task", "hp_lr", "hp_momentum", "hp_nesterov"]
    )
    # when
    back = frame_to_prefix(frame)
    # then
    assert back.params.index.tolist() == [0, 1, 2, 3, 0, 1, 0]
    assert back.params.shape == [(4,)] * 4 + [(2,)] * 2 + [(1,)]
    assert back.hparams == {} and back.task == ""


def test_json_style_cells_are_read_like_lists():
    # given: what arrives after JSON or Parquet: NaN for missing cells, numpy arrays for lists
    frame = prefix_to_frame(make_prefix())
    frame["w"] = [np.asarray(w) if w is not None else float("nan") for w in frame["w"]]
    frame["kind"] = [np.asarray(frame["kind"].iloc[0])] + [np.asarray([])] * M
    # when
    back = frame_to_prefix(frame)
    # then
    assert back.k == K and back.params.kind.tolist()[-1] == "weight"


def test_forecast_frame_rows_k_plus_1_to_M():
    prefix = make_prefix()
    answer = forecast_frame(Persistence(), prefix)
    assert answer["checkpoint"].tolist() == list(range(K + 1, M + 1))
    np.testing.assert_allclose(answer["t"], np.arange(K + 1, M + 1) / M)
    np.testing.assert_array_equal(frame_to_forecast(answer), np.tile(prefix.w[-1].numpy(), (4, 1)))


def test_forecast_frame_rejects_a_wrong_shape():
    class Broken(Persistence):
        def forecast(self, prefix, t):
            return prefix.w[-1:]

    with pytest.raises(ValueError, match=r"Broken.forecast must return shape \(T, D\)"):
        forecast_frame(Broken(), make_prefix())


def _set(frame: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    cells = frame[column].tolist()
    cells[row] = value
    frame[column] = pd.Series(cells, dtype=object)
    return frame


BAD = {
    "w lengths": (
        lambda f: _set(f, "w", 1, [0.0] * 6),
        r"column `w` must hold lists of equal length D, got lengths \[6, 7\]",
    ),
    "w NaN": (lambda f: _set(f, "w", 2, [float("nan")] * 7), r"column `w` must be finite"),
    "w gap": (lambda f: _set(f, "w", 1, None), r"column `w` must hold the observed checkpoints"),
    "w all observed": (
        lambda f: f.assign(w=[[0.0] * 7] * (M + 1)),
        r"column `w` must be observed on rows 0..k with 1 <= k",
    ),
    "w nested": (lambda f: _set(f, "w", 0, [[0.0] * 7]), r"column `w` must hold flat lists"),
    "lr NaN": (lambda f: _set(f, "lr", 5, float("nan")), r"column `lr` must be finite"),
    "kind missing": (lambda f: f.drop(columns=["kind"]), r"missing column\(s\) `kind`"),
    "fan_in missing": (lambda f: f.drop(columns=["fan_in"]), r"missing column\(s\) `fan_in`"),
    "kind length": (
        lambda f: _set(f, "kind", 0, ["weight"] * 6),
        r"column `kind` on row 0 must have length D=7",
    ),
    "kind null": (lambda f: _set(f, "kind", 0, None), r"column `kind` must hold"),
    "kind value": (
        lambda f: _set(f, "kind", 0, ["weight"] * 6 + ["gain"]),
        r"column `kind` must hold only",
    ),
    "kind row 3 differs": (
        lambda f: _set(f, "kind", 3, ["bias"] * 7),
        r"column `kind` must be null on rows 1..M or repeat row 0",
    ),
    "fan_in negative": (
        lambda f: _set(f, "fan_in", 0, [-1] * 7),
        r"column `fan_in` must hold integers >= 1",
    ),
    "optimizer differs": (
        lambda f: _set(f, "optimizer", 4, "adam"),
        r"column `optimizer` must be the same on every row",
    ),
    "optimizer unknown": (
        lambda f: f.assign(optimizer="lion"),
        r"column `optimizer` must be one of",
    ),
    "record_every zero": (
        lambda f: f.assign(record_every=0),
        r"column `record_every` must be a positive integer",
    ),
    "hparam unknown": (lambda f: f.assign(hp_gamma=0.5), r"column `hp_gamma` is not a known"),
    "shape text": (lambda f: _set(f, "shape", 0, ["2,2"] * 7), r"column `shape` must hold"),
    "checkpoint order": (
        lambda f: f.assign(checkpoint=list(range(M, -1, -1))),
        r"column `checkpoint` must read 0, 1, ..., M=6",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_frame_to_prefix_names_the_bad_column(case):
    # given
    mutate, message = BAD[case]
    frame = mutate(prefix_to_frame(make_prefix()))
    # when / then
    with pytest.raises(ValueError, match=message):
        frame_to_prefix(frame)


def test_frame_to_prefix_rejects_a_non_frame():
    with pytest.raises(TypeError, match="must be a pandas DataFrame"):
        frame_to_prefix({"w": []})


def test_prefix_to_frame_rejects_an_hparam_without_column():
    with pytest.raises(ValueError, match=r"`prefix.hparams`: keys \['gamma'\]"):
        prefix_to_frame(make_prefix(hparams={"gamma": 0.5}))
