"""JumpAhead: jumps that change nothing leave the base optimizer's run untouched, bad jumps roll
back and shorten the horizon, the state round-trips mid-training, prefixes are framed as
documented, a linear jump on a linear trajectory lands where the base optimizer would, and the
README's example runs as printed with the jump benchmark's settings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from gfm import baselines
from gfm.bench.jumps import load_accelerate
from gfm.config import TaskSettings
from gfm.data.tasks import flatten, make_task, param_meta
from gfm.jumps import Horizon, JumpAhead, JumpOptions, jump_baseline
from gfm.model import GFM
from gfm.saved import load as load_forecaster
from gfm.tracking import load_model

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))


class IdentityForecaster:
    """Forecasts the last observed weights: a jump that changes nothing."""

    name = "identity"

    def forecast(self, prefix, t):
        return prefix.w[-1:].repeat(len(t), 1)


class GarbageForecaster:
    """Forecasts weights far from anything sensible (or NaN)."""

    name = "garbage"

    def __init__(self, value: float | None = None):
        self.value = value

    def forecast(self, prefix, t):
        w = prefix.w[-1:].repeat(len(t), 1)
        return torch.full_like(w, float("nan")) if self.value is None else w + self.value


class RecordingForecaster:
    """Persistence that keeps every prefix and t it was asked about."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def forecast(self, prefix, t):
        self.calls.append((prefix, t))
        return prefix.w[-1:].repeat(len(t), 1)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "momentum":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=0.01)


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.arange(8 * i, 8 * i + 8) % len(X)
    return X[idx], Y[idx]


def _train(model: nn.Module, stepper, calls: range, *, skip: set[int] = frozenset()) -> None:
    """One minibatch per call i; calls in ``skip`` take no optimizer step (a no-op step)."""
    for i in calls:
        xb, yb = _batch(i)
        stepper.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        if i not in skip:
            stepper.step()


def _guard_loss(model: nn.Module):
    return lambda: F.cross_entropy(model(X), Y)


def _state(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("frame", ["window", "run"])
@pytest.mark.parametrize("opt_name", ["momentum", "adam"])
def test_identity_jumps_equal_the_base_run_with_no_op_steps(opt_name, frame):
    # given: the wrapper with a forecaster that returns the current weights, and a base run
    # that takes no step at the calls where the wrapper jumps (period P: calls P, 2P+1, ...)
    P, N = 4, 20
    jump_calls = {P + j * (P + 1) for j in range(N) if P + j * (P + 1) < N}
    model, base = _model(), _model()
    opt, base_opt = _optimizer(opt_name, model), _optimizer(opt_name, base)
    acc = JumpAhead(
        opt,
        model,
        IdentityForecaster(),
        JumpOptions(
            period=P,
            horizon=3,
            record_every=2,
            history=100,
            frame=frame,
            total_steps=N,
            calibrate=True,
        ),
        loss_fn=_guard_loss(model),
    )
    # when
    _train(model, acc, range(N))
    _train(base, base_opt, range(N), skip=jump_calls)
    # then: the jumps happened where expected, were kept, and changed nothing bit for bit
    assert [j.step for j in acc.jumps] == sorted(jump_calls)
    assert all(j.accepted and j.loss_after == j.loss_before for j in acc.jumps)
    assert acc.steps == N
    for p, q in zip(model.parameters(), base.parameters(), strict=True):
        assert torch.equal(p, q)
    # the base optimizer's state was neither reset nor advanced by the jumps
    for p, q in zip(model.parameters(), base.parameters(), strict=True):
        for key, value in opt.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(base_opt.state[q][key]))


