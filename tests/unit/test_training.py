"""The training loop: GFM learns gradient descent on least squares well enough to forecast it."""

import dataclasses

import numpy as np
import pytest
import torch

from gfm import prior, training
from gfm.config import GFMSettings, TrainSettings
from gfm.data.schema import RunRecord
from gfm.forecaster import Prefix, observed_index
from gfm.model import GFM
from gfm.training import fit, validate
from tests.helpers import make_record


def least_squares_run(
    seed: int, d: int = 8, n: int = 64, steps: int = 100, r: int = 2
) -> RunRecord:
    """Full-batch GD on standardised least squares, recorded every r steps.

    L(w, b) = |X w + b − y|² / (2n),   w ← w − α ∇L,  α ~ U(0.03, 0.1)
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X = (X - X.mean(0)) / X.std(0)
    y = X @ rng.standard_normal(d) + rng.standard_normal() + 0.1 * rng.standard_normal(n)
    Xb = np.hstack([X, np.ones((n, 1))])
    lr = float(rng.uniform(0.03, 0.1))
    theta = 0.5 * rng.standard_normal(d + 1)
    ws = [theta.copy()]
    for s in range(steps):
        theta = theta - lr * Xb.T @ (Xb @ theta - y) / n
        if (s + 1) % r == 0:
            ws.append(theta.copy())
    return make_record(
        np.asarray(ws),
        lr=lr,
        seed=seed,
        record_every=r,
        layout=[("weight", (1, d)), ("bias", (1,))],
        spec={"run_id": f"ls-{seed}", "optimizer": "sgd"},
    )


class LazyRuns:
    """A Sequence that builds runs on access and counts the accesses (like a lazy view)."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds, self.loads = seeds, 0

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> RunRecord:
        self.loads += 1
        return least_squares_run(self.seeds[i])


