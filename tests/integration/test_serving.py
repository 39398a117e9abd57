"""`gfm serve` as a user meets it: a real server process on a real MLflow store, asked over HTTP
by the shipped client (`gfm forecast --url`, `gfm.tracking.client`) and by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gfm.baselines import make
from gfm.cli import app
from gfm.config import RegistrySettings, TrackingSettings
from gfm.forecaster import target_times
from gfm.tracking import (
    configure,
    frame_to_forecast,
    log_forecaster,
    prefix_to_frame,
    promote,
    register,
    start_run,
)
from gfm.tracking.client import ServingError, forecast, metadata, request_body
from tests import helpers
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
GFM = str(Path(sys.executable).with_name("gfm"))
METRIC = RegistrySettings().metric


def _version(forecaster, value: float) -> str:
    """Log ``forecaster`` in a finished run, register it and judge it on ``value``."""
    with start_run("train", dataset_version="md5-serve"):
        info = log_forecaster(forecaster, input_example=helpers.make_prefix())
    cfg = RegistrySettings()
    version = register(info.model_uri, cfg)
    promote(version, {METRIC: value}, cfg)
    return version


def _post(url: str, body: bytes) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _wait(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@pytest.mark.slow
def test_the_server_says_its_version_follows_promotions_and_refuses_in_one_line(tmp_path: Path):
    # given a store whose champion is version 1 (linear extrapolation)
    db = tmp_path / "mlflow.db"
    cfg = TrackingSettings(uri=f"sqlite:///{db}", experiment="gfm-serve")
    configure(cfg)
    assert _version(make("linear"), 0.5) == "1"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"uri": cfg.uri, "experiment": cfg.experiment}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limit_mb = 0.25
    server = subprocess.Popen(
        [GFM, "serve", "-p", str(params), "--port", str(port), "--reload-every", "1"]
        + ["--max-request-mb", str(limit_mb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": cfg.uri},
    )
    try:
        _wait(url, server)
        prefix = helpers.make_prefix(k=3, M=8)
        expected = make("linear").forecast(prefix, target_times(prefix)).numpy()

        # when the shipped client asks: the forecast and the version that made it
        answer = forecast(url, prefix)
        np.testing.assert_allclose(answer.w, expected, rtol=1e-6)
        assert (answer.version, answer.model_uri) == ("1", "models:/gfm/1")
        about = metadata(url)
        assert (about["version"], about["alias"], about["dataset_version"]) == (
            "1",
            "champion",
            "md5-serve",
        )

        # and `gfm forecast --url` writes it from prefix.npy + its sidecar, naming the version
        helpers.write_request(prefix, tmp_path)
        result = CliRunner().invoke(
            app,
            ["forecast", "-p", str(params), "--url", url, "--input", str(tmp_path / "prefix.npy")]
            + ["--output", str(tmp_path / "f.npy")],
        )
        assert result.exit_code == 0, result.output
        assert "version 1" in result.output
        np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected, rtol=1e-6)

        # then bad requests get gfm's message in one line: no frame dump, no traceback
        frame = prefix_to_frame(prefix)
        bad = {
            "record_every": frame.assign(record_every=3.9),  # not truncated to 3
            "optimizer": frame.drop(columns=["optimizer"]),  # not MLflow's schema message
        }
        for needle, request in bad.items():
            split = json.loads(request.to_json(orient="split", index=False))
            status, doc, headers = _post(url, json.dumps({"dataframe_split": split}).encode())
            assert status == 400, doc
            assert set(doc) == {"error_code", "message"}, doc
            assert doc["message"].startswith("input frame:") and needle in doc["message"]
            assert "\n" not in doc["message"] and len(doc["message"]) < 300, doc["message"]

        # and a request over the limit is refused before it is read, the client saying why
        big = helpers.make_prefix(k=3, M=8, layout=[("w", (1000, 20))])
        assert len(request_body(big)) > limit_mb * 2**20
        status, doc, _ = _post(url, request_body(big))
        assert status == 413 and "limit" in doc["message"]
        with pytest.raises(ServingError, match="413.*over the server's limit"):
            forecast(url, big)

        # when a better version is promoted, the running server serves it within a reload
        assert _version(make("persistence"), 0.1) == "2"
        deadline = time.monotonic() + 30
        while metadata(url)["version"] != "2" and time.monotonic() < deadline:
            time.sleep(0.5)
        answer = forecast(url, prefix)
        assert answer.version == "2"
        np.testing.assert_allclose(answer.w, np.broadcast_to(prefix.w[-1].numpy(), expected.shape))
        assert str(MlflowClient().get_model_version_by_alias("gfm", "champion").version) == "2"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_client_names_an_unreachable_server():
    with pytest.raises(ServingError, match="unreachable.*gfm serve"):
        forecast(f"http://127.0.0.1:{free_port()}", helpers.make_prefix())


def test_the_answer_frame_round_trips_through_the_request_json():
    prefix = helpers.make_prefix(k=3, M=8)
    split = json.loads(request_body(prefix))["dataframe_split"]
    assert split["columns"][:3] == ["checkpoint", "w", "lr"] and len(split["data"]) == 9
    assert frame_to_forecast(prefix_to_frame(prefix).head(4)).shape == (4, prefix.D)
