"""Where the workflow's steps write, and what they share: the layout, JSON files, the dataset.

Steps hand each other files (``Layout``) and MLflow ids, never live objects:

    tune      -> reports/tune.json       best params (dotted keys), study, counts
    train     -> models/gfm/             the forecaster folder
                 reports/train.json      dataset version, tuned params, val metrics
                 reports/train_history.csv
    evaluate  -> reports/metrics.json    test metrics of the model and each baseline
                 reports/results.{csv,md}, reports/horizon.{csv,png}, reports/trajectories.png
    promote   -> reports/promotion.json  version, alias, decision

The files above are DVC metrics, plots and outputs kept in git: they hold only what the same
settings and data reproduce on any machine. What one machine's run adds (MLflow run ids, the
logged model's URI, absolute paths, timings) goes to the step's record in ``reports/local/``
(``tune.json``, ``train.json``, ``evaluate.json``: the full document, ignored by git), which is
what the next step reads for ids.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gfm.config import (
    ENV_PREFIX,
    DataSettings,
    Settings,
    SettingsError,
    env_overrides,
    parse_overrides,
)
from gfm.data.atomic import write_json
from gfm.data.format import MANIFEST_FILE
from gfm.data.splits import describe_rule, imported, split_remedy
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index
from gfm.ops import versioning

log = logging.getLogger("gfm.ops")

STEPS = ("generate", "tune", "train", "evaluate")  # the DVC stages, in order

# What a step's tracked file leaves to its record in reports/local/: it differs between machines
# (MLflow ids, absolute paths, timings) or between a first run and a resumed one.
MACHINE_KEYS = {
    "tune": ("run_id", "storage", "seconds", "n_new", "workers"),
    "train": ("run_id", "experiment_id", "model_uri", "model_dir"),
    "evaluate": ("run_id", "model_dir"),
}
TIMINGS = ("train/seconds", "forecast_seconds")  # columns and metrics left to MLflow


@dataclass(frozen=True)
class Layout:
    """Where the steps write, from the settings (``evaluate.output_dir``, ``train.model_dir``)."""

    reports: Path
    model_dir: Path

    @property
    def tune_json(self) -> Path:
        """Best params and the study's counts."""
        return self.reports / "tune.json"

    @property
    def train_json(self) -> Path:
        """The training run: ids, model URI, dataset version, val metrics."""
        return self.reports / "train.json"

    @property
    def history_csv(self) -> Path:
        """Per-evaluation losses of the training run (DVC plot)."""
        return self.reports / "train_history.csv"

    @property
    def metrics_json(self) -> Path:
        """Test metrics of the model and each baseline."""
        return self.reports / "metrics.json"

    @property
    def results_csv(self) -> Path:
        """One row per method x run x observed fraction."""
        return self.reports / "results.csv"

    @property
    def results_md(self) -> Path:
        """Per method x task x fraction means, as markdown."""
        return self.reports / "results.md"

    @property
    def horizon_csv(self) -> Path:
        """Error vs horizon (DVC plot)."""
        return self.reports / "horizon.csv"

    @property
    def horizon_png(self) -> Path:
        """Error vs horizon, one panel per observed fraction."""
        return self.reports / "horizon.png"

    @property
    def trajectories_png(self) -> Path:
        """A few parameters of one test run with every method's forecast."""
        return self.reports / "trajectories.png"

    @property
    def promotion_json(self) -> Path:
        """The registry decision."""
        return self.reports / "promotion.json"

    def tracked(self, step: str) -> Path:
        """The file of ``step`` that DVC tracks and git keeps: tune.json, train.json, metrics.json."""
        return {"tune": self.tune_json, "train": self.train_json, "evaluate": self.metrics_json}[
            step
        ]

    @property
    def local(self) -> Path:
        """This machine's step records: MLflow ids, absolute paths, timings (not in git)."""
        return self.reports / "local"

    @property
    def tune_run(self) -> Path:
        """The tune step's full record: tune.json plus the tune run id, storage, timings."""
        return self.local / "tune.json"

    @property
    def train_run(self) -> Path:
        """The train step's full record: train.json plus run id, logged model URI, folder."""
        return self.local / "train.json"

    @property
    def evaluate_run(self) -> Path:
        """The evaluate step's full record: metrics.json plus the run id the metrics went to."""
        return self.local / "evaluate.json"


def layout(settings: Settings) -> Layout:
    """The output paths of the steps for these settings."""
    return Layout(reports=settings.evaluate.output_dir, model_dir=settings.train.model_dir)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a step's JSON output.

    Raises:
        FileNotFoundError: the file is missing; the message names the step that writes it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found; run `gfm {what}` first")
    return json.loads(Path(path).read_text())


