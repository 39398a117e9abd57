"""The workflow's steps as plain functions: tune, train, evaluate, promote, each logged to MLflow.

One implementation per step. The ``gfm`` commands call these (so the DVC stages of ``dvc.yaml``,
which are ``gfm`` commands, do too), and the Prefect flows in ``flows/`` call either these or
``dvc repro <stage>``; nothing else holds pipeline logic. Steps hand each other files (``Layout``)
and MLflow ids, never live objects:

    tune      -> reports/tune.json       best params (dotted keys), study, counts, tune run id
    train     -> models/gfm/             the forecaster folder (gfm.tracking.save_forecaster)
                 reports/train.json      run id, logged model URI, dataset version, val metrics
                 reports/train_history.csv
    evaluate  -> reports/metrics.json    test metrics of the model and each baseline
                 reports/results.{csv,md}, reports/horizon.{csv,png}, reports/trajectories.png
    promote   -> reports/promotion.json  version, alias, decision

An edge module (like ``gfm/tracking``): it imports gfm's core, ``gfm.tracking``, ``gfm.tune`` and
``gfm.versioning``, never prefect or typer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from gfm import versioning
from gfm.config import Settings, apply_params
from gfm.data.io import atomic_write_bytes
from gfm.data.trajectories import Trajectories
from gfm.interface import Forecaster, Prefix, observed_index

log = logging.getLogger("gfm.pipeline")

MODEL_METRICS = ("mse_final", "rel_mse_persistence", "rel_mse_persistence_median", "acc_gap")
STEPS = ("generate", "tune", "train", "evaluate")  # the DVC stages, in order


@dataclass(frozen=True)
class Layout:
    """Where the steps write, from the settings (``evaluate.output_dir``, ``train.model_dir``)."""

    reports: Path
    model_dir: Path

    @property
    def tune_json(self) -> Path:
        """Best params and the study's counts."""
        return self.reports / "tune.json"

    @property
    def train_json(self) -> Path:
        """The training run: ids, model URI, dataset version, val metrics."""
        return self.reports / "train.json"

    @property
    def history_csv(self) -> Path:
        """Per-evaluation losses of the training run (DVC plot)."""
        return self.reports / "train_history.csv"

    @property
    def metrics_json(self) -> Path:
        """Test metrics of the model and each baseline."""
        return self.reports / "metrics.json"

    @property
    def results_csv(self) -> Path:
        """One row per method x run x observed fraction."""
        return self.reports / "results.csv"

    @property
    def results_md(self) -> Path:
        """Per method x task x fraction means, as markdown."""
        return self.reports / "results.md"

    @property
    def horizon_csv(self) -> Path:
        """Error vs horizon (DVC plot)."""
        return self.reports / "horizon.csv"

    @property
    def horizon_png(self) -> Path:
        """Error vs horizon, one panel per observed fraction."""
        return self.reports / "horizon.png"

    @property
    def trajectories_png(self) -> Path:
        """A few parameters of one test run with every method's forecast."""
        return self.reports / "trajectories.png"

    @property
    def promotion_json(self) -> Path:
        """The registry decision."""
        return self.reports / "promotion.json"


def layout(settings: Settings) -> Layout:
    """The output paths of the steps for these settings."""
    return Layout(reports=settings.evaluate.output_dir, model_dir=settings.train.model_dir)


