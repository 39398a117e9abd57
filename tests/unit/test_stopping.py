"""gfm.stopping: the recorder keeps what a forecast needs, the file store keeps the same, the rule
decides against closed forms, and early stopping says why with the figures."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from gfm.baselines import make
from gfm.data.optim import scheduled_lr
from gfm.jumps import flat_weights
from gfm.stopping import (
    EarlyStop,
    FileStore,
    Recorder,
    bias,
    final_weights,
    nth_best,
    ordinal,
    score_at,
    worse,
)


class Quadratic(nn.Module):
    """L(w) = ½ Σ_j h_j (w_j − 1)²: gradient descent with step α is geometric, w_s − 1 = (1 − α h)^s (w_0 − 1)."""

    def __init__(self, h=(1.0, 0.5)):
        super().__init__()
        self.h = torch.tensor(h)
        self.w = nn.Parameter(torch.zeros(len(h)))

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.h * (self.w - 1.0) ** 2).sum()


def _run(model: Quadratic, opt: torch.optim.Optimizer, recorder: Recorder, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model.loss().backward()
        opt.step()
        recorder.step()


def _loss(model: Quadratic) -> float:
    return float(model.loss().detach())


def test_recorder_keeps_every_rth_step_and_the_metadata_of_the_whole_run():
    # given a net with two tensors, Adam at lr 0.01 and a cosine schedule over 40 steps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    rec = Recorder(model, opt, total_steps=40, record_every=4, schedule="cosine", task="toy")
    kept = [flat_weights(list(model.parameters()))]
    x = torch.randn(16, 3)
    # when it trains 10 steps (the loop applies the recorder's schedule)
    for step in range(10):
        for g in opt.param_groups:
            g["lr"] = rec.lr(step)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        rec.step()
        if (step + 1) % 4 == 0:
            kept.append(flat_weights(list(model.parameters())))
    prefix = rec.prefix()
    # then it holds w_0, w_4, w_8 and a run of M = 10 intervals with the schedule at 0, 4, .., 40
    assert rec.k == 2 and prefix.k == 2 and prefix.M == 10 and prefix.D == 3 * 2 + 2 + 2 + 1
    assert torch.equal(prefix.w, torch.stack(kept))
    expected = [scheduled_lr("cosine", 0.01, 4 * i, 40) for i in range(11)]
    assert prefix.lr.tolist() == pytest.approx(expected)
    assert prefix.optimizer == "adam" and prefix.record_every == 4 and prefix.task == "toy"
    assert prefix.hparams["beta1"] == pytest.approx(0.8) and prefix.hparams["lr"] == 0.01
    assert list(prefix.params.layer[:6]) == ["0.weight"] * 6 and prefix.params.kind[6] == "bias"


def test_recorder_takes_a_callable_or_rates_for_the_schedule():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    by_fn = Recorder(model, opt, total_steps=8, record_every=2, schedule=lambda s: 0.1 / (1 + s))
    rates = [0.1, 0.05, 0.02, 0.01, 0.0]
    by_list = Recorder(model, opt, total_steps=8, record_every=2, schedule=rates)
    assert by_fn.lr_schedule == pytest.approx([0.1 / (1 + 2 * i) for i in range(5)])
    assert by_list.lr_schedule == rates and by_list.optimizer_name == "momentum"


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"total_steps": 10, "record_every": 4}, ValueError, "total_steps"),
        ({"total_steps": 4, "record_every": 4}, ValueError, "total_steps"),
        ({"total_steps": 8, "record_every": 0}, ValueError, "record_every"),
        ({"total_steps": 8, "record_every": 2, "schedule": "warm"}, ValueError, "schedule"),
        ({"total_steps": 8, "record_every": 2, "schedule": [0.1, 0.1]}, ValueError, "M\\+1 = 5"),
        ({"total_steps": 8, "record_every": 2, "schedule": lambda s: -1.0}, ValueError, "schedule"),
    ],
)
def test_bad_metadata_is_named(kwargs, error, needle):
    model = Quadratic()
    with pytest.raises(error, match=needle):
        Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_an_optimizer_forecasters_do_not_know_or_a_non_module_is_refused():
    model = Quadratic()
    with pytest.raises(ValueError, match="optimizer"):
        Recorder(model, torch.optim.Adagrad(model.parameters()), total_steps=8, record_every=2)
    with pytest.raises(TypeError, match="model"):
        Recorder(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1), total_steps=8, record_every=2)  # fmt: skip


def test_prefix_needs_two_checkpoints_and_something_left_to_forecast():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, opt, total_steps=8, record_every=2)
    _run(model, opt, rec, 1)
    with pytest.raises(ValueError, match="at least 2 recorded checkpoints"):
        rec.prefix()
    _run(model, opt, rec, 9)  # steps beyond total_steps are not recorded
    assert rec.k == 4
    with pytest.raises(ValueError, match="the run is over"):
        rec.prefix()


def test_file_store_holds_what_the_recorder_holds(tmp_path):
    # given a recorder writing to a store
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    store = FileStore(tmp_path / "study")
    rec = Recorder(model, opt, total_steps=12, record_every=2, store=store, key="s/trial-00001")
    _run(model, opt, rec, 7)
    # when another reader opens the folder
    other = FileStore(tmp_path / "study")
    prefix = other.prefix("s/trial-00001")
    # then it reads the same prefix
    mine = rec.prefix()
    assert other.keys() == ["s/trial-00001"]
    assert torch.equal(prefix.w, mine.w) and torch.equal(prefix.lr, mine.lr)
    assert (prefix.M, prefix.optimizer, prefix.record_every) == (mine.M, "sgd", 2)
    # and a new attempt under the same key starts over
    Recorder(model, opt, total_steps=12, record_every=2, store=store, key="s/trial-00001")
    assert other.read("s/trial-00001")[0].shape[0] == 1


def test_file_store_names_bad_keys_and_missing_runs(tmp_path):
    store = FileStore(tmp_path)
    with pytest.raises(ValueError, match="key"):
        store.read("../outside")
    with pytest.raises(FileNotFoundError, match="no recorded run"):
        store.read("s/trial-00009")
    model = Quadratic()
    with pytest.raises(ValueError, match="key"):
        Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=8, record_every=2, store=store)  # fmt: skip


def test_score_at_restores_the_weights_and_mode_even_when_the_score_raises():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, opt, total_steps=8, record_every=2)
    model.train()
    before = flat_weights(rec.params)
    # the score sees the forecast weights, in whatever mode it sets
    seen = score_at(rec, torch.tensor([1.0, 1.0]), lambda m: (m.eval(), _loss(m))[1])
    assert seen == 0.0
    assert torch.equal(flat_weights(rec.params), before) and model.training

    def boom(m):
        raise RuntimeError("score broke")

    with pytest.raises(RuntimeError, match="score broke"):
        score_at(rec, torch.tensor([5.0, 5.0]), boom)
    assert torch.equal(flat_weights(rec.params), before)
    with pytest.raises(ValueError, match="finite"):
        score_at(rec, torch.tensor([1.0, 1.0]), lambda m: float("nan"))


def test_geometric_forecast_of_gradient_descent_on_a_quadratic_is_its_closed_form():
    # given plain GD on a diagonal quadratic: w_S − 1 = (1 − α h)^S (w_0 − 1)
    model = Quadratic(h=(1.0, 0.5))
    alpha, S = 0.05, 40
    opt = torch.optim.SGD(model.parameters(), lr=alpha)
    rec = Recorder(model, opt, total_steps=S, record_every=4)
    _run(model, opt, rec, 12)
    # when the geometric baseline forecasts the final weights
    w = final_weights(make("geometric"), rec.prefix())
    # then they are the closed form's, and so is the loss there
    expected = 1.0 - (1.0 - alpha * model.h) ** S
    assert w.tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    closed = 0.5 * float((model.h * (expected - 1.0) ** 2).sum())
    assert score_at(rec, w, _loss) == pytest.approx(closed, rel=1e-3)


def test_worse_nth_best_bias_and_ordinal():
    assert worse(0.5, 0.4, direction="minimize") and not worse(
        0.5, 0.4, direction="minimize", margin=0.2
    )
    assert worse(0.8, 0.9, direction="maximize") and not worse(
        0.8, 0.9, direction="maximize", margin=0.1
    )
    values = [0.3, float("nan"), 0.1, 0.2]
    assert nth_best(values, 1, "minimize") == 0.1 and nth_best(values, 2, "maximize") == 0.2
    assert nth_best(values, 4, "minimize") is None
    assert bias([0.2, 0.1, 0.4]) == pytest.approx(0.2) and bias([0.2, 0.1]) == 0.0
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 22)] == [
        "best",
        "2nd best",
        "3rd best",
        "4th best",
        "11th best",
        "22nd best",
    ]


class Shift:
    """Forecasts the last checkpoint moved by ``delta`` (or raises, for ``delta=None``)."""

    name = "shift"

    def __init__(self, delta: float | None):
        self.delta = delta

    def forecast(self, prefix, t):
        if self.delta is None:
            raise RuntimeError("forecaster broke")
        return prefix.w[-1:].repeat(len(t), 1) + self.delta


def _early(delta, threshold, **kw):
    model = Quadratic(h=(1.0, 1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = Recorder(model, opt, total_steps=40, record_every=4)
    stopper = EarlyStop(Shift(delta), _loss, threshold=threshold, direction="minimize", metric="loss", **kw)  # fmt: skip
    outlooks = []
    for _ in range(40):
        _run(model, opt, rec, 1)
        if rec.steps % 8 == 0:
            outlooks.append(stopper.check(rec))
    return outlooks


def test_early_stop_says_stop_with_the_figures_when_the_forecast_misses_the_threshold():
    # the forecast moves far past the optimum: loss ½·2·(w + 3 − 1)² ≫ 0.5
    outlooks = _early(3.0, 0.5, warmup_steps=16)
    assert outlooks[0] is None  # before the warm-up
    first = outlooks[1]
    assert first.stop and first.step == 16 and first.value > 0.5
    assert (
        str(first)
        == f"stop: forecast final loss {first.value:.4g} > threshold 0.5 (step 16 of 40, shift)"
    )
    # an exact-enough forecast keeps it going
    assert not any(o.stop for o in _early(0.0, 0.6) if o is not None)


def test_early_stop_for_accuracy_reads_stop_below_the_threshold():
    model = Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = Recorder(model, opt, total_steps=40, record_every=4)
    _run(model, opt, rec, 8)
    stopper = EarlyStop(Shift(0.0), lambda m: 0.81, threshold=0.9, metric="accuracy", margin=0.05)
    outlook = stopper.check(rec)
    assert outlook.stop
    assert str(outlook).startswith(
        "stop: forecast final accuracy 0.81 < threshold 0.9 − margin 0.05"
    )
    assert stopper.history == [outlook]


def test_a_failing_forecast_never_stops_the_run_and_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="gfm.stopping"):
        outlooks = _early(None, 0.5)
    assert outlooks == [None] * 5
    assert "forecast failed, not stopping: RuntimeError: forecaster broke" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": math.inf}, "threshold"),
        ({"threshold": 0.5, "direction": "up"}, "direction"),
        ({"threshold": 0.5, "margin": -1.0}, "margin"),
        ({"threshold": 0.5, "warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_early_stop_names_bad_options(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        EarlyStop(Shift(0.0), _loss, **kwargs)
    with pytest.raises(TypeError, match="forecaster"):
        EarlyStop(object(), _loss, threshold=0.5)
