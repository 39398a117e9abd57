"""Shared, session-wide real services for the workflow tests: one migrated MLflow store to copy,
one Prefect test server; and per test a params file pointing at copies of the tiny dataset
(``tiny_data``, in tests/conftest.py: the fault suite reads it too)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

CONFS = Path(__file__).resolve().parents[1] / "confs"

# The workflow at its smallest: tiny GFM, a few steps, two short trials, cheap evaluation.
WORKFLOW = {
    "gfm": {"width": 8, "depth": 1, "time_embedding": 4, "history": 2},
    "train": {"steps": 6, "eval_every": 3, "batch_runs": 4, "batch_params": 64},
    "tune": {
        "n_trials": 2,
        "trial_steps": 4,
        "eval_every": 2,
        "pruner_warmup_steps": 0,
        "heartbeat_s": 1,
        "space": {
            "gfm": {"width": {"choices": [8, 12]}},
            "train": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        },
    },
    "evaluate": {
        "observed_fractions": [0.5],
        "workflow_baselines": ["persistence", "linear"],
        "downstream": False,
    },
}


def _tiny_params(folder: Path, data_root: Path | None = None, **sections: dict) -> dict:
    """The settings tree: params.yaml, then tests/confs/valid/tiny.yaml, WORKFLOW and
    ``sections`` replacing keys of each section."""
    # every key of the project's params.yaml (DVC stages name them), then the tiny values
    tree = yaml.safe_load((CONFS.parent.parent / "params.yaml").read_text())
    tiny = yaml.safe_load((CONFS / "valid" / "tiny.yaml").read_text())
    for layer in (tiny, WORKFLOW, sections):
        for name, values in layer.items():
            tree.setdefault(name, {}).update(values)
    if data_root is not None:
        tree["data"]["root"] = str(data_root)
    tree["data"]["remote"] = str(folder / "dvc-remote")
    return tree


@pytest.fixture(scope="session")
def tiny_params():
    """``tiny_params(folder, data_root=None, **sections)``: the tiny settings tree to write."""
    return _tiny_params


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow sqlite store, made once per session."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workflow(tmp_path: Path, tiny_data: Path, template_store: Path) -> Path:
    """A params file in a fresh project folder: its own copy of the data and the MLflow store.

    Every path (data, reports, models, mlflow.db, optuna.db) resolves inside ``tmp_path``.
    """
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(tiny_data, project / "data")
    shutil.copy(template_store, project / "mlflow.db")
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump(_tiny_params(tmp_path)))
    (project / ".gitignore").write_text("*\n!params.yaml\n!.gitignore\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "tiny workflow")
    return params


GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@localhost",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@localhost",
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a test identity; returns stdout."""
    proc = subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (flows run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


# ----------------------------------------------------------------------------- team mode

# The PostgreSQL server the team tests use (trust auth); each test makes its own databases.
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")


@pytest.fixture(scope="session")
def postgres() -> str:
    """The PostgreSQL server URL (no database). In CI (CI=true) a server that does not answer
    fails the team tests; elsewhere they are skipped, and pytest's summary (-ra) says why."""
    from gfm.ops import stack

    try:
        stack.database_exists(f"{POSTGRES}/postgres")
    except ConnectionError as err:
        message = f"team tests need PostgreSQL at {POSTGRES} (TEST_POSTGRES_URL): {err}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message + " -- skipped outside CI, where it fails")
    return POSTGRES


def _database_factory(postgres: str, label: str):
    from gfm.ops import stack

    made: list[str] = []

    def make(purpose: str) -> str:
        url = f"{postgres}/gfm_test_{label}_{purpose}_{uuid.uuid4().hex[:8]}"
        stack.create_database(url)
        made.append(url)
        return url

    return make, made


@pytest.fixture
def pg_database(postgres: str):
    """``pg_database("optuna")``: a new, empty PostgreSQL database URL, dropped after the test."""
    from gfm.ops import stack

    make, made = _database_factory(postgres, "t")
    yield make
    for url in made:
        stack.drop_database(url)


@pytest.fixture(scope="session")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server`` on a free loopback port, on its own PostgreSQL database, started
    the way ``gfm stack up`` starts it; stopped and its database dropped after the session."""
    from gfm.ops import stack

    make, made = _database_factory(postgres, "s")
    folder = tmp_path_factory.mktemp("mlflow-server")
    try:
        (service,) = stack.up(
            database_url=make("mlflow"),
            optuna_url=None,
            artifacts=folder / "artifacts",
            state_dir=folder / "state",
            port=free_port(),
            mlflow_workers=1,
            timeout_s=180,
        )
        yield {"url": service.url, "artifacts": folder / "artifacts"}
    finally:
        stack.down(folder / "state")
        for url in made:
            stack.drop_database(url)


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
