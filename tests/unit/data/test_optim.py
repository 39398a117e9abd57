import math

import numpy as np
import pytest
import torch

from gfm.data import names
from gfm.data.optim import BUILDERS, DEFAULTS, OPTIONAL, RULES, build_optimizer, scheduled_lr


def _quadratic_run(name: str, hparams: dict, steps: int, w0: float = 1.0) -> float:
    """Minimise f(w) = w^2 / 2 (gradient w) from w0 and return the final w."""
    w = torch.nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    opt = build_optimizer(name, [w], hparams)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w**2).sum().backward()
        opt.step()
    return float(w.detach())


def test_sgd_on_quadratic_matches_closed_form():
    # w_n = (1 - lr)^n w_0
    assert _quadratic_run("sgd", {"lr": 0.1}, 20) == pytest.approx(0.9**20, rel=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_on_quadratic_matches_recurrence(nesterov):
    lr, mu, w, b = 0.1, 0.8, 1.0, 0.0
    for i in range(15):  # torch's heavy-ball form: b = mu b + g (b = g at the first step)
        g = w
        b = g if i == 0 else mu * b + g
        w -= lr * (g + mu * b if nesterov else b)
    got = _quadratic_run("momentum", {"lr": lr, "momentum": mu, "nesterov": nesterov}, 15)
    assert got == pytest.approx(w, rel=1e-12)


def test_adam_on_quadratic_matches_recurrence():
    lr, b1, b2, eps, w, m, v = 0.05, 0.9, 0.99, 1e-8, 1.0, 0.0, 0.0
    for t in range(1, 11):
        g = w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    got = _quadratic_run("adam", {"lr": lr, "beta1": b1, "beta2": b2}, 10)
    assert got == pytest.approx(w, rel=1e-9)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_hparams_reach_the_param_group_with_defaults_filled(name):
    w = torch.nn.Parameter(torch.zeros(2))
    group = build_optimizer(name, [w], {"lr": 0.02}).param_groups[0]
    assert group["lr"] == 0.02
    expected = {
        "momentum": {"momentum": 0.9, "nesterov": False},
        "rmsprop": {"alpha": 0.99},
        "adam": {"betas": (0.9, 0.999)},
        "adamw": {"betas": (0.9, 0.999), "weight_decay": 0.01},
    }.get(name, {"momentum": 0})
    for key, value in expected.items():
        assert group[key] == value


def test_drawn_hparams_override_defaults():
    w = torch.nn.Parameter(torch.zeros(2))
    hp = {"lr": 0.01, "beta1": 0.85, "beta2": 0.995, "weight_decay": 0.03}
    group = build_optimizer("adamw", [w], hp).param_groups[0]
    assert group["betas"] == (0.85, 0.995) and group["weight_decay"] == 0.03
    assert set(DEFAULTS["adamw"]) == {"beta1", "beta2", "weight_decay"}


@pytest.mark.parametrize("name", ["sgd", "momentum", "rmsprop", "adam"])
def test_every_optimizer_takes_an_l2_weight_decay_that_is_off_by_default(name):
    # given a parameter away from zero and no gradient from the loss
    def one_step(hparams: dict) -> float:
        w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        opt = build_optimizer(name, [w], {"lr": 0.1, **hparams})
        w.grad = torch.zeros_like(w)
        opt.step()
        return float(w.detach())

    # then without the key nothing moves it, and with it the decay's gradient λw does
    assert one_step({}) == 1.0 and OPTIONAL == {"weight_decay": 0.0}
    assert one_step({"weight_decay": 0.5}) < 1.0
    if name == "sgd":  # w - lr·λ·w
        assert one_step({"weight_decay": 0.5}) == pytest.approx(1.0 - 0.1 * 0.5)


def test_unknown_optimizer_lists_valid_keys():
    with pytest.raises(ValueError, match="sgd.*adamw"):
        build_optimizer("lion", [torch.nn.Parameter(torch.zeros(1))], {"lr": 0.1})


@pytest.mark.parametrize(
    ("hparams", "field"),
    [({"lr": 0.1, "beta1": 0.9}, "hparams"), ({}, "lr"), ({"lr": -1.0}, "lr")],
)
def test_bad_hparams_are_rejected(hparams, field):
    with pytest.raises(ValueError, match=field):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], hparams)


def test_constant_schedule():
    assert all(scheduled_lr("constant", 0.3, s, 10) == 0.3 for s in range(11))


def test_cosine_schedule_formula_and_floor():
    S, lr = 40, 0.2
    got = np.array([scheduled_lr("cosine", lr, s, S) for s in range(S + 1)])
    s = np.arange(S + 1)
    expected = 0.01 + (0.2 - 0.01) * (1 + np.cos(np.pi * s / S)) / 2
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(lr) and got[-1] == pytest.approx(0.05 * lr)
    assert np.all(np.diff(got) <= 0)


def test_step_schedule_drops_at_half_and_three_quarters():
    got = [scheduled_lr("step", 1.0, s, 100) for s in (0, 49, 50, 74, 75, 100)]
    assert got == pytest.approx([1.0, 1.0, 0.3, 0.3, 0.09, 0.09])


def test_unknown_schedule_lists_valid_keys():
    assert tuple(RULES) == names.SCHEDULES == ("constant", "cosine", "step")
    with pytest.raises(ValueError, match="constant.*cosine.*step"):
        scheduled_lr("linear", 0.1, 0, 10)


@pytest.mark.parametrize(
    ("args", "field"),
    [((0.1, 11, 10), "step"), ((0.1, -1, 10), "step"), ((0.1, 0, 0), "total_steps"),
     ((0.0, 0, 10), "base_lr")],
)  # fmt: skip
def test_lr_at_rejects_out_of_range(args, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        scheduled_lr("cosine", *args)


def test_the_builders_cover_exactly_the_named_optimizers():
    assert tuple(BUILDERS) == names.OPTIMIZERS and set(DEFAULTS) == set(names.OPTIMIZERS)
