"""What a torch training loop tells a forecaster (flat weights, optimizer name, hyperparameters), and baselines to jump with.

Shared by ``JumpAhead`` and ``gfm.stopping.Recorder``: both keep flat weights of a live model and
describe its optimizer the way the dataset's runs are described.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gfm import baselines
from gfm.data.schema import RunRecord
from gfm.forecaster import Forecaster

# ----------------------------------------------------------------------------------------------
# Flat weights of a live model (the D axis of a Prefix)
# ----------------------------------------------------------------------------------------------

ModelParams = nn.Module | Iterable[tuple[str, nn.Parameter]] | Iterable[nn.Parameter]


def named_params(model_params: ModelParams) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs; plain parameters get names ``"<i>.weight"`` / ``"<i>.bias"``.

    Args:
        model_params: a module (its ``named_parameters()``), ``named_parameters()`` pairs, or
            plain parameters.

    Raises:
        TypeError: the items are neither (name, parameter) pairs nor tensors.
    """
    if isinstance(model_params, nn.Module):
        return list(model_params.named_parameters())
    items = list(model_params)
    if all(isinstance(p, tuple) and len(p) == 2 for p in items):
        return [(str(n), p) for n, p in items]
    if all(isinstance(p, torch.Tensor) for p in items):
        # without names, 1-D tensors are taken for biases (ParamMeta's kind and fan_in)
        return [(f"{i}.{'bias' if p.ndim == 1 else 'weight'}", p) for i, p in enumerate(items)]
    raise TypeError(
        "`model_params` must be an nn.Module, named_parameters() pairs or parameters, "
        f"got items of types {sorted({type(p).__name__ for p in items})}"
    )


def flat_weights(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameters concatenated in order: one (D,) float32 CPU vector (a copy)."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in params])


@torch.no_grad()
def load_weights(params: Sequence[torch.Tensor], w: torch.Tensor) -> None:
    """Copy the flat vector ``w`` (D,) into ``params`` in place, in order (``flat_weights``'s inverse)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(w[offset : offset + n].view_as(p).to(p.device, p.dtype))
        offset += n


# ----------------------------------------------------------------------------------------------
# What a torch optimizer tells the forecaster (name and hyperparameters, a registry by class)
# ----------------------------------------------------------------------------------------------

HParams = dict[str, float | bool]


def _sgd(group: Mapping[str, Any]) -> tuple[str, HParams]:
    hp: HParams = {"lr": float(group["lr"]), "weight_decay": float(group.get("weight_decay", 0.0))}
    if float(group.get("momentum", 0.0)) > 0.0:
        hp |= {"momentum": float(group["momentum"]), "nesterov": bool(group.get("nesterov", False))}
        return "momentum", hp
    return "sgd", hp


def _adam_like(name: str) -> Callable[[Mapping[str, Any]], tuple[str, HParams]]:
    def hparams(group: Mapping[str, Any]) -> tuple[str, HParams]:
        beta1, beta2 = group["betas"]
        return name, {
            "lr": float(group["lr"]),
            "beta1": float(beta1),
            "beta2": float(beta2),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "eps": float(group.get("eps", 1e-8)),
        }

    return hparams


def _rmsprop(group: Mapping[str, Any]) -> tuple[str, HParams]:
    return "rmsprop", {
        "lr": float(group["lr"]),
        "alpha": float(group["alpha"]),
        "weight_decay": float(group.get("weight_decay", 0.0)),
        "eps": float(group.get("eps", 1e-8)),
    }


# looked up along the optimizer class's MRO, so subclasses map to their base's name
OPTIMIZER_NAMES: dict[type, Callable[[Mapping[str, Any]], tuple[str, HParams]]] = {
    torch.optim.SGD: _sgd,
    torch.optim.Adam: _adam_like("adam"),
    torch.optim.AdamW: _adam_like("adamw"),
    torch.optim.RMSprop: _rmsprop,
}


def optimizer_context(optimizer: torch.optim.Optimizer) -> tuple[str, HParams]:
    """The forecaster's name and hyperparameters of a torch optimizer (its first param group).

        SGD (momentum = 0) → "sgd",  SGD (momentum > 0) → "momentum",  Adam → "adam",
        AdamW → "adamw",  RMSprop → "rmsprop"

    Args:
        optimizer: the base optimizer.

    Returns:
        (name, hparams) with hparams among lr, momentum, nesterov, alpha, beta1, beta2,
        weight_decay, eps.

    Raises:
        TypeError: ``optimizer`` is not a torch optimizer.
        ValueError: its class is none of SGD, Adam, AdamW, RMSprop (or a subclass).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    for cls in type(optimizer).__mro__:
        if cls in OPTIMIZER_NAMES:
            return OPTIMIZER_NAMES[cls](optimizer.param_groups[0])
    known = [c.__name__ for c in OPTIMIZER_NAMES]
    raise ValueError(f"`optimizer` must be one of {known}, got {type(optimizer).__name__}")


# ----------------------------------------------------------------------------------------------
# Baselines as jump forecasters (a saved one: gfm.saved.load; the registry's: gfm.tracking.load_model)
# ----------------------------------------------------------------------------------------------


def jump_baseline(
    name: str,
    *,
    train: Sequence[RunRecord] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Forecaster:
    """A baseline forecaster for jumps: ``linear`` extrapolation, ``wnn``, or any other baseline.

        linear:  ŵ(1) = a + b · M    (line through the last ``window`` checkpoints, a jump of h·b)
        wnn:     ŵ(1) = w_k + c · MLP(last increments, context, t = 1)    (Jang et al. 2023)

    Args:
        name: a key of ``gfm.baselines.BASELINES``.
        train: training runs, required for the learned baselines (``wnn``, ``lfd2``, ...).
        config: the baseline's config (its class defaults for missing keys).

    Returns:
        The baseline, fitted on ``train`` when it learns.

    Raises:
        ValueError: unknown ``name``, or a learned baseline without ``train``.
    """
    model = baselines.make(name, config)
    if model.min_train_runs > 0:
        if train is None:
            raise ValueError(f"jump_baseline: `train` must be given for {name!r}, got None")
        model.fit(train)
    return model