@pytest.mark.parametrize("forecaster", [GarbageForecaster(50.0), GarbageForecaster(None)])
def test_a_jump_that_raises_the_loss_is_rolled_back_and_the_horizon_shortens(forecaster):
    # given
    P, N = 4, 20
    jump_calls = {4, 9, 14, 19}
    model, base = _model(), _model()
    opt, base_opt = _optimizer("adam", model), _optimizer("adam", base)
    acc = JumpAhead(
        opt,
        model,
        forecaster,
        JumpOptions(period=P, horizon=8, record_every=2),
        loss_fn=_guard_loss(model),
    )
    # when
    _train(model, acc, range(N))
    _train(base, base_opt, range(N), skip=jump_calls)
    # then: every jump was refused, each time with half the horizon, and the run is the base one
    assert [j.step for j in acc.jumps] == sorted(jump_calls)
    assert not any(j.accepted for j in acc.jumps)
    assert all(j.loss_after > j.loss_before for j in acc.jumps)
    assert [j.horizon for j in acc.jumps] == [8, 4, 2, 1]
    assert acc.scale == 0.5**4
    for p, q in zip(model.parameters(), base.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_line_search_keeps_the_factor_of_least_guard_loss_and_counts_its_passes():
    # given a forecaster that overshoots far (every weight + 5) and a line search over 0.01 and 1
    P = 4
    runs = {}
    for search in ((), (0.01, 1.0)):
        model = _model()
        acc = JumpAhead(
            _optimizer("adam", model),
            model,
            GarbageForecaster(5.0),
            JumpOptions(period=P, horizon=2, record_every=2, guard=1.1, line_search=search),
            loss_fn=_guard_loss(model),
        )
        # when it trains up to its first jump
        _train(model, acc, range(P))
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        _train(model, acc, range(P, P + 1))
        runs[search] = (acc.jumps[0], before, torch.cat([p.flatten() for p in model.parameters()]))
    # then without it the jump is rolled back; with it the 0.01 step is kept, the weights moved
    # 0.01 x 5, and the jump spent 1 + 2 guard-batch passes
    plain, _, _ = runs[()]
    searched, before, after = runs[(0.01, 1.0)]
    assert not plain.accepted and plain.evals == 2
    assert searched.accepted and searched.scale == 0.01 and searched.evals == 3
    torch.testing.assert_close(after, before + 0.05)
    assert searched.loss_after <= 1.1 * searched.loss_before < plain.loss_after


@pytest.mark.parametrize("reset", [False, True])
def test_reset_state_clears_the_base_optimizers_state_after_an_accepted_jump(reset):
    # given Adam wrapped with jumps every 4 steps, its state cleared after a jump or kept
    model = _model()
    P = 4
    opt = _optimizer("adam", model)
    acc = JumpAhead(
        opt, model, IdentityForecaster(), JumpOptions(period=P, horizon=2, reset_state=reset)
    )
    _train(model, acc, range(P))
    assert len(opt.state) == len(list(model.parameters()))
    # when the jump is taken
    _train(model, acc, range(P, P + 1))
    # then Adam's moments are gone (rebuilt at the next step) or kept, as asked
    assert acc.jumps[0].accepted
    assert (len(opt.state) == 0) is reset
    _train(model, acc, range(P + 1, P + 2))
    steps = {int(opt.state[p]["step"]) for p in model.parameters()}
    assert steps == ({1} if reset else {P + 1})


def test_row_mean_zero_jumps_keep_each_units_mean_weight_and_move_the_rest():
    # given a forecaster that moves every weight and bias by +0.5 (a pure row-mean shift of each
    # unit, plus a within-row pattern on the first layer) and the wrapper with row_mean 0
    class Shift:
        name = "shift"

        def forecast(self, prefix, t):
            w = prefix.w[-1:].repeat(len(t), 1)
            return w + 0.5 + 0.1 * (torch.arange(w.shape[1]) % 2)

    model = _model()
    P = 4
    acc = JumpAhead(
        _optimizer("adam", model),
        model,
        Shift(),
        JumpOptions(period=P, horizon=2, record_every=2, row_mean=0.0),
    )
    _train(model, acc, range(P))
    before = [p.detach().clone() for p in model.parameters()]
    # when it jumps
    _train(model, acc, range(P, P + 1))
    # then each weight row's mean is where it was, the within-row pattern and biases moved
    assert acc.jumps[0].accepted
    for (name, p), b in zip(model.named_parameters(), before, strict=True):
        d = (p.detach() - b).double()
        if name.endswith("weight"):
            torch.testing.assert_close(d.mean(1), torch.zeros(d.shape[0], dtype=d.dtype))
            assert d.abs().max() > 0.01
        else:
            assert torch.all(d > 0.4)


@pytest.mark.parametrize(
    ("opt_name", "frame"), [("momentum", "window"), ("adam", "window"), ("adam", "run")]
)
def test_state_dict_round_trip_mid_training_continues_identically(opt_name, frame):
    # given: a run with real (linear extrapolation) jumps, stopped between two jumps
    def make(seed):
        model = _model(seed)
        acc = JumpAhead(
            _optimizer(opt_name, model),
            model,
            jump_baseline("linear"),
            JumpOptions(
                period=4,
                horizon=Horizon(6, 2, 30),
                history=3 if frame == "window" else 6,
                record_every=2,
                guard=1.5,
                frame=frame,
                total_steps=30,
                calibrate=frame == "run",
            ),
            loss_fn=_guard_loss(model),
        )
        return model, acc

    model, acc = make(0)
    _train(model, acc, range(12))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "acc": acc.state_dict()}, buffer)
    # when: one copy continues; a fresh one (other init) loads the saved state and continues
    _train(model, acc, range(12, 30))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, acc2 = make(1)
    model2.load_state_dict(saved["model"])
    acc2.load_state_dict(saved["acc"])
    _train(model2, acc2, range(12, 30))
    # then
    assert len(acc.jumps) >= 4 and any(j.accepted for j in acc.jumps)

    def outcome(jumps):  # all but the timings
        return [(j.step, j.horizon, j.loss_before, j.loss_after, j.accepted) for j in jumps]

    assert outcome(acc2.jumps) == outcome(acc.jumps)
    assert (acc2.steps, acc2.progress, acc2.scale) == (acc.steps, acc.progress, acc.scale)
    assert [j.scale for j in acc2.jumps] == [j.scale for j in acc.jumps]
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("opt_name", "expected"),
    [("momentum", {"momentum": 0.9, "nesterov": True}), ("adam", {"beta1": 0.9, "beta2": 0.999})],
)
def test_the_prefix_frames_the_kept_checkpoints_as_a_run_ending_at_the_jump(opt_name, expected):
    # given: checkpoints every 2 steps, 3 kept, a jump after 6 base steps to 5 intervals ahead
    model = _model()
    forecaster = RecordingForecaster()
    opt = _optimizer(opt_name, model)
    acc = JumpAhead(
        opt, model, forecaster, JumpOptions(period=6, horizon=5, history=3, record_every=2)
    )
    seen = [acc.flat()]
    # when
    for i in range(7):
        _train(model, acc, range(i, i + 1))
        seen.append(acc.flat())
    # then: w = checkpoints after base steps 2, 4, 6; M = k + h; forecast t = 1
    (prefix, t), *_ = forecaster.calls
    assert torch.equal(prefix.w, torch.stack([seen[2], seen[4], seen[6]]))
    assert (prefix.k, prefix.M) == (2, 7)
    assert torch.equal(t, torch.tensor([1.0], dtype=torch.float64))
    lr = opt.param_groups[0]["lr"]
    assert torch.equal(prefix.lr, torch.full((8,), lr, dtype=torch.float64))
    assert prefix.optimizer == opt_name and prefix.record_every == 2
    assert prefix.hparams["lr"] == lr and expected.items() <= prefix.hparams.items()
    assert len(prefix.params) == prefix.D == sum(p.numel() for p in model.parameters())
    assert list(prefix.params.kind[:32]) == ["weight"] * 32  # Linear(4, 8).weight comes first


