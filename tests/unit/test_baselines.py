"""Baselines: registry, shapes, closed-form exactness, learning beats persistence, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfm import saved
from gfm.baselines import BASELINES, load, make
from gfm.data.schema import RunRecord
from gfm.forecaster import Forecaster, Prefix, observed_index
from tests.helpers import D_IN, gd_run, make_record

NAMES = ["persistence", "linear", "geometric", "dmd", "lfd2", "wnn", "lstm", "transformer"]
LEARNED = ["lfd2", "wnn", "lstm", "transformer"]
# tiny budgets: a few seconds each on a shared CPU core
TINY = {
    "wnn": {"steps": 120, "batch_runs": 4, "batch_params": 8, "lr": 5e-3},
    "lstm": {"steps": 120, "batch_runs": 4, "batch_params": 8, "lr": 5e-3, "max_len": 8},
    "transformer": {"steps": 120, "batch_runs": 4, "batch_params": 8, "lr": 5e-3, "max_len": 8},
    "lfd2": {"fractions": [0.1, 0.25, 0.5, 0.75, 0.9], "time_grid": 10},
}


def diag_run(seed: int, *, M: int = 20) -> RunRecord:
    """GD on a diagonal quadratic: w_i = w* + (1 − h)^i ⊙ (w_0 − w*), geometric per weight."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.05, 0.4, size=D_IN + 1)
    w_star, w0 = rng.normal(size=D_IN + 1), rng.normal(size=D_IN + 1)
    W = w_star + (1.0 - h) ** np.arange(M + 1)[:, None] * (w0 - w_star)
    return make_record(W, lr=1.0, seed=seed)


