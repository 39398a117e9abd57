"""The one forecaster folder: what GFM, every baseline and ``gfm train`` write, what every entry reads.

A saved forecaster is one folder, written atomically (built beside it, then swapped in)::

    forecaster.json       {"format_version": 2, "kind": "gfm", "class": "gfm.model.GFM",
                           "gfm_version": "0.1.0", "config": {...the class's settings...}}
    weights.safetensors   its tensors by name (absent when it has none); never a pickle

``kind`` picks the class from ``kinds()`` (``gfm`` -> ``gfm.model.GFM``, each key of
``gfm.baselines.BASELINES``, and classes added with ``register``); ``class`` is recorded for
people and never imported. A class saves with ``write`` and loads with ``read``; a registered
class of yours may instead write its own files, and ``save`` adds ``forecaster.json`` beside them.
``load`` reads any folder: ``GFM.load`` and ``gfm.baselines.load`` are the same format, the MLflow
pyfunc model logs this folder as its one artifact, and ``gfm forecast --model DIR`` reads it.

Folders written by gfm 0.1 are still read: ``forecaster.json`` format 1 with the forecaster in
``model/``, or a bare ``config.json`` with ``model.safetensors`` (GFM) or ``state.safetensors``
(a baseline).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from gfm.data.atomic import atomic_dir, read_json_object
from gfm.forecaster import Forecaster

__all__ = [
    "FILE",
    "FORMAT_VERSION",
    "WEIGHTS",
    "kind_in",
    "kind_of",
    "kinds",
    "load",
    "read",
    "register",
    "save",
    "write",
]

FILE = "forecaster.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 2
_LEGACY_CONFIG = "config.json"  # gfm 0.1: GFM.save and the baselines' save
_LEGACY_WEIGHTS = ("model.safetensors", "state.safetensors")
_LEGACY_MODEL_DIR = "model"  # gfm 0.1: `gfm train`'s folder held the forecaster here
_EXTRA: dict[str, type] = {}
_C = TypeVar("_C", bound=type)


# ----------------------------------------------------------------------------- kinds


def register(kind: str) -> Callable[[_C], _C]:
    """Class decorator: make ``kind`` load with ``cls.load(path)`` (for forecasters outside gfm).

    Args:
        kind: the name written to ``forecaster.json``; must not shadow a built-in kind.

    Raises:
        ValueError: ``kind`` is empty or already names a different class.
    """

    def add(cls: _C) -> _C:
        if not kind or not isinstance(kind, str):
            raise ValueError(f"`kind` must be a non-empty string, got {kind!r}")
        known = _EXTRA.get(kind)
        if known is not None and _qualname(known) != _qualname(cls):
            raise ValueError(
                f"`kind` {kind!r} already names {_qualname(known)}, cannot also name "
                f"{_qualname(cls)}"
            )
        _EXTRA[kind] = cls
        return cls

    return add


def kinds() -> dict[str, type]:
    """Every loadable kind: ``gfm`` (``gfm.model.GFM``), the baselines, and registered classes.

    Raises:
        ValueError: a registered kind shadows a built-in one.
    """
    from gfm.baselines import BASELINES  # imported here: both save through this module
    from gfm.model import GFM

    built_in: dict[str, type] = {"gfm": GFM, **BASELINES}
    clash = sorted(k for k in _EXTRA if k in built_in and built_in[k] is not _EXTRA[k])
    if clash:
        raise ValueError(f"registered forecaster kinds {clash} shadow built-in kinds")
    return {**built_in, **_EXTRA}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def kind_of(forecaster: Forecaster) -> str:
    """The kind ``forecaster`` is saved as: its ``name`` when that names its class, else its class.

    Raises:
        ValueError: its class is not a known kind, or is registered under several.
    """
    known = kinds()
    name = getattr(forecaster, "name", None)
    if isinstance(name, str) and known.get(name) is type(forecaster):
        return name
    matches = [k for k, cls in known.items() if cls is type(forecaster)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(
            f"{_qualname(type(forecaster))} is not a known forecaster kind; known kinds are "
            f"{sorted(known)} (add others with @gfm.saved.register(kind))"
        )
    raise ValueError(
        f"{_qualname(type(forecaster))} is registered under several kinds {matches}; set its "
        f"`name` to one of them"
    )


# ----------------------------------------------------------------------------- the folder


def _manifest(kind: str, cls: type | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
    from gfm import __version__

    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": kind}
    if cls is not None:
        doc["class"] = _qualname(cls)
    doc["gfm_version"] = __version__
    if config is not None:
        doc["config"] = json.loads(json.dumps(dict(config)))  # plain JSON, checked here
    return doc


def _check_replaceable(path: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or a forecaster folder."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path}: must be a folder to save a forecaster to, got a file")
    ours = (path / FILE).is_file() or (path / _LEGACY_CONFIG).is_file()
    if not ours and any(path.iterdir()):
        raise FileExistsError(
            f"{path}: must be empty or a saved forecaster to be replaced, got a folder of other files"
        )


def write(
    path: str | Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    cls: type | None = None,
) -> Path:
    """Write a forecaster folder: ``forecaster.json`` with ``config`` and ``weights.safetensors``.

    Args:
        path: the folder; an existing forecaster folder there is replaced, atomically.
        kind: the kind ``load`` rebuilds it as.
        config: the class's settings, JSON-serialisable.
        tensors: its weights by name (CPU copies are written).
        cls: the class, recorded by name.

    Returns:
        The folder.

    Raises:
        FileExistsError: ``path`` is a file or a folder of other files.
    """
    path = Path(path)
    _check_replaceable(path)
    manifest = _manifest(kind, cls, config)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_dir(path) as tmp:
        tmp.mkdir()
        if weights:
            save_file(weights, str(tmp / WEIGHTS))
        (tmp / FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _locate(path: Path) -> tuple[str, Path, dict[str, Any]]:
    """(kind, the folder its class reads, the document naming the kind) of a saved forecaster."""
    if (path / FILE).is_file():
        doc = read_json_object(path / FILE, "a saved forecaster's manifest")
        if doc.get("format") == 1 and (path / _LEGACY_MODEL_DIR).is_dir():
            return str(doc.get("kind")), path / _LEGACY_MODEL_DIR, doc
        if doc.get("format_version") != FORMAT_VERSION:
            got = doc.get("format_version", doc.get("format"))
            raise ValueError(
                f"{path / FILE}: `format_version` must be {FORMAT_VERSION}, got {got!r}"
            )
        return str(doc.get("kind")), path, doc
    if (path / _LEGACY_CONFIG).is_file():
        doc = read_json_object(path / _LEGACY_CONFIG, "a saved forecaster's config")
        if doc.get("format_version") == 1 and "name" in doc:
            return str(doc["name"]), path, doc
        raise ValueError(
            f"{path / _LEGACY_CONFIG}: `format_version` must be 1 with a `name` (a gfm 0.1 folder), "
            f"got {doc.get('format_version')!r}"
        )
    raise FileNotFoundError(f"{path / FILE}: not found; is {path} a saved forecaster's folder?")


def read(path: str | Path, *, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``config`` and tensors of a folder written by ``write`` for ``kind``.

    Raises:
        FileNotFoundError: no saved forecaster there.
        ValueError: the folder holds another kind, or another format version.
    """
    found, folder, doc = _locate(Path(path))
    if folder != Path(path):  # gfm 0.1 `gfm train` folder: the forecaster's own files in model/
        found, folder, doc = _locate(folder)
    if found != kind:
        raise ValueError(f"{folder}: saved forecaster `kind` must be {kind!r}, got {found!r}")
    if "format_version" in doc and doc["format_version"] == FORMAT_VERSION:
        config = doc.get("config")
        if not isinstance(config, dict):
            raise ValueError(f"{folder / FILE}: `config` must be an object, got {config!r}")
        weights = [WEIGHTS]
    else:  # gfm 0.1: config.json held {format_version, name, **settings} (a baseline's as `config`)
        config = doc.get("config") or {
            k: v for k, v in doc.items() if k not in ("format_version", "name")
        }
        weights = list(_LEGACY_WEIGHTS)
    tensors: dict[str, torch.Tensor] = {}
    for name in weights:
        if (folder / name).is_file():
            tensors = load_file(str(folder / name))
            break
    return config, tensors