def _write_json(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a step's JSON output.

    Raises:
        FileNotFoundError: the file is missing; the message names the step that writes it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found; run `gfm {what}` first")
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- data


def dataset_version(root: Path) -> str:
    """The dataset's version: DVC's md5 of the folder (``data.dvc``) when it describes it.

    Otherwise (no DVC, or the folder changed since the last ``dvc add``) the dataset's own content
    hash from its manifest, as ``gfm-<32 hex>``; both fit MLflow's 36-character digest.
    """
    md5 = versioning.current_version(root)
    if md5 is not None:
        return md5
    if root.with_suffix(".dvc").is_file():
        log.warning(
            "%s.dvc does not describe %s any more (run `dvc add %s`); using the dataset hash",
            root.name,
            root,
            root.name,
        )
    return "gfm-" + Trajectories(root).manifest.hash[:32]


def open_dataset(settings: Settings) -> Trajectories:
    """The dataset of ``data.root``.

    Raises:
        FileNotFoundError: the folder is missing (the message says how to make it).
    """
    root = settings.data.root
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found; run `gfm generate` first")
    return Trajectories(root)


def parts(settings: Settings, ds: Trajectories) -> tuple[Trajectories, Trajectories, Trajectories]:
    """(train, val, test) of ``train.split``.

    Raises:
        ValueError: the split has no train or no test runs.
    """
    split = settings.train.split
    train, val, test = (ds.select(split, p) for p in ("train", "val", "test"))
    if not len(train) or not len(test):
        raise ValueError(
            f"{ds.root}: split `{split}` (train.split) must have train and test runs, got "
            f"{len(train)} train, {len(test)} test (see data.splits in params.yaml)"
        )
    return train, val, test


def _small_prefix(runs: Sequence[Any], table: pl.DataFrame) -> Prefix:
    """A prefix of the run with the fewest parameters: the logged model's input example."""
    i = int(np.argmin(table["n_params"].to_numpy()))
    record = runs[i]
    M = record.weights.shape[0] - 1
    return Prefix.from_record(record, observed_index(M, 0.25))


def _history(history: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The training loop's evaluations with every metric named ``split/name`` (``train/lr``)."""
    return [
        {(k if k == "step" or "/" in k else f"train/{k}"): float(v) for k, v in h.items()}
        for h in history
    ]


def redact(url: str) -> str:
    """A URL without its password: ``postgresql://u:secret@host/db`` -> ``postgresql://u:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


# ----------------------------------------------------------------------------- tune


def _trial_logger(
    settings: Settings, version: str, repo: Path | None, parent_run_id: str | None
) -> Callable[[Any], None]:
    """``on_trial`` for ``gfm.tune``: one ``trial-<n>`` run per trial, a child of the tune run."""
    from gfm import tracking

    def on_trial(trial: Any) -> None:
        tags = {
            "gfm.step": "trial",
            "gfm.trial": trial.number,
            "gfm.trial_state": trial.state,
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
    settings: Settings, *, repo: Path | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Search GFM hyperparameters (``gfm.tune``), log the study and each trial, write tune.json.

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

    Returns:
        The content of tune.json: ``best_params``, ``best_value``, ``study``, counts,
        ``run_id``, ``dataset_version`` and ``workers`` (trials finished per worker).

    Raises:
        ValueError: several workers on storage other than PostgreSQL.
    """
    from gfm import tracking
    from gfm.tune import check_shared, open_study, quiet, study_name, summarize, tune

    workers = settings.tune.workers if workers is None else workers
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")
    ds = open_dataset(settings)
    version = dataset_version(ds.root)
    out = layout(settings).tune_json
    if settings.tune.n_trials == 0:  # no tuning: train with the settings as they are
        doc = {"best_params": {}, "study": "", "n_trials": 0, "dataset_version": version}
        _write_json(out, doc)
        log.info("tune.n_trials is 0: no tuning -> %s", out)
        return doc
    train, val, _ = parts(settings, ds)
    if workers > 1:
        check_shared(settings.tune.storage)
    tracking.configure(settings.tracking)
    name = study_name(settings, version)
    with tracking.start_run(
        "tune", dataset_version=version, repo=repo, tags={"gfm.step": "tune", "gfm.study": name}
    ) as run:
        # not the storage URL: a team database's may hold a password
        tracking.log_params_flat(settings.tune.model_dump(mode="json", exclude={"storage"}), "tune")
        tracking.log_dataset(version, ds.root, ds.runs, context="tuning")
        if workers == 1:
            on_trial = _trial_logger(settings, version, repo, run.info.run_id)
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
            per_worker = _run_workers(settings, name, run.info.run_id, workers, repo)
            with quiet():
                result = summarize(settings, study, n_new=sum(per_worker), start=start)
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
        doc["storage"] = redact(result.storage)  # tune.json is committed: no passwords
        doc["workers"] = per_worker
        _write_json(out, doc)
    log.info("tuned: %s -> %s", result.best_params, out)
    return doc


def _run_workers(
    settings: Settings, study: str, parent_run_id: str, workers: int, repo: Path | None
) -> list[int]:
    """``workers`` fresh processes running ``tune_worker_step``; the trials each finished."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker, safe with torch's threads (fork is not); the cores
    # are shared out so that the workers do not oversubscribe them
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(threads,)
    ) as pool:
        futures = [
            pool.submit(
                tune_worker_step,
                settings,
                study=study,
                parent_run_id=parent_run_id,
                worker=i,
                repo=repo,
            )
            for i in range(workers)
        ]
        return [int(f.result()["n_new"]) for f in futures]


def tune_worker_step(
    settings: Settings,
    *,
    study: str | None = None,
    parent_run_id: str | None = None,
    worker: int | None = None,
    repo: Path | None = None,
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

    Returns:
        ``study``, ``n_new`` (trials this worker finished), ``n_finished`` and ``n_trials``
        (the study's count and target).

    Raises:
        ValueError: no such study, other settings or data than the study's, or storage that
            is not PostgreSQL.
    """
    from contextlib import nullcontext

    from gfm import tracking
    from gfm.tune import join_study, progress, quiet, work, worker_seed

    if not logging.getLogger().handlers and not log.handlers:  # a spawned worker process
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("gfm").setLevel(logging.INFO)
    ds = open_dataset(settings)
    version = dataset_version(ds.root)
    train, val, _ = parts(settings, ds)
    seed = None if worker is None else worker_seed(settings.tune.seed, worker)
    with quiet():
        st = join_study(settings, version, study or settings.tune.study_name, seed=seed)
    tracking.configure(settings.tracking)
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
            tags={"gfm.step": "tune-worker", "gfm.study": st.study_name},
        )
    )
    with context as own, quiet():
        parent = parent or own.info.run_id
        on_trial = _trial_logger(settings, version, repo, parent)
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


