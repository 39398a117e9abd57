"""The study's sampler: seeded TPE that never draws a configuration the study already has.

A resumed study must not repeat itself (issue 15, item 4). Two things made it: the sampler of a
resumed study restarted its random stream with the same seed, so its first random trial was the
first random trial of the study again (often the one a kill interrupted, which is retried with
its parameters as well); and TPE, like any sampler, may draw a configuration a trial already has.
So:

* the seed of a study reopened with ``n`` trials is ``resume_seed(seed, n)``, a stream of its own
  (a new study keeps ``seed``: its trials are what they always were);
* ``DistinctSampler`` draws the whole configuration at once and draws again (up to ``ATTEMPTS``
  times) while it equals the configuration of a finished, running or waiting trial; a space with
  no new configuration left gives a repeat rather than no trial.

A trial whose process died is not drawn again: it is retried once with its parameters (the
retry callback, ``tune.max_retry``), the one repeat a study holds on purpose, and its first run
is FAIL. Like ``gfm.ops.study``, the module imports optuna; it never imports mlflow.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, Trial, TrialState

from gfm.config import GFMSettings, SearchParam, TrainSettings

__all__ = [
    "ATTEMPTS",
    "DistinctSampler",
    "contains",
    "distributions",
    "resume_seed",
    "sampler",
    "suggest",
    "worker_seed",
]

ATTEMPTS = 100  # draws of one trial before a repeated configuration is accepted
_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def field_type(key: str) -> type:
    """The type of the setting a dotted key names (``gfm.depth`` -> int)."""
    section, _, name = key.partition(".")
    model = {"gfm": GFMSettings, "train": TrainSettings}[section]
    return model.model_fields[name].annotation  # type: ignore[return-value]


def contains(dim: SearchParam, value: Any) -> bool:
    """Whether ``value`` lies in dimension ``dim``."""
    if dim.choices is not None:
        return value in dim.choices
    assert dim.low is not None and dim.high is not None  # internal: checked by SearchParam
    return isinstance(value, int | float) and dim.low <= value <= dim.high


def suggest(trial: Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Draw one value per dimension; names are the dotted settings keys.

    A range over an integer setting (``gfm.depth``) is drawn with ``suggest_int``.

    Returns:
        ``{"gfm.width": 64, "train.lr": 0.0012, ...}``.
    """
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            params[key] = trial.suggest_categorical(key, dim.choices)
        elif field_type(key) is int:
            step = int(dim.step) if dim.step else 1
            params[key] = trial.suggest_int(
                key, int(dim.low), int(dim.high), step=step, log=dim.log
            )
        else:
            params[key] = trial.suggest_float(
                key, float(dim.low), float(dim.high), step=dim.step, log=dim.log
            )
    return params


def distributions(space: dict[str, SearchParam]) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each dimension, as ``suggest`` draws it."""
    out: dict[str, BaseDistribution] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            out[key] = CategoricalDistribution(dim.choices)
        elif field_type(key) is int:
            step = int(dim.step) if dim.step else 1
            out[key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=step)
        else:
            out[key] = FloatDistribution(
                float(dim.low), float(dim.high), log=dim.log, step=dim.step
            )
    return out


def worker_seed(seed: int, worker: int) -> int:
    """The sampler seed of worker ``worker``: ``seed`` itself for worker 0.

    Workers sharing one seed would draw the same random startup trials; each gets its own
    stream instead (a parallel study is not reproducible trial by trial anyway).
    """
    if worker == 0:
        return seed
    return _mix(f"{seed}/{worker}")


def resume_seed(seed: int, n_trials: int) -> int:
    """The seed of a sampler on a study that already holds ``n_trials`` trials (``seed`` for 0).

    A reopened study given its original seed would draw its first random trials again.
    """
    return seed if n_trials == 0 else _mix(f"{seed}/resume/{n_trials}")


def _mix(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def sampler(seed: int, space: dict[str, SearchParam]) -> DistinctSampler:
    """Seeded TPE over ``space``, never repeating a configuration (``DistinctSampler``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # TPE's default 10 random startup trials: a small study explores instead of circling
        # the configured settings (its first trial)
        tpe = optuna.samplers.TPESampler(seed=seed)
    return DistinctSampler(tpe, distributions(space))


def _config(params: dict[str, Any], names: list[str]) -> tuple[Any, ...]:
    return tuple(params.get(name) for name in names)


class DistinctSampler(BaseSampler):
    """``inner``'s draws, one whole configuration at a time, none equal to a trial's already.

    A configuration is drawn as the trial would draw it from ``inner``: its relative params
    (``inner.sample_relative`` on ``inner``'s relative search space), then each other dimension
    by ``inner.sample_independent`` in the space's order; so while no draw repeats, the trials
    are exactly ``inner``'s. A trial with enqueued parameters (the configured first trial, a
    retry) takes them as they are.
    """

    def __init__(self, inner: BaseSampler, space: dict[str, BaseDistribution]) -> None:
        self._inner = inner
        self._space = {k: d for k, d in space.items() if not d.single()}

    def reseed_rng(self) -> None:
        """Reseed the inner sampler."""
        self._inner.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The whole space: a configuration is drawn at once."""
        return dict(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """A configuration no trial of ``study`` has, if ``ATTEMPTS`` draws find one."""
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}
        names = list(search_space)
        taken = set()
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number:
                continue
            if other.state in _TAKEN:
                taken.add(_config(other.params, names))
            elif other.state == TrialState.WAITING:  # enqueued: fixed params; a retry: params
                fixed = other.system_attrs.get("fixed_params", {})
                taken.add(_config({**fixed, **other.params}, names))
        inner_space = self._inner.infer_relative_search_space(study, trial)
        params: dict[str, Any] = {}
        for _ in range(ATTEMPTS):
            # as the trial would draw: the inner sampler's relative params (TPE's multivariate
            # draw once past its startup trials), then the rest one by one in the space's order
            params = dict(self._inner.sample_relative(study, trial, inner_space))
            for name, dist in search_space.items():
                if name not in params:
                    params[name] = self._inner.sample_independent(study, trial, name, dist)
            if _config(params, names) not in taken:
                break
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: BaseDistribution
    ) -> Any:
        """``inner``'s draw (a dimension outside the space)."""
        return self._inner.sample_independent(study, trial, name, dist)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """``inner``'s."""
        self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Any,
    ) -> None:
        """``inner``'s."""
        self._inner.after_trial(study, trial, state, values)
