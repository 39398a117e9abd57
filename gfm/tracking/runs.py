"""MLflow runs for gfm: where they are written, their provenance tags, params, metrics, artifacts.

Names follow one scheme end to end: params are dotted settings keys (``train.lr``), metrics are
``split/name`` (``train/loss``, ``val/forecast_mse``), gfm's own tags start with ``gfm.``.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import polars as pl
from mlflow import MlflowClient
from mlflow.entities import Metric
from pydantic import BaseModel

from gfm.config import TrackingSettings
from gfm.evaluation import to_markdown
from gfm.services import check_listening

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("gfm.tracking")

TAG_USER = "mlflow.user"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_DATASET_VERSION = "gfm.dataset_version"
# `dvc exp run` names its experiment and baseline commit in the stage's environment
DVC_EXP_TAGS = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}
DIGEST_MAX = 36  # MLflow stores a dataset digest in a String(36) column
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def configure(cfg: TrackingSettings) -> str:
    """Point MLflow at ``cfg.uri`` and make ``cfg.experiment`` the active experiment.

    A new experiment gets ``cfg.artifact_location``; when that is unset and the store is a sqlite
    file, artifacts go to ``<db folder>/mlartifacts/<experiment>`` (MLflow's own default,
    ``./mlruns``, depends on the working directory).

    Args:
        cfg: tracking settings; a sqlite URI must hold an absolute path.

    Returns:
        The experiment id.

    Raises:
        ValueError: the sqlite URI holds a relative path.
    """
    db = _sqlite_path(cfg.uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    check_server(cfg.uri)
    mlflow.set_tracking_uri(cfg.uri)
    mlflow.set_registry_uri(cfg.uri)
    location = cfg.artifact_location
    if location is None and db is not None:
        location = (db.parent / "mlartifacts" / cfg.experiment).as_uri()
    client = MlflowClient(tracking_uri=cfg.uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if cfg.artifact_location is not None and experiment.artifact_location != location:
            warnings.warn(
                f"tracking.artifact_location: experiment {cfg.experiment!r} already writes to "
                f"{experiment.artifact_location}, not {location}; MLflow keeps the first",
                stacklevel=2,
            )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def use_store(cfg: TrackingSettings) -> None:
    """Point MLflow (tracking and registry) at ``cfg.uri`` without creating any experiment."""
    db = _sqlite_path(cfg.uri)
    if db is not None and not db.exists():
        raise FileNotFoundError(
            f"tracking.uri: no MLflow store at {db}; run `gfm run` (or `gfm train`) first, or "
            f"set tracking.uri / GFM_TRACKING__URI to the store to read"
        )
    check_server(cfg.uri)
    mlflow.set_tracking_uri(cfg.uri)
    mlflow.set_registry_uri(cfg.uri)


def check_server(uri: str) -> None:
    """Fail in seconds, in one line, when the MLflow server of an ``http(s)`` URI is down.

    MLflow's client retries a refused connection for about four minutes
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) and then raises a long traceback; a server that is
    not there at the start of a command is reported at once instead (issue 15, item 5). Other
    URIs (sqlite, a database) are left to MLflow.

    Raises:
        ServiceUnavailable: nothing accepts connections at the URI's host and port.
    """
    if not uri.startswith(("http://", "https://")):
        return
    check_listening(
        uri,
        setting="tracking.uri",
        what="MLflow server",
        hint="check that the server runs (`gfm stack up`, or `mlflow server --host H --port P`) "
        "and that tracking.uri / GFM_TRACKING__URI names its host and port",
    )


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    raw = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    if ":memory:" in uri or not raw.startswith("/"):
        raise ValueError(
            f"tracking.uri: a sqlite URI must hold an absolute path like "
            f"`sqlite:////abs/mlflow.db`, got {uri!r}"
        )
    return Path(unquote(urlparse("file://" + raw).path))


def git_commit(repo: str | Path | None = None) -> str | None:
    """The commit checked out in ``repo`` (default: the working directory), or None outside git."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


