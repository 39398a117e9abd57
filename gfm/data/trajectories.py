"""Lazy, memory-bounded reading of a trajectory dataset folder (format: ``docs/data-format.md``).

``Trajectories(root)`` reads only the small tables (manifest, runs, parameters); each run's
checkpoints (M+1, D) are read from its own Parquet file when first asked for and kept in a
byte-bounded LRU cache shared by every view of the same dataset. Every file is checked against
the manifest's sha256 before it is used (the tables on opening, a run's file when first read,
all of them with ``verify``), run ids must be plain file names, and a run with a non-finite
weight is refused: a damaged dataset never trains or scores a model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import polars as pl

from gfm.data.checkpoints import read_checkpoints
from gfm.data.format import (
    CHECKPOINTS_DIR,
    MANIFEST_FILE,
    PARAMETERS_FILE,
    PARAMETERS_SCHEMA,
    RUNS_FILE,
    RUNS_SCHEMA,
    DatasetError,
    Manifest,
    params_from_table,
    read_manifest,
    sha256_file,
)
from gfm.data.schema import SPLIT_KINDS, SPLIT_PARTS, ParamMeta, RunRecord, check_run_id
from gfm.data.splits import describe_rule, split_remedy

__all__ = ["DEFAULT_CACHE_BYTES", "Trajectories"]

DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB
_REPAIR = "restore the dataset (`dvc checkout`) or regenerate it (`gfm generate`)"


def _record_bytes(record: RunRecord) -> int:
    arrays = (record.weights, record.steps, record.lr, record.train_loss, record.val_loss)
    return sum(a.nbytes for a in arrays) + record.val_acc.nbytes


class _Cache:
    """Least-recently-used records, bounded by the bytes of their arrays; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[str, tuple[RunRecord, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> RunRecord | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, record: RunRecord) -> None:
        n = _record_bytes(record)
        if n > self.capacity:
            return  # larger than the whole cache: serve it uncached
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (record, n)
            self.size += n
            while self.size > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self.size -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into worker processes empty: records are cheap to re-read, locks can't travel.
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]


