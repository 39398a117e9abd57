"""The model registry: register versions, gate promotion on a test metric, load by alias.

The only place that spells a registry URI (``models:/<name>@<alias>``). Aliases, not stages:
``champion`` serves, ``challenger`` holds the latest version that did not beat it.

Promotion rule (``cfg.metric``, ``cfg.greater_is_better``, relative ``cfg.margin``):

    better(new, old) = new - old >  margin * |old|   if greater is better
                       old - new >  margin * |old|   otherwise

The first version becomes champion. Every tag is written before the one alias call, so a failure
anywhere (bad metrics, a failing ``compare``, the store refusing a tag) leaves aliases as they
were.
"""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from gfm import saved
from gfm.config import RegistrySettings, Settings
from gfm.forecaster import Forecaster
from gfm.services import redact
from gfm.tracking.pyfunc import ARTIFACT_KEY
from gfm.tracking.runs import TAG_DATASET_VERSION, TAG_GIT_COMMIT, _sqlite_path, use_store

TAG_GIT = "gfm.git_commit"
TAG_RUN = "gfm.run_id"
TAG_DECISION = "gfm.promotion"
TAG_COMPARED_TO = "gfm.compared_to"
PARAM_TAG = "param."
METRIC_TAG = "metric."
_READY = "READY"
SCHEME = "models:/"  # a registry source, told apart from a folder


class PromotionError(RuntimeError):
    """Promotion stopped before any alias moved; the message says why."""


@dataclass(frozen=True)
class Decision:
    """What ``promote`` did.

    Attributes:
        version: the version that was judged.
        alias: the alias now on it (``cfg.champion_alias`` or ``cfg.challenger_alias``).
        promoted: whether it took the champion alias.
        previous_champion: the champion before the decision (None for the first version).
        metric: the metric compared (``cfg.metric``).
        value: the version's value of it.
        champion_value: the previous champion's value (None for the first version).
        reason: one line for logs and the version's tags.
    """

    version: str
    alias: str
    promoted: bool
    previous_champion: str | None
    metric: str
    value: float
    champion_value: float | None
    reason: str


def model_uri(cfg: RegistrySettings, alias: str | None = None) -> str:
    """``models:/<cfg.model_name>@<alias>`` (default alias: ``cfg.champion_alias``)."""
    return f"models:/{cfg.model_name}@{alias or cfg.champion_alias}"


def register(model_uri: str, cfg: RegistrySettings, tags: Mapping[str, Any] | None = None) -> str:
    """Register a logged model as a new version of ``cfg.model_name``, with provenance tags.

    When the model came from a run, the version is tagged with that run's id, dataset version
    (``gfm.dataset_version``), git commit (``gfm.git_commit``) and params (``param.<name>``);
    ``tags`` are added on top.

    Args:
        model_uri: the logged model (``ModelInfo.model_uri``, ``models:/m-<id>``).
        cfg: registry settings.
        tags: more version tags.

    Returns:
        The new version, as MLflow's string (``"1"``, ``"2"``, ...).
    """
    client = MlflowClient()
    version_tags = _run_provenance(client, model_uri)
    version_tags.update({k: str(v) for k, v in (tags or {}).items()})
    mv = mlflow.register_model(model_uri, cfg.model_name, tags=version_tags)
    return str(mv.version)


def _run_provenance(client: MlflowClient, uri: str) -> dict[str, str]:
    run_id = None
    if uri.startswith("models:/m-"):
        run_id = client.get_logged_model(uri[len("models:/") :].split("/")[0]).source_run_id
    elif uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/")[0]
    if not run_id:
        return {}
    run = client.get_run(run_id)
    tags = {TAG_RUN: run_id}
    if TAG_DATASET_VERSION in run.data.tags:
        tags[TAG_DATASET_VERSION] = run.data.tags[TAG_DATASET_VERSION]
    if TAG_GIT_COMMIT in run.data.tags:
        tags[TAG_GIT] = run.data.tags[TAG_GIT_COMMIT]
    tags.update({PARAM_TAG + k: v for k, v in run.data.params.items()})
    return tags


