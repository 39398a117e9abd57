"""The command line's surface: help with examples, settings errors exit 2, no schedule without a server."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gfm.cli import app

runner = CliRunner()
CONFS = Path(__file__).resolve().parents[1] / "confs"
COMMANDS = [
    "run",
    "tune",
    "train",
    "evaluate",
    "promote",
    "forecast",
    "runs",
    "schedule",
    "generate",
    "tune-worker",
    "bench jumps",
    "serve",
    "backtest",
]
OLD_NAMES = {"compare": "runs", "accelerate": "bench jumps"}  # hidden aliases for one release


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert f"gfm {command}" in result.output  # an example line


@pytest.mark.parametrize(("old", "new"), OLD_NAMES.items())
def test_old_command_names_still_work_but_are_hidden(old, new):
    result = runner.invoke(app, [old, "--help"])
    assert result.exit_code == 0 and f"gfm {new}" in result.output
    listed = runner.invoke(app, ["--help"]).output
    assert f" {old} " not in listed and f" {new.split()[0]} " in listed


@pytest.mark.parametrize(
    "command",
    ["run", "tune", "train", "evaluate", "promote", "runs", "schedule", "bench jumps"],
)
def test_bad_settings_exit_2_naming_the_key(command):
    bad = CONFS / "invalid" / "unknown_key.yaml"
    result = runner.invoke(app, [*command.split(), "-p", str(bad)])
    assert result.exit_code == 2, result.output
    assert "data.seedz" in result.output


def test_schedule_needs_a_prefect_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.retrain

    def never(*args, **kwargs):
        raise AssertionError("must not serve without a server")

    monkeypatch.setattr(flows.retrain, "serve", never)  # fail, never block, if the check breaks
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # (a test harness elsewhere in the session may have set the API URL in Prefect's settings)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = runner.invoke(app, ["schedule", "-p", str(CONFS / "valid" / "tiny.yaml")])
    assert result.exit_code == 2
    assert "prefect server start" in result.output and "PREFECT_API_URL" in result.output


def test_steps_without_their_inputs_say_what_to_run_first(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"data: {{root: {tmp_path / 'nodata'}}}\n")
    result = runner.invoke(app, ["promote", "-p", str(params)])
    assert result.exit_code == 1
    assert "run `gfm train` first" in " ".join(result.output.split())


def test_the_schedule_serves_retrain_on_the_configured_cron(tmp_path):
    from flows.retrain import deployment

    params = tmp_path / "params.yaml"
    params.write_text("")
    d = deployment(str(params), cron="0 3 * * 1", timezone="UTC", name="gfm-retrain")
    assert d.name == "gfm-retrain" and d.entrypoint.endswith("flows/retrain.py:retrain")
    (schedule,) = d.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * 1", "UTC")
    assert d.parameters == {"params": str(params.resolve()), "overrides": []}
