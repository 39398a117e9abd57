"""The team stack's guard: loopback only unless asked; no server is started here."""

import pytest
from typer.testing import CliRunner

from gfm.cli import app
from gfm.ops.stack import check_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_allowed(host):
    check_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "mlflow.example.org"])
def test_other_hosts_are_refused_unless_allowed(host):
    with pytest.raises(ValueError, match="--allow-remote"):
        check_host(host)
    check_host(host, allow_remote=True)


def test_stack_up_refuses_a_public_interface_before_starting_anything(tmp_path):
    result = CliRunner().invoke(
        app, ["stack", "up", "--host", "0.0.0.0", "--state-dir", str(tmp_path / "state")]
    )
    assert result.exit_code == 2
    assert "--allow-remote" in " ".join(result.output.split())
    assert not (tmp_path / "state").exists()