def test_lr_schedule_is_read_at_the_effective_step_and_warmup_delays_to_a_checkpoint():
    # given: a schedule of the effective step, and a warm-up ending between two checkpoints
    model = _model()
    forecaster = RecordingForecaster()
    opt = _optimizer("momentum", model)

    def schedule(s):
        return 0.1 / (1 + s)

    acc = JumpAhead(
        opt,
        model,
        forecaster,
        JumpOptions(period=4, horizon=3, history=3, record_every=2, warmup=7),
        lr_schedule=schedule,
    )
    # when
    _train(model, acc, range(10))
    # then: at call 7 warm-up is over but 7 base steps is no checkpoint; the jump waits for 8
    assert [j.step for j in acc.jumps] == [8]
    (prefix, _), *_ = forecaster.calls
    expected = [schedule(s) for s in (4, 6, 8, 10, 12, 14)]  # kept at 4, 6, 8; then + j·r
    assert torch.allclose(prefix.lr, torch.tensor(expected, dtype=torch.float64))


def test_a_linear_jump_on_a_linear_trajectory_lands_where_sgd_would():
    # given: loss ⟨c, w⟩ has a constant gradient, so SGD moves w_s = w_0 − s·lr·c exactly
    c = torch.tensor([1.0, -2.0, 0.5])
    w = nn.Parameter(torch.zeros(3))
    lr, r, P, h = 0.01, 2, 8, 3
    acc = JumpAhead(
        torch.optim.SGD([w], lr=lr),
        [w],
        jump_baseline("linear"),
        JumpOptions(period=P, horizon=h, record_every=r),
        loss_fn=lambda: (c * w).sum(),
    )
    # when: P base steps and one jump
    for _ in range(P + 1):
        acc.zero_grad()
        (c * w).sum().backward()
        acc.step()
    # then: the jump skipped h·r steps
    assert acc.jumps[0].accepted
    assert acc.progress == P + h * r
    torch.testing.assert_close(w.detach(), -(P + h * r) * lr * c, rtol=0, atol=1e-6)


