"""Bad settings (issue 15): overrides merge into the effective settings (item 3), and an error
is blamed on the `--set` or environment variable that set the value (item 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gfm.cli import app
from gfm.config import Settings, SettingsError, load_settings

pytestmark = pytest.mark.faults

runner = CliRunner()

DEFAULTS = Settings()


@pytest.fixture
def small_params(tmp_path: Path) -> Path:
    """A params file that sets two keys of `data` and leaves every other section out."""
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  seeds: 4\n  workers: 1\n")
    return path


# ------------------------------------------------------------------ item 3: overrides merge


@pytest.mark.fault(
    "item 3: --set data.optimizers.sgd.lr under a section params.yaml leaves out",
    "the other optimizers keep their defaults",
)
def test_set_under_a_left_out_key_keeps_the_other_optimizers(small_params: Path) -> None:
    s = load_settings(small_params, ["data.optimizers.sgd.lr.low=0.01"], environ={})
    assert list(s.data.optimizers) == list(DEFAULTS.data.optimizers)
    assert s.data.optimizers["sgd"].lr.low == 0.01
    assert s.data.optimizers["sgd"].lr.high == DEFAULTS.data.optimizers["sgd"].lr.high
    assert s.data.optimizers["adam"] == DEFAULTS.data.optimizers["adam"]
    assert s.data.seeds == 4  # the file's own keys stay


@pytest.mark.fault(
    "item 3: GFM_DATA__OPTIMIZERS__... under a section params.yaml leaves out",
    "the other optimizers keep their defaults",
)
def test_environment_under_a_left_out_key_keeps_the_other_optimizers(small_params: Path) -> None:
    env = {"GFM_DATA__OPTIMIZERS__ADAM__BETA1__HIGH": "0.93"}
    s = load_settings(small_params, environ=env)
    assert list(s.data.optimizers) == list(DEFAULTS.data.optimizers)
    assert s.data.optimizers["adam"].beta1.high == 0.93
    assert s.data.optimizers["adam"].lr == DEFAULTS.data.optimizers["adam"].lr


@pytest.mark.fault("item 3: --set tune.space.<one dimension>", "the other search dimensions kept")
def test_set_under_a_left_out_section_keeps_the_search_space(small_params: Path) -> None:
    s = load_settings(small_params, ["tune.space.gfm.width={choices: [8, 16]}"], environ={})
    space = s.tune.space.flat()
    assert space["gfm.width"].choices == [8, 16]
    assert set(space) == set(DEFAULTS.tune.space.flat())
    assert s.tune.n_trials == DEFAULTS.tune.n_trials


@pytest.mark.fault("item 3: --set with no params file", "merged into the defaults, siblings kept")
def test_set_with_no_params_file_merges_into_the_defaults() -> None:
    s = load_settings(None, ["data.tasks.digits_mlp.steps=300"], environ={})
    assert list(s.data.tasks) == list(DEFAULTS.data.tasks)
    assert s.data.tasks["digits_mlp"].steps == 300
    assert s.data.tasks["digits_mlp"].archs == DEFAULTS.data.tasks["digits_mlp"].archs


@pytest.mark.fault(
    "item 3: a section params.yaml spells out, then --set",
    "the file's section with the one key changed",
)
def test_a_section_the_file_spells_out_is_still_the_files(tmp_path: Path) -> None:
    # the file names only sgd: an override of sgd changes sgd and adds nobody
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  optimizers:\n    sgd: {lr: {low: 0.02, high: 0.1, log: true}}\n")
    s = load_settings(path, ["data.optimizers.sgd.lr.high=0.2"], environ={})
    assert list(s.data.optimizers) == ["sgd"]
    assert (s.data.optimizers["sgd"].lr.low, s.data.optimizers["sgd"].lr.high) == (0.02, 0.2)


# ------------------------------------------------------------------ item 12: the right blame


@pytest.mark.fault(
    "item 12: GFM_DATA__SEEDS=abc",
    "error names the environment variable and the value, not params.yaml",
)
def test_bad_environment_value_blames_the_variable_not_the_file(small_params: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(small_params, environ={"GFM_DATA__SEEDS": "abc"})
    message = str(err.value)
    assert message == (
        "environment variable GFM_DATA__SEEDS: data.seeds: Input should be a valid integer, "
        "unable to parse string as an integer, got 'abc'"
    )
    assert str(small_params) not in message


@pytest.mark.fault("item 12: --set data.seeds=abc", "error names the --set option and the value")
def test_bad_set_value_blames_the_set_option(small_params: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(small_params, ["train.steps=-3"], environ={})
    assert str(err.value) == (
        "--set train.steps: train.steps: Input should be greater than 0, got -3"
    )


@pytest.mark.fault(
    "item 12: an override that breaks a cross-field check", "error names the override"
)
def test_a_section_check_blames_the_override_that_broke_it(small_params: Path) -> None:
    # the held-out optimizer must be a known one: the `data` section's check fails
    with pytest.raises(SettingsError) as err:
        load_settings(small_params, environ={"GFM_DATA__SPLITS__HOLDOUT_OPTIMIZER": "lion"})
    (line,) = str(err.value).splitlines()
    assert line.startswith("environment variable GFM_DATA__SPLITS__HOLDOUT_OPTIMIZER: data: ")
    assert "got 'lion'" in line


@pytest.mark.fault("item 12: a bad value in params.yaml", "error names params.yaml")
def test_a_bad_value_in_the_file_still_blames_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  seeds: many\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={"GFM_TRAIN__STEPS": "10"})
    assert str(err.value).startswith(f"{path}: data.seeds: Input should be a valid integer")


@pytest.mark.fault("item 12: gfm with GFM_DATA__SEEDS=abc", "exit 2, one line naming the variable")
def test_the_cli_names_the_variable_and_exits_2(small_params: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "-p", str(small_params)], env={"GFM_DATA__SEEDS": "abc"})
    assert result.exit_code == 2, result.output
    assert "environment variable GFM_DATA__SEEDS: data.seeds:" in result.output
    assert "got 'abc'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
