"""The tune step: an Optuna study over GFM's settings (``gfm.ops.study``), each trial logged to MLflow."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import polars as pl
import torch

from gfm.config import Settings
from gfm.ops.claims import process_gone, process_token
from gfm.ops.layout import (
    _history,
    dataset_version,
    layout,
    open_dataset,
    run_name,
    write_step,
)
from gfm.ops.stack import redact
from gfm.ops.train import prefit

log = logging.getLogger("gfm.ops")


def _process_tags() -> dict[str, str]:
    """Which process a run belongs to: ``gfm.host``, ``gfm.pid``, ``gfm.process``.

    The last is its ``process_token``: the next start tells a killed process's run by it.
    """
    return {
        "gfm.host": socket.gethostname(),
        "gfm.pid": str(os.getpid()),
        "gfm.process": process_token(),
    }


def _end_dead_runs(study: str) -> None:
    """Mark KILLED the study's MLflow runs left RUNNING by a process of this machine that is gone.

    A ``gfm tune`` killed with SIGKILL cannot end them; another machine's runs are left alone.
    """
    from gfm.tracking.runs import end_dead_runs

    for run in end_dead_runs(
        {"gfm.study": study}, lambda tags: process_gone(tags.get("gfm.process"))
    ):
        tags = run.data.tags
        log.warning(
            "MLflow run %s (%s, pid %s) was left RUNNING by a process that is gone: marked KILLED",
            run.info.run_id,
            tags.get("gfm.step", "?"),
            tags.get("gfm.pid", "?"),
        )


# ----------------------------------------------------------------------------- tune


def _trial_logger(
    settings: Settings, version: str, repo: Path | None, parent_run_id: str | None, study: str
) -> Callable[[Any], None]:
    """``on_trial`` for ``gfm.ops.study``: one ``trial-<n>`` run per trial, a child of the tune run."""
    from gfm import tracking

    def on_trial(trial: Any) -> None:
        tags = {
            "gfm.step": "trial",
            "gfm.study": study,
            "gfm.trial": trial.number,
            "gfm.trial_state": trial.state,
            **_process_tags(),
        }
        with tracking.start_run(
            f"trial-{trial.number}",
            nested=True,
            parent_run_id=parent_run_id,
            dataset_version=version,
            repo=repo,
            tags=tags,
        ):
            tracking.log_params_flat(trial.params, "")
            if trial.history:
                tracking.log_history(_history(trial.history))
            final = {"trial/seconds": trial.seconds or 0.0}
            if trial.value is not None:
                final[settings.tune.metric] = trial.value
            tracking.log_metrics(final)

    return on_trial


def tune_step(
    settings: Settings,
    *,
    repo: Path | None = None,
    workers: int | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Search GFM hyperparameters (``gfm.ops.study``), log the study and each trial, write tune.json.

    MLflow: a ``tune`` run (the tune settings, the dataset as input, best value and params,
    a table of all trials) with one nested ``trial-<n>`` run per trial this call finished
    (its params by dotted key, per-evaluation losses, its value and state). An interrupted
    study resumes: finished trials are kept, only the missing ones run.

    With several workers (``tune.workers``, PostgreSQL storage) the study is opened here and
    ``workers`` processes run ``tune_worker_step`` on it, logging their trials under this
    call's ``tune`` run; more workers on other machines may join with ``gfm tune-worker``.

    Args:
        settings: all settings.
        repo: folder whose git commit the runs record (default: the working directory).
        workers: worker processes (default ``tune.workers``).
        overrides: who set each overridden key (``override_sources``); an override of
            ``data.seeds``/``data.splits.*`` that contradicts the dataset's split is refused.

    Returns:
        The content of tune.json: ``best_params``, ``best_value``, ``study``, counts,
        ``run_id``, ``dataset_version`` and ``workers`` (trials finished per worker).

    Raises:
        ValueError: several workers on storage other than PostgreSQL.
    """
    from gfm import tracking
    from gfm.ops.study import (
        check_storage,
        open_study,
        quiet,
        study_name,
        study_result,
        tune,
    )
    from gfm.services import check_shared

    workers = settings.tune.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")
    ds = open_dataset(settings, overrides=overrides)
    version = dataset_version(ds.root)
    out = layout(settings)
    if settings.tune.n_trials == 0:  # no tuning: train with the settings as they are
        doc = {"best_params": {}, "study": "", "n_trials": 0, "dataset_version": version}
        write_step(out, "tune", doc)
        log.info("tune.n_trials is 0: no tuning -> %s", out.tune_json)
        return doc
    train, val, _ = ds.parts(settings.train.split)
    if workers > 1:
        check_shared(settings.tune.storage)
    check_storage(settings)  # a dead PostgreSQL fails here, before a tune run is logged
    tracking.configure(settings.tracking)
    name = study_name(settings, version)
    _end_dead_runs(name)
    with tracking.start_run(
        run_name("tune", name, version),
        dataset_version=version,
        repo=repo,
        tags={"gfm.step": "tune", "gfm.study": name, **_process_tags()},
    ) as run:
        # not the storage URL: a team database's may hold a password
        tracking.log_params_flat(settings.tune.model_dump(mode="json", exclude={"storage"}), "tune")
        tracking.log_dataset(version, ds.root, ds.runs, context="tuning")
        prefit(settings, train, val)
        if workers == 1:
            on_trial = _trial_logger(settings, version, repo, run.info.run_id, name)
            result = tune(settings, train, val, dataset_version=version, on_trial=on_trial)
            per_worker = [result.n_new]
        else:
            start = time.perf_counter()
            with quiet():
                study = open_study(settings, version)
            log.info(
                "study %s: %d worker processes until %d trials are finished",
                name,
                workers,
                settings.tune.n_trials,
            )
            per_worker = _run_workers(settings, study, run.info.run_id, workers, repo)
            with quiet():
                result = study_result(settings, study, n_new=sum(per_worker), start=start)
        tracking.set_tags({"gfm.best_trial": result.best_trial})
        counts = {
            "tune/n_complete": result.n_complete,
            "tune/n_pruned": result.n_pruned,
            "tune/n_failed": result.n_failed,
            "tune/seconds": result.seconds,
        }
        if result.best_value is not None and math.isfinite(result.best_value):
            counts["tune/best_value"] = result.best_value
        tracking.log_metrics(counts)
        tracking.set_tags({f"best.{k}": v for k, v in result.best_params.items()})
        if result.trials:
            tracking.log_table_and_plots(
                pl.DataFrame(result.trials, infer_schema_length=None), "trials"
            )
        doc = {**result.to_dict(), "run_id": run.info.run_id, "dataset_version": version}
        doc["storage"] = redact(result.storage)  # no passwords in files
        doc["workers"] = per_worker
        write_step(out, "tune", doc)
    log.info("tuned: %s -> %s", result.best_params, out.tune_json)
    return doc


