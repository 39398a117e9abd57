"""A dataset's split is its own: steps use it, and refuse an override that contradicts it.

The split of every run is fixed when the dataset is written (``runs.parquet``, by the rule its
manifest records); ``--set data.splits.*``/``data.seeds`` cannot change it afterwards, so the
steps refuse such an override in one line naming it, instead of demanding ``data.seeds`` or
silently training on the runs meant for testing. Real files in ``tmp_path``, no mocks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gfm.cli import app
from gfm.config import DataSettings, SettingsError, SplitSettings, load_settings
from gfm.data.generate import plan_runs
from gfm.data.trajectories import Trajectories
from gfm.ops.layout import open_dataset, override_sources
from gfm.ops.study import tune

runner = CliRunner()


def _flat(text: str) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(text.split())


def _import(tmp_path: Path, *split: str) -> Path:
    """10 runs of a Linear(3, 2) imported with ``--split`` options; the params file to use.

    The params file is the project's (``data.seeds: 4``, ``data.splits`` counts) pointed at the
    imported folder: what a user has who imports runs into a clone.
    """
    np.savez(
        tmp_path / "runs.npz",
        weights=np.random.default_rng(0).standard_normal((10, 5, 8)).astype(np.float32),
    )
    args = ["data", "import", str(tmp_path / "runs.npz"), "--dest", str(tmp_path / "data")]
    args += ["--optimizer", "adam", "--lr", "0.01"]
    args += ["--layout", json.dumps([["weight", [2, 3]], ["bias", [2]]])]
    for s in split:
        args += ["--split", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    params = tmp_path / "params.yaml"
    tree = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    tree["data"]["root"] = "data"
    tree["tracking"] = {"uri": "sqlite:///mlflow.db"}
    tree["train"] = {"steps": 2, "eval_every": 1, "batch_runs": 2, "batch_params": 8}
    params.write_text(yaml.safe_dump(tree))
    return params


@pytest.mark.parametrize("step", ["train", "tune", "evaluate"])
def test_a_split_override_on_an_imported_dataset_is_refused_naming_it(
    tmp_path: Path, step: str
) -> None:
    # given: runs 8-9 held out for testing by the import
    params = _import(tmp_path, "val=6-7", "test=8-9")
    # when: a step is told another seed split (more than the params file's data.seeds allows)
    sets = ["--set", "data.splits.val_seeds=20", "--set", "data.splits.test_seeds=20"]
    result = runner.invoke(app, [step, "-p", str(params), *sets])
    # then: one refusal blaming the override and saying how to split the runs, not data.seeds
    out = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert "--set data.splits.val_seeds: data.splits.val_seeds=20 cannot change the seed" in out
    assert "splits.rules.given: runs val=6-7 test=8-9, others train" in out
    assert "gfm data import --split" in out
    assert "params.yaml" not in out and "smaller than seeds" not in out
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything is logged


def test_data_seeds_never_applies_to_an_imported_dataset(tmp_path: Path) -> None:
    params = _import(tmp_path, "test=8-9")
    result = runner.invoke(app, ["train", "-p", str(params), "--set", "data.seeds=10"])
    out = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert out.startswith("gfm train failed --set data.seeds: data.seeds=10 cannot change")
    assert "gfm data import --split" in out


def test_the_refusal_is_one_line_and_blames_the_environment_too(tmp_path: Path) -> None:
    _import(tmp_path, "val=6-7", "test=8-9")
    settings = load_settings(
        None,
        {"data.root": str(tmp_path / "data"), "data.splits.test_seeds": 3},
        environ={"GFM_DATA__SPLITS__HOLDOUT_OPTIMIZER": "adam"},
    )
    env = {"GFM_DATA__SPLITS__HOLDOUT_OPTIMIZER": "adam"}
    with pytest.raises(SettingsError) as err:
        open_dataset(settings, overrides=override_sources([], env))
    (line,) = str(err.value).splitlines()
    assert line.startswith(
        "environment variable GFM_DATA__SPLITS__HOLDOUT_OPTIMIZER: "
        "data.splits.holdout_optimizer='adam' cannot change the optimizer split"
    )
    assert f"{tmp_path / 'data' / 'manifest.json'} splits.rules.holdout_optimizer: rmsprop" in line
    with pytest.raises(SettingsError, match="^--set data.splits.test_seeds: "):
        open_dataset(settings, overrides=override_sources(["data.splits.test_seeds=3"], {}))


def test_an_override_that_agrees_with_the_dataset_is_accepted(tmp_path: Path) -> None:
    _import(tmp_path, "val=6-7", "test=8-9")
    settings = load_settings(
        None,
        {"data.root": str(tmp_path / "data"), "data.splits.holdout_optimizer": "rmsprop"},
        environ={},
    )
    sources = override_sources(["data.splits.holdout_optimizer=rmsprop", "train.steps=3"], {})
    ds = open_dataset(settings, overrides=sources)
    assert ds.select("seed", "test").run_ids == ["run-8", "run-9"]


@pytest.mark.slow
def test_train_uses_the_imported_split_whatever_the_params_file_plans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given: a params file whose generation plan does not fit (2 seeds, 1 val + 1 test)
    params = _import(tmp_path, "val=6-7", "test=8-9")
    tree = yaml.safe_load(params.read_text())
    tree["data"]["seeds"] = 2
    params.write_text(yaml.safe_dump(tree))
    # when
    result = runner.invoke(app, ["train", "-p", str(params), "--no-tuned"])
    # then: it trains, on the 6 train runs of the import, validated on its 2 val runs
    assert result.exit_code == 0, result.output
    assert "training GFM on 6 runs (val 2)" in caplog.text


def test_a_generation_plan_without_training_seeds_is_refused_by_generation() -> None:
    cfg = DataSettings(seeds=2, splits=SplitSettings(val_seeds=1, test_seeds=1))
    with pytest.raises(ValueError, match=r"^data.seeds must be larger than .* \(2\) .* got 2$"):
        plan_runs(cfg)


@pytest.mark.slow
def test_a_split_override_on_a_generated_dataset_points_to_gfm_generate(
    tmp_path: Path, tiny_data: Path
) -> None:
    shutil.copytree(tiny_data, tmp_path / "data")
    settings = load_settings(
        Path(__file__).parents[1] / "confs" / "valid" / "tiny.yaml",
        {"data.root": str(tmp_path / "data"), "data.seeds": 5},
        environ={},
    )
    with pytest.raises(SettingsError) as err:
        open_dataset(settings, overrides=override_sources(["data.seeds=5"], {}))
    message = str(err.value)
    assert message.startswith("--set data.seeds: data.seeds=5 cannot change the seed split")
    assert "splits.rules: val_seeds 1, test_seeds 1 of seeds 3" in message
    assert "`gfm generate --set data.seeds=...`" in message
    # and an override that agrees with the dataset is no contradiction
    same = load_settings(
        Path(__file__).parents[1] / "confs" / "valid" / "tiny.yaml",
        {"data.root": str(tmp_path / "data"), "data.seeds": 3},
        environ={},
    )
    assert len(open_dataset(same, overrides=override_sources(["data.seeds=3"], {}))) > 0


# --------------------------------------------------------------------- errors name the manifest


def test_a_split_without_test_runs_names_the_manifest_and_the_import(tmp_path: Path) -> None:
    _import(tmp_path, "val=6-7", "test=8-9")
    data = Trajectories(tmp_path / "data")
    with pytest.raises(ValueError) as err:
        data.parts("optimizer")  # no rmsprop runs were imported: nothing held out
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'data' / 'manifest.json'}: split `optimizer`")
    assert "splits.rules.holdout_optimizer: rmsprop" in message
    assert "params.yaml" not in message


def test_tuning_without_val_runs_names_the_manifest_and_gfm_data_import(tmp_path: Path) -> None:
    _import(tmp_path, "test=8-9")  # no val runs
    data = Trajectories(tmp_path / "data")
    train, val, _ = data.parts("seed")
    settings = load_settings(None, {"tune.n_trials": 1}, environ={})
    with pytest.raises(ValueError) as err:
        tune(settings, train, val, dataset_version="v")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'data' / 'manifest.json'}: split `seed` must have")
    assert "got 8 train and 0 val" in message
    assert "gfm data import --split val=RUNS" in message
    assert "params.yaml" not in message