class Shrunk:
    """Linear extrapolation that moves only a third of the way: an under-predicting forecaster."""

    name = "shrunk"

    def __init__(self):
        self.linear = jump_baseline("linear")

    def forecast(self, prefix, t):
        w_k = prefix.w[-1:]
        return w_k + (self.linear.forecast(prefix, t) - w_k) / 3


def test_calibration_scales_an_under_predicting_forecaster_onto_the_sgd_path():
    # given: constant gradient c, so SGD moves w_s = w_0 − s·lr·c exactly; a forecaster that
    # predicts a third of each displacement
    c = torch.tensor([1.0, -2.0, 0.5])
    w = nn.Parameter(torch.zeros(3))
    lr, r, P, h = 0.01, 2, 8, 3
    acc = JumpAhead(
        torch.optim.SGD([w], lr=lr),
        [w],
        Shrunk(),
        JumpOptions(period=P, horizon=h, record_every=r, history=100, frame="run", calibrate=True),
        loss_fn=lambda: (c * w).sum(),
    )
    # when: P base steps and one jump
    for _ in range(P + 1):
        acc.zero_grad()
        (c * w).sum().backward()
        acc.step()
    # then: the backtest found the factor 3, and the jump skipped exactly h·r steps
    (jump,) = acc.jumps
    assert jump.accepted and jump.scale == pytest.approx(3.0, rel=1e-6)
    torch.testing.assert_close(w.detach(), -(P + h * r) * lr * c, rtol=0, atol=1e-6)


