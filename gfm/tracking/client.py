"""A client of the scoring server (``gfm serve``, ``mlflow models serve``): prefix in, forecast out.

The answer also says which registry version made it (``gfm serve`` only)::

    from gfm.data.request import read_prefix, read_sidecar
    from gfm.tracking.client import forecast

    prefix = read_prefix("prefix.npy", read_sidecar(Path("prefix.json")))
    answer = forecast("http://127.0.0.1:5001", prefix)
    answer.w          # (M - k, D) float32: checkpoints k+1..M, the last row the final weights
    answer.version    # the registry version that answered ("3"; None from mlflow models serve)

``gfm forecast --url URL --input prefix.npy`` does the same from the command line. The request
is the ``dataframe_split`` JSON of ``gfm.tracking.frames`` (docs/serving.md).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from gfm.forecaster import Prefix
from gfm.tracking.frames import frame_to_forecast, prefix_to_frame
from gfm.tracking.serving import MODEL_HEADER, VERSION_HEADER

__all__ = ["Answer", "ServingError", "forecast", "metadata", "request_body"]


class ServingError(RuntimeError):
    """The server refused the request or could not be reached; ``status`` 0 when unreachable."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url}: {status or 'unreachable'}: {message}")
        self.status, self.message = status, message


@dataclass(frozen=True)
class Answer:
    """A forecast from a server.

    Attributes:
        w: (M - k, D) float32, checkpoints k+1..M; the last row is the final weights.
        version: the registry version that answered (``gfm serve``), or None.
        model_uri: ``models:/<name>/<version>`` when the server says it, or None.
    """

    w: np.ndarray
    version: str | None
    model_uri: str | None


def request_body(prefix: Prefix) -> bytes:
    """The JSON body of a forecast request for ``prefix``: ``{"dataframe_split": ...}``."""
    frame = prefix_to_frame(prefix)
    split = json.loads(frame.to_json(orient="split", index=False, double_precision=15))
    return json.dumps({"dataframe_split": split}).encode()


def _call(url: str, *, data: bytes | None, timeout: float) -> tuple[Any, dict[str, str]]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            message = json.loads(body).get("message", "")
        except ValueError:
            message = body.decode(errors="replace")[:500]
        raise ServingError(url, err.code, message or err.reason) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ServingError(url, 0, f"{reason} (is `gfm serve` running there?)") from None


def forecast(url: str, prefix: Prefix, *, timeout: float = 120.0) -> Answer:
    """Ask the server at ``url`` (``http://host:port``) to forecast the rest of ``prefix``'s run.

    Raises:
        ServingError: the server answered with an error (its one-line message) or could not be
            reached.
    """
    base = url.rstrip("/")
    doc, headers = _call(f"{base}/invocations", data=request_body(prefix), timeout=timeout)
    lower = {k.lower(): v for k, v in headers.items()}
    w = frame_to_forecast(_frame(doc["predictions"]))
    return Answer(
        w=w,
        version=lower.get(VERSION_HEADER.lower()),
        model_uri=lower.get(MODEL_HEADER.lower()),
    )


def metadata(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """What ``gfm serve`` at ``url`` serves: ``GET /metadata`` (version, alias, run, since)."""
    doc, _ = _call(f"{url.rstrip('/')}/metadata", data=None, timeout=timeout)
    return doc


def _frame(predictions: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(predictions)
