"""Shared fixtures: tiny settings, and no telemetry or stray state from services under test."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from gfm._torch import pin_kernels

# before any tensor op, as the `gfm` command does: records generated in this process are the
# bits a worker process or another machine generates
pin_kernels()

from gfm.config import Settings, load_settings  # noqa: E402

pytest_plugins = ["tests.faults.report"]  # the fault suite's results table (--faults-csv)

CONFS = Path(__file__).parent / "confs"

# Nothing here may reach the network, and service logs should show only what matters.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Prefect keeps its profile, database and results under PREFECT_HOME: never the user's, and no
# flow reaches a server of theirs (set before prefect is imported; subprocesses inherit it).
_PREFECT_HOME = tempfile.mkdtemp(prefix="gfm-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
# Deployment overrides (GFM_<SECTION>__<KEY>) of the person running the tests do not apply.
for _name in [n for n in os.environ if n.startswith("GFM_")]:
    del os.environ[_name]


@pytest.fixture(scope="session")
def confs() -> Path:
    return CONFS


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    """The tiny test settings, with every path inside this test's temp folder."""
    return load_settings(
        CONFS / "valid" / "tiny.yaml",
        {"data.root": str(tmp_path / "data"), "evaluate.output_dir": str(tmp_path / "reports")},
        environ={},
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset, generated once per session (read-only for tests: copy to change it)."""
    from gfm.data.generate import generate

    root = tmp_path_factory.mktemp("tiny-data") / "data"
    settings = load_settings(CONFS / "valid" / "tiny.yaml", {"data.root": str(root)}, environ={})
    generate(settings.data, workers=1)
    return root


@pytest.fixture(autouse=True)
def _reset_mlflow_globals():
    """No test sees another's MLflow state: after each, end its runs and unset the process-wide
    tracking and registry URIs (``mlflow.set_*_uri`` also exports them to the environment, where
    a later ``MlflowClient(tracking_uri=...)`` would still take its registry from them)."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
