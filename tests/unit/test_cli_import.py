"""`gfm data import` on the command line: splits, layouts, dtype notes and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from gfm.cli import app
from gfm.data.trajectories import Trajectories

runner = CliRunner()


def test_import_with_split_ranges_and_a_layout_file(tmp_path: Path) -> None:
    # given: 10 float64 runs of a Linear(3, 2) as one array, and its layout
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "runs.npz", weights=rng.standard_normal((10, 4, 8)))
    (tmp_path / "layout.json").write_text(json.dumps([["weight", [2, 3]], ["bias", [2]]]))
    # when
    result = runner.invoke(
        app,
        [
            "data",
            "import",
            str(tmp_path / "runs.npz"),
            "--dest",
            str(tmp_path / "data"),
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--split",
            "val=6-7",
            "--split",
            "test=8-9",
            "--layout",
            str(tmp_path / "layout.json"),
        ],
    )
    # then
    assert result.exit_code == 0, result.output
    data = Trajectories(tmp_path / "data")
    assert data.select("seed", "test").run_ids == ["run-8", "run-9"]
    assert data.select("seed", "val").run_ids == ["run-6", "run-7"]
    assert list(dict.fromkeys(data[0].params.layer)) == ["weight", "bias"]
    assert "6 train, 2 val, 2 test" in result.output
    assert "weights are float64; stored as float32" in result.output


def test_import_with_an_inline_layout_and_the_default_split(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((10, 3, 8), dtype=np.float32))
    result = runner.invoke(
        app,
        [
            "data",
            "import",
            str(tmp_path / "w.npy"),
            "--dest",
            str(tmp_path / "data"),
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--layout",
            '[["fc.weight", [2, 4]]]',
        ],
    )
    assert result.exit_code == 0, result.output
    assert "8 train, 1 val, 1 test" in result.output
    assert Trajectories(tmp_path / "data")[0].params.fan_in[0] == 4


def test_bad_import_options_say_what_is_expected(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.zeros((4, 3, 8), dtype=np.float32))
    (tmp_path / "ckpts" / "r0").mkdir(parents=True)
    base = ["data", "import", str(tmp_path / "w.npy"), "--optimizer", "sgd", "--lr", "0.1"]
    cases = [
        (base + ["--split", "test"], "--split must be PART=RUNS like val=160-179"),
        (base + ["--layout", "[[fc"], "--layout: must be JSON [[name, shape], ...]"),
        (base + ["--layout", str(tmp_path / "nope.json")], "--layout file must exist"),
        (
            [
                "data",
                "import",
                str(tmp_path / "ckpts"),
                "--optimizer",
                "sgd",
                "--lr",
                "0.1",
                "--layout",
                "[]",
            ],
            "--layout is for array inputs",
        ),
    ]
    for args, expected in cases:
        result = runner.invoke(app, [*args, "--dest", str(tmp_path / "data")])
        assert result.exit_code == 1, result.output
        assert expected in " ".join(result.output.split()), result.output
