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
