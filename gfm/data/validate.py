"""Check a dataset folder against ``docs/data-format.md`` and report every problem found.

``validate(root)`` returns the problems (never raises for bad data); ``check(root)`` raises one
``DatasetError`` that lists them all. Damaged files become problems naming the file, never a raw
library traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

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
    DatasetError,
    Manifest,
    checkpoint_schema,
    hash_files,
    layers_from_params,
    params_from_table,
    read_manifest,
    sha256_file,
    spec_from_json,
    spec_row,
)
from gfm.data.schema import CURVES, RUN_ID, SPLIT_KINDS, SPLIT_PARTS

__all__ = ["DatasetError", "Problem", "check", "validate"]

MAX_ROWS = 20  # bad rows of one kind reported per table


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        file: path relative to the dataset folder (``"."`` for the folder itself).
        message: what is wrong, as "<what> must be <expected>, got <actual>".
        row: 0-based row in ``file`` where it applies, if any.
    """

    file: str
    message: str
    row: int | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.message}"


def _short(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:300]


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: str, message: str, row: int | None = None) -> None:
        self.problems.append(Problem(file, message, row))


def _files_on_disk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _check_manifest(root: Path, report: _Report) -> Manifest | None:
    try:
        return read_manifest(root)
    except FileNotFoundError:
        report.add(MANIFEST_FILE, "must exist (every gfm dataset has a manifest)")
    except DatasetError as err:
        report.add(MANIFEST_FILE, str(err).split(": ", 1)[-1])
    return None


def _check_files(root: Path, manifest: Manifest, on_disk: list[str], report: _Report) -> None:
    for rel, digest in sorted(manifest.files.items()):
        path = root / rel
        if not path.is_file():
            report.add(rel, f"must exist (listed in {MANIFEST_FILE})")
            continue
        actual = sha256_file(path)
        if actual != digest:
            report.add(rel, f"sha256 must be {digest} as listed in {MANIFEST_FILE}, got {actual}")
    expected_hash = hash_files(manifest.files)
    if manifest.hash != expected_hash:
        report.add(
            MANIFEST_FILE,
            f"`hash` must be sha256 of the sorted 'relpath sha256' lines of `files` "
            f"({expected_hash}), got {manifest.hash}",
        )
    listed = set(manifest.files) | {MANIFEST_FILE}
    for rel in on_disk:
        if rel not in listed:
            report.add(rel, f"unknown file: must be listed in {MANIFEST_FILE} `files` or removed")


def _check_layout(on_disk: list[str], report: _Report) -> None:
    # Without a manifest, still flag files that have no place in the format.
    for rel in on_disk:
        parts = rel.split("/")
        ok = rel in {MANIFEST_FILE, RUNS_FILE, PARAMETERS_FILE} or (
            len(parts) == 2
            and (
                (parts[0] == CHECKPOINTS_DIR and parts[1].endswith(".parquet"))
                or (parts[0] == DIVERGED_DIR and parts[1].endswith(".json"))
            )
        )
        if not ok:
            report.add(rel, "unknown file: not part of the dataset format (docs/data-format.md)")


def _read_table(
    root: Path, rel: str, schema: Mapping[str, pl.DataType], report: _Report
) -> pl.DataFrame | None:
    path = root / rel
    if not path.is_file():
        report.add(rel, "must exist")
        return None
    try:
        frame = pl.read_parquet(path)
    except Exception as err:  # polars raises several types for damaged files
        report.add(rel, f"must be a readable Parquet file, got {_short(err)}")
        return None
    ok = True
    for name, dtype in schema.items():
        actual = frame.schema.get(name)
        if actual is None:
            report.add(rel, f"column `{name}` must exist ({dtype})")
            ok = False
        elif actual != dtype:
            report.add(rel, f"column `{name}` must be {dtype}, got {actual}")
            ok = False
    for name in frame.columns:
        if name not in schema:
            report.add(rel, f"column `{name}` is unknown: columns must be {list(schema)}")
    return frame.select(list(schema)) if ok else None


