"""The jump benchmark as one step: its forecasters, every training run, the files, the MLflow run.

    forecasters  GFM from ``model`` (a folder or ``models:/gfm@champion``), else fitted with the
                 tuned params of tune.json; the linear and WNN baselines (``gfm.bench.jumps``)
    run          every task × architecture × seed with the base optimizer and each jump method
    write        accelerate.csv, _curves, _jumps, _summary and the plot in ``accelerate.output_dir``

The benchmark has settings of its own (``gfm.bench.jumps.AccelerateSettings``, in
``benchmarks/accelerate.yaml``); the product's settings say where the data, the registry and the
dataset's tasks are.
    log          one MLflow run: the settings, the speedups, the files (``gfm.tracking.jumps``)

``gfm bench jumps`` (and its old name ``gfm accelerate``), the ``jump-benchmark`` flow and
``python -m benchmarks.accelerate`` all call ``jump_step``; nothing else runs this sequence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gfm.bench import jumps
from gfm.config import Settings, apply_params
from gfm.forecaster import Forecaster
from gfm.ops.layout import dataset_version, layout, read_tuned

__all__ = [
    "BENCH_FILE",
    "bench_settings",
    "jump_forecasters",
    "jump_overrides",
    "jump_step",
    "log_jumps",
]

log = logging.getLogger("gfm.ops")
BENCH_FILE = Path("benchmarks") / "accelerate.yaml"  # beside params.yaml: the benchmark's own


def bench_settings(
    params: Path | str, bench: Path | str | None = None, overrides: Sequence[str] = ()
) -> jumps.AccelerateSettings:
    """The jump benchmark's settings: its file, then the ``accelerate.*`` overrides.

    The file defaults to ``benchmarks/accelerate.yaml`` beside the params file (the model's
    defaults when it is missing). Relative paths (``output_dir``) are taken from the params file's folder, the project's.

    Raises:
        gfm.config.SettingsError: a key or value is invalid; the message names it.
    """
    project = Path(params).resolve().parent
    path = Path(bench) if bench is not None else project / BENCH_FILE
    return jumps.load_accelerate(path, overrides, base=project)


def jump_overrides(
    *,
    seeds: int | None = None,
    first_seed: int | None = None,
    tasks: Sequence[str] | None = None,
    steps: int | None = None,
    methods: Sequence[str] | None = None,
    output_dir: Path | str | None = None,
) -> list[str]:
    """``--set`` overrides of the ``accelerate`` section from the command-line options given.

    Tasks and methods may be comma-separated (``digits_mlp,mnist_cnn``).
    """

    def listed(values: Sequence[str] | None) -> list[str] | None:
        return [v for item in values for v in item.split(",") if v] if values else None

    derived = {
        "accelerate.seeds": seeds,
        "accelerate.first_seed": first_seed,
        "accelerate.tasks": listed(tasks),
        "accelerate.steps": steps,
        "accelerate.methods": listed(methods),
        "accelerate.output_dir": str(output_dir) if output_dir is not None else None,
    }
    return [f"{k}={json.dumps(v)}" for k, v in derived.items() if v is not None]


def jump_forecasters(
    settings: Settings,
    cfg: jumps.AccelerateSettings,
    *,
    model: str | Path | None = None,
    tuned: bool = True,
) -> tuple[Settings, dict[str, Forecaster], dict[str, Any]]:
    """The jump forecasters of ``accelerate.methods``, loaded or fitted.

    Args:
        settings: all settings.
        cfg: the benchmark's settings.
        model: GFM's source, a forecaster folder or ``models:/gfm@champion`` (default
            ``accelerate.model``; None fits one on the architecture split).
        tuned: fit that GFM with the best params of tune.json, as ``gfm train`` does.

    Returns:
        (the settings the benchmark runs with, ``{method: forecaster}``, the tuned params applied).
    """
    source = model if model is not None else cfg.model
    applied: dict[str, Any] = {}
    gfm = None
    if "gfm" in cfg.methods:
        if source is not None:
            from gfm import tracking  # the registry is MLflow's; a folder is gfm.saved's

            gfm = tracking.load_model(str(source), settings)
            log.info("gfm: loaded %s", source)
        elif tuned:
            applied = dict(read_tuned(layout(settings).tune_json).get("best_params") or {})
            settings = apply_params(settings, applied)
    return settings, jumps.forecasters(settings, cfg, gfm=gfm), applied


def log_jumps(
    settings: Settings,
    cfg: jumps.AccelerateSettings,
    paths: dict[str, Path],
    *,
    fitted: bool = False,
    repo: Path | None = None,
) -> str:
    """One MLflow run of a written jump benchmark, with the dataset version when there is data.

    ``fitted``: GFM was fitted for the benchmark (its settings are logged too).
    """
    from gfm import tracking

    root = settings.data.root
    version = dataset_version(root) if root.is_dir() else None  # a --model run needs no data
    return tracking.log_jump_benchmark(
        settings, cfg, paths, fitted=fitted, dataset_version=version, repo=repo
    )


def jump_step(
    settings: Settings,
    cfg: jumps.AccelerateSettings,
    *,
    model: str | Path | None = None,
    tuned: bool = True,
    log_mlflow: bool = True,
    repo: Path | None = None,
    on_run: Callable[[jumps.Job, str, bool], None] | None = None,
) -> dict[str, Any]:
    """Run the jump benchmark: forecasters, every training run, the files, the MLflow run.

    Args:
        settings: all settings.
        cfg: the benchmark's settings.
        model: GFM's source (``jump_forecasters``).
        tuned: fit GFM with the tuned params when it is fitted here.
        log_mlflow: log the files as one MLflow run (``log_jumps``).
        repo: folder whose git commit the run records.
        on_run: called with (job, method, finished) around each training run (progress).

    Returns:
        ``settings`` (as run), ``paths`` (the files), ``summary`` (per method × task × arch),
        ``tuned`` (params applied), ``fitted`` (GFM fitted here) and ``run_id`` (None without
        MLflow).
    """
    settings, models, applied = jump_forecasters(settings, cfg, model=model, tuned=tuned)
    fitted = "gfm" in models and model is None and cfg.model is None
    results = jumps.run(settings, cfg, models, on_run=on_run)
    paths = jumps.write(results, cfg.output_dir)
    run_id = log_jumps(settings, cfg, paths, fitted=fitted, repo=repo) if log_mlflow else None
    return {
        "settings": settings,
        "paths": paths,
        "summary": jumps.summarize(results.table),
        "tuned": applied,
        "fitted": fitted,
        "run_id": run_id,
    }