def promote(
    version: str | int,
    metrics: Mapping[str, float],
    cfg: RegistrySettings,
    *,
    compare: Callable[[str], float] | None = None,
) -> Decision:
    """Judge a registered version against the champion and move one alias.

    Steps, in this order: check the version (registered, READY, its run not failed) and the
    metric; read the champion's value (``compare(champion_version)`` re-scores it on the same
    test split; else its ``metric.<name>`` tag, its logged-model or its run metric); decide; tag
    the version with every metric (``metric.<name>``) and the decision; set the alias last.

    Promotions are serialised, so two at once cannot both be judged against the old champion
    and leave the worse one holding the alias (issue 15, item 2): on a sqlite store a file
    lock beside it (``promotion_lock``) makes the second wait for the first and judge against
    its result; on any store the champion alias is compared before and after it is set, and a
    promotion that finds it moved by another judges again (``_CAS_ATTEMPTS`` times at most).
    The returned decision (and the version's ``gfm.promotion`` tag) is the one the registry
    shows.

    Args:
        version: the version to judge.
        metrics: its test metrics; must hold ``cfg.metric`` as a finite number.
        cfg: registry settings (model name, aliases, metric, direction, margin).
        compare: scores a version on the current test split (for a champion whose stored value
            is stale or missing).

    Returns:
        The decision.

    Raises:
        ValueError: ``metrics`` lacks ``cfg.metric`` or it is not finite.
        PromotionError: anything failed before the alias moved (aliases are unchanged), or
            the champion kept moving under concurrent promotions.
    """
    version = str(version)
    value = _metric_value(metrics, cfg.metric)
    client = MlflowClient()
    with promotion_lock(mlflow.get_registry_uri()):
        for _ in range(_CAS_ATTEMPTS):
            decision = _judge(client, version, value, metrics, cfg, compare)
            if decision.previous_champion == version or _aliased(client, cfg, decision):
                return decision
    raise PromotionError(
        f"promote {cfg.model_name} version {version}: the {cfg.champion_alias} alias moved "
        f"under {_CAS_ATTEMPTS} concurrent promotions in a row; run the promotion again"
    )


# Judgements one promotion makes at most when other promotions keep moving the champion.
_CAS_ATTEMPTS = 5


