"""Import from .npy, .npz (+ CSV/JSON metadata) and folders of state_dicts, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gfm.data.importer import import_arrays, import_state_dicts
from gfm.data.trajectories import Trajectories
from gfm.data.validate import validate


@pytest.fixture
def weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)  # (R, M+1, D)


def test_import_npy_with_defaults(tmp_path: Path, weights: np.ndarray) -> None:
    # given
    np.save(tmp_path / "w.npy", weights)
    # when
    manifest = import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="sgd", lr=0.1)
    # then
    data = Trajectories(tmp_path / "data")
    assert manifest.counts.runs == 3 and validate(tmp_path / "data") == []
    assert data.run_ids == ["run-0", "run-1", "run-2"]
    for i, record in enumerate(data):
        np.testing.assert_array_equal(record.weights, weights[i])
        assert record.spec.task == "imported" and record.spec.arch == "linear"
        assert record.spec.hparams == {"lr": 0.1} and record.spec.record_every == 1
        np.testing.assert_array_equal(record.steps, np.arange(5))
        assert np.isnan(record.train_loss).all()
    assert manifest.params == {"import": {"kind": "arrays", "weights": "w.npy", "metadata": None}}
    assert str(tmp_path) not in (tmp_path / "data" / "manifest.json").read_text()


def test_import_npz_with_csv_metadata(tmp_path: Path, weights: np.ndarray) -> None:
    # given
    steps = np.arange(5) * 10
    lr = np.linspace(0.02, 0.0, 5)
    loss = np.random.default_rng(1).random((3, 5))
    np.savez(tmp_path / "runs.npz", weights=weights, steps=steps, lr=lr, train_loss=loss)
    (tmp_path / "meta.csv").write_text(
        "run_id,optimizer,lr,momentum,nesterov,arch,schedule,task\n"
        "a,momentum,0.02,0.9,true,8-8,cosine,toy\n"
        "b,adam,0.02,,,8-8,cosine,toy\n"
        "c,adam,0.02,,,8-8,cosine,toy\n"
    )
    # when
    manifest = import_arrays(
        tmp_path / "runs.npz", tmp_path / "data", metadata_path=tmp_path / "meta.csv"
    )
    # then
    data = Trajectories(tmp_path / "data")
    a = data.load("a")
    assert a.spec.hparams == {"lr": 0.02, "momentum": 0.9, "nesterov": True}
    assert (a.spec.task, a.spec.hidden, a.spec.schedule) == ("toy", (8, 8), "cosine")
    assert (a.spec.steps, a.spec.record_every) == (40, 10)
    np.testing.assert_array_equal(a.lr, lr)
    np.testing.assert_array_equal(data.load("c").train_loss, loss[2])
    assert data.load("b").spec.hparams == {"lr": 0.02}
    assert [data.load(r).spec.seed for r in ("a", "b", "c")] == [0, 0, 1]  # index within group
    assert manifest.counts.by_task_optimizer == {"toy": {"adam": 2, "momentum": 1}}


def test_import_npz_with_json_metadata_takes_the_base_lr_from_the_schedule(
    tmp_path: Path, weights: np.ndarray
) -> None:
    np.savez(tmp_path / "runs.npz", weights=weights, lr=np.array([0.0, 0.1, 0.05, 0.02, 0.0]))
    meta = [
        {"run_id": f"r{i}", "optimizer": "rmsprop", "hidden": [4], "alpha": 0.95} for i in range(3)
    ]
    (tmp_path / "meta.json").write_text(json.dumps({"runs": meta}))
    import_arrays(tmp_path / "runs.npz", tmp_path / "data", metadata_path=tmp_path / "meta.json")
    record = Trajectories(tmp_path / "data").load("r1")
    assert record.spec.hparams == {"lr": 0.1, "alpha": 0.95} and record.spec.arch == "4"


def test_import_state_dict_folder(tmp_path: Path) -> None:
    # given: two runs of a small net with a BatchNorm (whose int buffer is not a weight)
    torch.manual_seed(0)
    expected = {}
    for run in ("alpha", "beta"):
        net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        (tmp_path / "runs" / run).mkdir(parents=True)
        rows = []
        for step in (0, 5, 10):
            with torch.no_grad():
                net[0].weight.add_(0.1)
            torch.save(net.state_dict(), tmp_path / "runs" / run / f"step_{step:04d}.pt")
            rows.append(
                torch.cat(
                    [v.reshape(-1) for v in net.state_dict().values() if v.is_floating_point()]
                )
            )
        expected[run] = torch.stack(rows).numpy()
    (tmp_path / "meta.json").write_text(json.dumps([{"run_id": "beta", "optimizer": "adamw"}]))
    # when
    with pytest.warns(UserWarning, match="num_batches_tracked"):
        import_state_dicts(
            tmp_path / "runs",
            tmp_path / "data",
            metadata_path=tmp_path / "meta.json",
            optimizer="sgd",
            lr=0.01,
        )
    # then
    data = Trajectories(tmp_path / "data")
    for run in ("alpha", "beta"):
        record = data.load(run)
        np.testing.assert_array_equal(record.weights, expected[run])
        np.testing.assert_array_equal(record.steps, [0, 5, 10])
    assert (
        data.load("beta").spec.optimizer == "adamw" and data.load("alpha").spec.optimizer == "sgd"
    )
    params = data.load("alpha").params
    assert list(dict.fromkeys(params.layer)) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
    ]
    assert params.fan_in[0] == 3 and params.kind[6] == "bias"
    assert validate(tmp_path / "data") == []


# ------------------------------------------------------------------------------- bad inputs


def test_weights_must_be_3d(tmp_path: Path) -> None:
    np.savez(tmp_path / "runs.npz", weights=np.zeros((10, 5)))
    expected = (
        r"runs.npz: array `weights` must be 3-D \(runs, checkpoints, params\), got shape \(10, 5\)"
    )
    with pytest.raises(ValueError, match=expected):
        import_arrays(tmp_path / "runs.npz", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_npz_without_weights_or_with_unknown_arrays(tmp_path: Path, weights: np.ndarray) -> None:
    np.savez(tmp_path / "a.npz", w=weights)
    with pytest.raises(ValueError, match=r"unknown array\(s\) \['w'\]"):
        import_arrays(tmp_path / "a.npz", tmp_path / "data", optimizer="sgd", lr=0.1)
    np.savez(tmp_path / "b.npz", steps=np.arange(5))
    with pytest.raises(ValueError, match="must hold array `weights`"):
        import_arrays(tmp_path / "b.npz", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_non_finite_weights_are_named(tmp_path: Path, weights: np.ndarray) -> None:
    weights[1, 2, 3] = np.nan
    np.save(tmp_path / "w.npy", weights)
    with pytest.raises(
        ValueError, match=r"w.npy: run 1: array `weights` must be finite.*checkpoint 2, param 3"
    ):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_optimizer_is_required_and_checked(tmp_path: Path, weights: np.ndarray) -> None:
    np.save(tmp_path / "w.npy", weights)
    with pytest.raises(ValueError, match="`optimizer` must be given"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", lr=0.1)
    with pytest.raises(ValueError, match=r"`optimizer` must be one of \['sgd'"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="lion", lr=0.1)


def test_lr_is_required_without_an_lr_array(tmp_path: Path, weights: np.ndarray) -> None:
    np.save(tmp_path / "w.npy", weights)
    with pytest.raises(ValueError, match="`lr` must be given"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="sgd")


def test_metadata_errors_name_the_field(tmp_path: Path, weights: np.ndarray) -> None:
    np.save(tmp_path / "w.npy", weights)
    (tmp_path / "typo.csv").write_text("run_id,optimiser\na,sgd\nb,sgd\nc,sgd\n")
    with pytest.raises(ValueError, match=r"typo.csv: row 0: unknown field\(s\) \['optimiser'\]"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "typo.csv")
    (tmp_path / "short.csv").write_text("run_id,optimizer,lr\na,sgd,0.1\n")
    with pytest.raises(
        ValueError, match=r"short.csv: must have one row per run in `weights` \(3\), got 1"
    ):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "short.csv")
    (tmp_path / "arch.csv").write_text("optimizer,lr,arch\nsgd,0.1,wide\nsgd,0.1,4\nsgd,0.1,4\n")
    with pytest.raises(ValueError, match="arch.csv: run 0: `arch` must be positive sizes"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "arch.csv")
    (tmp_path / "lr.csv").write_text("optimizer,lr\nsgd,0.1\nsgd,-1\nsgd,0.1\n")
    with pytest.raises(ValueError, match="lr.csv: run 1: `lr` must be > 0"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "lr.csv")


def test_uneven_steps_are_rejected(tmp_path: Path, weights: np.ndarray) -> None:
    np.savez(tmp_path / "runs.npz", weights=weights, steps=np.array([0, 1, 2, 4, 8]))
    with pytest.raises(ValueError, match="runs.npz: run 0: `steps` must be evenly spaced from 0"):
        import_arrays(tmp_path / "runs.npz", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_missing_files_raise_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        import_arrays(tmp_path / "nope.npz", tmp_path / "data", optimizer="sgd", lr=0.1)
    with pytest.raises(FileNotFoundError, match="runs"):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_state_dicts_with_mismatched_shapes_name_file_and_tensor(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    torch.save(nn.Linear(3, 2).state_dict(), run / "step_0.pt")
    torch.save(nn.Linear(4, 2).state_dict(), run / "step_1.pt")
    with pytest.raises(
        ValueError,
        match=r"step_1.pt: tensor `weight` must have shape \(2, 3\) like step_0.pt, got \(2, 4\)",
    ):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_state_dict_files_need_a_step_in_their_name(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    torch.save(nn.Linear(3, 2).state_dict(), run / "init.pt")
    torch.save(nn.Linear(3, 2).state_dict(), run / "step_1.pt")
    with pytest.raises(ValueError, match="init.pt: file name must contain the step number"):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_non_finite_state_dict_is_named(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    net = nn.Linear(3, 2)
    torch.save(net.state_dict(), run / "step_0.pt")
    with torch.no_grad():
        net.bias[1] = float("inf")
    torch.save(net.state_dict(), run / "step_1.pt")
    with pytest.raises(
        ValueError, match=r"step_1.pt: weights must be finite, got inf at flat position 7"
    ):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_corrupt_state_dict_is_named(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r0"
    run.mkdir(parents=True)
    torch.save(nn.Linear(3, 2).state_dict(), run / "step_0.pt")
    (run / "step_1.pt").write_bytes(b"garbage")
    with pytest.raises(
        ValueError, match="step_1.pt: must be a PyTorch state_dict readable with weights_only=True"
    ):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)


def test_different_layouts_need_different_archs(tmp_path: Path) -> None:
    for run, width in (("r0", 2), ("r1", 3)):
        (tmp_path / "runs" / run).mkdir(parents=True)
        for step in (0, 1):
            torch.save(nn.Linear(3, width).state_dict(), tmp_path / "runs" / run / f"{step}.pt")
    with pytest.raises(ValueError, match="parameter layout must match run r0.*set metadata `arch`"):
        import_state_dicts(tmp_path / "runs", tmp_path / "data", optimizer="sgd", lr=0.1)
    (tmp_path / "meta.csv").write_text("run_id,arch\nr0,2\nr1,3\n")
    manifest = import_state_dicts(
        tmp_path / "runs",
        tmp_path / "data",
        metadata_path=tmp_path / "meta.csv",
        optimizer="sgd",
        lr=0.1,
    )
    assert manifest.counts.runs == 2


def test_a_failed_import_leaves_the_previous_dataset_intact(
    tmp_path: Path, weights: np.ndarray
) -> None:
    # given
    np.save(tmp_path / "good.npy", weights)
    manifest = import_arrays(tmp_path / "good.npy", tmp_path / "data", optimizer="sgd", lr=0.1)
    weights[2, 4, 0] = np.inf
    np.save(tmp_path / "bad.npy", weights)
    # when
    with pytest.raises(ValueError, match="run 2"):
        import_arrays(tmp_path / "bad.npy", tmp_path / "data", optimizer="adam", lr=0.1)
    # then
    assert validate(tmp_path / "data") == []
    assert Trajectories(tmp_path / "data").manifest == manifest


# ------------------------------------------------------------------------------- splits


def _seed_parts(root: Path) -> dict[str, list[str]]:
    data = Trajectories(root)
    return {part: data.select("seed", part).run_ids for part in ("train", "val", "test")}


def test_split_from_a_metadata_column(tmp_path: Path, weights: np.ndarray) -> None:
    # given: the runs' parts named in the metadata
    np.save(tmp_path / "w.npy", weights)
    (tmp_path / "meta.csv").write_text(
        "run_id,optimizer,lr,split\na,sgd,0.1,test\nb,sgd,0.1,train\nc,sgd,0.1,val\n"
    )
    # when
    manifest = import_arrays(
        tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "meta.csv"
    )
    # then
    assert _seed_parts(tmp_path / "data") == {"train": ["b"], "val": ["c"], "test": ["a"]}
    assert manifest.splits.rules["given"] == "metadata `split`"


def test_split_from_run_ranges(tmp_path: Path) -> None:
    # given: 8 runs; positions 3-4 val, 5 and 7 test
    np.save(tmp_path / "w.npy", np.zeros((8, 3, 2), dtype=np.float32))
    # when
    import_arrays(
        tmp_path / "w.npy",
        tmp_path / "data",
        optimizer="sgd",
        lr=0.1,
        split={"val": "3-4", "test": "5,7"},
    )
    # then
    assert _seed_parts(tmp_path / "data") == {
        "train": ["run-0", "run-1", "run-2", "run-6"],
        "val": ["run-3", "run-4"],
        "test": ["run-5", "run-7"],
    }


def test_default_split_of_an_import_holds_out_a_tenth_for_val_and_test(tmp_path: Path) -> None:
    # given: 20 runs of one group, no split given
    np.save(tmp_path / "w.npy", np.zeros((20, 3, 2), dtype=np.float32))
    # when
    manifest = import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="sgd", lr=0.1)
    # then: the last 2 test, the 2 before them val (not 1 and 1)
    parts = _seed_parts(tmp_path / "data")
    assert parts["test"] == ["run-18", "run-19"] and parts["val"] == ["run-16", "run-17"]
    assert manifest.splits.counts["seed"] == {"train": 16, "val": 2, "test": 2}


def test_split_settings_counts_still_apply_when_given(tmp_path: Path) -> None:
    from gfm.config import SplitSettings

    np.save(tmp_path / "w.npy", np.zeros((20, 3, 2), dtype=np.float32))
    manifest = import_arrays(
        tmp_path / "w.npy",
        tmp_path / "data",
        optimizer="sgd",
        lr=0.1,
        splits=SplitSettings(val_seeds=3, test_seeds=4),
    )
    assert manifest.splits.counts["seed"] == {"train": 13, "val": 3, "test": 4}


def test_split_of_state_dict_runs_from_metadata(tmp_path: Path) -> None:
    for run in ("r0", "r1", "r2"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        for step in (0, 1):
            torch.save(nn.Linear(2, 1).state_dict(), tmp_path / "runs" / run / f"{step}.pt")
    (tmp_path / "meta.json").write_text(
        json.dumps(
            [{"run_id": r, "split": p} for r, p in (("r0", "val"), ("r1", "test"), ("r2", "train"))]
        )
    )
    import_state_dicts(
        tmp_path / "runs",
        tmp_path / "data",
        metadata_path=tmp_path / "meta.json",
        optimizer="sgd",
        lr=0.1,
    )
    assert _seed_parts(tmp_path / "data") == {"train": ["r2"], "val": ["r0"], "test": ["r1"]}


@pytest.mark.parametrize(
    ("meta", "split", "match"),
    [
        (
            "optimizer,lr,split\nsgd,0.1,test\nsgd,0.1,\nsgd,0.1,val\n",
            None,
            r"meta.csv: run run-1: `split` must be given for every run once one has it",
        ),
        (
            "optimizer,lr,split\nsgd,0.1,test\nsgd,0.1,holdout\nsgd,0.1,val\n",
            None,
            r"meta.csv: run run-1: `split` must be one of \['train', 'val', 'test'\], got 'holdout'",
        ),
        (
            "optimizer,lr,split\nsgd,0.1,test\nsgd,0.1,train\nsgd,0.1,val\n",
            {"test": "2"},
            "meta.csv: the split must be given once",
        ),
        (None, {"test": "1-2", "val": "2"}, "--split: run 2 must be in one part, got test and val"),
        (None, {"test": "1-3"}, r"--split test=1-3: range '1-3' must lie within runs 0..2"),
        (None, {"test": "last"}, "--split test=last: runs must be positions or inclusive ranges"),
        (None, {"holdout": "1"}, r"--split holdout=1: `split` must be one of \['train'"),
    ],
)
def test_bad_splits_are_named(
    tmp_path: Path, weights: np.ndarray, meta: str | None, split: dict | None, match: str
) -> None:
    np.save(tmp_path / "w.npy", weights)
    if meta is not None:
        (tmp_path / "meta.csv").write_text(meta)
    with pytest.raises(ValueError, match=match):
        import_arrays(
            tmp_path / "w.npy",
            tmp_path / "data",
            metadata_path=tmp_path / "meta.csv" if meta is not None else None,
            optimizer="sgd",
            lr=0.1,
            split=split,
        )


# ------------------------------------------------------------------------------- layout, dtypes


def _linear_runs(folder: Path, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Two runs of nn.Linear(3, 2) saved as state_dict folders; their flat weights (R, M+1, D)."""
    torch.manual_seed(0)
    runs = []
    for run in ("r0", "r1"):
        net = nn.Linear(3, 2).to(dtype)
        (folder / run).mkdir(parents=True)
        rows = []
        for step in (0, 1, 2):
            with torch.no_grad():
                net.weight.add_(0.1)
            torch.save(net.state_dict(), folder / run / f"step_{step}.pt")
            rows.append(torch.cat([v.reshape(-1) for v in net.state_dict().values()]))
        runs.append(torch.stack(rows).numpy())
    return np.stack(runs)


