"""A dataset that fails the cheap validation is refused by every step that reads it (issue 15,
item 1), and the reader refuses run ids that would build paths outside the dataset (item 14).

Each case damages a copy of the tiny dataset on disk, runs the real command, and asserts the
one-line message naming the file, the exit status, and that nothing was written or changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gfm.data.checkpoints import _checkpoint_bytes, read_checkpoints
from gfm.data.format import MANIFEST_FILE, RUNS_FILE, DatasetError, hash_files, read_manifest
from gfm.data.trajectories import Trajectories
from tests.conftest import CONFS
from tests.faults.helpers import gfm, snapshot

pytestmark = pytest.mark.faults


@pytest.fixture
def project(tmp_path: Path, tiny_data: Path) -> Path:
    """A project folder: the tiny params file and a copy of the tiny dataset beside it.

    Every path the settings name (data, models, reports, mlflow.db) resolves inside it.
    """
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(CONFS / "valid" / "tiny.yaml", folder / "params.yaml")
    shutil.copytree(tiny_data, folder / "data")
    return folder


def run_ids(data: Path, part: str = "train") -> list[str]:
    """The run ids of one part of the seed split."""
    runs = pl.read_parquet(data / RUNS_FILE)
    return runs.filter(pl.col("split_seed") == part)["run_id"].to_list()


def flip_byte(path: Path) -> None:
    """Flip one bit in the middle of the file (a weight, in a checkpoint file)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rehash(data: Path, *rels: str) -> None:
    """Rewrite the manifest so it describes ``rels`` as they are now (a consistent dataset)."""
    manifest = read_manifest(data)
    files = dict(manifest.files)
    for rel in rels:
        files[rel] = hashlib.sha256((data / rel).read_bytes()).hexdigest()
    fixed = manifest.model_copy(update={"files": files, "hash": hash_files(files)})
    (data / MANIFEST_FILE).write_text(fixed.to_json())


def put_nan(data: Path, run_id: str) -> str:
    """A NaN weight in a run's file, the manifest rewritten to match; returns the relpath."""
    rel = f"checkpoints/{run_id}.parquet"
    record = read_checkpoints(data / rel)
    weights = record.weights.copy()
    weights[1, 0] = np.nan
    (data / rel).write_bytes(_checkpoint_bytes(dataclasses.replace(record, weights=weights)))
    rehash(data, rel)
    return rel


def invoke(command: str, project: Path) -> tuple[int, list[str]]:
    """Run the real ``gfm <command> -p <project>/params.yaml`` in its own process, on a console
    wide enough that no message wraps; (exit status, non-empty output lines)."""
    return gfm(command, "-p", str(project / "params.yaml"), cwd=project)


# ------------------------------------------------------------------ item 1: hashes


@pytest.mark.fault(
    "item 1: one flipped byte in a checkpoint Parquet",
    "exit 1 naming the file; no model saved; dataset kept",
)
@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "tune", "evaluate"])
def test_a_flipped_byte_in_a_checkpoint_is_refused(
    kept: Callable[..., None], command: str, project: Path
) -> None:
    rel = f"checkpoints/{run_ids(project / 'data')[0]}.parquet"
    flip_byte(project / "data" / rel)
    before = snapshot(project)
    status, lines = invoke(command, project)
    assert status == 1, lines
    assert lines[0] == f"gfm {command} failed"
    (message,) = lines[1:]  # one line: the file, what it must be, what it is, the repair
    assert message.startswith(f"{project / 'data' / rel}: sha256 must be ")
    assert "as listed in manifest.json, got" in message and "`dvc checkout`" in message
    kept(before, snapshot(project), exact=True)  # no model, report, store or change to the dataset


@pytest.mark.fault(
    "item 1: a damaged runs table", "exit 1 naming the table before anything is read"
)
@pytest.mark.slow
def test_a_damaged_table_is_refused_before_anything_is_read(
    kept: Callable[..., None], project: Path
) -> None:
    flip_byte(project / "data" / RUNS_FILE)
    before = snapshot(project)
    status, lines = invoke("train", project)
    assert status == 1
    assert lines[1].startswith(f"{project / 'data' / RUNS_FILE}: sha256 must be ")
    kept(before, snapshot(project), exact=True)


