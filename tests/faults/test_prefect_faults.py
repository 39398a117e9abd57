"""The temporary Prefect API under load (issue 15, item 15): a slow start is waited for, not a
failed run. A fresh ``PREFECT_HOME`` (database migrations) under a 1-second budget stands in for
a busy machine's first start: before the fix, ``gfm run`` stopped with Prefect's "Timed out while
attempting to connect to ephemeral Prefect API server."."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gfm.cli._app import EPHEMERAL_STARTUP_TIMEOUT_S, generous_prefect_startup
from tests.faults.helpers import GFM, MICRO, gfm_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.mark.fault(
    "load: a slow temporary Prefect API (fresh PREFECT_HOME, tiny budget)",
    "gfm run waits for it and finishes",
)
def test_gfm_run_waits_for_a_slow_temporary_prefect_api(tmp_path: Path) -> None:
    # data.root is a file: the flow's first step refuses it at once, so the run reaching that
    # message proves the flow ran against the temporary API (about 10-30 s, mostly its start)
    (tmp_path / "params.yaml").write_text(MICRO.replace("root: data", "root: notdata"))
    (tmp_path / "notdata").write_text("not a dataset\n")
    env = gfm_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # fresh: the slowest start
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
    )
    env.pop("PREFECT_API_URL", None)  # no server of the tests': the run starts its own
    proc = subprocess.run(
        [str(GFM), "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    text = proc.stdout + proc.stderr
    assert "Timed out while attempting to connect" not in text
    assert proc.returncode == 1, text
    assert "gfm run failed" in text
    assert "notdata: data.root must be a dataset folder (or absent), got a file" in text


@pytest.mark.parametrize(
    ("given", "effective"),
    [(None, "120"), ("1", "120"), ("", "120"), ("300", "300"), ("soon", "soon")],
)
@pytest.mark.fault(
    "load: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS unset or low",
    "raised to at least 120 s; a higher value kept",
)
def test_the_startup_timeout_is_a_floor(given: str | None, effective: str) -> None:
    env = {} if given is None else {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": given}
    generous_prefect_startup(env)
    assert EPHEMERAL_STARTUP_TIMEOUT_S == 120
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == effective
