"""Two promotions at once (issue 15, item 2): the better version ends as champion and each
version's promotion record matches the registry. Two real processes promote two versions of one
model against the same champion, on a sqlite MLflow store in ``tmp_path`` (serialised by the
file lock beside it) and through a real ``mlflow server`` (by the alias re-check alone). Their
re-scoring of the champion is slow (as a real re-score on the test split is), the worse one's
slowest, so without serialisation both are judged against the old champion and the worse one
moves the alias last."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from gfm.config import RegistrySettings, TrackingSettings
from gfm.tracking import configure, log_forecaster, promote, register, start_run
from gfm.tracking.registry import TAG_DECISION
from tests import helpers
from tests.faults.helpers import gfm_env

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]

CFG = RegistrySettings()
REPO = Path(__file__).resolve().parents[2]

PROMOTER = """\
import json, sys, time
from pathlib import Path
from mlflow import MlflowClient
from gfm.config import RegistrySettings, TrackingSettings
from gfm.tracking import configure, promote

uri, version, value, delay, barrier = sys.argv[1:6]
cfg = RegistrySettings()
configure(TrackingSettings(uri=uri, experiment="gfm-test"))
client = MlflowClient()


def rescore(champion):  # slow, as re-scoring on the test split is: the champion's test metric
    time.sleep(float(delay))
    return float(client.get_model_version(cfg.model_name, champion).tags["metric." + cfg.metric])


Path(barrier, "ready-" + version).touch()  # start promoting together
while len(list(Path(barrier).glob("ready-*"))) < 2:
    time.sleep(0.01)
print(json.dumps(vars(promote(version, {cfg.metric: float(value)}, cfg, compare=rescore))))
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"mlflow server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer /health within {timeout} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (its own sqlite store); its URL.

    Promotions through it cannot share a file lock: only the alias re-check serialises them.
    """
    port = _free_port()
    folder = tmp_path / "server"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
        + ["--artifacts-destination", str(folder / "artifacts")],
        cwd=folder,
        env=gfm_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers end with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(params=["sqlite", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[str]]:
    """A store with three versions of one model, the first champion at 0.5: a sqlite file in
    ``tmp_path``, or an MLflow server."""
    from gfm.baselines import BASELINES

    uri = (
        f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("server")
    )
    tracking = TrackingSettings(uri=uri, experiment="gfm-test")
    configure(tracking)
    layout = [("net.0.weight", (3, 2)), ("net.0.bias", (3,))]
    prefix = helpers.make_prefix(k=3, M=8, layout=layout, seed=1, task="mlp_regression")
    with start_run("train", dataset_version="md5-abc", repo=REPO):
        uri = log_forecaster(BASELINES["linear"](), input_example=prefix).model_uri
    versions = [register(uri, CFG) for _ in range(3)]
    assert promote(versions[0], {CFG.metric: 0.5}, CFG).promoted
    return tracking.uri, versions


def _promoters(uri: str, jobs: list[tuple[str, float, float]], barrier: Path) -> dict[str, dict]:
    """Run one promoting process per (version, value, re-score seconds) at once; their decisions."""
    barrier.mkdir()
    procs = {
        version: subprocess.Popen(
            [sys.executable, "-c", PROMOTER, uri, version, str(value), str(delay), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=gfm_env(),
        )
        for version, value, delay in jobs
    }
    decisions = {}
    for version, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        decisions[version] = json.loads(out.strip().splitlines()[-1])
    return decisions


@pytest.mark.fault(
    "item 2: two gfm promote at once against one champion",
    "the better version ends champion; each record matches the registry",
)
def test_two_promotions_at_once_leave_the_better_version_champion(
    store: tuple[str, list[str]], tmp_path: Path
) -> None:
    uri, (v1, worse, better) = store
    decisions = _promoters(uri, [(better, 0.3, 0.5), (worse, 0.4, 3.0)], tmp_path / "barrier")
    client = MlflowClient(tracking_uri=uri)
    aliases = {a: str(v) for a, v in client.get_registered_model(CFG.model_name).aliases.items()}
    assert aliases[CFG.champion_alias] == better, decisions
    d_better, d_worse = decisions[better], decisions[worse]
    assert d_better["promoted"]
    # one after the other: the second was judged against the first's outcome
    if d_better["previous_champion"] == worse:  # worse went first (beat v1), better beat it
        assert d_worse["promoted"] and d_worse["previous_champion"] == v1
    else:  # better went first; worse was judged against it and stays challenger
        assert d_better["previous_champion"] == v1
        assert (d_worse["alias"], d_worse["previous_champion"]) == (CFG.challenger_alias, better)
        assert aliases[CFG.challenger_alias] == worse
    for version, doc in decisions.items():  # each version's record says what was decided
        tag = client.get_model_version(CFG.model_name, version).tags[TAG_DECISION]
        assert tag == f"{doc['alias']}: {doc['reason']}"
