"""Serving a registered forecaster over HTTP: MLflow's scoring server plus what gfm adds.

``gfm serve`` runs the app of ``mlflow models serve`` (same routes, same request and answer
JSON, docs/serving.md) around the model a registry URI names, and adds:

    GET /metadata         which model answers: name, version, alias, run, dataset version, since
    X-GFM-Model-Version   the version that computed each /invocations answer (and X-GFM-Model)
    one-line errors       a 400's JSON is {"error_code", "message"} with the model's own message,
                          without the dump of the parsed frame and the traceback MLflow puts in
    a size limit          a body over ``max_request_bytes`` is refused (413) unparsed, read
                          and dropped as it arrives; one without a length (chunked) too (411)
    reloading             with ``reload_s``, the alias is looked up every ``reload_s`` seconds and
                          a version it moved to is loaded and served from then on

A plain ``mlflow models serve`` keeps the version it loaded at start until it is restarted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.pyfunc import PyFuncModel

from gfm.config import RegistrySettings
from gfm.tracking.registry import SCHEME, model_uri
from gfm.tracking.runs import TAG_DATASET_VERSION

log = logging.getLogger("gfm.serve")

DEFAULT_MAX_REQUEST_MB = 64  # a 0.25 prefix of the 14k-parameter CNN is about 15 MB of JSON
VERSION_HEADER = "X-GFM-Model-Version"
MODEL_HEADER = "X-GFM-Model"
_MLFLOW_PREFIXES = ("Failed to predict data", "Failed to enforce schema", "Ensure that input")


@dataclass(frozen=True)
class Served:
    """The model a server answers with.

    Attributes:
        model_name: the registered model.
        version: its version.
        alias: the alias it was loaded through (None for a version URI).
        model_uri: ``models:/<name>/<version>``, the exact model.
        run_id: the training run it came from.
        dataset_version: the dataset it was trained on.
        loaded_at: when the server loaded it (UTC, ISO 8601).
    """

    model_name: str
    version: str
    alias: str | None
    model_uri: str
    run_id: str | None
    dataset_version: str | None
    loaded_at: str

    def to_dict(self) -> dict[str, Any]:
        """The ``/metadata`` answer."""
        return asdict(self)


def resolve(source: str | None, cfg: RegistrySettings) -> tuple[str, str | None]:
    """(version, alias) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Raises:
        ValueError: ``source`` is not a registry URI of ``cfg.model_name``.
        MlflowException: no such alias or version.
    """
    uri = source or model_uri(cfg)
    if not uri.startswith(SCHEME):
        raise ValueError(f"`model` must be a registry URI like {model_uri(cfg)}, got {uri!r}")
    rest = uri[len(SCHEME) :]
    name, at, alias = rest.partition("@")
    if not at:
        name, _, version = rest.partition("/")
        if not version.isdigit():
            raise ValueError(
                f"`model` must name an alias or a version: {model_uri(cfg)} or "
                f"models:/{cfg.model_name}/3, got {uri!r}"
            )
    if name != cfg.model_name:
        raise ValueError(
            f"`model` must be a version of the registered model {cfg.model_name!r} "
            f"(registry.model_name), got {uri!r}"
        )
    if not at:
        return version, None
    return str(MlflowClient().get_model_version_by_alias(name, alias).version), alias


def load_served(source: str | None, cfg: RegistrySettings) -> tuple[PyFuncModel, Served]:
    """Load the pyfunc model behind ``source`` (default: the champion) and describe it."""
    version, alias = resolve(source, cfg)
    mv = MlflowClient().get_model_version(cfg.model_name, version)
    exact = f"{SCHEME}{cfg.model_name}/{version}"
    model = mlflow.pyfunc.load_model(exact)
    served = Served(
        model_name=cfg.model_name,
        version=version,
        alias=alias,
        model_uri=exact,
        run_id=mv.run_id,
        dataset_version=(mv.tags or {}).get(TAG_DATASET_VERSION),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return model, served


class Current:
    """The model being served; ``swap`` replaces it between two requests (``reload``)."""

    def __init__(self, model: PyFuncModel, served: Served) -> None:
        self._lock = threading.Lock()
        self.model, self.served = model, served

    @property
    def metadata(self) -> Any:
        """The model's MLflow metadata (its signature: what MLflow parses requests with)."""
        return self.model.metadata

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """The pyfunc prediction of the model served when the request arrived."""
        with self._lock:
            model = self.model
        return model.predict(data, params=params)

    def swap(self, model: PyFuncModel, served: Served) -> None:
        """Serve ``model`` from the next request on."""
        with self._lock:
            self.model, self.served = model, served


