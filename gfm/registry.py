"""``gfm.registry.load("champion")``: the served forecaster, natively (torch), in one call.

A thin alias of ``gfm.tracking.registry`` for users and notebooks; part of the MLflow edge.

    from gfm.config import load_settings
    import gfm.registry
    forecaster = gfm.registry.load("champion", settings=load_settings("params.yaml"))
    w = forecaster.forecast(prefix, t)    # (T, D)
"""

from __future__ import annotations

from gfm.config import RegistrySettings, Settings
from gfm.interface import Forecaster

__all__ = ["load", "model_uri"]


def load(
    alias: str | None = None, *, version: str | None = None, settings: Settings | None = None
) -> Forecaster:
    """The forecaster behind an alias (default ``champion``) or a version of the model.

    Args:
        alias: ``champion``, ``challenger`` (default: ``registry.champion_alias``).
        version: a version number instead of an alias.
        settings: where the store is (``tracking.uri``) and the model's name (``registry``);
            default: the store MLflow is already pointed at (``MLFLOW_TRACKING_URI``) and
            the default registry settings.

    Returns:
        The forecaster, rebuilt from its config and weights (``forecast(prefix, t)``).
    """
    from gfm import tracking

    cfg = RegistrySettings()
    if settings is not None:
        tracking.use_store(settings.tracking)
        cfg = settings.registry
    return tracking.load(alias, cfg, version=version)


def model_uri(alias: str | None = None, settings: Settings | None = None) -> str:
    """``models:/gfm@champion`` for these settings (what ``mlflow.pyfunc.load_model`` takes)."""
    from gfm import tracking

    return tracking.model_uri(settings.registry if settings else RegistrySettings(), alias)
