"""Trajectories: a lazy, memory-bounded Sequence[RunRecord] over a dataset folder."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gfm.config import DataSettings
from gfm.data.schema import RunRecord
from gfm.data.trajectories import Trajectories
from gfm.data.writer import DatasetWriter
from tests.helpers import random_record

BYTES_PER_RECORD = 5 * 12 * 4 + 5 * 8 * 5  # weights (5, 12) float32 + five (5,) arrays


def make_record(run_id: str, seed: int, optimizer: str, hidden: tuple[int, ...]) -> RunRecord:
    hparams: dict[str, float | bool] = {"lr": 0.01}
    if optimizer == "adam":
        hparams |= {"beta1": 0.9, "beta2": 0.99}
    if optimizer == "momentum":
        hparams |= {"momentum": 0.8, "nesterov": False}
    h = hidden[-1]
    spec = {"task": "digits_mlp", "hidden": hidden, "optimizer": optimizer, "hparams": hparams}
    spec |= {"schedule": "cosine", "batch_size": 32, "init_seed": seed * 7, "seed": seed}
    rng = np.random.default_rng(seed + 10 * len(hidden))
    return random_record(
        run_id,
        seed + 10 * len(hidden),
        layout=[("fc.weight", (h, 3)), ("fc.bias", (h,))],
        lr=np.linspace(0.01, 0.0, 5),
        spec=spec,
        val_acc=rng.random(5),
    )


@pytest.fixture
def originals() -> dict[str, RunRecord]:
    recs = [
        make_record(f"{o}-{'-'.join(map(str, h))}-{s}", s, o, h)
        for o in ("adam", "rmsprop", "momentum")
        for h in ((3,), (3, 3))
        for s in range(3)
    ]
    return {r.spec.run_id: r for r in recs}


@pytest.fixture
def root(tmp_path: Path, originals: dict[str, RunRecord]) -> Path:
    writer = DatasetWriter(tmp_path / "data")
    for r in originals.values():
        writer.write_run(r)
    cfg = DataSettings(seeds=3, splits={"holdout_archs": {"digits_mlp": "3-3"}})
    writer.commit(cfg)
    return tmp_path / "data"


def test_opening_reads_tables_only(root: Path) -> None:
    # when
    data = Trajectories(root)
    train = data.select("seed", "train")
    # then
    assert len(data) == 18 and data.cached_bytes == 0
    assert len(train) == 6 and data.manifest.counts.runs == 18
    assert isinstance(data, Sequence)


def test_records_come_back_exactly(root: Path, originals: dict[str, RunRecord]) -> None:
    # when
    data = Trajectories(root)
    # then
    for record in data:
        want = originals[record.spec.run_id]
        assert record.spec == want.spec
        assert type(record.spec.hparams.get("nesterov", False)) is bool
        np.testing.assert_array_equal(record.weights, want.weights)
        np.testing.assert_array_equal(record.lr, want.lr)
        np.testing.assert_array_equal(record.val_acc, want.val_acc)
        assert list(record.params.layer) == list(want.params.layer)
    assert data[-1].spec.run_id == data.run_ids[-1]
    assert data.load("adam-3-0").spec.seed == 0


def test_views_share_parameter_metadata(root: Path) -> None:
    data = Trajectories(root)
    a, b = data.load("adam-3-0"), data.load("rmsprop-3-1")
    assert a.params is b.params is data.param_meta("digits_mlp", "3")


def test_select_matches_the_runs_table(root: Path) -> None:
    # given
    data = Trajectories(root)
    runs = pl.read_parquet(root / "runs.parquet")
    # when / then
    for split in ("seed", "architecture", "optimizer"):
        for part in ("train", "val", "test"):
            view = data.select(split, part)
            expected = runs.filter(pl.col(f"split_{split}") == part)["run_id"].to_list()
            assert view.run_ids == expected
            assert [r.spec.run_id for r in view] == expected
    assert {r.spec.arch for r in data.select("architecture", "test")} == {"3-3"}
    assert {r.spec.optimizer for r in data.select("optimizer", "test")} == {"rmsprop"}
    assert {r.spec.seed for r in data.select("seed", "test")} == {2}


@pytest.mark.parametrize(
    ("split", "part", "message"),
    [
        (
            "seeds",
            "train",
            r"`split` must be one of \['seed', 'architecture', 'optimizer'\], got 'seeds'",
        ),
        ("seed", "dev", r"`part` must be one of \['train', 'val', 'test'\], got 'dev'"),
    ],
)
def test_select_rejects_unknown_names(root: Path, split: str, part: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Trajectories(root).select(split, part)


def test_filter_and_slices_are_views(root: Path) -> None:
    data = Trajectories(root)
    adam = data.filter(pl.col("optimizer") == "adam")
    assert len(adam) == 6 and all(r.spec.optimizer == "adam" for r in adam)
    assert adam[1:3].run_ids == adam.run_ids[1:3]
    assert len(data.filter(optimizer="momentum")) == 6


def test_cache_is_bounded_by_bytes(root: Path) -> None:
    # given: room for two records
    data = Trajectories(root, cache_bytes=2 * BYTES_PER_RECORD)
    # when
    for _ in data:
        assert data.cached_bytes <= 2 * BYTES_PER_RECORD
    # then: the most recent stay cached, so re-reading them returns the same object
    last = data.run_ids[-1]
    assert data.load(last) is data.load(last)
    assert data.cached_bytes == 2 * BYTES_PER_RECORD


def test_cache_can_be_disabled(root: Path) -> None:
    data = Trajectories(root, cache_bytes=0)
    first = data[0]
    assert data.cached_bytes == 0 and data[0] is not first


def test_unknown_run_and_index_raise(root: Path) -> None:
    view = Trajectories(root).select("seed", "test")
    with pytest.raises(KeyError, match="run_id"):
        view.load("adam-3-0")  # a seed-train run
    with pytest.raises(IndexError, match="index"):
        view[len(view)]


def test_views_pickle_for_worker_processes(root: Path) -> None:
    view = Trajectories(root).select("seed", "train")
    _ = view[0]
    clone = pickle.loads(pickle.dumps(view))
    assert clone.run_ids == view.run_ids and clone.cached_bytes == 0
    np.testing.assert_array_equal(clone[0].weights, view[0].weights)


def test_missing_dataset_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="must exist"):
        Trajectories(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest"):
        Trajectories(tmp_path / "empty")
