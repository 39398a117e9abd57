"""Validation reports every problem of a damaged dataset, each naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gfm.config import DataSettings
from gfm.data.checkpoints import write_checkpoints
from gfm.data.format import read_manifest
from gfm.data.schema import RunRecord
from gfm.data.validate import DatasetError, Problem, check, validate
from gfm.data.writer import DatasetWriter
from tests.helpers import random_record


def make_record(run_id: str, seed: int, D: int = 6) -> RunRecord:
    return random_record(
        run_id,
        seed,
        M=3,
        layout=[("linear.weight", (1, D - 1)), ("linear.bias", (1,))],
        lr=0.003,
        record_every=2,
        spec={"optimizer": "adam", "hparams": {"lr": 0.003, "beta1": 0.9, "beta2": 0.999}}
        | {"schedule": "step"},
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    writer = DatasetWriter(tmp_path / "data")
    for s in range(3):
        writer.write_run(make_record(f"run-{s}", s))
    writer.write_run(RunRecord(**{**make_record("run-9", 9).__dict__, "diverged_at": 4}))
    writer.commit(DataSettings(seeds=3))
    return tmp_path / "data"


def problems_for(problems: list[Problem], file: str) -> list[str]:
    return [p.message for p in problems if p.file == file]


def test_a_fresh_dataset_is_valid(root: Path) -> None:
    assert validate(root) == []
    assert check(root) == read_manifest(root)


def test_truncated_parquet_is_a_problem_naming_the_file(root: Path) -> None:
    # given
    path = root / "checkpoints" / "run-1.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    # when
    problems = validate(root)
    # then
    messages = problems_for(problems, "checkpoints/run-1.parquet")
    assert any("must be a readable Parquet file" in m for m in messages)
    assert any("sha256 must be" in m for m in messages)
    assert all("Traceback" not in str(p) for p in problems)


def test_garbage_parquet_is_a_problem_naming_the_file(root: Path) -> None:
    (root / "checkpoints" / "run-2.parquet").write_bytes(b"not parquet at all")
    messages = problems_for(validate(root), "checkpoints/run-2.parquet")
    assert any("readable Parquet" in m for m in messages)


def test_wrong_width_is_a_problem_naming_the_file(root: Path) -> None:
    # given: run-0 rewritten with one parameter more than its (task, arch)
    write_checkpoints(root / "checkpoints" / "run-0.parquet", make_record("run-0", 0, D=7))
    # when
    messages = problems_for(validate(root), "checkpoints/run-0.parquet")
    # then
    assert any("width of `w` must be n_params = 6" in m and "got 7" in m for m in messages)
    assert any("rows in parameters.parquet" in m for m in messages)


def test_non_finite_value_is_reported_with_its_row_and_step(root: Path) -> None:
    # given: a file written by another tool with a NaN weight at checkpoint 2 (step 4)
    path = root / "checkpoints" / "run-1.parquet"
    frame = pl.read_parquet(path)
    meta = pl.read_parquet_metadata(path)
    w = frame["w"].to_numpy().copy()
    w[2, 3] = np.inf
    frame = frame.with_columns(pl.Series("w", w, dtype=frame.schema["w"]))
    frame.write_parquet(path, metadata={k: v for k, v in meta.items() if k.startswith("gfm.")})
    # when
    problems = [p for p in validate(root) if p.file == "checkpoints/run-1.parquet" and p.row == 2]
    # then
    assert len(problems) == 1
    assert "`w` must be finite, got inf at step 4" in str(problems[0])
    assert str(problems[0]).startswith("checkpoints/run-1.parquet row 2: ")


def test_bad_steps_and_partial_nan_curves_are_reported(root: Path) -> None:
    path = root / "checkpoints" / "run-2.parquet"
    frame = pl.read_parquet(path)
    meta = {k: v for k, v in pl.read_parquet_metadata(path).items() if k.startswith("gfm.")}
    frame = frame.with_columns(
        pl.Series("step", [0, 2, 2, 6]), pl.Series("train_loss", [0.5, np.nan, 0.3, 0.2])
    )
    frame.write_parquet(path, metadata=meta)
    messages = problems_for(validate(root), "checkpoints/run-2.parquet")
    assert any("`step` must increase strictly, got 2 then 2" in m for m in messages)
    assert any("`train_loss` must be all finite" in m and "step 2" in m for m in messages)


def test_hash_mismatch_is_reported(root: Path) -> None:
    # given
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["hash"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    # when
    messages = problems_for(validate(root), "manifest.json")
    # then
    assert any("`hash` must be sha256" in m and "got 000" in m for m in messages)


def test_unknown_and_missing_files_are_reported(root: Path) -> None:
    (root / "notes.txt").write_text("hello")
    (root / "checkpoints" / "run-0.parquet").unlink()
    problems = validate(root)
    assert problems_for(problems, "notes.txt") == [
        "unknown file: must be listed in manifest.json `files` or removed"
    ]
    assert any("must exist" in m for m in problems_for(problems, "checkpoints/run-0.parquet"))


def test_missing_or_broken_manifest_is_reported(root: Path) -> None:
    (root / "manifest.json").write_text("{not json")
    assert any(
        "must be a valid manifest" in m for m in problems_for(validate(root), "manifest.json")
    )
    (root / "manifest.json").unlink()
    assert problems_for(validate(root), "manifest.json") == [
        "must exist (every gfm dataset has a manifest)"
    ]


def test_check_lists_every_problem(root: Path) -> None:
    # given: two unrelated problems
    (root / "notes.txt").write_text("hello")
    path = root / "runs.parquet"
    path.write_bytes(path.read_bytes()[:50])
    # when / then
    with pytest.raises(DatasetError) as info:
        check(root)
    text = str(info.value)
    assert "notes.txt: unknown file" in text
    assert "runs.parquet: must be a readable Parquet file" in text
    assert "runs.parquet: sha256 must be" in text
    assert isinstance(info.value, ValueError)


def test_missing_folder_is_one_problem(tmp_path: Path) -> None:
    assert [p.file for p in validate(tmp_path / "none")] == ["."]
