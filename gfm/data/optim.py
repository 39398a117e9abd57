"""Optimizers and learning-rate schedules of the recorded runs, each chosen by key from a registry.

Hyperparameter keys follow ``RunSpec.hparams``: lr, momentum, nesterov, alpha, beta1, beta2,
weight_decay. ``DEFAULTS`` lists every key an optimizer uses with the value taken when it is absent
(torch's defaults, except momentum = 0.9 for ``momentum``, which would otherwise be plain SGD);
``OPTIONAL`` the keys every optimizer also takes, set on a run only when its range is configured:
weight decay, as an L2 term added to the gradient (g + λw, torch's ``weight_decay`` of SGD,
RMSprop and Adam); AdamW's own decoupled decay is in its ``DEFAULTS``.

References:
    SGD with momentum / Nesterov: Sutskever et al. 2013. RMSprop: Tieleman & Hinton 2012.
    Adam: Kingma & Ba 2015. AdamW: Loshchilov & Hutter 2019 (also for the cosine schedule, SGDR).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = ["BUILDERS", "DEFAULTS", "OPTIONAL", "RULES", "build_optimizer", "scheduled_lr"]

Params = Iterable[torch.nn.Parameter]

DEFAULTS: dict[str, dict[str, float | bool]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9, "nesterov": False},
    "rmsprop": {"alpha": 0.99},
    "adam": {"beta1": 0.9, "beta2": 0.999},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
}
OPTIONAL: dict[str, float] = {"weight_decay": 0.0}


def _sgd(params: Params, lr: float, hp: dict[str, float | bool]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=float(hp["weight_decay"]))


def _momentum(params: Params, lr: float, hp: dict[str, float | bool]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=float(hp["momentum"]),
        nesterov=bool(hp["nesterov"]),
        weight_decay=float(hp["weight_decay"]),
    )


def _rmsprop(params: Params, lr: float, hp: dict[str, float | bool]) -> torch.optim.Optimizer:
    wd = float(hp["weight_decay"])
    return torch.optim.RMSprop(params, lr=lr, alpha=float(hp["alpha"]), weight_decay=wd)


def _adam(params: Params, lr: float, hp: dict[str, float | bool]) -> torch.optim.Optimizer:
    betas = (float(hp["beta1"]), float(hp["beta2"]))
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=float(hp["weight_decay"]))


def _adamw(params: Params, lr: float, hp: dict[str, float | bool]) -> torch.optim.Optimizer:
    betas = (float(hp["beta1"]), float(hp["beta2"]))
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=float(hp["weight_decay"]))


BUILDERS: dict[str, Callable[[Params, float, dict[str, float | bool]], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": _adamw,
}


def build_optimizer(
    name: str, params: Params, hparams: dict[str, float | bool]
) -> torch.optim.Optimizer:
    """The torch optimizer ``name`` over ``params`` with hyperparameters ``hparams``.

    Args:
        name: a key of ``BUILDERS`` (``gfm.data.names.OPTIMIZERS``).
        params: the parameters to optimise.
        hparams: ``lr`` (required, > 0) plus any of the optimizer's keys in ``DEFAULTS[name]``
            and ``OPTIONAL``; absent ones take the default there.

    Returns:
        The optimizer; its param group's ``lr`` is the base learning rate (schedules set it later).

    Raises:
        ValueError: unknown ``name``, missing or non-positive ``lr``, or a key the optimizer
            does not use.
    """
    if name not in BUILDERS:
        raise ValueError(f"`optimizer` must be one of {list(BUILDERS)}, got {name!r}")
    allowed = {"lr", *DEFAULTS[name], *OPTIONAL}
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ValueError(f"`hparams` of {name} must only use keys {sorted(allowed)}, got {unknown}")
    lr = hparams.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"`hparams['lr']` must be a positive number, got {lr!r}")
    return BUILDERS[name](params, float(lr), {**OPTIONAL, **DEFAULTS[name], **hparams})


def _constant(base_lr: float, step: int, total_steps: int) -> float:
    return base_lr


def _cosine(base_lr: float, step: int, total_steps: int) -> float:
    eta_min = 0.05 * base_lr
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * step / total_steps))


def _step(base_lr: float, step: int, total_steps: int) -> float:
    drops = (step >= total_steps // 2) + (step >= (3 * total_steps) // 4)
    return base_lr * 0.3**drops


RULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": _constant,
    "cosine": _cosine,
    "step": _step,
}


def scheduled_lr(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate in effect at optimizer step ``step`` (the update from w_step to w_{step+1}).

        constant:  lr(s) = lr0
        cosine:    lr(s) = η_min + (lr0 − η_min) · (1 + cos(π s / S)) / 2,  η_min = 0.05 · lr0
        step:      lr(s) = lr0 · 0.3^([s ≥ ⌊S/2⌋] + [s ≥ ⌊3S/4⌋])

    with S = ``total_steps``; η_min > 0 so that late steps still move the weights.
    Source: cosine annealing, Loshchilov & Hutter 2017 (SGDR), eq. 5 without restarts.

    Args:
        schedule: a key of ``RULES`` (``gfm.data.names.SCHEDULES``).
        base_lr: lr0 > 0, the run's base learning rate.
        step: s in [0, S].
        total_steps: S > 0, the run's number of optimizer steps.

    Returns:
        The learning rate (float).

    Raises:
        ValueError: unknown ``schedule``, or ``step``/``total_steps``/``base_lr`` out of range.
    """
    if schedule not in RULES:
        raise ValueError(f"`schedule` must be one of {list(RULES)}, got {schedule!r}")
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be positive, got {total_steps}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"`step` must be in [0, {total_steps}], got {step}")
    if not base_lr > 0:
        raise ValueError(f"`base_lr` must be positive, got {base_lr}")
    return RULES[schedule](base_lr, step, total_steps)
