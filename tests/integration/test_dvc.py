"""A real git + DVC repository in a temp folder: reproduce, version, push, delete, pull."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _sh(*cmd: str, cwd: Path) -> str:
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
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def repo(tmp_path: Path, confs: Path) -> Path:
    """A project checkout in miniature: dvc.yaml, the stage's code deps, tiny params, git + DVC."""
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["generate"]
    for dep in stage["deps"]:
        (repo / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / dep, repo / dep)
    params = yaml.safe_load((confs / "valid" / "tiny.yaml").read_text())
    params["data"]["remote"] = str(tmp_path / "remote")
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _sh("git", "init", "-q", cwd=repo)
    _sh("dvc", "init", "-q", cwd=repo)
    _sh("git", "add", "-A", cwd=repo)
    _sh("git", "commit", "-qm", "init", cwd=repo)
    return repo


def test_run_versions_data_and_pull_restores_it_bit_for_bit(repo: Path, tmp_path: Path):
    # when the main job runs in a fresh DVC repository
    out = _sh("gfm", "run", cwd=repo)
    # then the dataset is versioned, the pipeline is locked and nothing is left to do
    assert "dataset version" in out
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert (repo / "dvc.lock").exists()
    assert "up to date" in _sh("dvc", "status", cwd=repo)
    assert "didn't change" in _sh("dvc", "repro", cwd=repo)
    assert (tmp_path / "remote").is_dir() and any((tmp_path / "remote").rglob("*"))
    before = _tree_digest(repo / "data")

    # when the data is deleted and pulled back from the remote
    shutil.rmtree(repo / "data")
    _sh("dvc", "pull", "data.dvc", cwd=repo)
    # then it is restored bit for bit
    assert _tree_digest(repo / "data") == before
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"] == md5


def test_same_params_give_the_same_dataset_hash(repo: Path, tmp_path: Path):
    # given a second checkout of the same project
    twin = tmp_path / "twin"
    shutil.copytree(repo, twin)
    # when both generate from the same params
    _sh("gfm", "generate", "--no-dvc", cwd=repo)
    _sh("gfm", "generate", "--no-dvc", cwd=twin)
    # then the folders are byte-identical
    assert _tree_digest(repo / "data") == _tree_digest(twin / "data")