def _check_runs_table(runs: pl.DataFrame, report: _Report) -> None:
    ids = runs["run_id"].to_list()
    if ids != sorted(ids):
        report.add(RUNS_FILE, "rows must be sorted by `run_id`")
    dup = runs.filter(pl.col("run_id").is_duplicated())["run_id"].unique().sort().to_list()
    if dup:
        report.add(RUNS_FILE, f"`run_id` must be unique, got duplicates {dup[:5]}")
    for i, run_id in enumerate(ids):
        if run_id is None or not RUN_ID.fullmatch(run_id):
            report.add(RUNS_FILE, f"`run_id` must be a safe file name, got {run_id!r}", i)
    for kind in SPLIT_KINDS:
        bad = runs.with_row_index().filter(~pl.col(f"split_{kind}").is_in(list(SPLIT_PARTS)))
        for i, value in bad.select("index", f"split_{kind}").head(MAX_ROWS).iter_rows():
            report.add(
                RUNS_FILE, f"`split_{kind}` must be one of {list(SPLIT_PARTS)}, got {value!r}", i
            )
    bad_m = runs.with_row_index().filter(
        pl.col("n_checkpoints") != pl.col("steps") // pl.col("record_every") + 1
    )
    cols = ("index", "n_checkpoints", "steps", "record_every")
    for i, n, s, r in bad_m.select(cols).head(MAX_ROWS).iter_rows():
        report.add(
            RUNS_FILE,
            f"`n_checkpoints` must be steps // record_every + 1 = {s // r + 1}, got {n}",
            i,
        )


def _check_parameters(
    parameters: pl.DataFrame, report: _Report
) -> dict[tuple[str, str], tuple[int, str]]:
    """(D, layout string) per (task, arch), after checking positions run 0..D-1."""
    layouts: dict[tuple[str, str], tuple[int, str]] = {}
    for (task, arch), group in sorted(
        parameters.group_by(["task", "arch"]), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))
    ):
        positions = group["position"].sort().to_numpy()
        if not np.array_equal(positions, np.arange(len(positions))):
            report.add(
                PARAMETERS_FILE,
                f"`position` of task {task!r}, arch {arch!r} must run 0..{len(positions) - 1} "
                "once each",
            )
            continue
        params = params_from_table(parameters, str(task), str(arch))
        layouts[(str(task), str(arch))] = (len(params), layers_from_params(params))
    return layouts


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _check_checkpoint(
    root: Path,
    run: Mapping[str, object],
    layouts: Mapping[tuple[str, str], tuple[int, str]],
    report: _Report,
) -> None:
    run_id = str(run["run_id"])
    rel = f"{CHECKPOINTS_DIR}/{run_id}.parquet"
    path = root / rel
    if not path.is_file():
        report.add(rel, f"must exist for run {run_id!r} of {RUNS_FILE}")
        return
    try:
        meta = pl.read_parquet_metadata(path)
        frame = pl.read_parquet(path)
    except Exception as err:  # truncated or corrupt file
        report.add(rel, f"must be a readable Parquet file, got {_short(err)}")
        return
    D = _check_columns(rel, frame, report)
    if D is None:
        return
    _check_sizes(rel, run, D, frame, meta, layouts, report)
    _check_spec(rel, run, meta, report)
    _check_values(rel, frame, report)


def _check_columns(rel: str, frame: pl.DataFrame, report: _Report) -> int | None:
    """Columns and dtypes; the width D of `w`, or None when a column is wrong."""
    start = len(report.problems)
    w_type = frame.schema.get("w")
    D = w_type.size if isinstance(w_type, pl.Array) else None
    if D is None:
        report.add(rel, f"column `w` must be Array(Float32, D), got {w_type}")
    schema = checkpoint_schema(D or 1)
    for name, dtype in schema.items():
        actual = frame.schema.get(name)
        if name == "w" or actual == dtype:
            continue
        report.add(rel, f"column `{name}` must be {dtype}, got {actual}")
    for name in frame.columns:
        if name not in schema:
            report.add(rel, f"column `{name}` is unknown: columns must be {list(schema)}")
    return D if len(report.problems) == start else None