# ----------------------------------------------------------------------------- train


def _history_figure(history: list[dict[str, float]]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    steps = [h["step"] for h in history]
    for key in ("train/loss", "val/rel_mse_persistence"):
        values = [h.get(key, math.nan) for h in history]
        if any(math.isfinite(v) for v in values):
            ax.plot(steps, values, marker=".", label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    return fig


def _replace_dir(build: Callable[[Path], Any], target: Path) -> None:
    """Build a folder beside ``target`` with ``build(tmp)``, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    try:
        build(tmp / "new")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp / "new", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def train_step(
    settings: Settings, *, tuned: Path | None = None, repo: Path | None = None
) -> dict[str, Any]:
    """Train GFM on the train part of ``train.split`` with the best trial's params; log it.

    MLflow: a ``train`` run with params (``gfm.*``, ``train.*``, ``data.seed``/``seeds``), the
    dataset as input, per-evaluation losses, final val metrics, the loss curve and the model as
    a pyfunc (``gfm.tracking.log_forecaster``). Files: the forecaster folder
    (``train.model_dir``), train.json, train_history.csv.

    Args:
        settings: all settings; ``train.device`` auto trains on CUDA when present.
        tuned: tune.json of ``tune_step``; its ``best_params`` override ``gfm``/``train``
            (None, a missing file or empty best params: the settings as they are).
        repo: folder whose git commit the run records.

    Returns:
        The content of train.json: ``run_id``, ``model_uri``, ``dataset_version``, ``params``,
        ``metrics``, ``model_dir``.
    """
    from gfm import tracking
    from gfm.model import GFM
    from gfm.training import fit

    ds = open_dataset(settings)
    version = dataset_version(ds.root)
    train, val, _ = parts(settings, ds)
    best: dict[str, Any] = {}
    tune_info: dict[str, Any] = {}
    if tuned is not None and Path(tuned).is_file():
        tune_info = read_json(Path(tuned), "tune")
        best = dict(tune_info.get("best_params") or {})
        if tune_info.get("dataset_version") not in (None, version):
            log.warning(
                "%s was tuned on dataset %s, training on %s: rerun `gfm tune`",
                tuned,
                tune_info.get("dataset_version"),
                version,
            )
    cfg = apply_params(settings, best)
    out = layout(settings)
    tracking.configure(settings.tracking)
    tags = {"gfm.step": "train", "gfm.split": cfg.train.split}
    if tune_info.get("study"):
        tags |= {"gfm.study": tune_info["study"], "gfm.best_trial": tune_info.get("best_trial")}
        tags |= {"gfm.tune_run_id": tune_info.get("run_id")}
    with tracking.start_run("train", dataset_version=version, repo=repo, tags=tags) as run:
        tracking.log_params_flat(cfg.gfm, "gfm")
        tracking.log_params_flat(cfg.train.model_dump(mode="json", exclude={"model_dir"}), "train")
        tracking.log_params_flat({"seed": cfg.data.seed, "seeds": cfg.data.seeds}, "data")
        tracking.log_dataset(version, ds.root, ds.runs, context="training")
        model = GFM(cfg.gfm, cfg.train)
        log.info(
            "training GFM on %d runs (val %d) for %d steps", len(train), len(val), cfg.train.steps
        )
        history = _history(fit(model, train, val if len(val) else None, cfg.train))
        model.net.cpu()
        tracking.log_history(history)
        final = {k: v for k, v in history[-1].items() if k.startswith(("val/", "train/"))}
        best_val = [h["val/rel_mse_persistence"] for h in history if "val/rel_mse_persistence" in h]
        if best_val:  # the network kept is the one with the best validation score
            final["val/best_rel_mse_persistence"] = min(best_val)
            tracking.log_metrics({"val/best_rel_mse_persistence": min(best_val)})
        frame = pl.DataFrame(history)
        fig = _history_figure(history)
        tracking.log_table_and_plots(frame, "train_history", plots={"loss": fig})
        _replace_dir(lambda p: tracking.save_forecaster(model, p), out.model_dir)
        info = tracking.log_forecaster(model, input_example=_small_prefix(train, train.runs))
        doc = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": info.model_uri,
            "dataset_version": version,
            "params": best,
            "metrics": final,
            "model_dir": str(out.model_dir),
        }
    out.reports.mkdir(parents=True, exist_ok=True)
    frame.write_csv(out.history_csv)
    _write_json(out.train_json, doc)
    log.info("trained: run %s, model %s -> %s", doc["run_id"], out.model_dir, out.train_json)
    return doc


# ----------------------------------------------------------------------------- evaluate


def model_metrics(table: pl.DataFrame, method: str, prefix: str = "test") -> dict[str, float]:
    """Summary metrics of one method from an evaluation table (``gfm.evaluation.evaluate``).

        mse_final = mean over rows,  rel_mse_persistence = mean over rows (and its median),
        acc_gap = mean over rows of downstream_acc − true_final_acc (classification runs)

    Rows are every test run × observed fraction; the promotion compares these same numbers.

    Returns:
        ``{f"{prefix}/mse_final": ..., ...}``; a metric without finite values is left out.
    """
    rows = table.filter(pl.col("method") == method)
    if not len(rows):
        raise ValueError(f"`table` has no rows of method {method!r}")
    rel = rows["rel_mse_persistence"].to_numpy().astype(np.float64)
    gap = (rows["downstream_acc"] - rows["true_final_acc"]).to_numpy().astype(np.float64)
    values = {
        "mse_final": float(np.nanmean(rows["mse_final"].to_numpy().astype(np.float64))),
        "rel_mse_persistence": float(np.nanmean(rel)),
        "rel_mse_persistence_median": float(np.nanmedian(rel)),
        "acc_gap": float(np.nanmean(gap)) if np.isfinite(gap).any() else math.nan,
    }
    return {f"{prefix}/{k}": v for k, v in values.items() if math.isfinite(v)}


def score(forecaster: Forecaster, settings: Settings, ds: Trajectories) -> dict[str, float]:
    """Test metrics of one forecaster on the test part of ``train.split`` (``model_metrics``).

    The same computation as the model's own row in ``evaluate_step``: promotion re-scores the
    champion with it on the current data.
    """
    from gfm.evaluation import evaluate
    from gfm.experiment import score_for

    _, _, test = parts(settings, ds)
    downstream = settings.evaluate.downstream and "acc" in settings.registry.metric
    table = evaluate(
        {"gfm": forecaster},
        test,
        settings.evaluate.observed_fractions,
        split=settings.train.split,
        score=score_for(settings) if downstream else None,
        horizons=False,
        progress=False,
    )
    return model_metrics(table, "gfm")


def _trajectories_plot(test: Trajectories, models: Mapping[str, Forecaster], path: Path) -> Path:
    from gfm.plots import plot_trajectories

    i = int(np.argmin(test.runs["n_params"].to_numpy()))
    record = test[i]
    M = record.weights.shape[0] - 1
    k = observed_index(M, 0.25)
    prefix = Prefix.from_record(record, k)
    t = torch.arange(k + 1, M + 1, dtype=torch.float64) / M
    forecasts = {name: f.forecast(prefix, t) for name, f in models.items()}
    return plot_trajectories(record, forecasts, t, k, path)


def evaluate_step(
    settings: Settings,
    *,
    model_dir: Path | None = None,
    train_info: Path | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the trained model and ``evaluate.workflow_baselines`` on the test part.

    Calls ``gfm.experiment.compare`` (as the benchmark does) with the trained model as the
    fitted ``gfm``; the baselines are fitted on the same train part. MLflow: the test metrics,
    results table and plots are added to the training run named in train.json (so one run
    holds the model, its params and its test scores), or to a new ``evaluate`` run without it.

    Args:
        settings: all settings.
        model_dir: the forecaster folder (default ``train.model_dir``).
        train_info: train.json (default: the layout's, if present).
        repo: folder whose git commit a new run records.

    Returns:
        The content of metrics.json: ``metrics`` (the model's ``test/*``), ``baselines``
        (``test/<method>/*``), ``run_id``, ``dataset_version``, ``split``, ``n_test_runs``.
    """
    from gfm import tracking
    from gfm.evaluation import horizon_table, summarise, to_markdown
    from gfm.experiment import compare
    from gfm.plots import plot_horizon

    out = layout(settings)
    model_dir = Path(model_dir or out.model_dir)
    train_info = Path(train_info) if train_info is not None else out.train_json
    info = read_json(train_info, "train") if train_info.is_file() else {}
    ds = open_dataset(settings)
    version = dataset_version(ds.root)
    _, _, test = parts(settings, ds)
    model = tracking.load_forecaster(model_dir)
    split = settings.train.split
    names = ["gfm", *[b for b in settings.evaluate.workflow_baselines if b != "gfm"]]
    table, costs = compare(
        settings,
        ds,
        method_names=names,
        splits=[split],
        fitted={"gfm": model},
        downstream=settings.evaluate.downstream,
    )
    metrics = model_metrics(table, "gfm")
    baselines: dict[str, float] = {}
    for name in names[1:]:
        baselines |= model_metrics(table, name, prefix=f"test/{name}")
    summary = summarise(table)
    horizon = horizon_table(table)
    out.reports.mkdir(parents=True, exist_ok=True)
    flat = table.select([c for c in table.columns if not isinstance(table.schema[c], pl.List)])
    flat.write_csv(out.results_csv)
    md = _results_markdown(table, summary, to_markdown)
    out.results_md.write_text(md)
    horizon.write_csv(out.horizon_csv)
    plot_horizon(horizon, out.horizon_png, metric="rel_mse_persistence")
    _trajectories_plot(test, {"gfm": model}, out.trajectories_png)
    doc = {
        "metrics": metrics,
        "baselines": baselines,
        "dataset_version": version,
        "split": split,
        "n_test_runs": len(test),
        "model_dir": str(model_dir),
        "run_id": info.get("run_id"),
    }
    tracking.configure(settings.tracking)
    tags = {
        "gfm.evaluate.split": split,
        "gfm.evaluate.baselines": ",".join(names[1:]),
        "gfm.evaluate.fractions": ",".join(str(f) for f in settings.evaluate.observed_fractions),
        "gfm.evaluate.dataset_version": version,
    }
    if info.get("run_id"):
        context = tracking.resume_run(info["run_id"])
    else:
        context = tracking.start_run(
            "evaluate", dataset_version=version, repo=repo, tags={"gfm.step": "evaluate"}
        )
    with context as run:
        tracking.set_tags(tags)
        tracking.log_dataset(version, ds.root, test.runs, context="evaluation")
        tracking.log_metrics({**metrics, **baselines})
        tracking.log_table_and_plots(
            summary,
            "results",
            plots={"horizon": out.horizon_png, "trajectories": out.trajectories_png},
            artifact_path="evaluation",
        )
        tracking.log_table_and_plots(costs, "costs", artifact_path="evaluation")
        doc["run_id"] = run.info.run_id
    _write_json(out.metrics_json, doc)
    log.info("evaluated: %s -> %s", metrics, out.metrics_json)
    return doc


def _results_markdown(table: pl.DataFrame, summary: pl.DataFrame, to_markdown: Any) -> str:
    """A short overall table per method, then the per task x optimizer x fraction summary."""
    overall = (
        table.group_by("method")
        .agg(
            pl.len().alias("rows"),
            pl.col("mse_final").mean().alias("mse_final"),
            pl.col("rel_mse_persistence").mean().alias("rel_mse_persistence"),
            pl.col("rel_mse_persistence").median().alias("rel_mse_persistence_median"),
        )
        .sort("rel_mse_persistence_median")
    )
    return (
        "## Overall (test runs x observed fractions)\n\n"
        + to_markdown(overall)
        + "\n## Per task, optimizer and observed fraction\n\n"
        + to_markdown(summary.select([c for c in summary.columns if not c.startswith("forecast")]))
    )


# ----------------------------------------------------------------------------- promote


def register_step(settings: Settings, *, train_info: Path | None = None) -> str:
    """Register the model of train.json as a version of ``registry.model_name`` (idempotent).

    The version is tagged with its run's dataset version, git commit and params; a version
    already registered from the same run is returned instead of adding a duplicate.

    Returns:
        The version.
    """
    from gfm import tracking

    info = read_json(Path(train_info or layout(settings).train_json), "train")
    tracking.configure(settings.tracking)
    version = tracking.find_version(info["run_id"], settings.registry)
    if version is not None:
        log.info("run %s is already version %s", info["run_id"], version)
        return version
    return tracking.register(info["model_uri"], settings.registry)


def promote_step(
    settings: Settings,
    *,
    train_info: Path | None = None,
    metrics: Path | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Judge the trained model against the champion on the same test split; move one alias.

    The version (``register_step`` when not given) is tagged with its test metrics; the champion
    is re-scored on the current test split with ``score`` (same data, same metric), and the
    version takes ``registry.champion_alias`` only if better by ``registry.margin``, else
    ``registry.challenger_alias``. Aliases move last, never onto a version whose run failed.

    Returns:
        The content of promotion.json: ``version``, ``alias``, ``promoted``, ``reason``,
        ``metric``, ``value``, ``champion_value``, ``previous_champion``, ``model_uri``.
    """
    from gfm import tracking

    out = layout(settings)
    train_info = Path(train_info or out.train_json)
    info = read_json(train_info, "train")
    scores = read_json(Path(metrics or out.metrics_json), "evaluate")
    ds = open_dataset(settings)
    current = dataset_version(ds.root)
    if scores.get("dataset_version") != current:
        raise ValueError(
            f"{metrics or out.metrics_json}: scored on dataset {scores.get('dataset_version')}, "
            f"but {ds.root} is now {current}; run `gfm evaluate` again before promoting"
        )
    if version is None:
        version = register_step(settings, train_info=train_info)
    tracking.configure(settings.tracking)
    cfg = settings.registry

    def rescore(champion: str) -> float:
        log.info("re-scoring champion version %s on the current test split", champion)
        values = score(tracking.load(cfg=cfg, version=champion), settings, ds)
        if cfg.metric not in values:
            raise ValueError(f"re-scoring gives {sorted(values)}, not registry.metric {cfg.metric}")
        return values[cfg.metric]

    decision = tracking.promote(version, scores["metrics"], cfg, compare=rescore)
    doc = {
        **vars(decision),
        "model_name": cfg.model_name,
        "model_uri": tracking.model_uri(cfg, decision.alias),
        "run_id": info["run_id"],
    }
    _write_json(out.promotion_json, doc)
    log.info("version %s -> %s: %s", decision.version, decision.alias, decision.reason)
    return doc


# ----------------------------------------------------------------------------- DVC or direct


def dvc_repo(params: Path, overrides: Sequence[str] = ()) -> Path | None:
    """The DVC repository whose stages reproduce these settings, or None.

    DVC reads only the repository's own ``params.yaml``: with another params file or
    ``--set`` overrides the steps run directly instead.
    """
    repo = versioning.find_repo(Path(params).resolve().parent)
    if repo is None or overrides or Path(params).resolve() != (repo / "params.yaml").resolve():
        return None
    return repo if set(STEPS) <= set(versioning.stages(repo)) else None
