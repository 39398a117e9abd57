"""Dataset storage: atomic writes, round trips, determinism, splits, resume and the swap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gfm.config import DataSettings, SplitSettings
from gfm.data.atomic import atomic_path, atomic_write_bytes
from gfm.data.checkpoints import read_checkpoints, write_checkpoints
from gfm.data.format import dataset_hash, read_manifest
from gfm.data.schema import RunRecord
from gfm.data.splits import assign_splits
from gfm.data.validate import validate
from gfm.data.writer import DatasetWriter
from tests.helpers import random_record


def make_record(
    run_id: str,
    *,
    seed: int = 0,
    optimizer: str = "sgd",
    hidden: tuple[int, ...] = (3,),
    task: str = "mlp_regression",
    diverged_at: int | None = None,
) -> RunRecord:
    """A tiny run: M = 4 intervals of 2 steps, D = 3h + h parameters, seeded by run_id."""
    hparams: dict[str, float | bool] = {"lr": 0.05}
    if optimizer == "momentum":
        hparams |= {"momentum": 0.9, "nesterov": True}
    h = hidden[0] if hidden else 1
    spec = {"task": task, "hidden": hidden, "optimizer": optimizer, "hparams": hparams}
    spec |= {"batch_size": None if seed % 2 else 16, "init_seed": 1000 + seed}
    return random_record(
        run_id,
        sum(map(ord, run_id)),
        layout=[("net.0.weight", (h, 3)), ("net.0.bias", (h,))],
        lr=0.05,
        record_every=2,
        spec={**spec, "seed": seed},
        diverged_at=diverged_at,
        extra={"wall_s": 0.25},
    )


def write_dataset(root: Path, records: list[RunRecord], cfg: DataSettings | None = None) -> None:
    writer = DatasetWriter(root)
    for r in records:
        writer.write_run(r)
    writer.commit(cfg or DataSettings(seeds=4))


def records() -> list[RunRecord]:
    return [make_record(f"sgd-{s}", seed=s) for s in range(4)] + [
        make_record(f"mom-{s}", seed=s, optimizer="momentum") for s in range(4)
    ]


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_record(a: RunRecord, b: RunRecord) -> None:
    assert a.spec == b.spec
    assert type(a.spec.hparams.get("nesterov")) is type(b.spec.hparams.get("nesterov"))
    for name in ("steps", "lr", "train_loss", "val_loss", "val_acc", "weights"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.weights.dtype == np.float32
    assert list(a.params.layer) == list(b.params.layer)
    assert a.params.shape == b.params.shape
    np.testing.assert_array_equal(a.params.index, b.params.index)
    assert list(a.params.kind) == list(b.params.kind)
    np.testing.assert_array_equal(a.params.fan_in, b.params.fan_in)
    assert a.extra == b.extra


# ------------------------------------------------------------------------------------ atomic


def test_atomic_write_bytes_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    # given
    target = tmp_path / "sub" / "f.bin"
    # when
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    # then
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path: Path) -> None:
    # given
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    # when
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    # then
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


# -------------------------------------------------------------------------------- round trip


def test_write_commit_read_round_trip_is_exact(tmp_path: Path) -> None:
    # given
    originals = records()
    # when
    write_dataset(tmp_path / "data", originals)
    # then
    for r in originals:
        path = tmp_path / "data" / "checkpoints" / f"{r.spec.run_id}.parquet"
        assert_same_record(r, read_checkpoints(path))
    runs = pl.read_parquet(tmp_path / "data" / "runs.parquet")
    assert runs["run_id"].to_list() == sorted(r.spec.run_id for r in originals)
    row = runs.filter(pl.col("run_id") == "mom-1").row(0, named=True)
    assert row["nesterov"] is True and row["momentum"] == 0.9 and row["beta1"] is None
    assert row["batch_size"] is None and row["n_params"] == 12 and row["n_checkpoints"] == 5
    assert row["arch"] == "3" and row["hidden"] == [3]
    assert validate(tmp_path / "data") == []


def test_checkpoint_file_is_self_describing(tmp_path: Path) -> None:
    # given
    record = make_record("solo", seed=1)
    path = tmp_path / "solo.parquet"
    # when
    write_checkpoints(path, record)
    # then: spec, layout and extra come back without any other file
    assert_same_record(record, read_checkpoints(path))
    frame = pl.read_parquet(path)
    np.testing.assert_array_equal(frame["t"].to_numpy(), np.arange(5) / 4)


def test_same_records_give_byte_identical_folders(tmp_path: Path) -> None:
    # given / when: the same records, written in another order into another folder
    write_dataset(tmp_path / "a" / "data", records())
    write_dataset(tmp_path / "b" / "data", records()[::-1])
    # then
    a, b = folder_bytes(tmp_path / "a" / "data"), folder_bytes(tmp_path / "b" / "data")
    assert a == b
    manifest = read_manifest(tmp_path / "a" / "data")
    assert (
        manifest.hash
        == dataset_hash(tmp_path / "a" / "data")
        == dataset_hash(tmp_path / "b" / "data")
    )


def test_manifest_is_machine_independent(tmp_path: Path) -> None:
    # given
    cfg = DataSettings(root=tmp_path / "data", seeds=4, workers=2)
    # when
    write_dataset(tmp_path / "data", records(), cfg)
    # then
    text = (tmp_path / "data" / "manifest.json").read_text()
    assert str(tmp_path) not in text
    manifest = json.loads(text)
    assert not {"root", "workers", "remote"} & set(manifest["params"])
    assert manifest["params"]["seeds"] == 4
    assert manifest["counts"]["by_task_optimizer"] == {"mlp_regression": {"momentum": 4, "sgd": 4}}


def test_write_run_rejects_non_finite_weights_without_diverged_at(tmp_path: Path) -> None:
    # given
    record = make_record("bad")
    record.weights[2, 1] = np.nan
    # when / then
    with pytest.raises(ValueError, match="`weights` must be finite.*step 4"):
        DatasetWriter(tmp_path / "data").write_run(record)


def test_write_run_rejects_curves_of_the_wrong_length(tmp_path: Path) -> None:
    record = make_record("bad")
    record.lr = np.full(4, 0.05)
    with pytest.raises(ValueError, match="`lr` must have shape"):
        DatasetWriter(tmp_path / "data").write_run(record)


# ------------------------------------------------------------------------------------ splits


def test_assign_splits_follows_the_rules() -> None:
    # given: 2 optimizers x 2 archs x 4 seeds
    rows = [
        {"run_id": f"{o}-{a}-{s}", "task": "digits_mlp", "optimizer": o, "arch": a, "seed": s}
        for o in ("adam", "rmsprop")
        for a in ("32", "32-32")
        for s in range(4)
    ]
    runs = pl.DataFrame(rows)
    splits = SplitSettings(val_seeds=1, test_seeds=1, holdout_archs={"digits_mlp": "32-32"})
    # when
    out = assign_splits(runs, splits, seeds=4)
    # then: order kept, last seed test, the one before val, the rest train
    assert out["run_id"].to_list() == runs["run_id"].to_list()
    expected_seed = {0: "train", 1: "train", 2: "val", 3: "test"}
    for row in out.iter_rows(named=True):
        assert row["split_seed"] == expected_seed[row["seed"]]
        assert row["split_architecture"] == ("test" if row["arch"] == "32-32" else "train")
        assert row["split_optimizer"] == ("test" if row["optimizer"] == "rmsprop" else "train")


def test_assign_splits_without_seeds_ranks_runs_within_groups() -> None:
    # given: imported runs, groups of 3 and of 2 (too small to hold out val and test)
    runs = pl.DataFrame(
        {
            "run_id": ["c", "a", "b", "x", "y"],
            "task": ["imported"] * 5,
            "optimizer": ["sgd", "sgd", "sgd", "adam", "adam"],
            "arch": ["linear"] * 5,
            "seed": [0, 0, 0, 0, 1],
        }
    )
    # when
    out = assign_splits(runs, SplitSettings(), seeds=None)
    # then: group (a, b, c) by run_id -> train, val, test; the pair stays train
    assert dict(zip(out["run_id"], out["split_seed"], strict=True)) == {
        "a": "train",
        "b": "val",
        "c": "test",
        "x": "train",
        "y": "train",
    }
    assert set(out["split_architecture"]) == {"train"}


def test_splits_do_not_move_when_a_run_diverges(tmp_path: Path) -> None:
    # given: seed 3 of sgd diverged
    recs = records()
    recs[3] = make_record("sgd-3", seed=3, diverged_at=6)
    # when
    write_dataset(tmp_path / "data", recs)
    # then
    runs = pl.read_parquet(tmp_path / "data" / "runs.parquet")
    split = dict(zip(runs["run_id"], runs["split_seed"], strict=True))
    assert split["sgd-2"] == "val" and "sgd-3" not in split and split["mom-3"] == "test"


# ------------------------------------------------------------------------- diverged, resume


def test_diverged_runs_are_excluded_and_counted(tmp_path: Path) -> None:
    # given
    recs = [*records(), make_record("boom", seed=0, optimizer="adam", diverged_at=4)]
    recs[-1].weights = recs[-1].weights[:2]  # a diverged record holds only what came before
    # when
    write_dataset(tmp_path / "data", recs)
    # then
    manifest = read_manifest(tmp_path / "data")
    assert manifest.counts.runs == 8 and manifest.counts.diverged == 1
    assert [(d.run_id, d.step) for d in manifest.diverged] == [("boom", 4)]
    assert not (tmp_path / "data" / "checkpoints" / "boom.parquet").exists()
    assert "boom" not in pl.read_parquet(tmp_path / "data" / "runs.parquet")["run_id"].to_list()
    assert validate(tmp_path / "data") == []


def test_has_resumes_from_staging(tmp_path: Path) -> None:
    # given: a generation that wrote two runs and died
    first = DatasetWriter(tmp_path / "data")
    first.write_run(make_record("sgd-0"))
    first.write_run(make_record("boom", diverged_at=2))
    # when
    writer = DatasetWriter(tmp_path / "data")
    # then
    assert writer.has(make_record("sgd-0").spec)
    assert writer.has(make_record("boom").spec)
    assert not writer.has(make_record("sgd-1", seed=1).spec)


def test_has_drops_a_staged_run_whose_spec_changed(tmp_path: Path) -> None:
    # given
    writer = DatasetWriter(tmp_path / "data")
    writer.write_run(make_record("sgd-0"))
    changed = make_record("sgd-0", seed=2).spec
    # when / then
    assert not writer.has(changed)
    assert not (writer.staging / "checkpoints" / "sgd-0.parquet").exists()


def test_has_reuses_unchanged_runs_of_the_committed_dataset(tmp_path: Path) -> None:
    # given
    root = tmp_path / "data"
    write_dataset(root, [*records(), make_record("boom", diverged_at=2)])
    before = folder_bytes(root)
    # when: a new generation with the same plan trains nothing
    writer = DatasetWriter(root)
    specs = [r.spec for r in records()] + [make_record("boom").spec]
    assert all(writer.has(s) for s in specs)
    assert not writer.has(make_record("new", seed=1).spec)
    writer.commit(DataSettings(seeds=4), [s.run_id for s in specs])
    # then
    assert folder_bytes(root) == before


def test_commit_drops_unplanned_runs_and_requires_planned_ones(tmp_path: Path) -> None:
    # given
    writer = DatasetWriter(tmp_path / "data")
    for r in records():
        writer.write_run(r)
    # when / then
    with pytest.raises(ValueError, match="planned run.*missing.*ghost"):
        writer.commit(DataSettings(seeds=4), ["sgd-0", "ghost"])
    manifest = writer.commit(DataSettings(seeds=4), ["sgd-0", "sgd-1"])
    assert manifest.counts.runs == 2
    assert sorted(p.name for p in (tmp_path / "data" / "checkpoints").iterdir()) == [
        "sgd-0.parquet",
        "sgd-1.parquet",
    ]


def test_interrupted_generation_leaves_the_previous_dataset_intact(tmp_path: Path) -> None:
    # given: a committed dataset, then a new generation that staged runs and a half-written file
    root = tmp_path / "data"
    write_dataset(root, records())
    before = folder_bytes(root)
    writer = DatasetWriter(root)
    writer.write_run(make_record("new-0", seed=5))
    (writer.staging / "checkpoints" / ".new-1.parquet.tmp-123-abcd").write_bytes(b"PAR1 half")
    # when: it dies before commit
    del writer
    # then
    assert folder_bytes(root) == before
    assert validate(root) == []
    # and the next commit keeps no half-written file
    manifest = DatasetWriter(root).commit(DataSettings(seeds=4))
    assert not any(".tmp-" in f for f in manifest.files)


def test_interrupted_swap_is_completed_or_undone(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_dataset(root, records())
    before = folder_bytes(root)
    writer = DatasetWriter(root)
    old = writer.old
    # given: killed after `root -> .old`, staging incomplete (no manifest) -> previous restored
    writer.write_run(make_record("new-0", seed=5))
    os.replace(root, old)
    DatasetWriter(root)
    assert folder_bytes(root) == before and not old.exists()
    # given: killed after `root -> .old`, staging complete -> the new dataset is put in place
    writer.commit(DataSettings(seeds=4))
    new = folder_bytes(root)
    os.replace(root, old)
    (tmp_path / ".data.partial").mkdir()
    for rel, data in new.items():
        (tmp_path / ".data.partial" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".data.partial" / rel).write_bytes(data)
    DatasetWriter(root)
    assert folder_bytes(root) == new and not old.exists()


def test_commit_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    # given
    root = tmp_path / "data"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    writer = DatasetWriter(root)
    writer.write_run(make_record("sgd-0"))
    # when / then
    with pytest.raises(ValueError, match="must be a gfm dataset"):
        writer.commit(DataSettings(seeds=4))
    assert (root / "precious.txt").read_text() == "keep me"


def test_has_does_not_reuse_a_committed_file_that_changed(tmp_path: Path) -> None:
    # given: a committed run whose file was rewritten (same spec, other weights) after the commit
    root = tmp_path / "data"
    write_dataset(root, records())
    tampered = make_record("sgd-0")
    tampered.weights = tampered.weights + 1
    write_checkpoints(root / "checkpoints" / "sgd-0.parquet", tampered)
    # when / then
    writer = DatasetWriter(root)
    assert not writer.has(make_record("sgd-0").spec)
    assert writer.has(make_record("sgd-1", seed=1).spec)