def test_run_frame_keeps_the_run_from_its_start_and_the_jump_path():
    # given: the "run" frame with a 24-step budget, checkpoints every 2 steps
    model = _model()
    forecaster = RecordingForecaster()
    acc = JumpAhead(
        _optimizer("adam", model),
        model,
        forecaster,
        JumpOptions(period=4, horizon=2, history=100, record_every=2, frame="run", total_steps=24),
    )
    start = acc.flat()
    # when: 4 base steps, a jump, 4 base steps, a jump
    _train(model, acc, range(10))
    # then: the first prefix is the run from step 0 (w_0, w_2, w_4) in a run of M = 24/2
    (p1, t1), (p2, t2) = forecaster.calls
    assert torch.equal(p1.w[0], start) and (p1.k, p1.M) == (2, 12)
    assert torch.allclose(t1, torch.tensor([3 / 12, 4 / 12], dtype=torch.float64))
    # the second holds the first, the jump's two forecast checkpoints and two base intervals
    assert (p2.k, p2.M) == (6, 12) and torch.equal(p2.w[:3], p1.w)
    assert acc.progress == 8 + 2 * 2 * 2


def test_run_frame_thins_its_history_to_twice_the_spacing():
    # given: at most 4 kept checkpoints in the "run" frame, one every 2 steps, no jump yet
    model = _model()
    acc = JumpAhead(
        _optimizer("adam", model),
        model,
        RecordingForecaster(),
        JumpOptions(period=100, horizon=1, history=4, record_every=2, frame="run"),
    )
    # when: 8 base steps (checkpoints at 0, 2, 4, 6, 8: one too many)
    _train(model, acc, range(8))
    # then: every other one is kept, from the start, and the spacing doubled
    assert acc.state_dict()["history_progress"] == [0, 4, 8]
    assert acc.prefix(1).record_every == 4


def test_works_with_a_task_network():
    # given: a digits MLP from gfm.data.tasks
    task = make_task("digits_mlp", TaskSettings(archs=[[8]], steps=10, record_every=2), 0)
    model = task.build((8,), 0)
    acc = JumpAhead(
        torch.optim.Adam(model.parameters(), lr=0.01),
        model,
        jump_baseline("linear"),
        JumpOptions(period=4, horizon=2, record_every=2),
        loss_fn=lambda: task.loss_and_acc(model, "train")[0],
        task="digits_mlp",
    )
    # when
    X, y = task.train
    for i in range(10):
        acc.zero_grad()
        task.loss(model(X[16 * i : 16 * i + 16]), y[16 * i : 16 * i + 16]).backward()
        acc.step()
    # then: the flat layout is the tasks' one, and the jumps ran
    np.testing.assert_array_equal(acc.flat().numpy(), flatten(model))
    np.testing.assert_array_equal(acc.meta.layer, param_meta(model).layer)
    assert len(acc.jumps) == 2