def test_an_npz_with_a_layout_gives_the_same_parameters_as_the_state_dicts(tmp_path: Path) -> None:
    # given: the same runs as state_dict folders and as an array
    weights = _linear_runs(tmp_path / "runs")
    np.savez(tmp_path / "runs.npz", weights=weights)
    layout = [["weight", [2, 3]], ["bias", [2]]]
    # when
    import_state_dicts(tmp_path / "runs", tmp_path / "a", optimizer="sgd", lr=0.1)
    import_arrays(tmp_path / "runs.npz", tmp_path / "b", optimizer="sgd", lr=0.1, layout=layout)
    # then: GFM sees the same per-parameter context either way
    a, b = Trajectories(tmp_path / "a")[0].params, Trajectories(tmp_path / "b")[0].params
    assert list(a.layer) == list(b.layer) and a.shape == b.shape
    np.testing.assert_array_equal(a.fan_in, b.fan_in)
    np.testing.assert_array_equal(a.index, b.index)
    assert list(b.kind) == ["weight"] * 6 + ["bias"] * 2


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        (
            [["weight", [2, 3]]],
            r"runs.npz: --layout must describe the D=8 parameters of array `weights`.*got 6",
        ),
        (
            [["weight", "2x3"]],
            r"runs.npz: --layout: `layout` must be a list of \[tensor name, shape\]",
        ),
        ([["w", [2, 3]], ["w", [2]]], r"runs.npz: --layout: `layout` tensor names must be unique"),
        ([["w", [0, 8]]], r"runs.npz: --layout: `layout` tensor 'w' must have sizes >= 1"),
    ],
)
def test_a_bad_layout_is_named(tmp_path: Path, layout: list, match: str) -> None:
    np.savez(tmp_path / "runs.npz", weights=np.zeros((2, 3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=match):
        import_arrays(tmp_path / "runs.npz", tmp_path / "d", optimizer="sgd", lr=0.1, layout=layout)


def test_float64_arrays_are_stored_as_float32_with_a_warning_saying_how_much(
    tmp_path: Path,
) -> None:
    # given: float64 weights that float32 cannot hold exactly
    w64 = np.full((2, 3, 4), 1.0 + 1e-12) + np.arange(4) / 3
    np.save(tmp_path / "w.npy", w64)
    expected = float(np.abs(w64.astype(np.float32).astype(np.float64) - w64).max())
    # when
    with pytest.warns(UserWarning, match="w.npy: weights are float64; stored as float32") as caught:
        import_arrays(tmp_path / "w.npy", tmp_path / "data", optimizer="sgd", lr=0.1)
    # then: the warning gives the largest change, and the stored values are the float32 cast
    assert f"changed them by up to {expected:.3g}" in str(caught[0].message)
    np.testing.assert_array_equal(
        Trajectories(tmp_path / "data")[0].weights, w64[0].astype(np.float32)
    )


def test_float64_state_dicts_warn_too_and_float32_ones_do_not(tmp_path: Path) -> None:
    _linear_runs(tmp_path / "runs64", torch.float64)
    with pytest.warns(UserWarning, match="runs64: weights are float64; stored as float32"):
        import_state_dicts(tmp_path / "runs64", tmp_path / "a", optimizer="sgd", lr=0.1)
    _linear_runs(tmp_path / "runs32")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import_state_dicts(tmp_path / "runs32", tmp_path / "b", optimizer="sgd", lr=0.1)


# ------------------------------------------------------------------------------- learning rates, fields


def test_an_lr_array_with_one_rate_per_run(tmp_path: Path, weights: np.ndarray) -> None:
    # given: 3 runs of 5 checkpoints, one constant rate each
    np.savez(tmp_path / "runs.npz", weights=weights, lr=np.array([0.1, 0.01, 0.001]))
    # when
    import_arrays(tmp_path / "runs.npz", tmp_path / "data", optimizer="sgd")
    # then
    data = Trajectories(tmp_path / "data")
    for record, rate in zip(data, (0.1, 0.01, 0.001), strict=True):
        assert record.spec.hparams == {"lr": rate}
        np.testing.assert_array_equal(record.lr, np.full(5, rate))


def test_an_lr_array_as_long_as_runs_and_checkpoints_must_say_which(tmp_path: Path) -> None:
    np.savez(tmp_path / "runs.npz", weights=np.zeros((3, 3, 2), dtype=np.float32), lr=np.ones(3))
    with pytest.raises(ValueError, match=r"runs.npz: array `lr` of shape \(3,\) must say whether"):
        import_arrays(tmp_path / "runs.npz", tmp_path / "data", optimizer="sgd")
    np.savez(
        tmp_path / "runs.npz", weights=np.zeros((3, 3, 2), dtype=np.float32), lr=np.ones((3, 1))
    )
    import_arrays(tmp_path / "runs.npz", tmp_path / "data", optimizer="sgd")


def test_metadata_eps_and_names_from_elsewhere(tmp_path: Path, weights: np.ndarray) -> None:
    np.save(tmp_path / "w.npy", weights)
    (tmp_path / "ok.csv").write_text("optimizer,lr,eps\nadam,0.1,1e-8\nadam,0.1,1e-8\nadam,0.1,\n")
    import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "ok.csv")
    (tmp_path / "eps.csv").write_text("optimizer,lr,eps\nadam,0.1,1e-6\nadam,0.1,1e-8\nadam,0.1,\n")
    with pytest.raises(ValueError, match=r"eps.csv: run 0: `eps` must be 1e-08 \(torch's default"):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "eps.csv")
    (tmp_path / "torch.csv").write_text(
        'run,optimizer,betas\n0,adam,"0.9,0.99"\n1,adam,\n2,adam,\n'
    )
    with pytest.raises(
        ValueError,
        match=r"torch.csv: row 0: unknown field\(s\) \['betas', 'run'\] \(`betas` is called beta1 and beta2; `run` is called run_id here\)",
    ):
        import_arrays(tmp_path / "w.npy", tmp_path / "data", metadata_path=tmp_path / "torch.csv")