def one_line(body: bytes) -> bytes:
    """A scoring-server error body with the model's message only.

    MLflow prefixes the model's message with a dump of the parsed request ("Failed to predict
    data '<frame>'. Error: ...", 1-4 KB) and adds a traceback; the answer keeps
    ``error_code`` and the text after the last ``Error:`` of such a prefix.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    message = str(doc.get("message", ""))
    if message.startswith(_MLFLOW_PREFIXES) and "Error: " in message:
        message = message.rsplit("Error: ", 1)[1]
    message = message.split("\nInput:", 1)[0].strip().strip("'")
    return json.dumps({"error_code": doc.get("error_code"), "message": message}).encode()


def build_app(current: Current, *, max_request_bytes: int) -> Any:
    """The ASGI app: MLflow's scoring app around ``current`` plus /metadata, headers, limits."""
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from mlflow.pyfunc.scoring_server import init

    app = init(current)  # type: ignore[arg-type]  # the PyFuncModel interface it uses

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {**current.served.to_dict(), "max_request_bytes": max_request_bytes}

    def refuse(status: int, code: str, message: str) -> Response:
        return JSONResponse({"error_code": code, "message": message}, status_code=status)

    @app.middleware("http")
    async def gfm_layer(request: Request, call_next: Any) -> Response:
        if request.url.path != "/invocations":
            return await call_next(request)
        length = request.headers.get("content-length")
        if length is None:
            return refuse(411, "LENGTH_REQUIRED", "requests must say their Content-Length")
        if int(length) > max_request_bytes:
            async for _ in request.stream():  # read and drop: the client can hear the answer
                pass
            return refuse(
                413,
                "REQUEST_TOO_LARGE",
                f"request body of {int(length):,} bytes is over the server's limit of "
                f"{max_request_bytes:,} (gfm serve --max-request-mb): send fewer observed "
                "checkpoints",
            )
        served = current.served  # the version that answers this request
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])
        if response.status_code == 400:
            body = one_line(body)
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length",)
        }
        headers[VERSION_HEADER] = served.version
        headers[MODEL_HEADER] = served.model_uri
        return Response(body, status_code=response.status_code, headers=headers)

    return app


def watch(current: Current, source: str | None, cfg: RegistrySettings, every_s: float) -> None:
    """Follow the alias: every ``every_s`` seconds, load and serve the version it moved to.

    Runs until the process ends (a daemon thread); a failed look-up or load is logged and the
    model being served stays.
    """

    def loop() -> None:
        while True:
            time.sleep(every_s)
            try:
                version, _ = resolve(source, cfg)
                if version != current.served.version:
                    model, served = load_served(source, cfg)
                    current.swap(model, served)
                    log.info("now serving %s (was %s)", served.model_uri, version)
            except Exception as err:  # keep serving what is loaded
                log.warning(
                    "reload of %s failed, still serving the loaded version: %s", source, err
                )

    threading.Thread(target=loop, name="gfm-serve-reload", daemon=True).start()


def serve(  # noqa: PLR0913 - keyword-only options of one server
    source: str | None,
    cfg: RegistrySettings,
    *,
    host: str = "127.0.0.1",
    port: int = 5001,
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    reload_s: float | None = None,
) -> None:
    """Serve ``source`` (default: the champion) until interrupted; see the module docstring.

    The tracking store must be configured (``gfm.tracking.use_store``).
    """
    import uvicorn

    model, served = load_served(source, cfg)
    current = Current(model, served)
    if reload_s:
        watch(current, source, cfg, reload_s)
    app = build_app(current, max_request_bytes=int(max_request_mb * 2**20))
    log.info("serving %s (alias %s) on http://%s:%d", served.model_uri, served.alias, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
