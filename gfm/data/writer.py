"""The dataset writer: stage runs one by one, then build the tables and manifest and swap them in."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from gfm.config import DataSettings, SplitSettings
from gfm.data.atomic import _fsync_dir, _temp_name, atomic_write_bytes
from gfm.data.checkpoints import (
    _read_frame,
    _short,
    read_run_spec,
    write_checkpoints,
)
from gfm.data.format import (
    CHECKPOINTS_DIR,
    DIVERGED_DIR,
    MANIFEST_FILE,
    META_LAYERS,
    META_SPEC,
    PARAMETERS_FILE,
    PARAMETERS_SCHEMA,
    RUNS_FILE,
    RUNS_SCHEMA,
    Counts,
    DatasetError,
    DivergedRun,
    Manifest,
    SplitsInfo,
    _dumps,
    _list_files,
    _params_frame,
    _spec_dict,
    hash_files,
    params_from_layers,
    read_manifest,
    settings_params,
    sha256_file,
    spec_from_json,
    spec_row,
    spec_to_json,
)
from gfm.data.schema import (
    CURVES,
    FORMAT_VERSION,
    RUN_ID,
    SPLIT_KINDS,
    SPLIT_PARTS,
    RunRecord,
    RunSpec,
    arch_name,
    check_run_id,
)
from gfm.data.splits import GivenSplit, assign_splits
from gfm.data.stop import shielded


def _marker_spec(path: Path) -> str | None:
    try:
        return _dumps(json.loads(path.read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_spec(path: Path) -> str | None:
    try:
        return spec_to_json(read_run_spec(path))
    except (OSError, DatasetError):
        return None


def staging_path(root: str | Path) -> Path:
    """Where a generation of the dataset ``root`` stages its runs: ``.<name>.partial`` beside it."""
    root = Path(root)
    return root.parent / f".{root.name}.partial"


class DatasetWriter:
    """Build a dataset folder run by run in a staging folder, then swap it in with ``commit``.

    Staging lives next to the dataset, outside the DVC-tracked folder:
    ``root.parent / ".<name>.partial"``. Runs are written there one file each (atomically), so an
    interrupted generation loses at most the run in flight and resumes with ``has``. ``commit``
    writes the tables and manifest into staging and then swaps folders:

        root -> .<name>.old,   .<name>.partial -> root,   delete .<name>.old

    Between the two renames (microseconds) ``root`` does not exist; the next DatasetWriter on
    the same root finishes or undoes the swap (``recover``). ``has`` and ``write_run`` may run in
    several processes at once for different runs; ``commit`` runs in one.

    Args:
        root: the dataset folder (created by the first commit).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.staging = staging_path(self.root)
        self.old = self.root.parent / f".{self.root.name}.old"
        self._root_files: dict[str, str] | None = None
        self.recover()

    def recover(self) -> None:
        """Finish or undo a swap that was interrupted between its two renames."""
        if not self.root.exists() and self.old.is_dir():
            if (self.staging / MANIFEST_FILE).is_file():
                os.replace(self.staging, self.root)  # the new dataset was complete
            else:
                os.replace(self.old, self.root)  # put the previous dataset back
            _fsync_dir(self.root.parent)
        if self.root.exists() and self.old.is_dir():
            shutil.rmtree(self.old)

    def _paths(self, run_id: str) -> tuple[Path, Path]:
        return (
            self.staging / CHECKPOINTS_DIR / f"{run_id}.parquet",
            self.staging / DIVERGED_DIR / f"{run_id}.json",
        )

    def _current_files(self) -> dict[str, str]:
        # {relpath: sha256} of the committed dataset, {} when there is none usable to reuse from.
        if self._root_files is None:
            try:
                self._root_files = dict(read_manifest(self.root).files)
            except (OSError, DatasetError):
                self._root_files = {}
        return self._root_files

    def has(self, spec: RunSpec) -> bool:
        """Whether the run is already done: staged, or committed with an identical spec.

        A committed run (checkpoints or divergence marker) whose spec and sha256 match is linked
        (or copied) into staging, so unchanged runs are reused by the next commit. A staged file
        with the same run_id but another spec is stale and removed.

        Args:
            spec: the planned run.

        Returns:
            True when nothing needs to be trained for this run.
        """
        check_run_id(spec.run_id, "RunSpec")
        key = spec_to_json(spec)
        checkpoint, marker = self._paths(spec.run_id)
        for path, read in ((checkpoint, _file_spec), (marker, _marker_spec)):
            if path.exists():
                if read(path) == key:
                    return True
                path.unlink(missing_ok=True)
        files = self._current_files()
        for staged, read in ((checkpoint, _file_spec), (marker, _marker_spec)):
            rel = staged.relative_to(self.staging).as_posix()
            source = self.root / rel
            if (
                rel in files
                and source.is_file()
                and read(source) == key
                and sha256_file(source) == files[rel]
            ):
                self._link(source, staged)
                return True
        return False

    @staticmethod
    def _link(source: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(dest)
        try:
            os.link(source, tmp)  # committed files are never modified in place, so sharing is safe
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)

    def write_run(self, record: RunRecord) -> None:
        """Stage one run atomically: its checkpoint file, or for a diverged run only a marker.

        Raises:
            ValueError: the record is inconsistent (see ``write_checkpoints``).
        """
        run_id = record.spec.run_id
        check_run_id(run_id, "RunRecord.spec")
        checkpoint, marker = self._paths(run_id)
        if record.diverged:
            step = int(record.diverged_at)  # type: ignore[arg-type]
            body = {"run_id": run_id, "step": step, "spec": _spec_dict(record.spec)}
            atomic_write_bytes(marker, (json.dumps(body, sort_keys=True, indent=2) + "\n").encode())
            checkpoint.unlink(missing_ok=True)
        else:
            write_checkpoints(checkpoint, record)
            marker.unlink(missing_ok=True)

    def _staged(self) -> tuple[dict[str, Path], dict[str, Path]]:
        def ids(folder: Path, suffix: str) -> dict[str, Path]:
            if not folder.is_dir():
                return {}
            return {
                p.name[: -len(suffix)]: p
                for p in sorted(folder.glob(f"*{suffix}"))
                if RUN_ID.fullmatch(p.name[: -len(suffix)])
            }

        return (
            ids(self.staging / CHECKPOINTS_DIR, ".parquet"),
            ids(self.staging / DIVERGED_DIR, ".json"),
        )

    def commit(
        self,
        cfg: DataSettings | None = None,
        run_ids: Iterable[str] | None = None,
        *,
        splits: SplitSettings | None = None,
        source: Mapping[str, Any] | None = None,
        given: GivenSplit | None = None,
    ) -> Manifest:
        """Build runs.parquet, parameters.parquet and manifest.json from staging, then swap it in.

        Args:
            cfg: the data settings the runs were generated with (recorded in the manifest without
                root/workers/remote; its ``splits`` and ``seeds`` decide the splits). ``None`` for
                imported data.
            run_ids: the planned runs; staged runs not in it are dropped. Default: all staged.
            splits: split rules when ``cfg`` is None (default ``SplitSettings()``).
            source: what the data was imported from, recorded as ``params`` when ``cfg`` is None
                (file names only; no absolute paths, so the folder stays machine-independent).
            given: every run's seed-split part (imports), instead of the ``splits`` counts; its
                rule is recorded in the manifest as ``splits.rules.given``.

        Returns:
            The manifest that was written.

        Raises:
            ValueError: a planned run was never written, runs of one (task, arch) disagree on
                their parameter layout, or ``root`` exists but is not a gfm dataset.
            DatasetError: a staged file is unreadable.
        """
        if (
            self.root.exists()
            and not (self.root / MANIFEST_FILE).is_file()
            and any(self.root.iterdir())
        ):
            raise ValueError(
                f"{self.root}: must be a gfm dataset (with {MANIFEST_FILE}), an empty folder or "
                "absent to be replaced by commit, got a non-empty folder without a manifest"
            )
        if cfg is not None:
            params, rules, seeds = settings_params(cfg), cfg.splits, cfg.seeds
        else:
            params, rules, seeds = {"import": dict(source or {})}, splits or SplitSettings(), None
        kept, diverged = self._staged()
        if run_ids is not None:
            planned = set(run_ids)
            missing = sorted(planned - set(kept) - set(diverged))
            if missing:
                raise ValueError(
                    f"{self.staging}: every planned run must be written before commit, got "
                    f"{len(missing)} missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                )
            kept = {k: v for k, v in kept.items() if k in planned}
            diverged = {k: v for k, v in diverged.items() if k in planned}
        diverged = {k: v for k, v in diverged.items() if k not in kept}

        rows: list[dict[str, Any]] = []
        layouts: dict[tuple[str, str], tuple[str, str]] = {}  # (task, arch) -> (layers, first run)
        for run_id, path in sorted(kept.items()):
            frame, meta, schema = _read_frame(path, columns=list(CURVES))  # not `w`
            spec = spec_from_json(meta.get(META_SPEC, ""), f"{path}: metadata `{META_SPEC}`")
            if spec.run_id != run_id:
                raise DatasetError(f"{path}: spec `run_id` must be {run_id!r}, got {spec.run_id!r}")
            layers = meta.get(META_LAYERS, "")
            key = (spec.task, arch_name(spec.hidden))
            first = layouts.setdefault(key, (layers, run_id))
            if first[0] != layers:
                raise ValueError(
                    f"{path}: parameter layout must match run {first[1]} of task {key[0]!r}, arch "
                    f"{key[1]!r} (one layout per (task, arch)); give the runs distinct `hidden`"
                )
            curves = {c: frame[c] for c in CURVES}
            rows.append(
                {
                    **spec_row(spec),
                    "n_params": _width(schema.get("w"), path),
                    "n_checkpoints": frame.height,
                    **{f"initial_{c}": curves[c][0] for c in CURVES},
                    **{f"final_{c}": curves[c][-1] for c in CURVES},
                }
            )
        base_schema = {k: v for k, v in RUNS_SCHEMA.items() if not k.startswith("split_")}
        runs = pl.DataFrame(rows, schema=base_schema).sort("run_id")
        runs = assign_splits(runs, rules, seeds, given=given).select(list(RUNS_SCHEMA))
        parameters = pl.concat(
            [
                _params_frame(task, arch, params_from_layers(layers, f"run {run}: `{META_LAYERS}`"))
                for (task, arch), (layers, run) in sorted(layouts.items())
            ]
            or [pl.DataFrame(schema=PARAMETERS_SCHEMA)]
        )
        atomic_write_bytes(self.staging / RUNS_FILE, _parquet_bytes(runs))
        atomic_write_bytes(self.staging / PARAMETERS_FILE, _parquet_bytes(parameters))

        diverged_runs = []
        for run_id, path in sorted(diverged.items()):
            try:
                diverged_runs.append(
                    DivergedRun(run_id=run_id, step=int(json.loads(path.read_text())["step"]))
                )
            except (ValueError, KeyError, TypeError) as err:
                raise DatasetError(
                    f"{path}: must be a divergence marker with `step`, got {_short(err)}"
                ) from None

        # Drop anything else in staging: stale runs, temp files of killed writers, old tables.
        wanted = {RUNS_FILE, PARAMETERS_FILE}
        wanted |= {f"{CHECKPOINTS_DIR}/{r}.parquet" for r in kept}
        wanted |= {f"{DIVERGED_DIR}/{r}.json" for r in diverged}
        for rel in _list_files(self.staging):
            if rel not in wanted:
                (self.staging / rel).unlink()
        files = {rel: sha256_file(self.staging / rel) for rel in _list_files(self.staging)}

        counts = Counts(
            runs=runs.height,
            checkpoints=int(runs["n_checkpoints"].sum()),
            diverged=len(diverged_runs),
            by_task_optimizer=_group_counts(runs),
        )
        split_counts = {
            kind: {part: int((runs[f"split_{kind}"] == part).sum()) for part in SPLIT_PARTS}
            for kind in SPLIT_KINDS
        }
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            params=params,
            counts=counts,
            diverged=diverged_runs,
            splits=SplitsInfo(
                rules={
                    **rules.model_dump(mode="json"),
                    "seeds": seeds,
                    **({"given": given.rule} if given is not None else {}),
                },
                counts=split_counts,
            ),
            files=files,
            hash=hash_files(files),
        )
        atomic_write_bytes(self.staging / MANIFEST_FILE, manifest.to_json().encode())
        self._swap()
        return manifest

    def _swap(self) -> None:
        # a SIGTERM (gfm.data.stop) waits for both renames: readers never find `root` missing
        with shielded(f"the new dataset at {self.root} was committed"):
            if self.old.exists():
                shutil.rmtree(self.old)
            if self.root.exists():
                os.replace(self.root, self.old)
            # If the process dies here, `root` is missing; recover() completes the swap.
            os.replace(self.staging, self.root)
            _fsync_dir(self.root.parent)
            if self.old.exists():
                shutil.rmtree(self.old)
            self._root_files = None


def _width(dtype: pl.DataType | None, path: Path) -> int:
    if not isinstance(dtype, pl.Array):
        raise DatasetError(f"{path}: column `w` must be Array(Float32, D), got {dtype}")
    return dtype.size


def _group_counts(runs: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for task, optimizer, n in (
        runs.group_by(["task", "optimizer"]).len().sort(["task", "optimizer"]).iter_rows()
    ):
        out.setdefault(task, {})[optimizer] = int(n)
    return out


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()
