"""Hyperparameter search for GFM with Optuna: the space from ``cfg.tune``, a pruned objective.

With its sampler (``gfm.ops.sampling``) and shared side (``gfm.ops.claims``) the module of gfm
that imports optuna (it never imports mlflow: the caller logs each trial through ``on_trial``).
One trial trains a GFM for ``tune.trial_steps`` steps on the train part of ``train.split`` and
reports the validation forecast loss (``tune.metric``) to the pruner every ``tune.eval_every``
steps; its value is the best reported one (``fit`` keeps that network).

The study is resumable: its name is ``tune.study_name`` plus a fingerprint of what the trials
depend on (dataset version, search space, the fixed settings), ``load_if_exists`` reopens it and
only the missing trials run (``tune.n_trials`` counts finished trials: complete or pruned). A
trial whose process died is failed (at once when the process was on this machine, else once its
heartbeat is older than ``2 · tune.heartbeat_s``) and run again with the same parameters, once
(``tune.max_retry``); so is the trial a Ctrl-C interrupted. Otherwise no configuration is drawn
twice, and a resumed study's sampler does not restart its seeded stream (``gfm.ops.sampling``).
The first trial of a new study is the configured settings themselves (when they lie in the
space), so tuning never returns worse than the default on val.

Several worker processes, on one machine or many, can share one study on PostgreSQL storage
(``work``; ``gfm tune --workers N`` and ``gfm tune-worker --study NAME``). Each worker claims a
trial under a PostgreSQL advisory lock held from counting the study's finished and running
trials until its new trial is running, so the study ends with exactly ``tune.n_trials``
finished trials however many workers share it; a worker whose trials are all taken waits for
the running ones, which it runs again if their worker dies.

Reference: Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization Framework",
KDD 2019.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState

from gfm.config import Settings, apply_params
from gfm.data.schema import RunRecord
from gfm.ops.claims import (
    PROCESS_ATTR,
    WORKER_ATTR,
    NoInterruptedTrial,
    SharedStudy,
    process_token,
    retry_interrupted,
)
from gfm.ops.layout import check_tuning_parts
from gfm.ops.sampling import contains, resume_seed, sampler, suggest, worker_seed
from gfm.services import (
    ServiceUnavailable,
    check_shared,
    is_postgres,
    redact,
    storage_unreachable,
)

__all__ = [
    "TrialResult",
    "TuneResult",
    "check_storage",
    "finished_by",
    "join_study",
    "open_study",
    "progress",
    "quiet",
    "study_name",
    "suggest",
    "study_result",
    "tune",
    "work",
    "worker_seed",
]

log = logging.getLogger("gfm.tune")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
N_TRIALS_ATTR = "gfm.n_trials"  # the study's target, so workers started elsewhere agree on it


@dataclass(frozen=True)
class TrialResult:
    """One finished trial, as handed to ``on_trial``.

    Attributes:
        number: the trial's number in the study.
        state: ``COMPLETE``, ``PRUNED`` or ``FAIL``.
        params: the searched settings, by dotted key (``gfm.width``).
        value: the objective (best reported ``tune.metric``); None when pruned before a report.
        history: the training loop's evaluations (``step``, ``train/loss``, ``val/...``).
        seconds: wall time of the trial.
    """

    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float | None = None


@dataclass(frozen=True)
class TuneResult:
    """What a (possibly resumed) study holds after ``tune``.

    Attributes:
        study: the full study name (``tune.study_name`` plus the fingerprint).
        storage: the storage URL.
        best_params: the best trial's searched settings, by dotted key ({} without trials).
        best_value: its objective value.
        best_trial: its number.
        n_complete, n_pruned, n_failed: trials per state in the whole study.
        n_new: trials finished by this call (0 when the study was already done).
        metric: the objective's name.
        seconds: wall time of this call.
        trials: every trial of the study: number, state, value, params.
    """

    study: str
    storage: str
    best_params: dict[str, Any]
    best_value: float | None
    best_trial: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    n_new: int
    metric: str
    seconds: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return dict(vars(self))


OnTrial = Callable[[TrialResult], None]


def study_name(settings: Settings, dataset_version: str) -> str:
    """``tune.study_name`` plus an 8-hex fingerprint of what the trials' values depend on.

    The fingerprint covers the dataset version, the search space, the objective and the fixed
    ``gfm``/``train`` settings, so a changed dataset or space starts a new study while an
    interrupted one with the same inputs is resumed.
    """
    t = settings.tune
    basis = {
        "dataset": dataset_version,
        "space": t.space.model_dump(mode="json"),
        "metric": t.metric,
        "trial_steps": t.trial_steps,
        "eval_every": t.eval_every,
        "seed": t.seed,
        "gfm": settings.gfm.model_dump(mode="json"),
        "train": settings.train.model_dump(
            mode="json", exclude={"model_dir", "device", "prior_cache"}
        ),  # where things run or are cached does not change a trial
        "fractions": settings.evaluate.observed_fractions,
    }
    digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:8]
    return f"{t.study_name}-{digest}"


def _storage(settings: Settings) -> RDBStorage:
    """The study's storage, opened; a database that cannot be reached says so in one line.

    Raises:
        ServiceUnavailable: PostgreSQL is down, refuses the login or lacks the database (the
            message names the URL, password redacted, and what to check).
    """
    t = settings.tune
    if t.storage is None:
        raise ValueError("`settings.tune.storage` must be set (load_settings fills it in)")
    # a PostgreSQL host that drops packets fails the connect in seconds, not the OS's minutes
    engine = {"connect_args": {"connect_timeout": 10}} if is_postgres(t.storage) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(
                t.storage,
                engine_kwargs=engine,
                heartbeat_interval=t.heartbeat_s,
                grace_period=2 * t.heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=t.max_retry
                ),
            )
        except sqlalchemy.exc.OperationalError as err:
            if not is_postgres(t.storage):
                raise
            raise ServiceUnavailable(storage_unreachable(t.storage, err)) from None


def check_storage(settings: Settings) -> None:
    """Open a PostgreSQL study storage once and close it (sqlite needs no check).

    A server that is down or a database that is missing fails the step before it starts an
    MLflow run.

    Raises:
        ServiceUnavailable: as ``_storage``.
    """
    if settings.tune.storage and is_postgres(settings.tune.storage):
        _storage(settings).engine.dispose()


def _seed_sampler(study: optuna.Study, settings: Settings, seed: int) -> None:
    """Give ``study`` its sampler, seeded with ``seed`` when new, else from ``resume_seed``.

    The same seed again would draw the study's first random trials again.
    """
    n = len(study.get_trials(deepcopy=False))
    study.sampler = sampler(resume_seed(seed, n), settings.tune.space.flat())


def _pruner(settings: Settings) -> optuna.pruners.BasePruner:
    t = settings.tune
    return optuna.pruners.MedianPruner(
        n_startup_trials=t.pruner_startup_trials, n_warmup_steps=t.pruner_warmup_steps
    )


def open_study(
    settings: Settings, dataset_version: str, *, seed: int | None = None
) -> optuna.Study:
    """Create or reopen the study (seeded TPE, median pruner, heartbeat) in ``tune.storage``.

    The sampler repeats no configuration, and a reopened study's draws from ``resume_seed``
    (``gfm.ops.sampling``). A new study gets the configured settings enqueued as its first trial
    when they lie inside the search space; the study records ``tune.n_trials`` as its target
    (user attribute ``gfm.n_trials``) for workers that join it.

    Args:
        settings: all settings.
        dataset_version: the data's version; part of the study's fingerprint.
        seed: the sampler's seed (default ``tune.seed``; see ``worker_seed``).
    """
    t = settings.tune
    study = optuna.create_study(
        storage=_storage(settings),
        study_name=study_name(settings, dataset_version),
        pruner=_pruner(settings),
        direction="minimize",
        load_if_exists=True,
    )
    _seed_sampler(study, settings, t.seed if seed is None else seed)
    if study.user_attrs.get(N_TRIALS_ATTR) != t.n_trials:
        study.set_user_attr(N_TRIALS_ATTR, t.n_trials)
    if not study.trials:
        anchor = _anchor(settings)
        if anchor is not None:
            study.enqueue_trial(anchor, user_attrs={"gfm.anchor": True})
    return study


def join_study(
    settings: Settings, dataset_version: str, name: str, *, seed: int | None = None
) -> optuna.Study:
    """Open an existing study to work on it from another process or machine.

    Args:
        settings: this worker's settings; with its dataset they must give the study's
            fingerprint, so that every worker tunes the same problem.
        dataset_version: this worker's dataset version.
        name: the full study name ``gfm tune`` printed, or ``tune.study_name``.
        seed: the sampler's seed (default: one of this process's own, see ``worker_seed``).

    Raises:
        ValueError: the storage is not PostgreSQL, the name does not match these settings and
            data, or the storage holds no such study.
    """
    t = settings.tune
    check_shared(t.storage)
    expected = study_name(settings, dataset_version)
    if name not in (expected, t.study_name):
        raise ValueError(
            f"--study: {name!r} is not the study of these settings and data: they give "
            f"{expected!r} (same params.yaml and dataset version as the machine that started it?)"
        )
    if seed is None:
        seed = worker_seed(t.seed, os.getpid() % 1_000_000 + 1)
    try:
        study = optuna.load_study(
            study_name=expected, storage=_storage(settings), pruner=_pruner(settings)
        )
    except KeyError:
        raise ValueError(
            f"--study: no study {expected!r} in {redact(t.storage or '')}; start it with `gfm tune`"
        ) from None
    _seed_sampler(study, settings, seed)
    return study


def _anchor(settings: Settings) -> dict[str, Any] | None:
    """The configured values of the searched keys, if every one lies in its dimension."""
    anchor = {}
    for key, dim in settings.tune.space.flat().items():
        section, _, name = key.partition(".")
        value = getattr(getattr(settings, section), name)
        if not contains(dim, value):
            log.info("not trying the configured %s=%r first: outside the search space", key, value)
            return None
        anchor[key] = value
    return anchor


def _objective(
    settings: Settings, train: Sequence[RunRecord], val: Sequence[RunRecord]
) -> Callable[[Trial], float]:
    from gfm.model import GFM
    from gfm.training import fit

    t = settings.tune

    def objective(trial: Trial) -> float:
        params = suggest(trial, t.space.flat())
        trial_settings = apply_params(
            settings,
            # in process: the trials then share one cache of prior fits (gfm.training._prefixed)
            {
                **params,
                "train.steps": t.trial_steps,
                "train.eval_every": t.eval_every,
                "train.loader_workers": 0,
            },
        )
        model = GFM(trial_settings.gfm, trial_settings.train)
        history: list[dict[str, float]] = []
        start = time.perf_counter()

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            history.append({k: float(v) for k, v in metrics.items()})
            trial.set_user_attr("history", history)
            trial.set_user_attr("seconds", time.perf_counter() - start)
            value = metrics.get(t.metric, math.nan)
            if not math.isfinite(value):  # a diverged field: nothing to learn from continuing
                raise optuna.TrialPruned(f"{t.metric} is {value} at step {step}")
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{t.metric}={value:.4g} at step {step}")

        fit(model, train, val, trial_settings.train, on_eval=on_eval)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        values = [h[t.metric] for h in history if math.isfinite(h.get(t.metric, math.nan))]
        return min(values) if values else math.inf

    return objective


def _result(trial: FrozenTrial) -> TrialResult:
    value = trial.value
    if value is None and trial.intermediate_values:
        value = min(trial.intermediate_values.values())
    return TrialResult(
        number=trial.number,
        state=trial.state.name,
        params=dict(trial.params),
        value=value,
        history=list(trial.user_attrs.get("history", [])),
        seconds=trial.user_attrs.get("seconds"),
    )


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def work(
    settings: Settings,
    study: optuna.Study,
    train: Sequence[RunRecord],
    val: Sequence[RunRecord],
    *,
    on_trial: OnTrial | None = None,
) -> int:
    """Run trials of ``study`` in this process until it holds its target of finished trials.

    The target is the study's ``gfm.n_trials`` (set by ``open_study``). Each trial is claimed
    (see ``_Shared``): the worker counts finished and running trials and starts one only while
    their sum is below the target, so workers never overshoot it. When every remaining trial
    is running elsewhere the worker waits; a trial whose worker died is failed, at once when
    that worker ran on this machine (``gfm.ops.claims.process_gone``), else once its heartbeat
    is older than ``2 · tune.heartbeat_s``, and run again (``tune.max_retry``). A Ctrl-C
    (KeyboardInterrupt) fails this worker's trial, enqueues its retry and is raised again.

    Args:
        settings: all settings (``tune.timeout_s`` bounds this worker's time).
        study: from ``open_study`` or ``join_study``.
        train: runs to fit each trial on.
        val: runs the objective is scored on.
        on_trial: called with each trial this worker finishes (complete, pruned or failed);
            an exception there stops the worker, keeping every finished trial.

    Returns:
        The number of trials this worker finished (complete or pruned).
    """
    t = settings.tune
    target = int(study.user_attrs.get(N_TRIALS_ATTR, t.n_trials))
    objective = _objective(settings, train, val)
    claim = SharedStudy(t.storage, study, grace_s=2.0 * t.heartbeat_s)
    with warnings.catch_warnings():  # gfm's choice of API, nothing a user can act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry)
    deadline = None if t.timeout_s is None else time.monotonic() + t.timeout_s
    poll = min(float(t.heartbeat_s), 2.0)
    new = 0
    worker, token = f"{socket.gethostname()}:{os.getpid()}", process_token()
    current: list[int] = []  # the id of the trial this worker runs

    def claimed(trial: Trial) -> float:
        # before the claim is released: a retry carries its dead worker's attributes until here
        trial.set_user_attr(WORKER_ATTR, worker)
        trial.set_user_attr(PROCESS_ATTR, token)
        current[:] = [trial._trial_id]
        claim.release()  # the trial is RUNNING now: other workers count it
        return objective(trial)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal new
        new += trial.state in _FINISHED
        result = _result(trial)
        log.info(
            "trial %d %s: %s=%s %s",
            result.number,
            result.state,
            t.metric,
            "n/a" if result.value is None else f"{result.value:.4g}",
            result.params,
        )
        if on_trial is not None:
            on_trial(result)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while deadline is None or time.monotonic() < deadline:
            claim.acquire()
            try:
                fail_stale_trials(study)  # a dead worker's trial: FAIL, and a retry is enqueued
                claim.fail_orphans(retry)  # one that died before its first heartbeat, too
                claim.fail_dead(retry)  # one whose process is known gone, without waiting
                finished = _count(study, *_FINISHED)
                if finished >= target:
                    break
                if finished + _count(study, TrialState.RUNNING) >= target:
                    claim.release()  # the rest are running elsewhere: wait for them
                    time.sleep(poll)
                    continue
                study.optimize(claimed, n_trials=1, callbacks=[callback])
            except KeyboardInterrupt:
                retry_interrupted(study, current[0] if current else None, retry)
                raise
            finally:
                current.clear()
                claim.release()
    return new


def finished_by(study: optuna.Study, worker: str) -> int:
    """The finished trials of ``study`` that ``worker`` (host:pid) ran."""
    trials = study.get_trials(deepcopy=False, states=_FINISHED)
    return sum(t.user_attrs.get(WORKER_ATTR) == worker for t in trials)


def progress(study: optuna.Study) -> tuple[int, int]:
    """(finished trials, the study's target ``gfm.n_trials``)."""
    target = int(study.user_attrs.get(N_TRIALS_ATTR, 0))
    return _count(study, *_FINISHED), target


def study_result(
    settings: Settings, study: optuna.Study, *, n_new: int, start: float
) -> TuneResult:
    """The study's state as a ``TuneResult`` (``n_new``: trials finished by this call)."""
    t = settings.tune
    completed = _count(study, TrialState.COMPLETE)
    best = study.best_trial if completed else None
    return TuneResult(
        study=study.study_name,
        storage=t.storage,
        best_params=dict(best.params) if best else {},
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        n_complete=completed,
        n_pruned=_count(study, TrialState.PRUNED),
        n_failed=_count(study, TrialState.FAIL),
        n_new=n_new,
        metric=t.metric,
        seconds=time.perf_counter() - start,
        trials=[
            {"number": r.number, "state": r.state, "value": r.value, **r.params}
            for r in map(_result, study.get_trials(deepcopy=False))
        ],
    )


def tune(
    settings: Settings,
    train: Sequence[RunRecord],
    val: Sequence[RunRecord],
    *,
    dataset_version: str,
    on_trial: OnTrial | None = None,
) -> TuneResult:
    """Run (or resume) the study in this process until it holds ``tune.n_trials`` finished trials.

    Args:
        settings: all settings; ``tune`` drives the search, ``gfm``/``train`` are the fixed part.
        train: runs to fit each trial on (the train part of ``train.split``).
        val: runs the pruner and the objective are scored on (its val part).
        dataset_version: the data's version; part of the study's fingerprint.
        on_trial: called with each trial this call finishes (complete, pruned or failed), after
            the storage recorded it; an exception there stops the search, keeping every
            finished trial.

    Returns:
        The study's state (best params by dotted key, counts).

    Raises:
        ValueError: ``val`` is empty (the objective needs validation runs) or ``train`` is empty.
    """
    t = settings.tune
    start = time.perf_counter()
    if t.n_trials == 0:
        return TuneResult(
            study="",
            storage=t.storage,
            best_params={},
            best_value=None,
            best_trial=None,
            n_complete=0,
            n_pruned=0,
            n_failed=0,
            n_new=0,
            metric=t.metric,
            seconds=0.0,
        )
    check_tuning_parts(settings, train, val)
    with quiet():
        study = open_study(settings, dataset_version)
        done = _count(study, *_FINISHED)
        if done < t.n_trials:
            log.info(
                "study %s: %d of %d trials finished, running the rest",
                study.study_name,
                done,
                t.n_trials,
            )
        new = work(settings, study, train, val, on_trial=on_trial)
        return study_result(settings, study, n_new=new, start=start)


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's own log lines off (gfm logs one line per trial instead), restored on exit."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize_log, interrupted = logging.getLogger("optuna.study._optimize"), NoInterruptedTrial()
    optimize_log.addFilter(interrupted)
    try:
        yield
    finally:
        optimize_log.removeFilter(interrupted)
        optuna.logging.set_verbosity(verbosity)
