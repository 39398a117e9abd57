"""Typed settings for every part of gfm, loaded once from ``params.yaml``.

The YAML file's top-level sections map one-to-one onto the classes below
(``data``, ``gfm``, ``train``, ``tune``, ``evaluate``, ``registry``, ``tracking``, ``schedule``,
``team``).
Every model is frozen and rejects unknown keys, so a typo in ``params.yaml``
fails at load time with the key's dotted path instead of being ignored.

Overrides, strongest last:
    params.yaml  <  environment ``GFM_<SECTION>__<KEY>=value``  <  ``--set section.key=value``

Team mode is one switch: ``team.enabled: true`` (or ``GFM_TEAM__ENABLED=true``, or
``--set team.enabled=true``) lays the values under ``team:`` (same section and key names:
``team.tracking.uri`` replaces ``tracking.uri``) over params.yaml, below the environment and
``--set``; see docs/team.md.

Values of overrides are parsed as YAML (``--set data.seeds=8``, ``--set data.optimizers=[sgd,adam]``).
``load_settings`` is the only function in gfm that reads the params file.
"""

from gfm.config.load import (
    ENV_PREFIX,
    SettingsError,
    apply_params,
    env_overrides,
    load_section,
    load_settings,
    parse_overrides,
    product_overrides,
)
from gfm.config.sections import (
    DataSettings,
    EvaluateSettings,
    GFMSettings,
    OptimizerSpace,
    Range,
    RegistrySettings,
    ScheduleSettings,
    SearchParam,
    SearchSpace,
    Settings,
    SplitSettings,
    TaskSettings,
    TeamSettings,
    TrackingSettings,
    TrainSettings,
    TuneSettings,
)

__all__ = [
    "DataSettings",
    "ENV_PREFIX",
    "EvaluateSettings",
    "GFMSettings",
    "OptimizerSpace",
    "Range",
    "RegistrySettings",
    "ScheduleSettings",
    "SearchParam",
    "SearchSpace",
    "Settings",
    "SettingsError",
    "SplitSettings",
    "TaskSettings",
    "TeamSettings",
    "TrackingSettings",
    "TrainSettings",
    "TuneSettings",
    "apply_params",
    "env_overrides",
    "load_section",
    "load_settings",
    "parse_overrides",
    "product_overrides",
]
