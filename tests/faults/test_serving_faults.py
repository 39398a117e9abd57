"""Bad requests to `gfm serve` (issue 15, item 13): a real server on a real MLflow store; each
bad request gets a 4xx with one line, is never silently changed (a float ``record_every`` is not
truncated), a body over the limit is refused before it is read, and the server answers good
requests afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from gfm.baselines import make
from gfm.config import RegistrySettings, TrackingSettings
from gfm.forecaster import target_times
from gfm.tracking import configure, log_forecaster, prefix_to_frame, promote, register, start_run
from gfm.tracking.client import forecast, request_body
from tests import helpers
from tests.integration.conftest import free_port
from tests.integration.test_serving import _post, _wait

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.integration]
GFM = str(Path(sys.executable).with_name("gfm"))
LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `gfm serve` of a champion (linear extrapolation) with a 0.25 MB request limit: its URL."""
    tmp = tmp_path_factory.mktemp("serve")
    cfg = TrackingSettings(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="gfm-faults")
    configure(cfg)
    with start_run("train", dataset_version="md5-faults"):
        info = log_forecaster(make("linear"), input_example=helpers.make_prefix())
    registry = RegistrySettings()
    promote(register(info.model_uri, registry), {registry.metric: 0.5}, registry)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"uri": cfg.uri, "experiment": cfg.experiment}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [GFM, "serve", "-p", str(params), "--port", str(port), "--max-request-mb", str(LIMIT_MB)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": cfg.uri},
    )
    try:
        _wait(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _frame_request(**changes: object) -> bytes:
    frame = prefix_to_frame(helpers.make_prefix(k=3, M=8))
    for column, value in changes.items():
        frame = frame.drop(columns=[column]) if value is None else frame.assign(**{column: value})
    split = json.loads(frame.to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split}).encode()


def _one_line_400(url: str, body: bytes, needle: str) -> None:
    status, doc, _ = _post(url, body)
    assert status == 400, doc
    assert set(doc) == {"error_code", "message"}, doc
    assert needle in doc["message"], doc["message"]
    assert "\n" not in doc["message"] and len(doc["message"]) < 300, doc["message"]


def _still_serves(url: str) -> None:
    prefix = helpers.make_prefix(k=3, M=8)
    expected = make("linear").forecast(prefix, target_times(prefix)).numpy()
    np.testing.assert_allclose(forecast(url, prefix).w, expected, rtol=1e-6)


@pytest.mark.fault(
    "item 13: record_every 3.9, -2 or 0 in a serving request", "400, one line naming record_every"
)
@pytest.mark.parametrize("value", [3.9, -2, 0])
def test_a_record_every_that_is_not_a_positive_integer_is_refused(server: str, value) -> None:
    _one_line_400(server, _frame_request(record_every=value), "record_every")
    _still_serves(server)


@pytest.mark.fault("item 13: a request without the optimizer column", "400, one line naming it")
def test_a_request_missing_a_column_is_one_line(server: str) -> None:
    _one_line_400(server, _frame_request(optimizer=None), "optimizer")


@pytest.mark.fault("item 13: a request that is not JSON", "400, one line; the server goes on")
def test_a_body_that_is_not_json_is_one_line(server: str) -> None:
    status, doc, _ = _post_raw(server, b"{not json")
    assert 400 <= status < 500, doc
    assert "\n" not in doc.get("message", "") and doc.get("message"), doc
    _still_serves(server)


@pytest.mark.fault(
    "item 13: a request over the size limit (0.25 MB)",
    "413 before the body is read, naming the limit; the server goes on",
)
def test_a_request_over_the_limit_is_refused_unread(server: str) -> None:
    big = helpers.make_prefix(k=3, M=8, layout=[("w", (1000, 20))])
    body = request_body(big)
    assert len(body) > LIMIT_MB * 2**20
    status, doc, _ = _post(server, body)
    assert status == 413, doc
    assert "limit" in doc["message"] and "--max-request-mb" in doc["message"], doc["message"]
    _still_serves(server)


def _post_raw(url: str, body: bytes) -> tuple[int, dict, dict]:
    try:
        return _post(url, body)
    except json.JSONDecodeError:  # a non-JSON error page is itself a failure of the contract
        return 500, {}, {}