@contextmanager
def start_run(
    run_name: str | None = None,
    *,
    dataset_version: str | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
    repo: str | Path | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start an MLflow run tagged with who ran it, on which commit and which dataset version.

    Tags: ``mlflow.user``, ``mlflow.source.git.commit`` (``git rev-parse HEAD`` in ``repo``;
    omitted outside a git repository), ``gfm.dataset_version`` (when given), ``dvc.exp_name``
    and ``dvc.exp_baseline_rev`` inside a ``dvc exp run`` (the link from a DVC experiment to
    its MLflow runs), then ``tags``.
    The run ends FINISHED, KILLED on Ctrl-C (KeyboardInterrupt), or FAILED when the block raises
    otherwise (the promotion gate refuses models of failed and killed runs).

    Args:
        run_name: the run's display name.
        dataset_version: the dataset's version (the md5 DVC records for the data folder).
        tags: more tags; they win over the ones above.
        nested: start a child of the active run.
        repo: the folder to read the git commit in (default: the working directory).
        parent_run_id: start a child of this run, which may belong to another process (a
            tuning worker's trials under the ``tune`` run that started it).

    Yields:
        The active run.
    """
    all_tags: dict[str, Any] = {TAG_USER: getpass.getuser()}
    commit = git_commit(repo)
    if commit is not None:
        all_tags[TAG_GIT_COMMIT] = commit
    if dataset_version is not None:
        all_tags[TAG_DATASET_VERSION] = dataset_version
    all_tags.update(
        {tag: os.environ[env] for env, tag in DVC_EXP_TAGS.items() if env in os.environ}
    )
    # as text, None values skipped: a tracking server (REST) accepts string tags only
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    with mlflow.start_run(
        run_name=run_name,
        nested=nested or parent_run_id is not None,
        tags=all_tags,
        parent_run_id=parent_run_id,
    ) as run:
        try:
            yield run
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")  # this run, the innermost: the ones inside it have ended
            raise


def end_dead_runs(
    tags: Mapping[str, str], gone: Callable[[Mapping[str, str]], bool], status: str = "KILLED"
) -> list[Any]:
    """End the RUNNING runs of the active experiment that carry ``tags`` and whose process is gone.

    A process killed with SIGKILL cannot end its run, which MLflow then shows RUNNING forever.

    Args:
        tags: the runs to look at (``{"gfm.study": name}``).
        gone: whether a run's process has ended, from the run's tags; False when unknown.
        status: what the runs become.

    Returns:
        The runs ended (as found, still RUNNING).
    """
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    clauses.append("attributes.status = 'RUNNING'")
    runs = mlflow.search_runs(filter_string=" and ".join(clauses), output_format="list")
    ended = [run for run in runs if gone(run.data.tags)]
    client = MlflowClient()
    for run in ended:
        client.set_terminated(run.info.run_id, status)
    return ended


def find_active_run(tags: Mapping[str, str]) -> str | None:
    """The newest RUNNING run of the active experiment carrying all ``tags``, or None.

    A tuning worker started on another machine finds the ``tune`` run of its study this way.
    """
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    clauses.append("attributes.status = 'RUNNING'")
    runs = mlflow.search_runs(
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


@contextmanager
def resume_run(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Reopen a finished run to add metrics, tags and artifacts (e.g. test results to a train run).

    The run ends FINISHED again, or FAILED when the block raises.
    """
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def flatten_params(section: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, str]:
    """Flatten a settings section to dotted names, values as text.

    ``flatten_params({"lr": 1e-3}, "train") == {"train.lr": "0.001"}``; nested mappings
    recurse; lists, paths and None are written as text.
    """
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"`section` must be a mapping or a pydantic model, got {type(tree).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name))
        else:
            out[name] = str(value)
    return out


def log_params_flat(section: Mapping[str, Any] | BaseModel, prefix: str) -> dict[str, str]:
    """Log a settings section as params with dotted names (``train.lr``) on the active run.

    Args:
        section: a settings section (``cfg.train``) or its ``model_dump()``.
        prefix: the section's key in params.yaml (``"train"``).

    Returns:
        The logged params.
    """
    params = flatten_params(section, prefix)
    mlflow.log_params(params)
    return params


def log_dataset(
    version: str,
    root: str | Path,
    runs_table: pl.DataFrame | pd.DataFrame | None = None,
    *,
    name: str = "trajectories",
    context: str = "training",
) -> None:
    """Record the trajectory dataset as an input of the active run.

    The dataset is the runs table (one row per recorded run; an empty frame when not given),
    its source the data folder, its digest the version; the run is also tagged
    ``gfm.dataset_version``.

    Args:
        version: the dataset version (DVC's md5 of the data folder, at most 36 characters).
        root: the dataset folder.
        runs_table: the manifest of runs, if at hand.
        name: the dataset's name in MLflow.
        context: what the run used it for (``training``, ``evaluation``).

    Raises:
        ValueError: ``version`` is empty or longer than 36 characters.
    """
    if not version or len(version) > DIGEST_MAX:
        raise ValueError(
            f"`version` must be a non-empty string of at most {DIGEST_MAX} characters "
            f"(MLflow's dataset digest), got {version!r}"
        )
    frame = runs_table.to_pandas() if isinstance(runs_table, pl.DataFrame) else runs_table
    frame = pd.DataFrame() if frame is None else frame
    source = Path(root).expanduser().resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow registers the local artifact source twice and warns that a file URI is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        # ... and hints that integer columns cannot hold missing values (the runs table has none)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=version)
        mlflow.log_input(dataset, context=context)
    mlflow.set_tag(TAG_DATASET_VERSION, version)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run; values as text, None values skipped."""
    mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log final metrics named ``split/name`` (``test/rel_mse_persistence``) on the active run.

    Raises:
        ValueError: a name is not ``split/name``.
        TypeError: a value is not a number.
    """
    for name, value in metrics.items():
        if "/" not in name.strip("/"):
            raise ValueError(f"metric `{name}` must be named `split/name` like `test/mse_final`")
        if isinstance(value, bool) or not isinstance(_scalar(value), int | float):
            raise TypeError(f"metric `{name}` must be a number, got {type(value).__name__}")
    mlflow.log_metrics({k: float(_scalar(v)) for k, v in metrics.items()}, step=step)


def log_history(history: list[Mapping[str, Any]], step_key: str = "step") -> int:
    """Log per-step metrics named ``split/name`` to the active run, in batches.

    Each entry is ``{step_key: int, "train/loss": float, ...}``; a nested entry
    ``{"train": {"loss": ...}}`` is read as ``train/loss``. NaN is logged as NaN (a diverged
    loss is worth seeing).

    Args:
        history: one mapping per logged step.
        step_key: the key holding the step.

    Returns:
        The number of metric values logged.

    Raises:
        ValueError: an entry lacks ``step_key``, or a metric name is not ``split/name``.
        TypeError: a value is not a number.
        RuntimeError: no run is active.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_history: no active MLflow run; call inside `start_run()`")
    timestamp = int(time.time() * 1000)
    metrics: list[Metric] = []
    for i, entry in enumerate(history):
        if step_key not in entry:
            raise ValueError(f"`history[{i}]`: key `{step_key}` is missing, got {sorted(entry)}")
        step = int(entry[step_key])
        for name, value in _metric_items(entry, step_key):
            if "/" not in name.strip("/"):
                raise ValueError(
                    f"`history[{i}]`: metric `{name}` must be named `split/name` like `train/loss`"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"`history[{i}]`: metric `{name}` must be a number, got {type(value).__name__}"
                )
            metrics.append(Metric(name, float(value), timestamp, step))
    MlflowClient().log_batch(run.info.run_id, metrics=metrics)
    return len(metrics)


def _metric_items(entry: Mapping[str, Any], step_key: str) -> Iterator[tuple[str, Any]]:
    for key, value in entry.items():
        if key == step_key:
            continue
        if isinstance(value, Mapping):
            for sub, sub_value in value.items():
                yield f"{key}/{sub}", _scalar(sub_value)
        else:
            yield str(key), _scalar(value)


def _scalar(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", 0) == 0 else value


def log_table_and_plots(
    table: pl.DataFrame | pd.DataFrame,
    name: str,
    *,
    plots: Mapping[str, Figure | str | Path] | None = None,
    artifact_path: str = "reports",
) -> list[str]:
    """Log a results table as ``<name>.csv`` and ``<name>.md`` and figures as PNGs.

    Args:
        table: the results table.
        name: the file stem of the table.
        plots: ``{stem: matplotlib Figure or an existing .png path}``.
        artifact_path: the folder inside the run's artifacts.

    Returns:
        The artifact paths written, relative to the run's artifact root.

    Raises:
        ValueError: ``name`` or a plot key is not a plain file stem.
        FileNotFoundError: a plot path does not exist.
    """
    frame = table if isinstance(table, pl.DataFrame) else pl.from_pandas(table)
    stems = [name, *(plots or {})]
    for stem in stems:
        if not _STEM.match(stem):
            raise ValueError(
                f"artifact name {stem!r} must be a plain file stem (letters, digits, `_.-`)"
            )
    with tempfile.TemporaryDirectory(prefix="gfm-report-") as tmp:
        out = Path(tmp)
        frame.to_pandas().to_csv(out / f"{name}.csv", index=False)  # nested cells as text
        (out / f"{name}.md").write_text(to_markdown(frame))
        for stem, plot in (plots or {}).items():
            target = out / f"{stem}.png"
            if isinstance(plot, str | Path):
                if not Path(plot).is_file():
                    raise FileNotFoundError(f"plots[{stem!r}]: {plot} not found")
                target.write_bytes(Path(plot).read_bytes())
            else:
                plot.savefig(target, dpi=120, bbox_inches="tight")
        written = sorted(p.name for p in out.iterdir())
        mlflow.log_artifacts(str(out), artifact_path)
    return [f"{artifact_path}/{f}" for f in written]