class _Dataset:
    """What every view of one dataset folder shares.

    The tables, the parameter metadata, the cache, and the files already checked against the
    manifest.
    """

    def __init__(self, root: Path, cache_bytes: int) -> None:
        self.root = root
        self.manifest = read_manifest(root)
        self.verified: set[str] = set()
        self._lock = threading.Lock()
        self.parameters = _read_table(self.verify_file(PARAMETERS_FILE), PARAMETERS_SCHEMA)
        self.cache = _Cache(cache_bytes)
        self.params: dict[tuple[str, str], ParamMeta] = {}

    def verify_file(self, rel: str) -> Path:
        """``root / rel``, once its sha256 is checked against the manifest (once per file).

        The cheap check every reader makes: a file changed, damaged or swapped after the dataset
        was written (a flipped byte, a hand edit) is refused before a value of it is used.

        Raises:
            FileNotFoundError: the file is missing.
            DatasetError: the file is not listed in the manifest or its bytes differ; the
                message names the file and how to repair the dataset.
        """
        path = self.root / rel
        if rel in self.verified:
            return path
        expected = self.manifest.files.get(rel)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: must exist in the gfm dataset; {_REPAIR}")
        if expected is None:
            raise DatasetError(f"{path}: must be listed in {MANIFEST_FILE} `files`; {_REPAIR}")
        actual = sha256_file(path)
        if actual != expected:
            raise DatasetError(
                f"{path}: sha256 must be {expected[:16]}... as listed in {MANIFEST_FILE}, got "
                f"{actual[:16]}... (the file changed after the dataset was written); {_REPAIR}"
            )
        with self._lock:
            self.verified.add(rel)
        return path

    def param_meta(self, task: str, arch: str) -> ParamMeta:
        with self._lock:
            if (task, arch) not in self.params:
                try:
                    self.params[(task, arch)] = params_from_table(self.parameters, task, arch)
                except KeyError as err:
                    raise DatasetError(f"{self.root / PARAMETERS_FILE}: {err.args[0]}") from None
            return self.params[(task, arch)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["params"] = {}
        state["verified"] = set(self.verified)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _read_table(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: must exist in a gfm dataset")
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for damaged files
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise DatasetError(
            f"{path}: must be a readable Parquet file, got {type(err).__name__}: {detail}"
        ) from None
    for name, dtype in schema.items():
        if frame.schema.get(name) != dtype:
            raise DatasetError(
                f"{path}: column `{name}` must be {dtype}, got {frame.schema.get(name)}"
            )
    return frame.select(list(schema))


def _checkpoint_rel(run_id: str) -> str:
    return f"{CHECKPOINTS_DIR}/{run_id}.parquet"


def _check_run_ids(runs: pl.DataFrame, path: Path) -> None:
    """Every run id is a plain file name (``check_run_id``).

    The reader builds ``checkpoints/<run_id>.parquet`` from it, so ``../x`` or ``a/b`` would read
    outside the dataset.

    Raises:
        DatasetError: naming the table, the row and the id.
    """
    for i, run_id in enumerate(runs["run_id"].to_list()):
        try:
            check_run_id(run_id, f"{path} row {i}")
        except ValueError as err:
            raise DatasetError(str(err)) from None


def _check_finite(record: RunRecord, path: Path) -> None:
    """The weights and learning rates a forecaster learns from are finite (cheap: one pass).

    Raises:
        DatasetError: naming the file, the column, the step and the value.
    """
    bad = ~np.isfinite(record.weights).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        j = int(np.argmax(~np.isfinite(record.weights[i])))
        raise DatasetError(
            f"{path}: `w` must be finite, got {record.weights[i, j]} at step "
            f"{int(record.steps[i])} (parameter {j}); {_REPAIR}"
        )
    lr = np.asarray(record.lr, dtype=np.float64)
    if not np.isfinite(lr).all():
        i = int(np.argmin(np.isfinite(lr)))
        raise DatasetError(
            f"{path}: `lr` must be finite, got {lr[i]} at step {int(record.steps[i])}; {_REPAIR}"
        )


class Trajectories(Sequence[RunRecord]):
    """A dataset folder as a lazy sequence of RunRecords, with split views.

    Opening reads ``manifest.json``, ``runs.parquet`` and ``parameters.parquet`` only. Indexing
    or iterating reads one run's file at a time (about 0.01 s and M+1 x D x 4 bytes each) and
    keeps recent ones in an LRU cache bounded by ``cache_bytes``. Views from ``select``,
    ``filter`` and slicing share the tables and the cache. Records from the cache are shared
    objects: copy arrays before modifying them in place.

    Example::

        data = Trajectories("data")
        train = data.select("seed", "train")  # Sequence[RunRecord], nothing loaded yet
        forecaster.fit(train, data.select("seed", "val"))

    Args:
        root: the dataset folder.
        cache_bytes: most bytes of run arrays kept in memory (default 1 GiB; 0 disables).

    Raises:
        FileNotFoundError: the folder, its manifest or one of its tables is missing.
        DatasetError: the manifest or a table is unreadable or has the wrong format version or
            columns (``gfm.data.validate.check`` reports every problem at once).
    """

    def __init__(self, root: str | Path, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if cache_bytes < 0:
            raise ValueError(f"`cache_bytes` must be >= 0, got {cache_bytes}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder must exist (run `gfm data generate`?)")
        self._data = _Dataset(root, cache_bytes)
        runs_path = self._data.verify_file(RUNS_FILE)
        runs = _read_table(runs_path, RUNS_SCHEMA)
        _check_run_ids(runs, runs_path)
        self._set_runs(runs)

    @classmethod
    def _view(cls, data: _Dataset, runs: pl.DataFrame) -> Trajectories:
        view = cls.__new__(cls)
        view._data = data
        view._set_runs(runs)
        return view

    def _set_runs(self, runs: pl.DataFrame) -> None:
        self._runs = runs
        self._ids: list[str] = runs["run_id"].to_list()
        self._rows = {run_id: i for i, run_id in enumerate(self._ids)}

    @property
    def root(self) -> Path:
        """The dataset folder."""
        return self._data.root

    @property
    def runs(self) -> pl.DataFrame:
        """One row per run in this view (columns of ``runs.parquet``), in run_id order."""
        return self._runs

    @property
    def run_ids(self) -> list[str]:
        """The run ids of this view, in order."""
        return list(self._ids)

    @property
    def manifest(self) -> Manifest:
        """The dataset's manifest (the whole dataset, not this view)."""
        return self._data.manifest

    @property
    def cached_bytes(self) -> int:
        """Bytes of run arrays now held in the shared cache."""
        return self._data.cache.size

    def verify(self) -> None:
        """Check every file this view reads against the manifest's sha256, before any is used.

        Opening checks the tables and each run's file is checked when first loaded; this checks
        all of this view's runs at once (a second or so per GB), so a step refuses a damaged
        dataset before it trains or logs anything.

        Raises:
            FileNotFoundError: a run's file is missing.
            DatasetError: a run's file is not listed in the manifest or its bytes differ.
        """
        for run_id in self._ids:
            self._data.verify_file(_checkpoint_rel(run_id))

    def select(self, split: str, part: str) -> Trajectories:
        """The runs of one part of one split, e.g. ``select("seed", "train")``.

        Args:
            split: one of ``SPLIT_KINDS`` (seed, architecture, optimizer).
            part: one of ``SPLIT_PARTS`` (train, val, test).

        Raises:
            ValueError: unknown split or part; the message lists the valid names.
        """
        if split not in SPLIT_KINDS:
            raise ValueError(f"`split` must be one of {list(SPLIT_KINDS)}, got {split!r}")
        if part not in SPLIT_PARTS:
            raise ValueError(f"`part` must be one of {list(SPLIT_PARTS)}, got {part!r}")
        return self.filter(pl.col(f"split_{split}") == part)

    def parts(self, split: str) -> tuple[Trajectories, Trajectories, Trajectories]:
        """(train, val, test) of one split kind; val may be empty.

        The parts are the dataset's own, fixed when it was written (``runs.parquet``, by the rule
        its manifest records in ``splits.rules``); settings do not change them.

        Raises:
            ValueError: unknown split, or the split has no train or no test runs; the message
                names the manifest, its rule and how to write the dataset with another split.
        """
        train, val, test = (self.select(split, part) for part in SPLIT_PARTS)
        if not len(train) or not len(test):
            rules = self.manifest.splits.rules
            raise ValueError(
                f"{self.root / MANIFEST_FILE}: split `{split}` must have train and test runs, "
                f"got {len(train)} train, {len(test)} test ({describe_rule(rules, split)}); the "
                f"split is fixed when the dataset is written: {split_remedy(rules, split)}"
            )
        return train, val, test

    def filter(self, *predicates: pl.Expr | Any, **constraints: Any) -> Trajectories:
        """A view of the runs whose ``runs`` row matches, e.g. ``filter(pl.col("lr") > 0.01)``.

        Arguments are those of ``polars.DataFrame.filter`` (``filter(task="digits_mlp")`` works).
        """
        return Trajectories._view(self._data, self._runs.filter(*predicates, **constraints))

    def param_meta(self, task: str, arch: str) -> ParamMeta:
        """Per-parameter metadata of one (task, arch), shared by all its runs."""
        return self._data.param_meta(task, arch)

    def load(self, run_id: str) -> RunRecord:
        """One run of this view, read from its file or the cache.

        Raises:
            KeyError: ``run_id`` is not in this view.
            DatasetError: the run's file differs from the manifest's sha256, is unreadable,
                disagrees with the tables, or holds a non-finite weight or learning rate.
        """
        row = self._rows.get(run_id)
        if row is None:
            raise KeyError(f"`run_id` must be one of this view's {len(self)} runs, got {run_id!r}")
        record = self._data.cache.get(run_id)
        if record is None:
            task, arch = self._runs["task"][row], self._runs["arch"][row]
            path = self._data.verify_file(_checkpoint_rel(run_id))
            record = read_checkpoints(path, params=self._data.param_meta(task, arch))
            if record.spec.run_id != run_id:
                raise DatasetError(
                    f"{path}: spec `run_id` must be {run_id!r}, got {record.spec.run_id!r}"
                )
            _check_finite(record, path)
            self._data.cache.put(run_id, record)
        return record

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> RunRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Trajectories: ...

    def __getitem__(self, index: int | slice) -> RunRecord | Trajectories:
        if isinstance(index, slice):
            return Trajectories._view(self._data, self._runs[index])
        n = len(self._ids)
        if not -n <= index < n:
            raise IndexError(f"`index` must be in [{-n}, {n - 1}], got {index}")
        return self.load(self._ids[index])

    def __iter__(self) -> Iterator[RunRecord]:
        for run_id in self._ids:
            yield self.load(run_id)

    def __repr__(self) -> str:
        return f"Trajectories({str(self.root)!r}, runs={len(self)})"