def save(forecaster: Forecaster, path: str | Path) -> Path:
    """Save any forecaster of a known kind to ``path`` (the module's folder format).

    The built-in classes write the folder themselves (``write``); a registered class of yours
    may write its own files, and ``forecaster.json`` is added beside them.

    Raises:
        ValueError: its class is not a known kind (``kinds``).
        FileExistsError: ``path`` is a file or a folder of other files.
    """
    path = Path(path)
    kind = kind_of(forecaster)
    _check_replaceable(path)
    with atomic_dir(path) as tmp:
        forecaster.save(tmp)
        if not (tmp / FILE).is_file():
            (tmp / FILE).write_text(
                json.dumps(_manifest(kind, type(forecaster), None), indent=2) + "\n"
            )
    return path


def kind_in(path: str | Path) -> str:
    """The kind of the forecaster saved in a folder.

    Raises:
        FileNotFoundError: no saved forecaster there.
    """
    return _locate(Path(path))[0]


def load(path: str | Path) -> Forecaster:
    """Rebuild the forecaster saved in a folder: its kind's class, ``cls.load(folder)``.

    Everything is read into memory (the folder may be deleted afterwards).

    Raises:
        FileNotFoundError: no saved forecaster there.
        ValueError: an unknown kind (the message lists the known ones) or a malformed file.
    """
    kind, folder, _ = _locate(Path(path))
    known = kinds()
    if kind not in known:
        raise ValueError(
            f"{Path(path) / FILE}: `kind` must be one of {sorted(known)}, got {kind!r}"
        )
    return known[kind].load(folder)
