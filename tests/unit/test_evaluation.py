"""The evaluation table, its horizon and summary views, Markdown and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest
import torch

from gfm.baselines import make
from gfm.data.schema import RunRecord
from gfm.evaluation import evaluate, held_out, horizon_table, summarize, to_markdown
from gfm.forecaster import Prefix, observed_index
from gfm.plots import plot_horizon, plot_trajectories
from tests.helpers import make_record

REQUIRED = [
    "method",
    "task",
    "optimizer",
    "arch",
    "run_id",
    "seed",
    "observed_fraction",
    "split",
    "mse_final",
    "mae_final",
    "rel_mse_persistence",
    "downstream_loss",
    "downstream_acc",
    "true_final_acc",
    "last_observed_acc",
    "forecast_seconds",
]
FRACTIONS = [0.25, 0.5]
D_IN, M = 3, 12


def gd_run(seed: int, optimizer: str) -> RunRecord:
    """Full-batch GD on a random least-squares problem: w_{i+1} = w_i − α·Xᵀ(Xw_i − y)/n."""
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.normal(size=(32, D_IN)), np.ones((32, 1))])
    y = X @ rng.normal(size=D_IN + 1)
    lr = 0.8 / np.linalg.eigvalsh(X.T @ X / 32).max()
    ws = [rng.normal(size=D_IN + 1)]
    for _ in range(M):
        ws.append(ws[-1] - lr * X.T @ (X @ ws[-1] - y) / 32)
    steps = np.arange(M + 1)
    return make_record(
        np.asarray(ws),
        lr=lr,
        seed=seed,
        spec={"run_id": f"{optimizer}-{seed}", "optimizer": optimizer},
        train_loss=np.exp(-steps / M),
        val_loss=np.exp(-steps / M) + 0.1,
        val_acc=steps / M,  # a recorded "accuracy" to tell apart from the injected score
    )


class LazyRuns(Sequence):
    """A disk-like view: integer indexing only, counting reads."""

    def __init__(self, runs: list[RunRecord]) -> None:
        self._runs, self.reads = runs, 0

    def __len__(self) -> int:
        return len(self._runs)

    def __getitem__(self, i):  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("lazy runs: index with an int only")
        self.reads += 1
        return self._runs[i]


def score(record: RunRecord, w: np.ndarray) -> tuple[float, float]:
    """A stand-in for gfm.data.tasks.evaluate_weights: (mean w², share of positive weights)."""
    return float(np.mean(w.astype(np.float64) ** 2)), float(np.mean(w > 0))


@pytest.fixture(scope="module")
def runs() -> list[RunRecord]:
    return [gd_run(0, "sgd"), gd_run(1, "sgd"), gd_run(2, "adam")]


@pytest.fixture(scope="module")
def forecasters() -> dict:
    return {name: make(name) for name in ("persistence", "linear", "dmd")}


@pytest.fixture(scope="module")
def table(forecasters, runs) -> pl.DataFrame:
    return evaluate(forecasters, LazyRuns(runs), FRACTIONS, split="seed", score=score)


def test_one_row_per_method_run_fraction(table, forecasters, runs):
    # then
    assert set(REQUIRED) <= set(table.columns)
    assert table.height == len(forecasters) * len(runs) * len(FRACTIONS)
    keys = table.select("method", "run_id", "observed_fraction").unique()
    assert keys.height == table.height
    assert table["split"].unique().to_list() == ["seed"]


def test_runs_are_read_one_index_at_a_time(forecasters, runs):
    lazy = LazyRuns(runs)
    evaluate(forecasters, lazy, FRACTIONS, split="seed")
    assert lazy.reads == len(runs)


def test_persistence_is_exactly_one(table):
    rel = table.filter(pl.col("method") == "persistence")["rel_mse_persistence"]
    assert rel.to_list() == [1.0] * rel.len()


def test_errors_recomputed_independently(table, runs, forecasters):
    for row in table.iter_rows(named=True):
        r = next(r for r in runs if r.spec.run_id == row["run_id"])
        W = r.weights.astype(np.float64)
        k = observed_index(M, row["observed_fraction"])
        w_hat = (
            forecasters[row["method"]]
            .forecast(Prefix.from_record(r, k), torch.tensor([1.0]))[-1]
            .double()
            .numpy()
        )
        err = w_hat - W[M]
        assert row["k"] == k and row["M"] == M
        assert row["mse_final"] == pytest.approx(np.mean(err**2), rel=1e-9)
        assert row["mae_final"] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
        ref = np.mean((W[k] - W[M]) ** 2)
        assert row["rel_mse_persistence"] == pytest.approx(np.mean(err**2) / ref, rel=1e-9)
        loss, acc = score(r, w_hat.astype(np.float32))
        assert row["downstream_loss"] == pytest.approx(loss, rel=1e-6)
        assert row["downstream_acc"] == pytest.approx(acc)
        assert row["true_final_acc"] == score(r, r.weights[M])[1]
        assert row["last_observed_acc"] == score(r, r.weights[k])[1]
        assert row["forecast_seconds"] >= 0.0


def test_horizon_lists_end_at_the_final_error(table):
    for row in table.iter_rows(named=True):
        n = row["M"] - row["k"]
        assert len(row["horizon_t"]) == len(row["horizon_mse"]) == n
        assert row["horizon_t"][-1] == 1.0
        assert row["horizon_mse"][-1] == pytest.approx(row["mse_final"], rel=1e-12)


def test_without_score_or_horizons(forecasters, runs):
    # when
    df = evaluate(forecasters, runs, [0.5], split="arch", horizons=False)
    # then: downstream NaN, recorded accuracies from the run, one horizon (t = 1)
    assert all(math.isnan(x) for x in df["downstream_acc"])
    k = observed_index(M, 0.5)
    assert df["true_final_acc"].unique().to_list() == [1.0]
    assert df["last_observed_acc"].unique().to_list() == [k / M]
    assert df["horizon_t"].to_list() == [[1.0]] * df.height


def test_horizon_table(table, runs):
    # when
    h = horizon_table(table)
    # then: one row per method × task × optimizer × fraction × horizon step
    k = {f: observed_index(M, f) for f in FRACTIONS}
    per_method_opt = sum(M - k[f] for f in FRACTIONS)
    assert h.height == 3 * 2 * per_method_opt  # 3 methods, optimizers sgd and adam
    p = h.filter(pl.col("method") == "persistence")
    np.testing.assert_allclose(p["rel_mse_persistence"].to_numpy(), 1.0)
    sgd = h.filter((pl.col("optimizer") == "sgd") & (pl.col("method") == "linear"))
    assert sgd["n_runs"].unique().to_list() == [2]
    # the mean over runs of the per-run horizon MSE, recomputed
    row = sgd.filter((pl.col("observed_fraction") == 0.5) & (pl.col("horizon") == 2)).row(
        0, named=True
    )
    kk = k[0.5]
    errs = []
    for r in runs[:2]:
        t = torch.tensor([(kk + 2) / M], dtype=torch.float64)  # evaluate asks in float64
        out = make("linear").forecast(Prefix.from_record(r, kk), t)
        errs.append(np.mean((out[0].double().numpy() - r.weights[kk + 2].astype(np.float64)) ** 2))
    assert row["mse"] == pytest.approx(np.mean(errs), rel=1e-9)


def test_summarise_mean_and_std(table):
    # when
    s = summarize(table)
    # then
    assert s.height == 3 * 2 * len(FRACTIONS)  # methods × optimizers × fractions (one task, split)
    row = s.filter(
        (pl.col("method") == "dmd")
        & (pl.col("optimizer") == "sgd")
        & (pl.col("observed_fraction") == 0.25)
    ).row(0, named=True)
    raw = table.filter(
        (pl.col("method") == "dmd")
        & (pl.col("optimizer") == "sgd")
        & (pl.col("observed_fraction") == 0.25)
    )["mse_final"].to_numpy()
    assert row["n_runs"] == 2
    assert row["mse_final_mean"] == pytest.approx(raw.mean())
    assert row["mse_final_std"] == pytest.approx(raw.std(ddof=1))


def test_to_markdown(table):
    md = to_markdown(summarize(table))
    lines = md.strip().split("\n")
    assert lines[0].startswith("| method | task | optimizer |")
    assert "mse_final" in lines[0] and "mse_final_mean" not in lines[0]
    assert len(lines) == 2 + summarize(table).height
    assert "±" in lines[2]


def test_plots_write_images(table, runs, tmp_path):
    r = runs[0]
    k = observed_index(M, 0.25)
    t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
    forecasts = {n: make(n).forecast(Prefix.from_record(r, k), t) for n in ("persistence", "dmd")}
    a = plot_trajectories(r, forecasts, t, k, tmp_path / "traj.png", n_params=3)
    b = plot_horizon(horizon_table(table), tmp_path / "horizon.png")
    assert a.stat().st_size > 0 and b.stat().st_size > 0


def test_progress_is_reported_after_each_run(forecasters, runs):
    seen = []
    df = evaluate(forecasters, runs[:2], [0.5], split="seed", progress=lambda *a: seen.append(a))
    assert df.height == 2 * len(forecasters) and seen == [(1, 2), (2, 2)]


def test_bad_inputs_name_the_argument(forecasters, runs):
    with pytest.raises(ValueError, match="fractions"):
        evaluate(forecasters, runs, [1.5], split="seed")
    with pytest.raises(ValueError, match="forecasters"):
        evaluate({}, runs, [0.5], split="seed")
    with pytest.raises(TypeError, match="score"):
        evaluate(forecasters, runs, [0.5], split="seed", score="acc")


def test_a_forecast_of_the_wrong_shape_is_an_error(runs):
    class Broken:
        name = "broken"

        def forecast(self, prefix, t):
            return torch.zeros(len(t), prefix.D + 1)

    with pytest.raises(ValueError, match="shape"):
        evaluate({"broken": Broken()}, runs, [0.5], split="seed")


def test_held_out_averages_each_set_of_weights_per_task_and_fraction():
    # given two classification runs and one regression run of one method
    rows = {
        "method": ["gfm", "gfm", "gfm", "linear"],
        "task": ["digits", "digits", "ls", "digits"],
        "observed_fraction": [0.5, 0.5, 0.5, 0.5],
        "last_observed_acc": [0.4, 0.6, math.nan, 0.0],
        "downstream_acc": [0.7, 0.9, math.nan, 0.0],
        "true_final_acc": [0.9, 1.0, math.nan, 0.0],
        "last_observed_loss": [2.0, 1.0, 0.5, 9.0],
        "downstream_loss": [1.0, 0.5, 0.25, 9.0],
        "true_final_loss": [0.5, 0.1, 0.1, 9.0],
    }
    # when
    held = held_out(pl.DataFrame(rows), "gfm").to_dicts()
    # then one row per task: means of each set of weights; accuracy NaN for regression
    assert [(r["task"], r["n_runs"]) for r in held] == [("digits", 2), ("ls", 1)]
    assert held[0]["last_acc"] == pytest.approx(0.5) and held[0]["forecast_acc"] == 0.8
    assert held[0]["final_acc"] == pytest.approx(0.95) and held[0]["forecast_loss"] == 0.75
    assert math.isnan(held[1]["forecast_acc"]) and held[1]["final_loss"] == 0.1
    with pytest.raises(ValueError, match="no rows of method 'lstm'"):
        held_out(pl.DataFrame(rows), "lstm")
