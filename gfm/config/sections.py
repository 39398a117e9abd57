"""The settings models, one per section of params.yaml: frozen, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gfm.data.names import OPTIMIZERS, SCHEDULES, TASKS, check_known
from gfm.services import redact

# the stores MLflow's client opens ('': a folder path) and the SQLAlchemy dialects Optuna's RDB
# storage speaks; a database URL may name its driver (postgresql+psycopg)
TRACKING_SCHEMES = (
    *("", "http", "https", "file", "sqlite", "postgresql", "mysql", "mssql"),
    *("databricks", "databricks-uc", "uc"),
)
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "mssql", "oracle")


def _check_scheme(url: str, schemes: tuple[str, ...], forms: str) -> str:
    """``url`` when its scheme (driver aside) is one of ``schemes``, else a ValueError."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # an unbalanced bracket in the host: not a URL at all
        scheme = "?"
    if scheme.split("+", 1)[0].lower() not in schemes:
        raise ValueError(f"must be {forms}, got {redact(url)!r} (unknown scheme {scheme!r})")
    return url


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Range(_Frozen):
    """A closed interval ``[low, high]`` that a run's hyperparameter is drawn from."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high must be >= low, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        return self


class OptimizerSpace(_Frozen):
    """Hyperparameter ranges for one optimizer; ``lr`` is multiplied by the task's ``lr_scale``."""

    lr: Range
    momentum: Range | None = None
    nesterov_prob: float = Field(0.0, ge=0.0, le=1.0)
    beta1: Range | None = None
    beta2: Range | None = None
    alpha: Range | None = None  # RMSprop smoothing constant
    weight_decay: Range | None = None


def _default_optimizers() -> dict[str, OptimizerSpace]:
    return {
        "sgd": OptimizerSpace(lr=Range(low=0.02, high=0.1, log=True)),
        "momentum": OptimizerSpace(
            lr=Range(low=0.005, high=0.03, log=True),
            momentum=Range(low=0.8, high=0.9),
            nesterov_prob=0.5,
        ),
        "rmsprop": OptimizerSpace(
            lr=Range(low=0.0005, high=0.003, log=True), alpha=Range(low=0.9, high=0.99)
        ),
        "adam": OptimizerSpace(
            lr=Range(low=0.001, high=0.005, log=True),
            beta1=Range(low=0.85, high=0.95),
            beta2=Range(low=0.99, high=0.999),
        ),
        "adamw": OptimizerSpace(
            lr=Range(low=0.001, high=0.005, log=True),
            beta1=Range(low=0.85, high=0.95),
            beta2=Range(low=0.99, high=0.999),
            weight_decay=Range(low=0.001, high=0.05, log=True),
        ),
    }


class TaskSettings(_Frozen):
    """One training problem whose runs are recorded.

    ``archs`` lists architectures as hidden sizes: MLP hidden widths, CNN channel counts,
    ``[]`` for the linear model of ``least_squares``. Each run draws one of them.
    """

    archs: list[list[int]] = Field(min_length=1)
    steps: int = Field(gt=0)
    record_every: int = Field(gt=0)
    batch_sizes: list[int | None] = Field(default_factory=lambda: [64], min_length=1)
    lr_scale: float = Field(1.0, gt=0)
    n_train: int = Field(512, gt=0)
    n_test: int = Field(256, gt=0)
    dim: int = Field(16, gt=0)  # input dimension of the synthetic tasks
    noise: float = Field(0.1, ge=0)

    @field_validator("archs")
    @classmethod
    def _positive_sizes(cls, archs: list[list[int]]) -> list[list[int]]:
        for arch in archs:
            if any(h <= 0 for h in arch):
                raise ValueError(f"hidden sizes must be positive integers, got {arch}")
        repeated = [a for i, a in enumerate(archs) if a in archs[:i]]
        if repeated:  # each names its runs and files: two alike would write the same ones
            raise ValueError(
                f"architectures must be distinct, got {repeated[0]} more than once in {archs}"
            )
        return archs

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, sizes: list[int | None]) -> list[int | None]:
        if any(b is not None and b <= 0 for b in sizes):
            raise ValueError(f"batch sizes must be positive or null (full batch), got {sizes}")
        return sizes

    @model_validator(mode="after")
    def _record_divides(self) -> TaskSettings:
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})"
            )
        return self


