"""The train step: GFM on the train part of ``train.split``, logged to MLflow, the model folder written."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from gfm import saved
from gfm.config import Settings, apply_params
from gfm.ops.layout import (
    TIMINGS,
    _history,
    _small_prefix,
    dataset_version,
    layout,
    open_dataset,
    read_tuned,
    run_name,
    write_step,
)

log = logging.getLogger("gfm.ops")


# ----------------------------------------------------------------------------- train


def prefit(settings: Settings, train: Any, val: Any) -> None:
    """Fit every prior the tuning trials and the training will read, on all cores, once.

    Only when a prior may be used (``gfm.prior`` or ``true`` among its searched choices) and
    ``train.prior_cache`` is set; fits already cached are skipped (``gfm.training.prefit_priors``).
    """
    from gfm.training import prefit_priors

    dim = settings.tune.space.flat().get("gfm.prior")
    searched = dim is not None and dim.choices is not None and True in dim.choices
    if settings.train.prior_cache is None or not (settings.gfm.prior or searched):
        return
    workers = os.cpu_count() or 1
    start = time.perf_counter()
    made = prefit_priors(train, val if len(val) else None, settings.train, workers=workers)
    log.info(
        "prior fits: %d made on %d processes in %.1f s (cache %s)",
        made,
        workers,
        time.perf_counter() - start,
        settings.train.prior_cache,
    )


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


def train_step(
    settings: Settings,
    *,
    tuned: Path | None = None,
    repo: Path | None = None,
    overrides: Mapping[str, str] | None = None,
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
        overrides: who set each overridden key (``override_sources``); an override of
            ``data.seeds``/``data.splits.*`` that contradicts the dataset's split is refused.

    Returns:
        The step's record (reports/local/train.json): ``run_id``, ``experiment_id``,
        ``model_uri``, ``dataset_version``, ``params``, ``metrics``, ``model_dir``; train.json
        holds the part any machine reproduces (no ids, paths or timings).
    """
    from gfm import tracking
    from gfm.model import GFM
    from gfm.training import fit, sized

    ds = open_dataset(settings, overrides=overrides)
    version = dataset_version(ds.root)
    train, val, _ = ds.parts(settings.train.split)
    tune_info = read_tuned(tuned)
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
    name = run_name("train", f"gfm-{cfg.gfm.variant}{'+prior' if cfg.gfm.prior else ''}", version)
    with tracking.start_run(name, dataset_version=version, repo=repo, tags=tags) as run:
        tracking.log_params_flat(cfg.gfm, "gfm")
        tracking.log_params_flat(cfg.train.model_dump(mode="json", exclude={"model_dir"}), "train")
        tracking.log_params_flat({"seed": cfg.data.seed, "seeds": cfg.data.seeds}, "data")
        tracking.log_dataset(version, ds.root, ds.runs, context="training")
        model = GFM(cfg.gfm, cfg.train)
        steps = sized(cfg.train, train).steps
        tracking.log_params_flat({"steps_used": steps}, "train")
        log.info("training GFM on %d runs (val %d) for %d steps", len(train), len(val), steps)
        prefit(cfg, train, val)
        history = _history(fit(model, train, val if len(val) else None, cfg.train))
        model.net.cpu()
        tracking.log_history(history)
        final = {
            k: v
            for k, v in history[-1].items()
            if k.startswith(("val/", "train/")) and k not in TIMINGS
        }
        best_val = [h["val/rel_mse_persistence"] for h in history if "val/rel_mse_persistence" in h]
        if best_val:  # the network kept is the one with the best validation score
            final["val/best_rel_mse_persistence"] = min(best_val)
            tracking.log_metrics({"val/best_rel_mse_persistence": min(best_val)})
        frame = pl.DataFrame(history)
        fig = _history_figure(history)
        tracking.log_table_and_plots(frame, "train_history", plots={"loss": fig})
        saved.save(model, out.model_dir)
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
    frame.drop([c for c in TIMINGS if c in frame.columns]).write_csv(out.history_csv)
    write_step(out, "train", doc)
    log.info("trained: run %s, model %s -> %s", doc["run_id"], out.model_dir, out.train_json)
    return doc