def _check_sizes(
    rel: str,
    run: Mapping[str, object],
    D: int,
    frame: pl.DataFrame,
    meta: Mapping[str, str],
    layouts: Mapping[tuple[str, str], tuple[int, str]],
    report: _Report,
) -> None:
    """Sizes against runs.parquet and parameters.parquet."""
    if run["n_params"] != D:
        report.add(rel, f"width of `w` must be n_params = {run['n_params']} ({RUNS_FILE}), got {D}")
    key = (str(run["task"]), str(run["arch"]))
    if key not in layouts:
        report.add(rel, f"task {key[0]!r}, arch {key[1]!r} must have rows in {PARAMETERS_FILE}")
    else:
        n_rows, layout = layouts[key]
        if n_rows != D:
            report.add(rel, f"width of `w` must be {n_rows} (rows in {PARAMETERS_FILE}), got {D}")
        if meta.get(META_LAYERS) != layout:
            report.add(rel, f"metadata `{META_LAYERS}` must match {PARAMETERS_FILE} for {key}")
    if frame.height != run["n_checkpoints"]:
        report.add(
            rel,
            f"number of rows must be n_checkpoints = {run['n_checkpoints']} ({RUNS_FILE}), "
            f"got {frame.height}",
        )


def _check_spec(
    rel: str, run: Mapping[str, object], meta: Mapping[str, str], report: _Report
) -> None:
    """The spec in the file's metadata agrees with the run's row."""
    if META_SPEC not in meta:
        report.add(rel, f"Parquet metadata must hold key `{META_SPEC}`, got {sorted(meta)}")
    else:
        try:
            spec = spec_from_json(meta[META_SPEC], f"metadata `{META_SPEC}`")
        except DatasetError as err:
            report.add(rel, str(err))
        else:
            for name, value in spec_row(spec).items():
                if run[name] != value and not (value is None and run[name] is None):
                    report.add(
                        rel, f"spec `{name}` must equal {RUNS_FILE}'s {run[name]!r}, got {value!r}"
                    )


def _check_values(rel: str, frame: pl.DataFrame, report: _Report) -> None:
    """Steps, the time grid and finite values (row = checkpoint index)."""
    steps = frame["step"].to_numpy()
    if frame.height < 2:
        report.add(rel, f"must hold >= 2 checkpoints, got {frame.height}")
        return
    if steps[0] != 0:
        report.add(rel, f"`step` must start at 0, got {steps[0]}", 0)
    down = np.diff(steps) <= 0
    if down.any():
        i = _first_bad(down) + 1
        report.add(rel, f"`step` must increase strictly, got {steps[i - 1]} then {steps[i]}", i)
    M = frame.height - 1
    t = frame["t"].to_numpy()
    off = ~np.isclose(t, np.arange(M + 1) / M, rtol=0.0, atol=1e-12)
    if off.any():
        i = _first_bad(off)
        report.add(rel, f"`t` must be i/M = {i / M!r}, got {t[i]!r} (step {steps[i]})", i)
    for name in ("lr", *CURVES):
        x = frame[name].to_numpy()
        finite = np.isfinite(x)
        if finite.all() or (name != "lr" and np.isnan(x).all()):
            continue
        i = _first_bad(~finite)
        rule = "finite" if name == "lr" else "all finite (or all NaN when not recorded)"
        report.add(rel, f"`{name}` must be {rule}, got {x[i]} at step {steps[i]}", i)
    w = frame["w"].to_numpy()  # (M+1, D)
    bad_rows = ~np.isfinite(w).all(axis=1)
    if bad_rows.any():
        i = _first_bad(bad_rows)
        j = _first_bad(~np.isfinite(w[i]))
        report.add(
            rel,
            f"`w` must be finite, got {w[i, j]} at step {steps[i]} (parameter {j}); "
            f"{int(bad_rows.sum())} row(s) affected",
            i,
        )