def line_run(seed: int, *, M: int = 20) -> RunRecord:
    """w_i = a + b·i."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=D_IN + 1), 0.05 * rng.normal(size=D_IN + 1)
    return make_record(a + b * np.arange(M + 1)[:, None], lr=0.1, seed=seed)


def ratio_vs_persistence(model, runs: list[RunRecord], fractions: list[float]) -> float:
    """Σ ‖ŵ(1) − w_M‖² / Σ ‖w_k − w_M‖² over runs and fractions, recomputed here."""
    err = ref = 0.0
    for r in runs:
        W = r.weights.astype(np.float64)
        M = W.shape[0] - 1
        for f in fractions:
            k = observed_index(M, f)
            w_hat = model.forecast(Prefix.from_record(r, k), torch.tensor([1.0]))[-1].double()
            err += float(((w_hat.numpy() - W[M]) ** 2).sum())
            ref += float(((W[k] - W[M]) ** 2).sum())
    return err / ref


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the CPU is shared: one intra-op thread is faster than two contending ones
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_runs() -> list[RunRecord]:
    return [gd_run(s) for s in range(16)]


@pytest.fixture(scope="module")
def test_runs() -> list[RunRecord]:
    return [gd_run(100 + s) for s in range(4)]


@pytest.fixture(scope="module")
def fitted(train_runs) -> dict:
    return {name: make(name, TINY.get(name)).fit(train_runs) for name in NAMES}


def test_registry_lists_every_baseline():
    # then
    assert list(BASELINES) == NAMES
    for name, cls in BASELINES.items():
        assert cls.name == name
        assert isinstance(cls(), Forecaster)
        assert cls.__doc__ is not None and "budget" in cls.__doc__.lower()


def test_unknown_name_lists_the_valid_keys():
    # when / then
    with pytest.raises(ValueError, match="persistence.*transformer"):
        make("arima")


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="window"):
        make("linear", {"windw": 4})


def test_bad_config_value_names_the_key():
    with pytest.raises(ValueError, match="config.window"):
        make("linear", {"window": 1})
    with pytest.raises(ValueError, match="config.fraction_range"):
        make("lstm", {"fraction_range": [0.5, 0.2]})


def test_bad_device_is_rejected():
    with pytest.raises(ValueError, match="device"):
        make("persistence", device="tpu")


@pytest.mark.parametrize("name", NAMES)
def test_forecast_shape_and_finite(name, fitted, test_runs):
    # given
    run = gd_run(7, noise=0.3)  # also a noisy trajectory the models were not trained on
    for r in [test_runs[0], run]:
        M, D = r.weights.shape[0] - 1, r.weights.shape[1]
        for f in (0.1, 0.5, 0.9):
            k = observed_index(M, f)
            t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
            # when
            out = fitted[name].forecast(Prefix.from_record(r, k), t)
            # then
            assert out.shape == (M - k, D)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_persistence_is_the_last_observed(test_runs):
    r = test_runs[0]
    out = make("persistence").forecast(Prefix.from_record(r, 6), torch.tensor([0.5, 0.8, 1.0]))
    assert torch.equal(out, torch.from_numpy(r.weights[6]).expand(3, -1))


@pytest.mark.parametrize("window", [2, 3, 5])
def test_linear_is_exact_on_lines(window):
    # given
    r = line_run(0)
    W = r.weights.astype(np.float64)
    t = torch.tensor([0.6, 0.85, 1.0])
    # when
    out = make("linear", {"window": window}).forecast(Prefix.from_record(r, 8), t)
    # then
    np.testing.assert_allclose(out.numpy(), W[[12, 17, 20]], rtol=0, atol=1e-5)


def test_linear_fits_least_squares_through_the_window():
    # given: three points off a line; the LS slope of (0, 1, 5) at i = 0, 1, 2 is 2.5
    W = np.zeros((5, D_IN + 1))
    W[:3] = np.array([0.0, 1.0, 5.0])[:, None]
    r = make_record(np.vstack([W[:3], W[2:4]]), lr=0.1, seed=0)
    # when: forecast one step ahead of k = 2 (t = 3/4)
    out = make("linear", {"window": 3}).forecast(Prefix.from_record(r, 2), torch.tensor([0.75]))
    # then: level at i = k is mean + slope·(k − mean i) = 2 + 2.5 = 4.5; one step on: 7.0
    np.testing.assert_allclose(out.numpy(), 7.0, atol=1e-6)


def test_geometric_is_near_exact_on_a_diagonal_quadratic():
    runs = [diag_run(s) for s in range(4)]
    ratio = ratio_vs_persistence(make("geometric"), runs, [0.25, 0.5])
    assert ratio < 1e-4


def test_geometric_falls_back_to_linear_when_not_converging():
    # constant increments: r = 1 is not in (0, 1), so the forecast is the linear one
    r = line_run(3)
    t = torch.tensor([0.7, 1.0])
    prefix = Prefix.from_record(r, 10)
    expected = make("linear").forecast(prefix, t)
    torch.testing.assert_close(make("geometric").forecast(prefix, t), expected)


def test_dmd_is_near_exact_on_gradient_descent(test_runs):
    # k ≥ 10 increments span the D = 6 modes of A = I − αH
    ratio = ratio_vs_persistence(make("dmd"), test_runs, [0.5, 0.75])
    assert ratio < 1e-4


def test_dmd_clips_a_growing_spectrum():
    # given: w_i = 1.2^i grows; with |λ| ≤ 1 the forecast grows at most linearly
    M = 20
    W = np.broadcast_to(1.2 ** np.arange(M + 1)[:, None], (M + 1, D_IN + 1)).copy()
    r = make_record(W, lr=0.1, seed=0)
    k = 10
    # when
    out = make("dmd").forecast(Prefix.from_record(r, k), torch.tensor([1.0])).double().numpy()
    # then: at most the last increment repeated M − k times
    bound = W[k] + (M - k) * (W[k] - W[k - 1])
    assert np.all(out[-1] <= bound * (1 + 1e-4))
    assert np.all(out[-1] >= W[k])


@pytest.mark.parametrize("name", LEARNED)
def test_learned_baselines_beat_persistence(name, fitted, test_runs):
    ratio = ratio_vs_persistence(fitted[name], test_runs, [0.25, 0.5])
    assert ratio < 0.8, f"{name}: {ratio:.3f} of persistence's error"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name, fitted, test_runs, tmp_path):
    # given
    r = test_runs[1]
    prefix, t = Prefix.from_record(r, 5), torch.tensor([0.5, 0.75, 1.0])  # t_k = 0.25
    before = fitted[name].forecast(prefix, t)
    # when
    fitted[name].save(tmp_path / name)
    by_name = load(tmp_path / name)
    by_class = BASELINES[name].load(tmp_path / name)
    # then
    files = sorted(p.name for p in (tmp_path / name).iterdir())
    assert files == ([saved.FILE, saved.WEIGHTS] if fitted[name]._state() else [saved.FILE])
    assert by_name.config == fitted[name].config
    assert torch.equal(by_name.forecast(prefix, t), before)
    assert torch.equal(by_class.forecast(prefix, t), before)


def test_load_refuses_another_baseline(fitted, tmp_path):
    fitted["linear"].save(tmp_path / "m")
    with pytest.raises(ValueError, match="kind"):
        BASELINES["dmd"].load(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=saved.FILE):
        load(tmp_path / "missing")


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make("transformer")
    assert torch.equal(torch.rand(3), expected)


def test_learned_baselines_are_seeded(train_runs, test_runs):
    prefix, t = Prefix.from_record(test_runs[0], 5), torch.tensor([1.0])
    cfg = {**TINY["wnn"], "steps": 10}
    a = make("wnn", cfg).fit(train_runs).forecast(prefix, t)
    b = make("wnn", cfg).fit(train_runs).forecast(prefix, t)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lfd2", "lstm"])
def test_unfitted_learned_baseline_refuses_to_forecast(name, test_runs):
    with pytest.raises(ValueError, match="fit"):
        make(name).forecast(Prefix.from_record(test_runs[0], 5), torch.tensor([1.0]))


def test_fit_needs_training_runs():
    with pytest.raises(ValueError, match="train"):
        make("lfd2").fit([])


@pytest.mark.parametrize("bad_t", [[0.25], [0.5, 1.2], [], [float("nan")]])
def test_forecast_rejects_times_outside_the_future(bad_t, test_runs):
    prefix = Prefix.from_record(test_runs[0], 5)  # t_k = 0.25
    with pytest.raises(ValueError, match="`t`"):
        make("persistence").forecast(prefix, torch.tensor(bad_t, dtype=torch.float64))


def test_forecast_rejects_a_non_prefix(test_runs):
    with pytest.raises(TypeError, match="prefix"):
        make("dmd").forecast(test_runs[0].weights, torch.tensor([1.0]))


def test_lfd2_warns_when_no_bucket_is_near(train_runs, test_runs):
    model = make("lfd2", {"fractions": [0.5]}).fit(train_runs)
    with pytest.warns(UserWarning, match="fraction"):
        model.forecast(Prefix.from_record(test_runs[0], 2), torch.tensor([1.0]))