def _default_tasks() -> dict[str, TaskSettings]:
    return {
        "least_squares": TaskSettings(
            archs=[[]], steps=100, record_every=2, batch_sizes=[None, 32], lr_scale=2.0, dim=16
        ),
        "mlp_regression": TaskSettings(
            archs=[[8], [16], [8, 8]], steps=200, record_every=4, batch_sizes=[64], lr_scale=2.0
        ),
        "digits_mlp": TaskSettings(
            archs=[[32], [64], [32, 32]], steps=200, record_every=4, batch_sizes=[64]
        ),
        "mnist_cnn": TaskSettings(
            archs=[[16, 32, 32], [8, 16, 16]], steps=200, record_every=4, batch_sizes=[64]
        ),
    }


class SplitSettings(_Frozen):
    """Deterministic held-out splits, recorded per run in the manifest.

    ``seed``: the last ``test_seeds`` seed indices of every (task, optimizer, arch) group are test,
    the ``val_seeds`` before them validation. ``architecture``: per task, the named arch (hidden sizes
    joined by ``-``, ``linear`` for ``[]``) is test. ``optimizer``: runs of ``holdout_optimizer`` are test.
    """

    val_seeds: int = Field(1, ge=0)
    test_seeds: int = Field(1, ge=1)
    holdout_archs: dict[str, str] = Field(
        default_factory=lambda: {
            "mlp_regression": "8-8",
            "digits_mlp": "32-32",
            "mnist_cnn": "8-16-16",
        }
    )
    holdout_optimizer: str = "rmsprop"


class DataSettings(_Frozen):
    """Trajectory dataset: where it lives, which runs it holds, and how it is versioned."""

    root: Path = Path("data")
    seed: int = 0
    seeds: int = Field(4, gt=0, description="runs per (task, optimizer, arch)")
    tasks: dict[str, TaskSettings] = Field(default_factory=_default_tasks)
    optimizers: dict[str, OptimizerSpace] = Field(default_factory=_default_optimizers)
    schedules: list[str] = Field(default_factory=lambda: list(SCHEDULES), min_length=1)
    splits: SplitSettings = Field(default_factory=SplitSettings)
    workers: int = Field(2, ge=1, description="processes (or local Dask workers) that train runs")
    executor: Literal["process", "dask"] = Field(
        "process",
        description="process: a pool of `workers` processes; dask: Prefect's DaskTaskRunner on "
        "`dask_address`, or on a local cluster of `workers` processes when that is null",
    )
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster (tcp://host:8786); null: local"
    )
    remote: str = "~/.cache/gfm/dvc-remote"

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, TaskSettings]) -> dict[str, TaskSettings]:
        check_known(tasks, TASKS, "task")
        if not tasks:
            raise ValueError(f"at least one task is needed; expected some of {list(TASKS)}")
        return tasks

    @field_validator("optimizers")
    @classmethod
    def _known_optimizers(cls, opts: dict[str, OptimizerSpace]) -> dict[str, OptimizerSpace]:
        check_known(opts, OPTIMIZERS, "optimizer")
        if not opts:
            raise ValueError(
                f"at least one optimizer is needed; expected some of {list(OPTIMIZERS)}"
            )
        return opts

    @field_validator("schedules")
    @classmethod
    def _known_schedules(cls, schedules: list[str]) -> list[str]:
        check_known(schedules, SCHEDULES, "schedule")
        return schedules

    @model_validator(mode="after")
    def _splits_fit(self) -> DataSettings:
        # That val_seeds + test_seeds leave training seeds is the generation plan's check
        # (gfm.data.generate): an imported dataset has no `seeds`, and a step never needs it.
        s = self.splits
        for task in s.holdout_archs:
            if task not in TASKS:
                raise ValueError(
                    f"splits.holdout_archs: unknown task {task!r}; expected {list(TASKS)}"
                )
        if s.holdout_optimizer not in OPTIMIZERS:
            raise ValueError(
                f"splits.holdout_optimizer must be one of {list(OPTIMIZERS)}, got {s.holdout_optimizer!r}"
            )
        return self


