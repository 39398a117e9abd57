"""Shared fixtures: tiny settings, and no telemetry or stray state from services under test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gfm.config import Settings, load_settings

CONFS = Path(__file__).parent / "confs"

# Nothing here may reach the network, and service logs should show only what matters.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