@contextmanager
def promotion_lock(registry_uri: str) -> Iterator[Path | None]:
    """Hold the store's promotion lock for the ``with`` block; yields the lock file, if any.

    For a sqlite store, ``<store>.promote.lock`` beside it, held with the kernel's
    ``fcntl.flock`` (waits for the holder; a holder that dies releases it). Other stores (an
    MLflow server, PostgreSQL) give no lock here: ``promote`` relies on its alias re-check.
    """
    try:
        db = _sqlite_path(registry_uri)
    except ValueError:  # a relative path: sqlite opens it from the working directory
        relative = registry_uri.removeprefix("sqlite:///")
        db = None if ":memory:" in registry_uri else Path(relative).resolve()
    if db is None or not db.parent.is_dir():
        yield None
        return
    path = db.with_name(db.name + ".promote.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiter)


def _judge(
    client: MlflowClient,
    version: str,
    value: float,
    metrics: Mapping[str, float],
    cfg: RegistrySettings,
    compare: Callable[[str], float] | None,
) -> Decision:
    """Decide champion or challenger against the current champion and tag the version.

    Raises:
        PromotionError: anything failed (no alias has moved).
    """
    try:
        _check_version(client, cfg.model_name, version)
        champion = _alias_version(client, cfg.model_name, cfg.champion_alias)
        if champion == version:  # a retried promotion: nothing to do
            return Decision(
                version=version,
                alias=cfg.champion_alias,
                promoted=True,
                previous_champion=champion,
                metric=cfg.metric,
                value=value,
                champion_value=value,
                reason=f"already {cfg.champion_alias}; nothing changed",
            )
        champion_value = (
            None if champion is None else _champion_value(client, cfg, champion, compare)
        )
        promoted, reason = _decide(value, champion, champion_value, cfg)
        alias = cfg.champion_alias if promoted else cfg.challenger_alias
        tags = {METRIC_TAG + k: _text(v) for k, v in metrics.items()}
        tags[TAG_DECISION] = f"{alias}: {reason}"
        if champion is not None:
            tags[TAG_COMPARED_TO] = champion
        for key, text in tags.items():
            client.set_model_version_tag(cfg.model_name, version, key, text)
    except PromotionError:
        raise
    except Exception as err:
        raise PromotionError(
            f"promote {cfg.model_name} version {version}: {type(err).__name__}: {err} "
            f"(aliases unchanged)"
        ) from err
    return Decision(
        version=version,
        alias=alias,
        promoted=promoted,
        previous_champion=champion,
        metric=cfg.metric,
        value=value,
        champion_value=champion_value,
        reason=reason,
    )


def _aliased(client: MlflowClient, cfg: RegistrySettings, decision: Decision) -> bool:
    """Set the decision's alias if the champion is still the one judged against.

    Returns False, with the alias unset or taken over, when another promotion moved the
    champion before or just after this one set it: the caller judges again.
    """
    name, version = cfg.model_name, decision.version
    if _alias_version(client, name, cfg.champion_alias) != decision.previous_champion:
        return False
    # The single alias call: everything about this version is written by now.
    client.set_registered_model_alias(name, decision.alias, version)
    if not decision.promoted:
        return True
    if _alias_version(client, name, cfg.champion_alias) != version:
        return False  # another promotion set it meanwhile, maybe judged against the old one
    if _alias_version(client, name, cfg.challenger_alias) == version:
        client.delete_registered_model_alias(name, cfg.challenger_alias)
    return True


def _metric_value(metrics: Mapping[str, float], name: str) -> float:
    if name not in metrics:
        raise ValueError(
            f"`metrics` must hold registry.metric `{name}`, got keys {sorted(metrics)}"
        )
    try:
        value = float(metrics[name])
    except (TypeError, ValueError):
        raise ValueError(f"`metrics[{name!r}]` must be a number, got {metrics[name]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"`metrics[{name!r}]` must be finite, got {value}")
    return value


def _check_version(client: MlflowClient, name: str, version: str) -> None:
    mv = client.get_model_version(name, version)
    if mv.status != _READY:
        raise PromotionError(f"version {version} of {name} is {mv.status}, not {_READY}")
    if mv.run_id:
        status = client.get_run(mv.run_id).info.status
        if status in ("FAILED", "KILLED"):
            raise PromotionError(
                f"version {version} of {name} comes from run {mv.run_id}, which {status}; "
                f"a model whose logging failed is never given an alias"
            )


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _champion_value(
    client: MlflowClient,
    cfg: RegistrySettings,
    champion: str,
    compare: Callable[[str], float] | None,
) -> float:
    where = f"champion version {champion}"
    if compare is not None:
        raw: Any = compare(champion)
        where += " re-scored by `compare`"
    else:
        mv = client.get_model_version(cfg.model_name, champion)
        raw = mv.tags.get(METRIC_TAG + cfg.metric)
        if raw is None:
            raw = next((m.value for m in (mv.metrics or []) if m.key == cfg.metric), None)
        if raw is None and mv.run_id:
            raw = client.get_run(mv.run_id).data.metrics.get(cfg.metric)
        if raw is None:
            raise PromotionError(
                f"{where} has no value of `{cfg.metric}` (tag, model or run metric); pass "
                f"`compare` to re-score it on the same test split"
            )
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise PromotionError(f"{where}: `{cfg.metric}` must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise PromotionError(f"{where}: `{cfg.metric}` must be finite, got {value}")
    return value


def _decide(
    value: float, champion: str | None, champion_value: float | None, cfg: RegistrySettings
) -> tuple[bool, str]:
    if champion is None or champion_value is None:
        return True, "first version: no champion yet"
    gain = value - champion_value if cfg.greater_is_better else champion_value - value
    needed = cfg.margin * abs(champion_value)
    direction = "higher" if cfg.greater_is_better else "lower"
    verdict = f"{cfg.metric}={value:.6g} vs champion v{champion} {champion_value:.6g}"
    if gain > needed:
        return True, f"{verdict}: {direction} by {gain:.3g} > margin {needed:.3g}"
    return False, f"{verdict}: not {direction} by more than margin {needed:.3g}"


def _text(value: Any) -> str:
    return repr(float(value)) if isinstance(value, int | float) else str(value)


def find_version(run_id: str, cfg: RegistrySettings) -> str | None:
    """The version of ``cfg.model_name`` already registered from run ``run_id``, if any.

    Registering is then skipped, so a retried or repeated promotion judges the same version
    instead of adding a duplicate.
    """
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{cfg.model_name}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    mine = [mv for mv in versions if mv.run_id == run_id or mv.tags.get(TAG_RUN) == run_id]
    return str(max(int(mv.version) for mv in mine)) if mine else None


def missing_artifacts(uri: str) -> str | None:
    """Which version a registry URI names and where its missing artifacts were; None otherwise.

    For ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` whose version exists in the
    store MLflow points at but whose artifact location holds nothing (deleted, or another
    machine's folder): ``"version 3 of gfm (alias champion): no artifacts at <location>"``.
    None when the URI names no such version or its artifacts are there: the failure was another.
    """
    if not uri.startswith(SCHEME):
        return None
    name, sep, alias = uri[len(SCHEME) :].partition("@")
    client = MlflowClient()
    try:
        if sep:
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            name, _, version = name.partition("/")
            version = version.split("/", 1)[0]
            client.get_model_version(name, version)
        location = client.get_model_version_download_uri(name, version)
        if mlflow.artifacts.list_artifacts(artifact_uri=location):
            return None
    except Exception:  # noqa: BLE001 - only a better message is at stake: the caller has one
        return None
    via = f" (alias {alias})" if sep else ""
    return f"version {version} of {name}{via}: no artifacts at {redact(location)}"


def load(
    alias: str | None = None, cfg: RegistrySettings | None = None, *, version: str | None = None
) -> Forecaster:
    """Load the forecaster behind an alias (or a version) natively, without the pyfunc wrapper.

    Args:
        alias: the alias (default: ``cfg.champion_alias``).
        cfg: registry settings (default: ``RegistrySettings()``).
        version: a version number instead of an alias.

    Returns:
        The forecaster, rebuilt by ``gfm.saved.load`` from its config and weights.
    """
    cfg = cfg or RegistrySettings()
    uri = f"models:/{cfg.model_name}/{version}" if version else model_uri(cfg, alias)
    with tempfile.TemporaryDirectory(prefix="gfm-load-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri}/artifacts/{ARTIFACT_KEY}", dst_path=tmp
        )
        return saved.load(Path(local))


def load_pyfunc(alias: str | None = None, cfg: RegistrySettings | None = None) -> PyFuncModel:
    """Load the pyfunc model behind an alias (request frame in, answer frame out)."""
    return mlflow.pyfunc.load_model(model_uri(cfg or RegistrySettings(), alias))


def load_model(source: str | Path, settings: Settings | None = None) -> Forecaster:
    """A forecaster from a folder or from the registry, natively (torch), in one call.

        folder                    -> the forecaster saved there
        "models:/<name>@<alias>"  -> the version behind the alias, e.g. ``models:/gfm@champion``

    Args:
        source: a forecaster folder, or a registry URI naming ``registry.model_name``.
        settings: where the store is (``tracking``) and the model's name (``registry``);
            default: the store MLflow already points at and the default registry settings.

    Returns:
        The forecaster (``forecast(prefix, t)``), read into memory.

    Raises:
        FileNotFoundError: a folder that does not exist.
        ValueError: a registry URI without an alias, or naming another registered model.
    """
    if not (isinstance(source, str) and source.startswith(SCHEME)):
        return saved.load(source)
    cfg = settings.registry if settings is not None else RegistrySettings()
    name, sep, alias = source[len(SCHEME) :].partition("@")
    if not sep or not name or not alias:
        raise ValueError(f"`source` must be a registry URI models:/<name>@<alias>, got {source!r}")
    if name != cfg.model_name:
        raise ValueError(
            f"`source` must name the configured registered model ({model_uri(cfg, alias)}), "
            f"got {source!r}"
        )
    if settings is not None:
        use_store(settings.tracking)
    return load(alias, cfg)