class GFMSettings(_Frozen):
    """The forecaster: which vector field and how big."""

    variant: Literal["optimizer", "free"] = "free"
    prior: bool = Field(
        True,
        description="the optimizer-simulating quadratic prior (gfm.prior), fitted to each prefix, "
        "as a velocity the field weighs per parameter and time; needs solver: interval",
    )
    sample_params: int | None = Field(
        None,
        gt=8,
        description="forecast at most this many parameters of a layer with the field and the "
        "rest by a per-layer fit to them (gfm.sampled); null: every parameter by the field",
    )
    width: int = Field(64, gt=0)
    depth: int = Field(3, gt=0)
    time_embedding: int = Field(16, ge=0)
    history: int = Field(4, ge=1, description="recent increments given as context")
    sigma: float = Field(0.0, ge=0.0, description="Gaussian tube around the linear path")
    solver: Literal["interval", "euler", "rk4", "dopri5"] = Field(
        "interval", description="interval: one step per recorded interval, as trained"
    )
    solver_steps: int = Field(1, ge=1, description="fixed-step substeps per recorded interval")
    rtol: float = Field(1e-5, gt=0)
    atol: float = Field(1e-6, gt=0)
    chunk_size: int = Field(65536, gt=0, description="parameters forecast at once")
    row_mean: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="factor on the forecast displacement's mean over each weight row (output "
        "unit or filter; gfm.rows): 1 keeps it, 0 holds each row's mean weight at w_k",
    )

    @model_validator(mode="after")
    def _prior_needs_interval(self) -> GFMSettings:
        if self.prior and self.solver != "interval":
            raise ValueError(
                f"gfm.solver must be 'interval' when gfm.prior is true (the prior's velocity is "
                f"given per recorded interval), got {self.solver!r}"
            )
        return self


