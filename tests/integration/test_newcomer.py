"""A newcomer's first run, scripted (issue 16): a fresh clone, the README's run command, then what
the README promises afterwards, on real git, DVC, MLflow, Optuna, Prefect and a real server.

fresh clone -> `gfm run` -> `git status` shows only what the run lists under "to commit" -> after
committing those, `dvc status` (local and remote) is clean and `dvc repro` has nothing to do ->
`gfm serve` answers the shipped client (`gfm.tracking.client`, `gfm forecast --url`) with the
version the run registered -> `gfm runs` fits 100 columns.

The run command is `gfm run` from this checkout's virtual environment, in a subprocess, as a user
types it. `make run` does the same after setting up a virtual environment of its own, which
would take minutes of installing: too slow for the suite. The clone's settings are the tiny ones
(tests/confs/valid/tiny.yaml with the workflow's smallest steps), so the whole check takes a
minute or two. Everything it writes (the DVC remote, the MLflow store, the Optuna study, Prefect's
home, HOME and its caches) is under the test's temp folder, never the developer's ~/.cache or
~/.prefect; the flow runs on the session's Prefect test server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from gfm import saved
from gfm.cli.workflow import commit_hint
from gfm.config import load_settings
from gfm.data.trajectories import Trajectories
from gfm.forecaster import Prefix, observed_index, target_times
from gfm.ops import versioning
from gfm.tracking.client import forecast, metadata
from tests.helpers import write_request
from tests.integration.conftest import GIT_ENV, free_port, git
from tests.integration.test_serving import _wait

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900


def _environment(tmp_path: Path, prefect_api: str) -> dict[str, str]:
    """A user's shell, with every per-user and per-machine folder under ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        **os.environ,
        **GIT_ENV,
        "HOME": str(home),  # ~/.cache (DVC, matplotlib, torch), ~/.config, ~/.gitconfig
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": prefect_api,  # the session's test server, not a temporary one per run
        "PATH": str(BIN) + os.pathsep + os.environ["PATH"],  # dvc.yaml's stages call `gfm`
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "1000",  # the run's summary unwrapped, so its "to commit" line reads as printed
    }


def _sh(*cmd: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run a command as the user would; returns stdout + stderr, failing with both on error."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout + proc.stderr


def _changed(repo: Path) -> list[str]:
    """What `git status` lists in the whole clone: modified, deleted and untracked files, each
    by name (the run's own "to commit" query over every path)."""
    return versioning.to_commit(repo, [repo])


@pytest.mark.slow  # a minute or two on 2 cores
def test_a_fresh_clone_runs_commits_reproduces_serves_and_lists_its_runs(
    tmp_path: Path, tiny_params, prefect_harness
):
    from prefect.settings import PREFECT_API_URL

    env = _environment(tmp_path, PREFECT_API_URL.value())
    # given a fresh clone of this repository at HEAD: a newcomer's clone is whatever is
    # committed, so the tiny settings are committed as its starting state (with its DVC remote
    # in the temp folder); nothing else of the working tree reaches it
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(ROOT), str(clone))
    (clone / "params.yaml").write_text(yaml.safe_dump(tiny_params(tmp_path)))
    git(clone, "commit", "-qm", "tiny settings", "--", "params.yaml")
    assert _changed(clone) == []

    # when the newcomer runs the README's main command
    out = _sh(str(BIN / "gfm"), "run", cwd=clone, env=env, timeout=RUN_TIMEOUT_S)
    # then it ends with the registered version and what to commit
    params = clone / "params.yaml"
    cfg = load_settings(params, environ={})
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    champion = client.get_model_version_by_alias(cfg.registry.model_name, "champion")
    version = str(champion.version)
    assert f"version {version} -> @champion" in out, out[-3000:]
    hint = commit_hint(params, None, cfg)  # the list the run printed, made the same way
    assert hint is not None, "the clone is a DVC repository: the run must say what to commit"
    assert " ".join(hint.split()) in " ".join(out.split()), out[-3000:]
    # "git add <files> && git commit ...", or "nothing: ..." when the run reproduced HEAD
    listed = hint.removeprefix("git add ").split(" && ")[0].split() if "git add" in hint else []

    # and `git status` shows only those files: no other tracked file modified, nothing untracked
    changed = _changed(clone)
    assert set(changed) <= set(listed), f"changed but not listed: {set(changed) - set(listed)}"
    # and the files to commit hold no path of this machine (the temp folder, the clone, HOME)
    for path in (tmp_path, tmp_path.resolve()):
        found = subprocess.run(
            ["git", "grep", "-l", "-F", "--untracked", str(path), "--", *listed],
            cwd=clone,
            capture_output=True,
            text=True,
        )
        assert found.stdout == "", f"{path} appears in {found.stdout.split()}"

    # when the newcomer commits them, as the run says
    if listed:
        git(clone, "add", "--", *listed)
        git(clone, "commit", "-qm", "data and model of the first run")
    # then git is clean, DVC has nothing to reproduce, and the remote holds every cached output
    assert _changed(clone) == []
    dvc = str(BIN / "dvc")
    assert "up to date" in _sh(dvc, "status", cwd=clone, env=env)
    remote = _sh(dvc, "status", "--cloud", cwd=clone, env=env)
    assert "in sync" in remote, remote
    again = _sh(dvc, "repro", cwd=clone, env=env)
    assert "Running stage" not in again and "didn't change" in again, again
    assert _changed(clone) == []

    # when the newcomer serves the champion
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "gfm"), "serve", "--port", str(port)],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait(url, server)
        # then the shipped client gets a forecast of a test run, made by the registered version
        test = Trajectories(cfg.data.root).select(cfg.train.split, "test")
        record = test[0]
        prefix = Prefix.from_record(record, observed_index(record.weights.shape[0] - 1, 0.5))
        answer = forecast(url, prefix)
        assert (answer.version, metadata(url)["version"]) == (version, version)
        assert answer.w.shape == (prefix.M - prefix.k, prefix.D)
        # the model the run trained (models/gfm) forecasts the same
        local = saved.load(cfg.train.model_dir).forecast(prefix, target_times(prefix))
        np.testing.assert_allclose(answer.w, local.numpy(), rtol=1e-5, atol=1e-6)
        # and so does `gfm forecast --url`, naming the version
        request = write_request(prefix, tmp_path)
        told = _sh(
            str(BIN / "gfm"),
            "forecast",
            "--url",
            url,
            "--input",
            str(request),
            "--output",
            str(tmp_path / "forecast.npy"),
            cwd=clone,
            env=env,
        )
        assert f"version {version}" in told, told
        np.testing.assert_allclose(np.load(tmp_path / "forecast.npy"), answer.w, rtol=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)

    # when the newcomer lists the runs on a 100-column terminal
    shown = _sh(str(BIN / "gfm"), "runs", cwd=clone, env={**env, "COLUMNS": "100"})
    # then the table fits, and it lists the run's training run
    assert max(len(line) for line in shown.splitlines()) <= 100, shown
    trained = client.get_run(champion.run_id)
    assert trained.info.run_id[:8] in shown, shown
    assert _changed(clone) == []
