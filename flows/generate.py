"""Generate or update the dataset, validate it, version it with DVC; returns the dataset version.

With ``data.executor: dask`` the runs train as Prefect tasks on Prefect's ``DaskTaskRunner``:
on the cluster at ``data.dask_address``, or on a local cluster of ``data.workers`` processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from flows.common import dvc_repo, repro, settings
from gfm import ops
from gfm._torch import kernel_env
from gfm.config import DataSettings, TaskSettings
from gfm.data.generate import GenerateReport, pending, train_run
from gfm.data.generate import generate as generate_runs
from gfm.data.schema import RunRecord, RunSpec
from gfm.data.validate import check
from gfm.ops import versioning


@task(name="restore-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def restore_data(root: Path, remote: str) -> bool:
    """Pull the pinned dataset from the DVC remote when the folder is missing."""
    return versioning.restore(root, remote)


def _counts(report: GenerateReport) -> dict:
    return {
        "planned": report.planned,
        "reused": report.skipped,
        "trained": report.trained,
        "diverged": len(report.diverged),
        "seconds": round(report.seconds, 1),
    }


@task(name="generate-data", cache_policy=NO_CACHE)
def generate_data(cfg: DataSettings) -> dict:
    """Train the planned runs the dataset lacks (``gfm.data.generate``); returns the counts."""
    return _counts(generate_runs(cfg))


@task(name="train-run", task_run_name="train {spec.run_id}", cache_policy=NO_CACHE)
def train_one(spec: RunSpec, task_cfg: TaskSettings) -> RunRecord:
    """One run on a Dask worker (``gfm.data.generate.train_run``): bit-identical anywhere."""
    return train_run(spec, task_cfg)


def _on_dask(specs: list[RunSpec], cfg: DataSettings) -> Iterator[RunRecord]:
    """``gfm.data.generate.Runner``: one task per run on the flow's task runner."""
    # tasks carry the flow's settings to the workers: name the API the flow runs against, so
    # they report to it instead of each starting a temporary server of its own
    with _api_url_pinned():
        futures = train_one.map(specs, [cfg.tasks[spec.task] for spec in specs])
        for future in as_completed(futures):
            yield future.result()


@contextmanager
def _api_url_pinned() -> Iterator[None]:
    if PREFECT_API_URL.value():
        yield
        return
    with get_client(sync_client=True) as client:  # the temporary server of this process
        url = str(client.api_url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


MALLOC_TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before glibc returns them: never


def dask_runner(cfg: DataSettings) -> DaskTaskRunner:
    """The Dask cluster to train on: ``data.dask_address``, else a local one.

    The local cluster has ``data.workers`` processes of one thread each, started with the
    pinned kernels (``gfm._torch.kernel_env``: the same bits as the process pool), and binds
    loopback only (its dashboard on a free port). Workers of an existing cluster need that
    environment too (``train_run`` warns when they lack it). Local workers do not trim their heap: with Dask's
    default (``MALLOC_TRIM_THRESHOLD_=65536``) glibc hands memory back after nearly every
    tensor, and a ``mnist_cnn`` run trained about 1.8 times slower (measured).
    """
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": ":0",
            "env": {"MALLOC_TRIM_THRESHOLD_": str(MALLOC_TRIM_THRESHOLD), **kernel_env()},
        }
    )


@flow(name="generate-on-dask")
def train_on_dask(cfg: DataSettings) -> GenerateReport:
    """Train the missing runs as tasks on the flow's ``DaskTaskRunner``; commit the dataset."""
    return generate_runs(cfg, runner=_on_dask)


def generate_on_dask(cfg: DataSettings) -> GenerateReport:
    """``gfm.data.generate.generate`` on Dask (``dask_runner``); no cluster when nothing is missing."""
    if not pending(cfg):
        return generate_runs(cfg, workers=1)
    return train_on_dask.with_options(task_runner=dask_runner(cfg))(cfg)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(root: Path) -> dict:
    """Check the whole dataset (``gfm.data.validate.check``); fails listing every problem."""
    manifest = check(root)
    return {"runs": manifest.counts.runs, "hash": manifest.hash}


@task(name="dvc-add", cache_policy=NO_CACHE)
def add_data(root: Path, remote: str) -> str:
    """``dvc add`` the dataset folder; returns the md5 recorded in its ``.dvc`` file."""
    return versioning.add_and_push(root, remote, push=False)


@task(name="dvc-push", retries=3, retry_delay_seconds=[5, 20, 60], cache_policy=NO_CACHE)
def push_data(root: Path, remote: str) -> None:
    """``dvc push`` the dataset to the configured remote (retried: storage can be flaky)."""
    versioning.push(root, remote)


@task(name="dataset-version", cache_policy=NO_CACHE)
def version_of(root: Path) -> str:
    """The dataset version outside DVC: its content hash (``gfm.ops.dataset_version``)."""
    return ops.dataset_version(root)


@flow(name="generate")
def generate(params: str = "params.yaml", overrides: Sequence[str] | None = None) -> str:
    """Generate or update the dataset, validate it and version it; returns its version.

    In the project's DVC repository this is ``dvc repro generate`` (skipped when the data
    settings and code are unchanged; a missing folder is pulled from the remote first), else
    ``gfm.data.generate`` directly. Then ``dvc add`` + ``dvc push`` when the folder is inside a
    DVC repository: the version is the md5 in ``data.dvc``.
    """
    cfg = settings(params, overrides)
    root, remote = cfg.data.root, cfg.data.remote
    repo = dvc_repo(params, overrides)
    if repo is not None:
        present = restore_data(root, remote)
        repro("generate", repo, force=not present)
    elif cfg.data.executor == "dask":
        generate_on_dask(cfg.data)
    else:
        generate_data(cfg.data)
    validate_data(root)
    if versioning.find_repo(root) is None:
        return version_of(root)
    md5 = add_data(root, remote)
    push_data(root, remote)
    return md5