class TrainSettings(_Frozen):
    """The direct flow-matching training loop, and what the workflow trains on and writes."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    steps: int = Field(
        6000,
        gt=0,
        description="steps of batch_params-parameter batches; runs of fewer parameters take "
        "proportionally fewer (gfm.training.sized), at least min_steps",
    )
    min_steps: int = Field(
        1500,
        gt=0,
        description="the fewest steps a dataset of small runs is scaled down to (>= steps: no scaling)",
    )
    batch_runs: int = Field(8, gt=0, description="trajectories per batch")
    batch_params: int = Field(256, gt=0, description="parameters sampled per trajectory")
    eval_every: int = Field(1000, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loader_workers: int = Field(
        0,
        ge=0,
        le=1,
        description="worker processes drawing the batches (1: overlap with the steps on a 2nd core)",
    )
    prior_cache: Path | None = Field(
        None,
        description="a folder of fitted priors shared by tuning trials, training and its "
        "validation (gfm.prior_cache); None fits every prior in the process that needs it",
    )
    split: Literal["seed", "architecture", "optimizer"] = Field(
        "seed",
        description="the workflow trains on this split's train part, tunes and selects on its "
        "val part, and evaluates and promotes on its test part",
    )
    model_dir: Path = Field(Path("models/gfm"), description="where `gfm train` writes the model")


class SearchParam(_Frozen):
    """One dimension of the search: ``choices`` (categorical) or a range ``[low, high]``.

    A range is searched as integers when the setting it names is an integer (``gfm.depth``),
    else as floats; ``log`` searches it on a log scale, ``step`` on a grid.
    """

    choices: list[bool | int | float | str] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> SearchParam:
        has_range = self.low is not None or self.high is not None
        if (self.choices is None) == (not has_range):
            raise ValueError("give either `choices` or both `low` and `high`")
        if has_range:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both `low` and `high`")
            if self.high < self.low:
                raise ValueError(f"high must be >= low, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got low={self.low}")
            if self.log and self.step is not None:
                raise ValueError("`log` and `step` cannot be combined")
        return self


_UNTUNABLE = {"train.device", "train.split", "train.model_dir", "train.seed", "train.eval_every"}


def _check_dims(section: str, model: type[BaseModel], dims: dict[str, SearchParam]) -> None:
    valid = [f for f in model.model_fields if f"{section}.{f}" not in _UNTUNABLE]
    for name, dim in dims.items():
        if name not in valid:
            raise ValueError(f"unknown key {section}.{name!r}; expected some of {valid}")
        for choice in dim.choices or []:
            try:
                model.model_validate({name: choice})
            except ValidationError as err:
                msg = err.errors()[0]["msg"]
                raise ValueError(f"{name}: choice {choice!r} is not valid: {msg}") from None


class SearchSpace(_Frozen):
    """The dimensions searched, by section and key as in params.yaml (``gfm.width``, ``train.lr``).

    Optuna, MLflow and the tuned-params file name each dimension by its dotted key.
    """

    gfm: dict[str, SearchParam] = Field(default_factory=dict)
    train: dict[str, SearchParam] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_keys(self) -> SearchSpace:
        _check_dims("gfm", GFMSettings, self.gfm)
        _check_dims("train", TrainSettings, self.train)
        return self

    def flat(self) -> dict[str, SearchParam]:
        """``{"gfm.width": dim, "train.lr": dim, ...}`` in params.yaml order."""
        return {
            **{f"gfm.{k}": v for k, v in self.gfm.items()},
            **{f"train.{k}": v for k, v in self.train.items()},
        }


def _default_space() -> SearchSpace:
    return SearchSpace(
        gfm={
            "variant": SearchParam(choices=["free", "optimizer"]),
            "prior": SearchParam(choices=[True, False]),
            "width": SearchParam(choices=[32, 64, 128]),
            "depth": SearchParam(low=2, high=4),
            "history": SearchParam(choices=[4, 8]),
        },
        train={"lr": SearchParam(low=3e-4, high=3e-3, log=True)},
    )


class TuneSettings(_Frozen):
    """Optuna search over GFM hyperparameters (``space``: dotted settings key -> dimension)."""

    n_trials: int = Field(3, ge=0, description="finished trials to reach; 0 = no tuning")
    timeout_s: float | None = Field(None, gt=0)
    study_name: str = "gfm"
    storage: str | None = Field(
        None, description="Optuna storage URL; None: optuna.db beside the MLflow sqlite store"
    )
    seed: int = 0
    trial_steps: int = Field(100, gt=0, description="training steps per trial")
    pruner_warmup_steps: int = Field(25, ge=0)
    workers: int = Field(
        1, ge=1, description="worker processes on the study; more than 1 needs PostgreSQL storage"
    )
    eval_every: int = Field(50, gt=0, description="steps between two reports to the pruner")
    pruner_startup_trials: int = Field(2, ge=0, description="trials never pruned, first")
    metric: Literal["val/rel_mse_persistence", "val/forecast_mse"] = "val/rel_mse_persistence"
    heartbeat_s: int = Field(10, gt=0, description="a trial silent for 2x this is failed, retried")
    max_retry: int = Field(1, ge=0, description="times a trial whose worker died is run again")
    space: SearchSpace = Field(default_factory=_default_space)

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        return _check_scheme(
            url,
            STORAGE_SCHEMES,
            "an Optuna RDB storage URL: sqlite:///optuna.db, "
            "postgresql+psycopg://user@host:5432/db (or mysql, mariadb, mssql, oracle)",
        )


class ScheduleSettings(_Frozen):
    """When ``gfm schedule`` runs the retrain flow (against a Prefect server)."""

    cron: str = Field("0 3 * * 1", description="cron expression, e.g. every Monday at 03:00")
    timezone: str = "UTC"
    deployment: str = "gfm-retrain"


class EvaluateSettings(_Frozen):
    """Forecast evaluation against baselines."""

    observed_fractions: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5], min_length=1)
    splits: list[Literal["seed", "architecture", "optimizer"]] = Field(
        default_factory=lambda: ["seed", "architecture", "optimizer"], min_length=1
    )
    baselines: list[str] = Field(
        default_factory=lambda: [
            "persistence",
            "linear",
            "geometric",
            "dmd",
            "lfd2",
            "wnn",
            "lstm",
            "transformer",
        ]
    )
    linear_window: int = Field(3, ge=2)
    output_dir: Path = Path("reports")
    workflow_baselines: list[str] = Field(
        default_factory=lambda: ["persistence", "linear", "geometric"],
        description="baselines `gfm evaluate` (the workflow) compares with; the benchmark runs all",
    )
    downstream: bool = Field(True, description="score forecast weights on held-out task data")

    @field_validator("observed_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        for f in fractions:
            if not 0.0 < f < 1.0:
                raise ValueError(f"observed fractions must lie in (0, 1), got {f}")
        return fractions


class RegistrySettings(_Frozen):
    """MLflow model registry promotion."""

    model_name: str = "gfm"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    metric: str = Field(
        "test/rel_mse_persistence_median",
        description="test metric of gfm.ops.model_metrics; the median over test runs and "
        "fractions, since the mean of a ratio is swayed by runs that barely move",
    )
    greater_is_better: bool = False
    margin: float = Field(0.0, ge=0.0, description="relative improvement needed to take champion")


class TrackingSettings(_Frozen):
    """Where MLflow writes; relative sqlite paths are resolved against the params file's folder."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "gfm"
    artifact_location: str | None = None

    @field_validator("uri")
    @classmethod
    def _store_uri(cls, uri: str) -> str:
        return _check_scheme(
            uri,
            TRACKING_SCHEMES,
            "an MLflow tracking URI: http(s)://host:port (a server), sqlite:///mlflow.db, "
            "postgresql+psycopg://user@host:5432/db (or mysql, mssql), file:/folder or a folder",
        )


