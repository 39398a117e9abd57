"""A real git + DVC repository in a temp folder: the whole workflow, versioned, reproduced,
experimented on, pulled back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
CONFS = ROOT / "tests" / "confs"


def _sh(*cmd: str, cwd: Path, stdout_only: bool = False) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def repo(tmp_path: Path, tiny_params) -> Path:
    """A project checkout in miniature: dvc.yaml, the stages' code deps, tiny params, git + DVC."""
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for dep in stage["deps"]:
            if (ROOT / dep).is_file():
                (repo / dep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / dep, repo / dep)
    params = tiny_params(tmp_path)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _sh("git", "init", "-q", cwd=repo)
    _sh("dvc", "init", "-q", cwd=repo)
    _sh("git", "add", "-A", cwd=repo)
    _sh("git", "commit", "-qm", "init", cwd=repo)
    return repo


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_run_leaves_nothing_to_reproduce_and_experiments_show_in_dvc_and_mlflow(
    repo: Path, tmp_path: Path, prefect_harness, monkeypatch: pytest.MonkeyPatch
):
    from prefect.settings import PREFECT_API_URL

    # `gfm run` talks to the session's Prefect test server instead of starting its own
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    # when the main job runs in a fresh DVC repository
    out = _sh("gfm", "run", cwd=repo)
    # then the dataset is versioned and pushed, and the model is the champion
    assert "dataset version" in out and "@champion" in out
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert (tmp_path / "dvc-remote").is_dir() and any((tmp_path / "dvc-remote").rglob("*"))
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("gfm", "champion")
    assert champion.tags["gfm.dataset_version"] == md5
    assert json.loads((repo / "reports" / "metrics.json").read_text())["dataset_version"] == md5
    # and every stage is locked: `dvc status` is clean and `dvc repro` has nothing to do
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"generate", "tune", "train", "evaluate"}
    assert "up to date" in _sh("dvc", "status", cwd=repo)
    again = _sh("dvc", "repro", cwd=repo)
    assert "didn't change" in again and "Running stage" not in again

    # when the data is deleted and pulled back from the remote
    before = _tree_digest(repo / "data")
    shutil.rmtree(repo / "data")
    _sh("dvc", "pull", "data.dvc", cwd=repo)
    # then it is restored bit for bit
    assert _tree_digest(repo / "data") == before

    # when, the pipeline committed, an experiment changes one setting
    _sh("git", "add", "-A", cwd=repo)
    _sh("git", "commit", "-qm", "pipeline", cwd=repo)
    _sh("dvc", "exp", "run", "-n", "wide", "-S", "gfm.width=16", "-S", "tune.n_trials=0", cwd=repo)
    # then `dvc exp show` lists it with that setting and its test metrics
    shown = json.loads(_sh("dvc", "exp", "show", "--json", cwd=repo, stdout_only=True))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    assert "wide" in {e.get("name") for e in exps}, exps
    (wide,) = [r["data"] for e in exps if e.get("name") == "wide" for r in e["revs"]]
    assert wide["params"]["params.yaml"]["data"]["gfm"]["width"] == 16
    assert "test/rel_mse_persistence" in wide["metrics"]["reports/metrics.json"]["data"]["metrics"]
    # and MLflow has its training run with that width, next to the first one's
    runs = client.search_runs(
        [client.get_experiment_by_name("gfm").experiment_id], "tags.`gfm.step` = 'train'"
    )
    trained = json.loads(
        (repo / "reports" / "local" / "train.json").read_text()
    )  # the experiment's
    assert len(runs) == 2 and trained["params"] == {}  # tune.n_trials=0: nothing tuned
    assert {r.info.run_id: r.data.params["gfm.width"] for r in runs}[trained["run_id"]] == "16"


@pytest.mark.slow  # more than 5 s on 2 cores (--durations)
def test_same_params_give_the_same_dataset_hash(repo: Path, tmp_path: Path):
    # given a second checkout of the same project
    twin = tmp_path / "twin"
    shutil.copytree(repo, twin)
    # when both generate from the same params
    _sh("gfm", "generate", "--no-dvc", cwd=repo)
    _sh("gfm", "generate", "--no-dvc", cwd=twin)
    # then the folders are byte-identical
    assert _tree_digest(repo / "data") == _tree_digest(twin / "data")