@pytest.mark.fault("item 1: a checkpoint file deleted", "exit 1 naming the missing file")
@pytest.mark.slow
def test_a_missing_checkpoint_file_is_refused(kept: Callable[..., None], project: Path) -> None:
    rel = f"checkpoints/{run_ids(project / 'data', 'test')[0]}.parquet"
    (project / "data" / rel).unlink()
    before = snapshot(project)
    status, lines = invoke("evaluate", project)
    assert status == 1
    assert lines[1] == (
        f"{project / 'data' / rel}: must exist in the gfm dataset; restore the dataset "
        "(`dvc checkout`) or regenerate it (`gfm generate`)"
    )
    kept(before, snapshot(project), exact=True)


@pytest.mark.fault(
    "item 1: a file damaged after opening",
    "the reader checks each file's sha256 when it first reads it",
)
def test_the_reader_checks_each_file_once_when_it_reads_it(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    first, second = run_ids(data)[:2]
    flip_byte(data / "checkpoints" / f"{second}.parquet")
    ds = Trajectories(data)
    assert ds.load(first).weights.shape[0] > 1  # an intact run still reads
    with pytest.raises(DatasetError, match=rf"{second}\.parquet: sha256 must be"):
        ds.load(second)
    with pytest.raises(DatasetError, match=rf"{second}\.parquet: sha256 must be"):
        ds.verify()


# ------------------------------------------------------------------ item 1: a NaN weight


@pytest.mark.fault(
    "item 1: a NaN weight with a matching manifest", "refused on reading, naming the file"
)
def test_a_nan_weight_is_refused_even_when_the_manifest_agrees(
    tiny_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run_id = run_ids(data)[0]
    rel = put_nan(data, run_id)
    ds = Trajectories(data)
    ds.verify()  # the hashes agree: only reading the weights finds it
    with pytest.raises(DatasetError) as err:
        ds.load(run_id)
    assert str(err.value).startswith(f"{data / rel}: `w` must be finite, got nan at step ")
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.fault("item 1: gfm train on a dataset with a NaN weight", "exit 1; no model saved")
@pytest.mark.slow
def test_training_on_a_nan_weight_saves_no_model(project: Path) -> None:
    data = project / "data"
    rels = [put_nan(data, run_id) for run_id in run_ids(data)]  # every run training may draw
    rehash(data, *rels)
    status, lines = invoke("train", project)
    assert status == 1, lines
    # the training log may come first (and MLflow's on stderr after): the error is two lines
    i = lines.index("gfm train failed")
    message = lines[i + 1]
    assert "`w` must be finite, got nan at step" in message
    assert message.split(": ")[0] in {str(data / rel) for rel in rels}
    assert not (project / "models").exists()
    assert not (project / "reports" / "train.json").exists()


# ------------------------------------------------------------------ item 14: run ids as paths


@pytest.mark.fault(
    "item 14: a run id that is a path (../, /, a/b, hidden)",
    "refused on opening, naming table, row and id",
)
@pytest.mark.parametrize("bad", ["../outside", "a/b", "/etc/passwd", ".hidden"])
def test_the_reader_refuses_run_ids_that_are_not_file_names(
    tiny_data: Path, tmp_path: Path, bad: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = run_ids(data)[0]
    # a file the id would reach, outside the dataset
    shutil.copy(data / "checkpoints" / f"{victim}.parquet", tmp_path / "outside.parquet")
    runs = pl.read_parquet(data / RUNS_FILE)
    row = runs["run_id"].to_list().index(victim)
    runs.with_columns(
        pl.when(pl.col("run_id") == victim)
        .then(pl.lit(bad))
        .otherwise(pl.col("run_id"))
        .alias("run_id")
    ).write_parquet(data / RUNS_FILE)
    rehash(data, RUNS_FILE)  # the manifest agrees: only the id itself is wrong
    with pytest.raises(DatasetError) as err:
        Trajectories(data)
    message = str(err.value)
    assert message.startswith(f"{data / RUNS_FILE} row {row}: `run_id` must be 1-200 characters")
    assert message.endswith(f"got {bad!r}")
    assert len(message.splitlines()) == 1
