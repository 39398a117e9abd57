"""Bad input to the command line gets one line, not a traceback (issue 15, item 11: the config
and CLI parts). Each case runs the real ``gfm`` in its own process in an empty folder and checks
the message and that nothing was trained or written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gfm.config import Settings, SettingsError, load_settings
from tests.faults.helpers import MICRO, gfm, snapshot

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def no_traceback(lines: list[str]) -> None:
    assert not any(line.startswith("Traceback") for line in lines), "\n".join(lines)
    assert "Aborted." not in lines


# ------------------------------------------------------------------ --workers 0


@pytest.mark.fault(
    "item 11: `--workers 0` to gfm generate / gfm tune",
    "exit 2, one usage line naming --workers; nothing written",
)
@pytest.mark.parametrize("command", ["generate", "tune"])
def test_workers_zero_is_a_usage_error(command: str, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(MICRO)
    status, lines = gfm(command, "--workers", "0", cwd=tmp_path, timeout=120)
    assert status == 2, lines
    no_traceback(lines)
    (line,) = [ln for ln in lines if "--workers" in ln]
    assert "Invalid value for '--workers': Input should be greater than or equal to 1" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


# ------------------------------------------------------------------ an empty params file


@pytest.mark.fault(
    "item 11: an empty (or comments-only) params.yaml",
    "exit 2, one line naming params.yaml; no default job runs",
)
@pytest.mark.parametrize("text", ["", "# every key commented out\n# data:\n#   seeds: 8\n"])
def test_an_empty_params_file_is_refused_not_run_on_the_defaults(text: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    status, lines = gfm("generate", "--no-dvc", cwd=tmp_path, timeout=120)
    assert status == 2, lines
    assert lines == [
        "Invalid settings",
        "params.yaml: must hold settings, got an empty file; write the keys to change (see "
        "params.yaml), or `{}` to run on every default",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no default job ran


@pytest.mark.fault(
    "item 11: `{}` as params.yaml", "loads as every default; an empty file is still refused"
)
def test_braces_are_the_params_file_of_every_default(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    loaded = load_settings(params, environ={})
    assert loaded.data.model_dump(exclude={"root"}) == Settings().data.model_dump(exclude={"root"})
    params.write_text("")
    with pytest.raises(SettingsError, match="got an empty file"):
        load_settings(params, environ={})


# ------------------------------------------------------------------ data.root is not a dataset


@pytest.mark.fault(
    "item 11: data.root is a folder of other files",
    "exit 1, one line naming data.root before any run trains; the files kept",
)
def test_a_data_root_of_other_files_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(MICRO)
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("my notes, not a dataset\n")
    status, lines = gfm("generate", "--no-dvc", cwd=tmp_path, timeout=120)
    assert status == 1, lines
    no_traceback(lines)
    i = lines.index("gfm generate failed")
    assert lines[i + 1 :] == [
        f"{root}: data.root must be a gfm dataset (with manifest.json), an empty folder or "
        "absent, got a folder of other files; point data.root at a new folder"
    ]
    assert not any("planned" in line for line in lines)  # no run trained
    assert snapshot(root) == {"notes.txt": snapshot(root)["notes.txt"]}  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]  # no staging


@pytest.mark.fault(
    "item 11: data.root is a file",
    "exit 1, one line naming data.root before any run trains; the file kept",
)
def test_a_data_root_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(MICRO)
    (tmp_path / "data").write_text("a file\n")
    status, lines = gfm("generate", "--no-dvc", cwd=tmp_path, timeout=120)
    assert status == 1, lines
    i = lines.index("gfm generate failed")
    assert lines[i + 1 :] == [
        f"{tmp_path / 'data'}: data.root must be a dataset folder (or absent), got a file; "
        "point data.root at a folder"
    ]
    assert (tmp_path / "data").read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]


# ------------------------------------------------------------------ an empty .npy to forecast


@pytest.mark.fault(
    "item 11: a zero-size .npy to gfm forecast", "exit 1, one line naming the file (not Aborted.)"
)
def test_an_empty_npy_to_forecast_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "prefix.npy").write_bytes(b"")
    status, lines = gfm("forecast", "--input", "prefix.npy", "--model", "models/gfm", cwd=tmp_path)
    assert status == 2, lines
    no_traceback(lines)
    assert lines == [
        "Bad input",
        "prefix.npy: must be a .npy array (observed checkpoints, parameters), got an empty file",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefix.npy"]  # no forecast written


@pytest.mark.fault(
    "item 11: an .npy of zero checkpoints to gfm forecast",
    "exit 1, one line naming the file and the expected shape",
)
def test_an_npy_of_no_checkpoints_to_forecast_is_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "prefix.npy", np.zeros((0, 6), dtype=np.float32))
    status, lines = gfm("forecast", "--input", "prefix.npy", "--model", "models/gfm", cwd=tmp_path)
    assert status == 2, lines
    assert lines == [
        "Bad input",
        "prefix.npy: array must be 2-D and non-empty (observed checkpoints, parameters), got "
        "shape (0, 6)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefix.npy"]