def _check_checkpoint_files(
    root: Path, runs: pl.DataFrame | None, on_disk: list[str], report: _Report
) -> None:
    known = set() if runs is None else set(runs["run_id"].to_list())
    for rel in on_disk:
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == CHECKPOINTS_DIR and parts[1].endswith(".parquet"):
            run_id = parts[1][: -len(".parquet")]
            if runs is not None and run_id not in known:
                report.add(rel, f"run {run_id!r} must have a row in {RUNS_FILE}")


def _check_diverged(root: Path, manifest: Manifest, report: _Report) -> None:
    for entry in manifest.diverged:
        rel = f"{DIVERGED_DIR}/{entry.run_id}.json"
        path = root / rel
        if not path.is_file():
            report.add(rel, f"must exist for diverged run {entry.run_id!r} of {MANIFEST_FILE}")
            continue
        try:
            body = json.loads(path.read_text())
            step = body["step"]
            spec_from_json(json.dumps(body["spec"]), "`spec`")
        except (ValueError, KeyError, TypeError) as err:
            report.add(
                rel, f"must be a divergence marker with `step` and `spec`, got {_short(err)}"
            )
            continue
        if step != entry.step:
            report.add(rel, f"`step` must be {entry.step} as in {MANIFEST_FILE}, got {step}")


def _check_counts(manifest: Manifest, runs: pl.DataFrame, report: _Report) -> None:
    c = manifest.counts
    actual = {
        "runs": runs.height,
        "checkpoints": int(runs["n_checkpoints"].sum()),
        "diverged": len(manifest.diverged),
    }
    for name, value in actual.items():
        if getattr(c, name) != value:
            report.add(MANIFEST_FILE, f"`counts.{name}` must be {value}, got {getattr(c, name)}")
    for kind in SPLIT_KINDS:
        for part in SPLIT_PARTS:
            n = int((runs[f"split_{kind}"] == part).sum())
            got = manifest.splits.counts.get(kind, {}).get(part)
            if got != n:
                report.add(MANIFEST_FILE, f"`splits.counts.{kind}.{part}` must be {n}, got {got}")


def validate(root: str | Path) -> list[Problem]:
    """Every way the dataset folder ``root`` departs from ``docs/data-format.md``.

    Checks: the manifest (present, parseable, format version, counts); each listed file exists
    and matches its sha256; the overall hash; no unknown files; ``runs.parquet`` and
    ``parameters.parquet`` columns and dtypes; each run's checkpoint file is readable, has the
    right columns and dtypes, ``w`` width = ``n_params`` = the rows of its (task, arch) in
    ``parameters.parquet``, rows = ``n_checkpoints``, steps strictly increasing from 0, ``t`` =
    i/M, and finite values (the row and step are reported); divergence markers.

    Args:
        root: the dataset folder.

    Returns:
        The problems found, in the order checked; empty when the dataset is valid.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(".", f"dataset folder {root} must exist")]
    report = _Report()
    on_disk = _files_on_disk(root)
    manifest = _check_manifest(root, report)
    if manifest is not None:
        _check_files(root, manifest, on_disk, report)
    else:
        _check_layout(on_disk, report)
    runs = _read_table(root, RUNS_FILE, RUNS_SCHEMA, report)
    parameters = _read_table(root, PARAMETERS_FILE, PARAMETERS_SCHEMA, report)
    layouts = _check_parameters(parameters, report) if parameters is not None else {}
    if runs is not None:
        _check_runs_table(runs, report)
        for run in runs.iter_rows(named=True):
            _check_checkpoint(root, run, layouts, report)
        if manifest is not None:
            _check_counts(manifest, runs, report)
    _check_checkpoint_files(root, runs, on_disk, report)
    if manifest is not None:
        _check_diverged(root, manifest, report)
    return report.problems


def check(root: str | Path) -> Manifest:
    """Validate ``root`` and return its manifest.

    Raises:
        DatasetError: the dataset has problems; the message lists every one, one per line.
    """
    problems = validate(root)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise DatasetError(
            f"{root}: dataset must follow docs/data-format.md, got {len(problems)} "
            f"problem(s):\n{lines}"
        )
    return read_manifest(root)