SMALL = TrainSettings(steps=300, batch_params=64, eval_every=100, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def trained() -> tuple[GFM, list[dict]]:
    train = LazyRuns(list(range(24)))
    val = [least_squares_run(s) for s in range(100, 104)]
    model = GFM(GFMSettings(variant="optimizer"), SMALL)
    history = fit(model, train, val, SMALL)
    return model, history


@pytest.mark.slow  # the trained fixture fits GFM for 300 steps (~7 s)
def test_gfm_forecasts_unseen_gradient_descent_runs_10x_better_than_persistence(trained):
    # given a model trained on 24 GD runs, and 8 unseen problems
    model, _ = trained
    test = [least_squares_run(s) for s in range(200, 208)]
    errs, persist = [], []
    for record in test:
        M = record.weights.shape[0] - 1
        k = observed_index(M, 0.25)
        # when forecasting the final weights from the first quarter of the run
        pred = model.forecast(Prefix.from_record(record, k), torch.tensor([1.0]))[0].numpy()
        errs.append(np.mean((pred - record.weights[-1]) ** 2))
        persist.append(np.mean((record.weights[k] - record.weights[-1]) ** 2))
    # then (measured ≈ 0.04–0.05)
    ratio = np.mean(errs) / np.mean(persist)
    assert ratio < 0.1, f"MSE / persistence MSE = {ratio:.3f}"


@pytest.mark.slow  # the trained fixture fits GFM for 300 steps (~7 s)
def test_history_reports_metrics_at_every_evaluation(trained):
    _, history = trained
    assert [h["step"] for h in history] == [100, 200, 300]
    for h in history:
        assert {"train/loss", "val/forecast_mse", "val/rel_mse_persistence"} <= set(h)
        assert np.isfinite(h["train/loss"])
    assert history[-1]["train/loss"] < history[0]["train/loss"]


@pytest.mark.slow  # the trained fixture fits GFM for 300 steps (~7 s)
def test_validate_matches_a_direct_computation(trained):
    model, _ = trained
    runs = [least_squares_run(s) for s in (300, 301)]
    metrics = validate(model, runs, prefix_name="test")
    rel = []
    for r in runs:
        k = observed_index(r.weights.shape[0] - 1, 0.25)
        pred = model.forecast(Prefix.from_record(r, k), torch.tensor([1.0]))[0].double().numpy()
        w_M = r.weights[-1].astype(np.float64)
        rel.append(((pred - w_M) ** 2).sum() / ((r.weights[k] - w_M) ** 2).sum())
    assert metrics["test/rel_mse_persistence"] == pytest.approx(np.mean(rel), rel=1e-4)


def test_on_eval_false_stops_and_training_is_seeded():
    # given
    train = [least_squares_run(s) for s in range(4)]
    cfg = TrainSettings(
        steps=40, batch_runs=2, batch_params=16, eval_every=10, seed=3, device="cpu"
    )
    calls = []

    def stop_after_two(step: int, metrics: dict) -> bool:
        calls.append(step)
        return len(calls) < 2

    # when
    a, b = GFM(GFMSettings(width=16, depth=1)), GFM(GFMSettings(width=16, depth=1))
    hist_a = fit(a, train, train[:1], cfg, on_eval=stop_after_two)
    hist_b = fit(b, train, train[:1], cfg)
    # then: stopped at the second evaluation; same seed, same first losses
    assert calls == [10, 20] and len(hist_a) == 2
    assert hist_a[0]["train/loss"] == pytest.approx(hist_b[0]["train/loss"], rel=1e-6)


def test_on_eval_exception_propagates():
    class Pruned(Exception):
        pass

    def prune(step: int, metrics: dict) -> bool:
        raise Pruned

    cfg = TrainSettings(steps=10, batch_runs=2, batch_params=8, eval_every=5, device="cpu")
    with pytest.raises(Pruned):
        fit(GFM(GFMSettings(width=8, depth=1)), [least_squares_run(0)], None, cfg, on_eval=prune)


def test_runs_are_loaded_only_when_drawn():
    train = LazyRuns(list(range(50)))
    cfg = TrainSettings(steps=3, batch_runs=2, batch_params=8, eval_every=100, device="cpu")
    fit(GFM(GFMSettings(width=8, depth=1)), train, None, cfg)
    assert train.loads == 6


def test_empty_or_malformed_training_data_is_rejected():
    cfg = TrainSettings(steps=2, batch_runs=1, batch_params=4, device="cpu")
    with pytest.raises(ValueError, match="train"):
        fit(GFM(), [], None, cfg)
    bad = least_squares_run(0)
    bad.lr = bad.lr[:-1]
    with pytest.raises(ValueError, match="ls-0: `lr`"):
        fit(GFM(), [bad], None, cfg)


@pytest.mark.slow  # fits GFM with the prior for 400 steps (~20 s)
def test_the_default_gfm_with_its_prior_forecasts_gradient_descent_15x_better_than_persistence():
    # given the default forecaster (free field + the optimizer-simulating prior), briefly trained
    settings = TrainSettings(steps=400, batch_params=64, eval_every=400, lr=3e-3, device="cpu")
    model = GFM(GFMSettings(), settings)
    assert model.cfg.prior and model.net.prior
    fit(model, [least_squares_run(s) for s in range(12)], None, settings)
    # when forecasting unseen runs from a tenth of their checkpoints
    errs, persist = [], []
    for record in [least_squares_run(s) for s in range(200, 206)]:
        k = observed_index(record.weights.shape[0] - 1, 0.1)
        pred = model.forecast(Prefix.from_record(record, k), torch.tensor([1.0]))[0].numpy()
        errs.append(np.mean((pred - record.weights[-1]) ** 2))
        persist.append(np.mean((record.weights[k] - record.weights[-1]) ** 2))
    # then it is far past persistence and past the prior alone (measured: 0.040; the prior
    # alone 0.057; the same budget without the prior 0.051)
    ratio = np.mean(errs) / np.mean(persist)
    assert ratio < 0.067, f"MSE / persistence MSE = {ratio:.4f}"


@pytest.mark.slow  # spawns a worker process (~5 s)
def test_a_loader_worker_draws_the_same_batches_so_training_is_unchanged():
    # given the same fit in process and with a prefetching worker process
    runs = [least_squares_run(s) for s in range(6)]
    nets = []
    for workers in (0, 1):
        cfg = TrainSettings(  # 64 runs x 9 parameters: a batch big enough for the worker
            steps=20,
            batch_runs=64,
            batch_params=16,
            eval_every=20,
            device="cpu",
            loader_workers=workers,
        )
        assert training.sized(cfg, runs).loader_workers == workers
        model = GFM(GFMSettings(), cfg)
        # when
        fit(model, runs, None, cfg)
        nets.append(model.net.state_dict())
    # then the networks are bit-identical
    assert all(torch.equal(nets[0][key], nets[1][key]) for key in nets[0])


def test_a_packed_batch_unpacks_to_the_same_tensors():
    # given a batch without a prior (None fields) from two runs of different sizes
    examples = [
        training._example(least_squares_run(s, d=d), 10, 8, 4, 0.0, np.random.default_rng(s))
        for s, d in ((0, 1), (1, 8))
    ]
    batch = training._collate(examples)
    # when it is packed as a loader worker sends it, and unpacked
    packed = training._Packed.of(batch)
    back = packed.unpack()
    # then it travels as one buffer per dtype and every field comes back equal, None as None
    assert len(packed.buffers) <= 2
    assert back.optimizers == batch.optimizers
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            got = getattr(back, name)
            assert got.dtype == value.dtype and torch.equal(got, value), name
    for field in dataclasses.fields(batch.cond):
        want, got = getattr(batch.cond, field.name), getattr(back.cond, field.name)
        assert (want is None and got is None) or torch.equal(got, want), field.name


def test_a_prior_cache_leaves_training_unchanged_and_spares_the_second_fit_its_solves(
    tmp_path, monkeypatch
):
    # given the same fit without a cache, with a cold one and with a warm one (a new process
    # each time, as tuning and training are: the in-process memo is cleared)
    runs = [least_squares_run(s) for s in range(6)]
    nets = []
    for cache in (None, tmp_path, tmp_path):
        training._SHARED.clear()
        if nets and cache is not None and any(tmp_path.rglob("*.npz")):
            monkeypatch.setattr(prior, "_fit", lambda *a: pytest.fail("a cached fit was solved"))
        cfg = TrainSettings(
            steps=10, batch_params=16, eval_every=5, device="cpu", prior_cache=cache
        )
        model = GFM(GFMSettings(), cfg)
        # when
        fit(model, runs[:4], runs[4:], cfg)
        nets.append(model.net.state_dict())
    # then the cache holds the batches' and the validation's fits, and the networks are identical
    assert len(list(tmp_path.rglob("*.npz"))) > 2
    assert all(torch.equal(nets[0][key], net[key]) for net in nets[1:] for key in nets[0])


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_prefitted_priors_are_every_fit_training_asks_for(tmp_path, monkeypatch, workers):
    # given every prior a fit will ask for, fitted beforehand (in worker processes or here)
    runs = [least_squares_run(s) for s in range(6)]
    cfg = TrainSettings(steps=10, batch_params=16, eval_every=5, device="cpu", prior_cache=tmp_path)
    made = training.prefit_priors(runs[:4], runs[4:], cfg, workers=workers)
    assert made == len(list(tmp_path.rglob("*.npz"))) > 4
    assert training.prefit_priors(runs[:4], runs[4:], cfg, workers=workers) == 0  # all cached
    # when training runs in a fresh process's state, with the solver unavailable
    training._SHARED.clear()
    reference = GFM(GFMSettings(), cfg.model_copy(update={"prior_cache": None}))
    fit(reference, runs[:4], runs[4:], cfg.model_copy(update={"prior_cache": None}))
    training._SHARED.clear()
    monkeypatch.setattr(prior, "_fit", lambda *a: pytest.fail("a fit was not prefitted"))
    model = GFM(GFMSettings(), cfg)
    fit(model, runs[:4], runs[4:], cfg)
    # then it solved nothing and trained the same network
    a, b = reference.net.state_dict(), model.net.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_runs_of_few_parameters_train_proportionally_fewer_steps_in_process():
    # given the default budget, set for batches of 256 parameters per run
    cfg = TrainSettings(
        steps=6000, eval_every=1000, batch_params=256, min_steps=500, loader_workers=1
    )
    two = [least_squares_run(s, d=1) for s in range(3)]  # 2 parameters each
    # when sized for runs of 2, 128 and 301 parameters
    small, half = training.sized(cfg, two), training.sized(cfg, [least_squares_run(0, d=127)])
    # then the steps keep the parameter rows (at least min_steps), the evaluations keep their
    # number, and a batch of 16 rows is drawn in-process
    assert (small.steps, small.eval_every, small.loader_workers) == (500, 84, 0)
    assert (half.steps, half.eval_every, half.loader_workers) == (3000, 500, 1)
    assert training.sized(cfg, [least_squares_run(0, d=300)]) is cfg
    assert training.sized(cfg.model_copy(update={"min_steps": 6000}), two).steps == 6000


def test_fit_runs_the_sized_steps_and_evaluations():
    # given runs of 9 parameters and batches set for 64
    cfg = TrainSettings(
        steps=60, min_steps=10, batch_runs=2, batch_params=64, eval_every=30, device="cpu"
    )
    train = [least_squares_run(s) for s in range(3)]
    # when
    history = fit(GFM(GFMSettings(width=8, depth=1, prior=False)), train, train[:1], cfg)
    # then ⌈60 · 9/64⌉ = 9 < 10 = min_steps steps, evaluated every ⌈30 · 10/60⌉ = 5
    assert [h["step"] for h in history] == [5, 10]


def test_a_run_with_fewer_parameters_than_the_batch_is_padded_with_rows_of_no_weight():
    # given a 2-parameter and a 9-parameter run drawn into one batch of up to 8 parameters each
    a = training._example(least_squares_run(0, d=1), 10, 8, 4, 0.0, np.random.default_rng(1))
    b = training._example(least_squares_run(1), 10, 8, 4, 0.0, np.random.default_rng(2))
    model = GFM(GFMSettings(width=8, depth=1, prior=False))
    # when the loss of the batch is compared with each run's loss alone
    with torch.no_grad():
        both = training._loss(model, training._collate([a, b]))
        alone = [training._loss(model, training._collate([e])) for e in (a, b)]
    # then the small run gave its 2 parameters once, not 8 draws, and its padding changed nothing
    assert a["c2"].shape[0] == 2 and b["c2"].shape[0] == 8
    assert float(both) == pytest.approx(float(sum(alone)) / 2, rel=1e-5)


@pytest.mark.parametrize("variant", ["free", "optimizer"])
def test_the_loss_groups_runs_by_field_with_the_bits_of_per_optimizer_groups(variant):
    # given a batch of runs of three optimizers, in mixed order
    opts = ["sgd", "momentum", "sgd", "adam"]
    examples = []
    for i, opt in enumerate(opts):
        record = least_squares_run(i)
        spec = dataclasses.replace(record.spec, optimizer=opt)
        record = dataclasses.replace(record, spec=spec)
        rng = np.random.default_rng(i)
        examples.append(training._example(record, 10, 8, 4, 0.0, rng))
    batch = training._collate(examples)
    model = GFM(GFMSettings(variant=variant, prior=False, width=16, depth=1), SMALL)
    # when the loss is taken (the free variant's one field: one group of all runs)
    loss = training._loss(model, batch)
    # then it is, bit for bit, the mean of each optimizer's group in sorted order
    net, M = model.net, batch.cond.S / batch.cond.record_every
    code = net.encode(batch.ctx)
    g_tau = net.combine(code, net.trunk(batch.tau, batch.lrf_tau, batch.run), batch.w_tau, M)
    g_theta = net.combine(
        code, net.trunk(batch.theta, batch.lrf_theta, batch.run), batch.w_theta, M
    )
    parts = []
    for opt in sorted(set(opts)):
        rows = torch.tensor([i for i, o in enumerate(opts) if o == opt])
        field = model.field_for(opt)
        parts.append(training._group_loss(field, batch, g_tau, g_theta, M, rows))
    assert torch.equal(loss, torch.cat(parts).mean())


def test_a_free_field_batch_leaves_out_the_state_points_and_nothing_else():
    # given the same stream drawn for a free field (no optimizer state) and an optimizer-aware one
    runs = [least_squares_run(s) for s in range(3)]
    free = GFMSettings(variant="free", prior=False)
    aware = GFMSettings(variant="optimizer", prior=False)
    a = training._collate(training._draw(free, runs, SMALL, np.random.default_rng(3)))
    b = training._collate(training._draw(aware, runs, SMALL, np.random.default_rng(3)))
    # then the free batch has no state points θ_i, and every other field is the same
    left_out = {"w_theta", "theta", "lrf_theta", "U"}
    assert {k for k, v in vars(a).items() if v is None} == left_out | {"prior_v"}
    for name, value in vars(b).items():
        if name in left_out:
            assert value is not None, name
        elif isinstance(value, torch.Tensor):
            assert torch.equal(getattr(a, name), value), name
    # and the free model's loss is taken without them
    assert torch.isfinite(training._loss(GFM(free, SMALL), a))
