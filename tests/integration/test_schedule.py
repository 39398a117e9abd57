"""`gfm schedule` against a real `prefect server start`: the retrain deployment is registered with
the configured cron, and the server's scheduler plans its runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration

CRON = "17 4 * * 2"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float, procs: list[subprocess.Popen]):
    """Poll ``check()`` until it returns something truthy; fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{p.args[:3]} exited with {p.returncode} while waiting for {what}")
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_schedule_registers_the_cron_deployment_on_a_prefect_server(tmp_path, tiny_params):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_API_URL": api,
    }
    tree = tiny_params(tmp_path, data_root=tmp_path / "data")
    tree["schedule"] = {"cron": CRON, "timezone": "Europe/Paris", "deployment": "gfm-test"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))

    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    served = None
    try:
        _wait("the Prefect server", lambda: httpx.get(f"{api}/health").is_success, 120, [server])
        served = subprocess.Popen(
            [str(bin_dir / "gfm"), "schedule", "-p", str(params)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def deployment():
            r = httpx.get(f"{api}/deployments/name/retrain/gfm-test")
            return r.json() if r.is_success else None

        dep = _wait("the retrain deployment", deployment, 120, [server, served])
        (schedule,) = [s["schedule"] for s in dep["schedules"]]
        assert schedule["cron"] == CRON
        assert schedule["timezone"] == "Europe/Paris"
        assert dep["parameters"]["params"] == str(params.resolve())

        def scheduled_runs():
            r = httpx.post(
                f"{api}/flow_runs/filter",
                json={"deployments": {"id": {"any_": [dep["id"]]}}, "limit": 10},
            )
            return [run for run in r.json() if run["state_type"] == "SCHEDULED"]

        runs = _wait("the scheduler's planned runs", scheduled_runs, 60, [server, served])
        # every planned run starts on the cron: Tuesdays at 04:17 Paris time
        for run in runs:
            when = datetime.fromisoformat(run["expected_start_time"]).astimezone(
                ZoneInfo("Europe/Paris")
            )
            assert (when.weekday(), when.hour, when.minute) == (1, 4, 17)
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
