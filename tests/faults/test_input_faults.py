"""Bad input gets one clear line, not a traceback (issue 15, item 11): duplicate architectures,
a tracking URI or Optuna storage of an unknown scheme, and a champion whose artifacts were
deleted. Each case runs the real ``gfm`` in its own process and checks the whole message, the
exit status, and that nothing was trained or lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from gfm.config import Settings
from tests.faults.helpers import MICRO, gfm, snapshot

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def no_traceback(lines: list[str]) -> None:
    assert not any(line.startswith("Traceback") or "Error:" in line for line in lines), lines
    assert "Aborted." not in lines


# ------------------------------------------------------------------ duplicate architectures


@pytest.mark.fault(
    "item 11: the same architecture twice under a task (`archs: [[], []]`)",
    "exit 2, one line naming params.yaml and the key; nothing generated or started",
)
@pytest.mark.parametrize("command", ["generate", "run"])
def test_duplicate_architectures_are_refused_in_one_line(command: str, tmp_path: Path) -> None:
    # `gfm run` printed a Prefect task's traceback before the same message (exit 1)
    (tmp_path / "params.yaml").write_text(MICRO.replace("archs: [[]]", "archs: [[], []]"))
    status, lines = gfm(command, *(["--no-dvc"] if command == "generate" else []), cwd=tmp_path)
    assert status == 2, lines
    no_traceback(lines)
    assert lines == [
        "Invalid settings",
        "params.yaml: data.tasks.least_squares.archs: architectures must be distinct, got [] "
        "more than once in [[], []]",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


# ------------------------------------------------------------------ unknown URI schemes


@pytest.mark.fault(
    "item 11: `tune.storage: notascheme://x`",
    "exit 2, one line naming the setting, the forms it takes and the URL; the dataset kept",
)
def test_an_optuna_storage_of_unknown_scheme_is_one_line(
    micro: Settings, tmp_path: Path, kept
) -> None:
    before = snapshot(tmp_path / "data")
    (tmp_path / "params.yaml").write_text(MICRO + "tune: {storage: 'notascheme://x'}\n")
    status, lines = gfm("tune", "--set", "tune.n_trials=1", cwd=tmp_path)
    kept(before, snapshot(tmp_path / "data"))
    assert status == 2, lines
    no_traceback(lines)
    assert lines == [
        "Invalid settings",
        "params.yaml: tune.storage: must be an Optuna RDB storage URL: sqlite:///optuna.db, "
        "postgresql+psycopg://user@host:5432/db (or mysql, mariadb, mssql, oracle), got "
        "'notascheme://x' (unknown scheme 'notascheme')",
    ]
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "models").exists()


@pytest.mark.fault(
    "item 11: `tracking.uri: notascheme://...` (with a password) to gfm train / gfm runs",
    "exit 2, one line naming the override and the URL, password redacted; the dataset kept",
)
@pytest.mark.parametrize("command", ["train", "runs"])
def test_a_tracking_uri_of_unknown_scheme_is_one_line(
    command: str, micro: Settings, tmp_path: Path, kept
) -> None:
    before = snapshot(tmp_path / "data")
    status, lines = gfm(command, "--set", "tracking.uri=notascheme://bob:s3cret@x", cwd=tmp_path)
    kept(before, snapshot(tmp_path / "data"))
    assert status == 2, lines
    no_traceback(lines)
    assert lines == [
        "Invalid settings",
        "--set tracking.uri: tracking.uri: must be an MLflow tracking URI: http(s)://host:port "
        "(a server), sqlite:///mlflow.db, postgresql+psycopg://user@host:5432/db (or mysql, "
        "mssql), file:/folder or a folder, got 'notascheme://bob:***@x' (unknown scheme "
        "'notascheme')",
    ]
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "models").exists()


# ------------------------------------------------------------------ a champion without artifacts


@pytest.fixture
def gone_champion(tmp_path: Path) -> tuple[Path, str]:
    """A sqlite store in ``tmp_path/store`` whose version 1 of ``gfm`` is champion, its artifact
    folder then deleted; a prefix (``prefix.npy`` and its sidecar) in ``tmp_path``. Returns the
    store and where the artifacts were (their download URI)."""
    from mlflow import MlflowClient

    from gfm.baselines import BASELINES
    from gfm.config import RegistrySettings, TrackingSettings
    from gfm.tracking import configure, log_forecaster, promote, register, start_run
    from tests import helpers

    cfg = RegistrySettings()
    store = tmp_path / "store"
    configure(TrackingSettings(uri=f"sqlite:///{store / 'mlflow.db'}", experiment="gfm"))
    layout = [("net.0.weight", (3, 2)), ("net.0.bias", (3,))]
    prefix = helpers.make_prefix(k=3, M=8, layout=layout, seed=1, task="mlp_regression")
    with start_run("train", dataset_version="md5-abc", repo=REPO):
        uri = log_forecaster(BASELINES["linear"](), input_example=prefix).model_uri
    version = register(uri, cfg)
    assert promote(version, {cfg.metric: 0.5}, cfg).promoted
    location = MlflowClient().get_model_version_download_uri(cfg.model_name, version)
    np.save(tmp_path / "prefix.npy", prefix.w.numpy())
    (tmp_path / "prefix.json").write_text(
        '{"optimizer": "adam", "lr": 0.01, "record_every": 4, "total_checkpoints": 9, '
        '"layout": [["net.0.weight", [3, 2]], ["net.0.bias", [3]]]}'
    )
    (tmp_path / "params.yaml").write_text(f"tracking: {{uri: 'sqlite:///{store}/mlflow.db'}}\n")
    shutil.rmtree(store / "mlartifacts")  # the fault: someone cleaned up the artifact folder
    return store, location


@pytest.mark.fault(
    "item 11: `gfm forecast` with a champion (or version) whose artifacts were deleted",
    "exit 1, one line naming the version and where its artifacts were, and what to do "
    "(was \"No such artifact: ''\"); the store kept",
)
@pytest.mark.parametrize("model", ["models:/gfm@champion", "models:/gfm/1"])
def test_a_model_whose_artifacts_were_deleted_is_named(
    model: str, gone_champion: tuple[Path, str], tmp_path: Path, kept
) -> None:
    store, location = gone_champion
    before = snapshot(store)
    status, lines = gfm("forecast", "--input", "prefix.npy", "--model", model, cwd=tmp_path)
    kept(before, snapshot(store))
    assert status == 1, lines
    no_traceback(lines)
    via = " (alias champion)" if "@" in model else ""
    assert lines == [
        f"forecast with {model} failed",
        f"{model}: version 1 of gfm{via}: no artifacts at {location} (No such artifact: ''); "
        "restore them there, or register and promote a new model (`gfm run`, or `gfm train` "
        "then `gfm promote`), or pass --model DIR (a forecaster folder, e.g. models/gfm from "
        "`gfm train`) or another registry URI",
    ]
    assert not (tmp_path / "forecast.npy").exists()