def write_step(out: Layout, step: str, doc: Mapping[str, Any]) -> None:
    """Write a step's record to ``reports/local/<step>.json`` and its tracked file.

    The tracked file (tune.json, train.json, metrics.json) is ``doc`` without its
    ``MACHINE_KEYS``: the same wherever the step runs.
    """
    write_json(out.local / f"{step}.json", dict(doc))
    write_json(out.tracked(step), {k: v for k, v in doc.items() if k not in MACHINE_KEYS[step]})


def read_step(out: Layout, step: str) -> dict[str, Any]:
    """A step's full record when it belongs to the tracked file, else the tracked file alone.

    The local record belongs when its reproducible part equals the tracked file: a step that
    DVC skipped on this machine (fresh clone, checked-out reports) has only the tracked file,
    without MLflow ids.

    Raises:
        FileNotFoundError: the tracked file is missing; the message names the step.
    """
    doc = read_json(out.tracked(step), step)
    local = out.local / f"{step}.json"
    if local.is_file():
        full = json.loads(local.read_text())
        if {k: v for k, v in full.items() if k not in MACHINE_KEYS[step]} == doc:
            return full
    return doc


def step_run_id(out: Layout, step: str) -> str | None:
    """The MLflow run of this machine's record of ``step``, if it has one that is current."""
    try:
        return read_step(out, step).get("run_id")
    except FileNotFoundError:
        return None


def read_tuned(path: Path | None) -> dict[str, Any]:
    """tune.json of the tune step (``best_params`` by dotted key, study, best trial, run id).

    None or a missing file is ``{}``: train with the settings as they are.
    """
    if path is None or not Path(path).is_file():
        return {}
    return read_json(Path(path), "tune")


# ----------------------------------------------------------------------------- data


def dataset_version(root: Path) -> str:
    """The dataset's version: DVC's md5 of the folder (``data.dvc``) when it describes it.

    Otherwise (no DVC, or the folder changed since the last ``dvc add``) the dataset's own content
    hash from its manifest, as ``gfm-<32 hex>``; both fit MLflow's 36-character digest.
    """
    md5 = versioning.current_version(root)
    if md5 is not None:
        return md5
    if root.with_suffix(".dvc").is_file():
        log.warning(
            "%s.dvc does not describe %s any more (run `dvc add %s`); using the dataset hash",
            root.name,
            root,
            root.name,
        )
    return "gfm-" + Trajectories(root).manifest.hash[:32]


def run_name(step: str, what: str, version: str | None) -> str:
    """An MLflow run's display name: ``<step> <what> data-<8 hex>`` (step, model, data version).

    >>> run_name("train", "gfm-free+prior", "ec778557f8fe49e8bfefab253f14b07e.dir")
    'train gfm-free+prior data-ec778557'
    """
    short = (version or "").removeprefix("gfm-")[:8]
    return f"{step} {what}" + (f" data-{short}" if short else "")