def _run_workers(
    settings: Settings, study: Any, parent_run_id: str, workers: int, repo: Path | None
) -> list[int]:
    """``workers`` fresh processes run ``tune_worker_step`` on ``study``; the trials each finished.

    A worker that dies (killed, out of memory) costs only its trial: the others fail it, run it
    again (``gfm.ops.claims``) and go on until the study is finished. An error raised in a worker
    is raised here once every worker has ended. Ctrl-C reaches this process only (the workers
    ignore SIGINT from their start, so none prints a traceback): it stops the workers (SIGTERM)
    and is raised again; their trials run again on the next start.

    Raises:
        RuntimeError: every worker died before the study was finished.
    """
    import multiprocessing

    # spawn: a fresh interpreter per worker, safe with torch's threads (fork is not); the cores
    # are shared out so that the workers do not oversubscribe them
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs, pipes = [], []
    with _sigint_ignored():  # SIG_IGN survives exec: the workers ignore Ctrl-C from the start
        for i in range(workers):
            receive, send = ctx.Pipe(duplex=False)
            kwargs = {"study": study.study_name, "parent_run_id": parent_run_id, "worker": i}
            proc = ctx.Process(
                target=_worker_main,
                args=(send, threads, settings, {**kwargs, "repo": repo}),
                name=f"gfm-tune-worker-{i}",
            )
            proc.start()
            send.close()
            procs.append(proc)
            pipes.append(receive)
    try:
        results = _wait_workers(procs, pipes)
    except BaseException:
        _stop(procs)
        raise
    errors = [r[1] for r in results if r is not None and r[0] == "error"]
    if errors:
        raise errors[0]
    from gfm.ops.study import finished_by, progress

    finished, target = progress(study)
    if all(r is None for r in results) and finished < target:
        raise RuntimeError(
            f"every tune worker died with {finished} of {target} trials finished; the study "
            f"is kept at {redact(settings.tune.storage or '')}: rerun `gfm tune` to resume"
        )
    host = socket.gethostname()
    return [
        int(r[1]["n_new"]) if r is not None else finished_by(study, f"{host}:{p.pid}")
        for r, p in zip(results, procs, strict=True)
    ]