def test_horizon_schedule_goes_from_long_to_short():
    schedule = Horizon(start=8, end=2, steps=100)
    assert [schedule(s) for s in (0, 50, 100, 500)] == [8, 5, 2, 2]
    with pytest.raises(ValueError, match="end"):
        Horizon(start=8, end=0, steps=100)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"period": 5, "record_every": 2}, "period"),
        ({"history": 1}, "history"),
        ({"horizon": 0}, "horizon"),
        ({"guard": 0.0}, "guard"),
        ({"shrink": 1.0}, "shrink"),
        ({"line_search": (1.0, -0.5)}, "line_search"),
        ({"row_mean": 1.5}, "row_mean"),
    ],
)
def test_bad_options_are_rejected_by_name(kwargs, match):
    model = _model()
    options = {"period": 4, "horizon": 2, "record_every": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        JumpAhead(_optimizer("adam", model), model, IdentityForecaster(), JumpOptions(**options))


def test_bad_optimizer_parameters_and_forecasts_are_rejected():
    model = _model()
    with pytest.raises(ValueError, match="optimizer"):
        JumpAhead(
            torch.optim.Adagrad(model.parameters()),
            model,
            IdentityForecaster(),
            JumpOptions(period=1, horizon=1),
        )
    with pytest.raises(ValueError, match="model_params"):
        JumpAhead(
            torch.optim.Adam(model[0].parameters()),
            model,
            IdentityForecaster(),
            JumpOptions(period=1, horizon=1),
        )

    class WrongShape:
        def forecast(self, prefix, t):
            return prefix.w

    acc = JumpAhead(
        _optimizer("adam", model), model, WrongShape(), JumpOptions(period=2, horizon=1)
    )
    with pytest.raises(ValueError, match=r"shape \(T, D\)"):
        _train(model, acc, range(3))


def test_load_state_dict_rejects_another_architecture():
    model = _model()
    acc = JumpAhead(
        _optimizer("adam", model), model, IdentityForecaster(), JumpOptions(period=2, horizon=1)
    )
    _train(model, acc, range(3))
    small = nn.Linear(2, 2)
    acc_small = JumpAhead(
        _optimizer("adam", small), small, IdentityForecaster(), JumpOptions(period=2, horizon=1)
    )
    with pytest.raises(ValueError, match="history"):
        acc_small.load_state_dict(acc.state_dict())


def test_load_forecaster_from_folders_and_bad_sources(tmp_path):
    baselines.make("linear", {"window": 4}).save(tmp_path / "linear")
    GFM().save(tmp_path / "gfm")
    linear = load_forecaster(tmp_path / "linear")
    assert isinstance(linear, baselines.Linear) and linear.config["window"] == 4
    assert isinstance(load_forecaster(str(tmp_path / "gfm")), GFM)
    with pytest.raises(FileNotFoundError, match="forecaster.json"):
        load_forecaster(tmp_path / "missing")
    with pytest.raises(ValueError, match="registry URI"):
        load_model("models:/gfm")  # the registry is the MLflow edge's, never the core's
    with pytest.raises(ValueError, match="configured registered model"):
        load_model("models:/other@champion")
    with pytest.raises(ValueError, match="train"):
        jump_baseline("wnn")  # a learned baseline needs runs to fit on


def test_the_old_name_gfm_accelerate_still_builds_the_wrapper_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("gfm.accelerate", None)
    with pytest.warns(DeprecationWarning, match="gfm.jumps"):
        old = importlib.import_module("gfm.accelerate")
    model = _model()
    acc = old.Accelerated(
        _optimizer("adam", model), model, IdentityForecaster(), period=2, horizon=1
    )
    assert isinstance(acc, JumpAhead) and acc.options == JumpOptions(period=2, horizon=1)


def test_the_readme_jump_example_runs_with_the_benchmarks_settings():
    # given the README's jump example, a linear forecaster in place of models/gfm (a DVC output
    # a fresh clone lacks), and a digits MLP with 200 minibatches
    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    section = text[text.index("### Jump-ahead training in your own loop") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    assert 'saved.load(\n    "models/gfm"\n)' in code
    code = code.replace('saved.load(\n    "models/gfm"\n)', 'baselines.make("linear")')
    Xd, yd = load_digits(return_X_y=True)
    X_all, y_all = torch.tensor(Xd / 16.0, dtype=torch.float32), torch.tensor(yd)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, 1500, (64,), generator=g) for _ in range(200)]
    scope = {
        "torch": torch,
        "F": F,
        "baselines": baselines,
        "model": model,
        "X_guard": X_all[:512],
        "y_guard": y_all[:512],
        "batches": [(X_all[i], y_all[i]) for i in idx],
    }
    # when it runs as printed
    exec(code, scope)  # noqa: S102 - the README's own code
    opt = scope["opt"]
    # then it jumped and kept jumps, with the jump benchmark's settings
    assert len(opt.jumps) >= 10 and sum(j.accepted for j in opt.jumps) >= 5
    bench = load_accelerate(root / "benchmarks" / "accelerate.yaml")
    o = opt.options
    assert (o.period, o.guard, o.row_mean, o.reset_state, o.history, o.frame) == (
        bench.period,
        bench.guard,
        bench.row_mean,
        bench.reset_state,
        bench.history,
        bench.frame,
    )
    assert (o.horizon.c, o.horizon.low, o.horizon.high) == (
        bench.horizon_ratio,
        bench.horizon_end,
        bench.horizon_start,
    )
