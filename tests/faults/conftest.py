"""Fixtures of the fault tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gfm.config import Settings, load_settings
from gfm.data.generate import generate
from tests.faults.helpers import MICRO


@pytest.fixture
def micro(tmp_path: Path) -> Settings:
    """A generated micro dataset in ``tmp_path/data`` and its settings (params in ``tmp_path``)."""
    (tmp_path / "params.yaml").write_text(MICRO)
    settings = load_settings(tmp_path / "params.yaml", environ={})
    generate(settings.data, workers=1)
    return settings