def _default_team() -> dict[str, dict[str, Any]]:
    return {
        "tracking": {"uri": "http://127.0.0.1:5000"},
        "tune": {"storage": "postgresql+psycopg://postgres@127.0.0.1:5432/gfm_optuna"},
        "data": {"executor": "dask"},
    }


_TEAM_SECTIONS = ("data", "tune", "tracking", "registry")


class TeamSettings(_Frozen):
    """Team mode: one switch from the embedded stores to shared services (docs/team.md).

    With ``enabled`` the sections below replace the same keys of params.yaml (the environment
    and ``--set`` still win): ``tracking.uri`` an MLflow server backed by PostgreSQL,
    ``tune.storage`` Optuna's RDB storage on PostgreSQL, ``data.executor: dask``; any key of
    ``data``, ``tune``, ``tracking`` or ``registry`` may be set here (``data.remote`` for a
    shared DVC remote, ``data.dask_address`` for an existing Dask cluster).
    """

    enabled: bool = False
    tracking: dict[str, Any] = Field(default_factory=lambda: _default_team()["tracking"])
    tune: dict[str, Any] = Field(default_factory=lambda: _default_team()["tune"])
    data: dict[str, Any] = Field(default_factory=lambda: _default_team()["data"])
    registry: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, values: Any) -> Any:
        # a section given in params.yaml adds to (or changes) the default team values
        if not isinstance(values, dict):
            return values
        defaults = _default_team()
        return {
            **values,
            **{
                k: {**defaults[k], **values[k]} for k in defaults if isinstance(values.get(k), dict)
            },
        }

    @model_validator(mode="after")
    def _known_keys(self) -> TeamSettings:
        models = {
            "data": DataSettings,
            "tune": TuneSettings,
            "tracking": TrackingSettings,
            "registry": RegistrySettings,
        }
        for section in _TEAM_SECTIONS:
            values = getattr(self, section)
            model = models[section]
            unknown = sorted(set(values) - set(model.model_fields))
            if unknown:
                raise ValueError(
                    f"{section}: unknown key(s) {unknown}; expected some of {list(model.model_fields)}"
                )
            try:
                model.model_validate(values)
            except ValidationError as err:
                e = err.errors()[0]
                where = ".".join(str(p) for p in e["loc"])
                raise ValueError(f"{section}.{where}: {e['msg']}") from None
        return self


class Settings(_Frozen):
    """All of gfm's settings, one section per part."""

    data: DataSettings = Field(default_factory=DataSettings)
    gfm: GFMSettings = Field(default_factory=GFMSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    team: TeamSettings = Field(default_factory=TeamSettings)

    @property
    def team_mode(self) -> bool:
        """Whether ``team.enabled`` laid the team's services over these settings."""
        return self.team.enabled
