"""Reading settings: params.yaml, the team overlay, the environment and ``--set``, in that order.

``load_settings`` is the only function in gfm that reads the params file; ``load_section``
reads a settings file of one part the same way (the jump benchmark's own settings).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gfm.config.sections import _TEAM_SECTIONS, Settings, TeamSettings

ENV_PREFIX = "GFM_"
_M = TypeVar("_M", bound=BaseModel)


class SettingsError(ValueError):
    """params.yaml (or an override) does not describe valid settings; the message names the key."""


REMOVED = {  # keys of gfm 0.1 that moved or went, and where to
    "accelerate": "the jump benchmark's settings moved to their own file, "
    "benchmarks/accelerate.yaml (`gfm bench jumps --bench FILE`, --set accelerate.KEY=VALUE)",
    "gfm.adjoint": "removed: it had no effect (forecasts run without gradients)",
}


def _check_removed(tree: Mapping[str, Any], source: str) -> None:
    for dotted, why in REMOVED.items():
        node: Any = tree
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            raise SettingsError(f"{source}: {dotted}: {why}; delete it from the file")


def _defaults_tree() -> dict[str, Any]:
    """The built-in settings as the plain tree a params file would spell them."""
    return Settings().model_dump(mode="json")


def _set_dotted(
    tree: dict[str, Any],
    dotted: str,
    value: Any,
    source: str,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sections on the way.

    A section the tree leaves out is first filled from ``defaults`` (the same path there), so
    an override changes one key of the effective settings and never replaces its siblings:
    ``data.optimizers.sgd.lr.low`` on a file without ``data.optimizers`` keeps the other four
    optimizers, and sgd's ``lr.high``.
    """
    keys = dotted.split(".")
    if not all(keys):
        raise SettingsError(f"{source}: key must be dotted like `data.seeds`, got {dotted!r}")
    node, default = tree, defaults
    for key in keys[:-1]:
        default = default.get(key) if isinstance(default, Mapping) else None
        if key not in node:
            node[key] = copy.deepcopy(default) if isinstance(default, Mapping) else {}
        child = node[key]
        if not isinstance(child, dict):
            raise SettingsError(f"{source}: `{dotted}`: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """Turn ``["data.seeds=8", ...]`` into ``{"data.seeds": 8, ...}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{source}: expected KEY=VALUE like `data.seeds=8`, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise SettingsError(f"{source}: value of `{key}` is not valid YAML: {err}") from err
    return out


def _env_origins(environ: Mapping[str, str]) -> dict[str, str]:
    """``{dotted key: "environment variable GFM_..."}`` of the ``GFM_<SECTION>__<KEY>`` variables."""
    return {
        name[len(ENV_PREFIX) :].lower().replace("__", "."): f"environment variable {name}"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and "__" in name
    }


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Overrides from ``GFM_<SECTION>__<KEY>`` variables, e.g. ``GFM_TRACKING__URI``.

    Raises:
        SettingsError: a value is not valid YAML; the message names the variable.
    """
    out: dict[str, Any] = {}
    for dotted, origin in _env_origins(environ).items():
        name = origin.rpartition(" ")[2]
        out.update(parse_overrides([f"{dotted}={environ[name]}"], source=origin))
    return out


_SCALARS = (str, int, float, bool, type(None))


def _blame(where: str, origins: Mapping[str, str], source: str) -> str:
    """Who set the key ``where``: the override that set it (or a key inside it), else ``source``.

    An override of ``data.seeds`` is blamed for an error at ``data.seeds`` (or below it) and for
    one its section reports (``data``: "val_seeds ... smaller than seeds"); the longest match wins.
    """
    below = [k for k in origins if where == k or where.startswith(k + ".")]
    if below:
        return origins[max(below, key=len)]
    inside = [k for k in origins if k.startswith(where + ".")]
    return origins[min(inside, key=len)] if inside else source


def _format_error(
    err: ValidationError, source: str, origins: Mapping[str, str] | None = None
) -> str:
    """One line per error: ``<who set it>: <dotted key>: <what it must be>, got <value>``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the valid keys)"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif e["type"] != "missing" and isinstance(e.get("input"), _SCALARS):
            msg = f"{msg}, got {e['input']!r}"  # the expected form, then what was given
        lines.append(f"{_blame(where, origins or {}, source)}: {where}: {msg}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = "params.yaml",
    overrides: Mapping[str, Any] | Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read, override and validate settings.

    Args:
        path: the params file; ``None`` (or a missing default ``params.yaml``) uses built-in defaults.
            An empty file is refused (``{}`` is the file that means "every default").
        overrides: ``{"data.seeds": 8}`` or ``["data.seeds=8"]``, applied last. Each changes one
            key of the effective settings: a section the file leaves out starts from its
            defaults, so its other keys (``data.optimizers``' other optimizers) stay.
        environ: environment to read ``GFM_*__*`` overrides from (default ``os.environ``).

    Returns:
        Frozen, validated settings; relative paths in ``data.root``, ``evaluate.output_dir``,
        ``train.model_dir`` and a relative sqlite ``tracking.uri``/``tune.storage`` are made
        absolute against the params file's folder (so DVC's temp-dir experiments and other
        working directories agree); an unset ``tune.storage`` becomes ``optuna.db`` beside the
        MLflow sqlite store.

    Raises:
        SettingsError: the file is unreadable, empty or not a mapping, or a key or value is
            invalid; the message names the file (or the ``--set`` or environment variable that
            set the value) and the dotted key.
    """
    source = str(path) if path is not None else "defaults"
    tree, base = _read_params(path, source)
    environ = os.environ if environ is None else environ
    env = env_overrides(environ)
    explicit = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    origins = {**_env_origins(environ), **{k: f"--set {k}" for k in explicit}}
    layers = (("environment", env), ("--set", explicit))
    tree = _with_team(tree, layers)
    _check_removed(tree, source)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as err:
        raise SettingsError(_format_error(err, source, origins)) from None
    return _resolve_paths(settings, base)


def _read_params(path: str | Path | None, source: str) -> tuple[dict[str, Any], Path]:
    """The params file's tree and the folder its relative paths resolve against.

    No file (``None``, or a default ``params.yaml`` that does not exist) gives ``{}`` and the
    working directory. An empty file (or one of comments only) is refused: it is far more often
    a truncated or wrong file than a wish for the whole default job; ``{}`` says "the defaults".
    """
    if path is None:
        return {}, Path.cwd()
    p = Path(path)
    if not p.exists():
        if str(path) != "params.yaml":
            raise SettingsError(f"{source}: file not found")
        return {}, Path.cwd()
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SettingsError(f"{source}: not valid YAML: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{source}: must be a readable YAML file, got {err}") from None
    if loaded is None:
        raise SettingsError(
            f"{source}: must hold settings, got an empty file; write the keys to change "
            "(see params.yaml), or `{}` to run on every default"
        )
    if not isinstance(loaded, dict):
        raise SettingsError(f"{source}: must be a mapping of sections, got {type(loaded).__name__}")
    return loaded, p.resolve().parent


def _with_team(
    tree: dict[str, Any], layers: Sequence[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """The settings tree: params.yaml, the team's values if team mode is on, then ``layers``.

    Whether team mode is on is read after every layer (``GFM_TEAM__ENABLED=true`` switches it
    on); the team's values go below the environment and ``--set``, which stay the strongest.
    """
    defaults = _defaults_tree()

    def applied(base: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for source_name, items in layers:
            for dotted, value in items.items():
                _set_dotted(out, dotted, value, source_name, defaults)
        return out

    final = applied(tree)
    team = final.get("team")
    if not isinstance(team, dict) or team.get("enabled") is not True:
        return final
    try:
        overlay = TeamSettings.model_validate(team)
    except ValidationError:
        return final  # validating the whole tree names the bad `team.` key
    base = copy.deepcopy(tree)
    for section in _TEAM_SECTIONS:
        for key, value in getattr(overlay, section).items():
            _set_dotted(base, f"{section}.{key}", value, f"team.{section}", defaults)
    return applied(base)


def apply_params(settings: Settings, params: Mapping[str, Any]) -> Settings:
    """Settings with dotted ``params`` applied and validated, e.g. a tuning trial's choices.

    Args:
        settings: loaded settings (paths already absolute).
        params: ``{"gfm.width": 128, "train.lr": 3e-4}``: ``section.key`` of a top-level section.

    Returns:
        New frozen settings.

    Raises:
        SettingsError: a key is not ``section.key`` of a known section, or a value is invalid.
    """
    updates: dict[str, dict[str, Any]] = {}
    for dotted, value in params.items():
        section, _, key = dotted.partition(".")
        if section not in Settings.model_fields or not key or "." in key:
            raise SettingsError(
                f"params: key must be `section.key` of {list(Settings.model_fields)}, "
                f"got {dotted!r}"
            )
        updates.setdefault(section, {})[key] = value
    changed = {}
    for section, values in updates.items():
        current = getattr(settings, section)
        try:
            changed[section] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as err:
            raise SettingsError(_format_error(err, f"params ({section})")) from None
    return settings.model_copy(update=changed)


def _abs_sqlite(uri: str, base: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str((base / uri[len(prefix) :]).resolve())
    return uri


def _tune_storage(s: Settings, base: Path) -> str:
    """``tune.storage`` made absolute; when unset, ``optuna.db`` beside the MLflow sqlite store."""
    if s.tune.storage is not None:
        return _abs_sqlite(s.tune.storage, base)
    tracking = _abs_sqlite(s.tracking.uri, base)
    prefix = "sqlite:///"
    if tracking.startswith(prefix) and ":memory:" not in tracking:
        return prefix + str(Path(tracking[len(prefix) :]).parent / "optuna.db")
    return prefix + str((base / "optuna.db").resolve())


def _resolve_paths(s: Settings, base: Path) -> Settings:
    def absolute(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    return s.model_copy(
        update={
            "data": s.data.model_copy(update={"root": absolute(s.data.root)}),
            "evaluate": s.evaluate.model_copy(
                update={"output_dir": absolute(s.evaluate.output_dir)}
            ),
            "train": s.train.model_copy(update={"model_dir": absolute(s.train.model_dir)}),
            "tracking": s.tracking.model_copy(update={"uri": _abs_sqlite(s.tracking.uri, base)}),
            "tune": s.tune.model_copy(update={"storage": _tune_storage(s, base)}),
        }
    )


def load_section(
    model: type[_M],
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    section: str,
    base: Path | None = None,
) -> _M:
    """Read and validate the settings file of one part (``section``), as ``load_settings`` does.

    The file holds the section's keys at its top level; ``overrides`` whose key starts with
    ``<section>.`` apply last (others are not this section's and are left out).

    Args:
        model: the section's frozen settings model.
        path: its file; None, or a file that does not exist, gives the model's defaults.
        overrides: ``["section.key=value", ...]`` (values parsed as YAML).
        section: the dotted prefix of its keys in overrides and messages.
        base: the folder relative ``Path`` fields are resolved against (default: the cwd).

    Returns:
        The validated settings, relative paths made absolute.

    Raises:
        SettingsError: the file is unreadable or not a mapping, or a key or value is invalid;
            the message names the file and ``<section>.<key>``.
    """
    source = str(path) if path is not None else "defaults"
    tree: dict[str, Any] = {}
    if path is not None and Path(path).is_file():
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            raise SettingsError(f"{source}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{source}: must be a mapping of keys, got {type(loaded).__name__}")
        tree = {section: loaded or {}}
    mine = [o for o in overrides if o.partition("=")[0].strip().startswith(section + ".")]
    for dotted, value in parse_overrides(mine).items():
        _set_dotted(tree, dotted, value, "--set")
    try:
        cfg = model.model_validate(tree.get(section, {}))
    except ValidationError as err:
        message = _format_error(err, source)
        raise SettingsError(message.replace(f"{source}: ", f"{source}: {section}.")) from None
    folder = (base or Path.cwd()).resolve()
    paths = {
        name: (folder / value).resolve()
        for name, value in cfg
        if isinstance(value, Path) and not value.expanduser().is_absolute()
    }
    return cfg.model_copy(update=paths)


def product_overrides(overrides: Sequence[str], sections: Sequence[str]) -> list[str]:
    """The overrides that are not for the separately loaded ``sections`` (``load_section``)."""
    return [
        o
        for o in overrides
        if not any(o.partition("=")[0].strip().startswith(s + ".") for s in sections)
    ]