def _worker_main(send: Any, threads: int, settings: Settings, kwargs: dict[str, Any]) -> None:
    """A worker process: ``tune_worker_step``, its result or error sent back through ``send``."""
    torch.set_num_threads(threads)
    try:
        doc = tune_worker_step(settings, **kwargs)
    except Exception as err:  # to the parent, which raises it; exit 1 without a traceback
        try:
            send.send(("error", err))
        except Exception:  # not picklable
            send.send(("error", RuntimeError(f"{type(err).__name__}: {err}")))
        raise SystemExit(1) from None
    send.send(("ok", doc))


def _wait_workers(procs: list[Any], pipes: list[Any]) -> list[tuple[str, Any] | None]:
    """Each worker's ("ok", doc) or ("error", exception), or None for one that died."""
    from multiprocessing.connection import wait

    results: list[tuple[str, Any] | None] = [None] * len(procs)
    pending = set(range(len(procs)))
    while pending:
        ready = wait([x for i in pending for x in (pipes[i], procs[i].sentinel)])
        for i in list(pending):
            if pipes[i] in ready:
                with suppress(EOFError):  # EOF: it ended without a word, it died
                    results[i] = pipes[i].recv()
            if procs[i].sentinel in ready:
                procs[i].join()
                if results[i] is None and pipes[i].poll():
                    with suppress(EOFError):
                        results[i] = pipes[i].recv()
                pending.discard(i)
                if results[i] is None:
                    code = procs[i].exitcode or 0
                    how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
                    log.warning(
                        "tune worker %d (pid %d) died (%s): its trial is failed and run again, "
                        "the other workers go on",
                        i,
                        procs[i].pid,
                        how,
                    )
    return results


def _stop(procs: list[Any]) -> None:
    """End the workers still running: SIGTERM, then SIGKILL after 10 s."""
    with _sigint_ignored():  # a second Ctrl-C does not cut the clean-up short
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def tune_worker_step(
    settings: Settings,
    *,
    study: str | None = None,
    parent_run_id: str | None = None,
    worker: int | None = None,
    repo: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Work on an existing study until it is finished: ``gfm tune-worker``, on any machine.

    The worker needs the same settings and dataset as the one that started the study (the
    study's name carries their fingerprint) and PostgreSQL storage. Its trials are logged as
    children of the study's running ``tune`` run (found by its ``gfm.study`` tag), or of a
    ``tune-worker`` run of its own when that has ended.

    Args:
        settings: all settings.
        study: the study's name as ``gfm tune`` printed it, or ``tune.study_name`` (default).
        parent_run_id: the run to log trials under (default: found by tag, see above).
        worker: the worker's index, which seeds its sampler (default: from the process id).
        repo: folder whose git commit the runs record.
        overrides: who set each overridden key (``override_sources``); an override of
            ``data.seeds``/``data.splits.*`` that contradicts the dataset's split is refused.

    Returns:
        ``study``, ``n_new`` (trials this worker finished), ``n_finished`` and ``n_trials``
        (the study's count and target).

    Raises:
        ValueError: no such study, other settings or data than the study's, or storage that
            is not PostgreSQL.
    """
    from contextlib import nullcontext

    from gfm import tracking
    from gfm.ops.study import join_study, progress, quiet, work, worker_seed

    if not logging.getLogger().handlers and not log.handlers:  # a spawned worker process
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("gfm").setLevel(logging.INFO)
    ds = open_dataset(settings, overrides=overrides)
    version = dataset_version(ds.root)
    train, val, _ = ds.parts(settings.train.split)
    seed = None if worker is None else worker_seed(settings.tune.seed, worker)
    with quiet():
        st = join_study(settings, version, study or settings.tune.study_name, seed=seed)
    tracking.configure(settings.tracking)
    if parent_run_id is None:  # not a worker `gfm tune` started: a killed one's run is no parent
        _end_dead_runs(st.study_name)
    parent = parent_run_id or tracking.find_active_run(
        {"gfm.step": "tune", "gfm.study": st.study_name}
    )
    context = (
        nullcontext(None)
        if parent is not None
        else tracking.start_run(
            "tune-worker",
            dataset_version=version,
            repo=repo,
            tags={"gfm.step": "tune-worker", "gfm.study": st.study_name, **_process_tags()},
        )
    )
    with context as own, quiet():
        parent = parent or own.info.run_id
        on_trial = _trial_logger(settings, version, repo, parent, st.study_name)
        n_new = work(settings, st, train, val, on_trial=on_trial)
        finished, target = progress(st)
    log.info(
        "worker done: %d trial(s) of study %s (%d of %d finished)",
        n_new,
        st.study_name,
        finished,
        target,
    )
    return {"study": st.study_name, "n_new": n_new, "n_finished": finished, "n_trials": target}