def override_sources(
    overrides: Sequence[str] | None = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Who set each overridden key: ``{"data.seeds": "--set data.seeds", ...}``.

    The ``GFM_<SECTION>__<KEY>`` variables of ``environ`` (default ``os.environ``), then the
    ``--set`` pairs, which win, as in ``load_settings``.

    Raises:
        SettingsError: a pair is not ``KEY=VALUE`` or a value is not valid YAML.
    """
    environ = os.environ if environ is None else environ
    sources = {
        key: f"environment variable {ENV_PREFIX}{key.upper().replace('.', '__')}"
        for key in env_overrides(environ)
    }
    return sources | {key: f"--set {key}" for key in parse_overrides(list(overrides or []))}


_SPLIT_KINDS = {  # the split settings and the split kind each decides
    "data.seeds": "seed",
    "data.splits.val_seeds": "seed",
    "data.splits.test_seeds": "seed",
    "data.splits.holdout_archs": "architecture",
    "data.splits.holdout_optimizer": "optimizer",
}


def _split_conflicts(data: DataSettings, rules: Mapping[str, Any]) -> list[str]:
    """The split settings (dotted keys) that disagree with the dataset's ``splits.rules``.

    An imported dataset has no generation plan, so ``data.seeds`` never applies to it, nor
    ``val_seeds``/``test_seeds`` when the import decided each run's part (``given``); any other
    setting conflicts when it differs from the rule recorded in the manifest.
    """
    out = []
    for key in _SPLIT_KINDS:
        name = key.rpartition(".")[2]
        if (
            key == "data.seeds"
            and imported(rules)
            or name in ("val_seeds", "test_seeds")
            and rules.get("given") is not None
            or _value(data, key.removeprefix("data.")) != rules.get(name)
        ):
            out.append(key)
    return out


def _value(node: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def _touches(key: str, setting: str) -> bool:
    """Whether an override of ``key`` sets ``setting`` (itself, a section above or a key below)."""
    return key == setting or setting.startswith(key + ".") or key.startswith(setting + ".")


def check_split_overrides(settings: Settings, ds: Trajectories, sources: Mapping[str, str]) -> None:
    """Refuse an override of ``data.seeds`` or ``data.splits.*`` that contradicts the dataset.

    A step trains and scores on the dataset's own split (``runs.parquet``, by the rule its
    manifest records), fixed when the dataset was written; an override that says otherwise
    would have no effect, so it is refused instead of being ignored. Values of the params
    file are not checked: they describe a generation plan, which an imported dataset lacks.

    Args:
        settings: the effective settings.
        ds: the dataset of ``data.root``.
        sources: who set each overridden key (``override_sources``).

    Raises:
        SettingsError: one line naming the override, the manifest's rule and how to write the
            dataset with another split (``gfm data import --split`` or ``gfm generate``).
    """
    rules = ds.manifest.splits.rules
    conflicts = _split_conflicts(settings.data, rules)
    for key, source in sources.items():
        setting = next((c for c in conflicts if _touches(key, c)), None)
        if setting is None:
            continue
        kind = _SPLIT_KINDS[setting]
        what = "imported dataset" if imported(rules) else "dataset"
        remedy = split_remedy(rules, kind)
        if not imported(rules):
            remedy = f"regenerate it with `gfm generate --set {setting}=...`"
        raise SettingsError(
            f"{source}: {setting}={_value(settings, setting)!r} cannot change the {kind} split "
            f"of the {what} {ds.root}, fixed when it was written ({ds.root / MANIFEST_FILE} "
            f"{describe_rule(rules, kind)}); drop the override, or {remedy}"
        )


def open_dataset(settings: Settings, *, overrides: Mapping[str, str] | None = None) -> Trajectories:
    """The dataset of ``data.root``, every file checked against its manifest first.

    The cheap validation every step makes before it trains, scores or logs anything: the
    manifest's sha256 of each file the step reads (``Trajectories.verify``); run ids that
    would build paths outside the folder and non-finite weights are refused as they are read.
    With ``overrides`` (``override_sources``), one of the split settings that contradicts the
    dataset's own split is refused (``check_split_overrides``).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message says how to
            make it).
        DatasetError: the folder is not a valid dataset, or a file differs from its manifest;
            the message names the file.
        SettingsError: an override of ``data.seeds``/``data.splits.*`` contradicts the dataset.
    """
    root = settings.data.root
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found; run `gfm generate` first")
    ds = Trajectories(root)
    if overrides:
        check_split_overrides(settings, ds, overrides)
    ds.verify()
    return ds


def _small_prefix(runs: Sequence[Any], table: pl.DataFrame) -> Prefix:
    """A prefix of the run with the fewest parameters: the logged model's input example."""
    i = int(np.argmin(table["n_params"].to_numpy()))
    record = runs[i]
    M = record.weights.shape[0] - 1
    return Prefix.from_record(record, observed_index(M, 0.25))


def _history(history: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    """The training loop's evaluations with every metric named ``split/name`` (``train/lr``)."""
    return [
        {(k if k == "step" or "/" in k else f"train/{k}"): float(v) for k, v in h.items()}
        for h in history
    ]


# ----------------------------------------------------------------------------- DVC or direct


def dvc_repo(params: Path, overrides: Sequence[str] = ()) -> Path | None:
    """The DVC repository whose stages reproduce these settings, or None.

    DVC reads only the repository's own ``params.yaml``: with another params file or
    ``--set`` overrides the steps run directly instead.
    """
    repo = versioning.find_repo(Path(params).resolve().parent)
    if repo is None or overrides or Path(params).resolve() != (repo / "params.yaml").resolve():
        return None
    return repo if set(STEPS) <= set(versioning.stages(repo)) else None


def check_tuning_parts(settings: Settings, train: Sequence[Any], val: Sequence[Any]) -> None:
    """Tuning needs train and val runs; the message names where the split was decided.

    A dataset's parts are fixed in it when it is written (its manifest records the rule), so
    for a dataset's views the manifest is named with how to write another split; for runs
    handed in from elsewhere, the ``train``/``val`` arguments.

    Raises:
        ValueError: ``train`` or ``val`` is empty.
    """
    if len(train) and len(val):
        return
    split = settings.train.split
    got = f"got {len(train)} train and {len(val)} val"
    if not isinstance(train, Trajectories):
        raise ValueError(
            f"tune: split `{split}` must have train and val runs (arguments `train`, `val`), {got}"
        )
    rules = train.manifest.splits.rules
    raise ValueError(
        f"{train.root / MANIFEST_FILE}: split `{split}` must have train and val runs to tune "
        f"on, {got} ({describe_rule(rules, split)}); the split is fixed when the dataset is "
        f"written: {split_remedy(rules, split)}, or set tune.n_trials: 0 to train untuned"
    )
