"""Forecast requests read from files: checkpoints + metadata -> Prefix, and every bad input named."""

import json

import numpy as np
import pytest
import torch

from gfm.data.optim import scheduled_lr
from gfm.data.request import read_prefix, read_run, read_sidecar, sidecar

META = {
    "optimizer": "adam",
    "lr": 0.01,
    "record_every": 5,
    "total_checkpoints": 11,
    "layout": [["net.weight", [2, 3]], ["net.bias", [2]]],
}


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "prefix.npy"
    np.save(path, np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    return path


def test_npy_and_metadata_make_a_prefix_with_the_schedule_applied(npy):
    prefix = read_prefix(npy, {**META, "schedule": "cosine", "hparams": {"beta1": 0.8}})
    assert (prefix.k, prefix.M, prefix.D) == (3, 10, 8)
    expected = [scheduled_lr("cosine", 0.01, 5 * i, 50) for i in range(11)]
    np.testing.assert_allclose(prefix.lr.numpy(), expected)
    assert prefix.hparams == {"lr": 0.01, "beta1": 0.8}
    assert list(prefix.params.kind[-2:]) == ["bias", "bias"] and prefix.params.fan_in[0] == 3


def test_a_state_dict_folder_gives_layout_and_record_every(tmp_path):
    run = tmp_path / "ckpts"
    run.mkdir()
    for step in (0, 4, 8):
        torch.save(
            {"l.weight": torch.randn(3, 2), "l.bias": torch.randn(3)}, run / f"step_{step}.pt"
        )
    prefix = read_prefix(run, {"optimizer": "sgd", "lr": [0.1] * 6, "total_checkpoints": 6})
    assert (prefix.k, prefix.M, prefix.D, prefix.record_every) == (2, 5, 9, 4)
    assert (
        sidecar(run) == tmp_path / "ckpts.json"
        and sidecar(tmp_path / "a.npy") == tmp_path / "a.json"
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"optimizer": None}, "metadata: `optimizer` is missing"),
        ({"optimizer": "adagrad"}, "got 'adagrad'"),
        ({"record_every": None}, "metadata: `record_every` is missing"),
        ({"total_checkpoints": None}, "metadata: `total_checkpoints` is missing"),
        (
            {"total_checkpoints": 4},
            "`total_checkpoints` (4) must exceed the observed checkpoints (4)",
        ),
        ({"layout": None}, "metadata: `layout` is missing"),
        ({"layout": [["w", [7]]]}, "must have D=7 columns"),
        ({"layout": "w"}, "`layout` must be a list of [tensor name, shape]"),
        ({"lr": None}, "metadata: `lr` is missing"),
        ({"record_every": 3.9}, "`record_every` must be a positive integer, got 3.9"),
        ({"record_every": "4"}, "`record_every` must be a positive integer, got '4'"),
        ({"lr": -1.0}, "`lr` must be finite and positive"),
        ({"lr": [0.1, 0.1]}, "must have total_checkpoints=11 entries, got 2"),
        ({"schedule": "linear"}, "`schedule` must be one of"),
        ({"hparams": {"betas": 0.9}}, "`hparams` key 'betas' is unknown"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
    ],
)
def test_bad_metadata_is_named(npy, change, needle):
    with pytest.raises(ValueError) as err:
        read_prefix(npy, {**META, **change})
    assert needle in str(err.value)


def test_bad_weights_are_named(tmp_path):
    path = tmp_path / "w.npy"
    for array, needle in [
        (np.zeros(8, np.float32), "must be 2-D"),
        (np.zeros((1, 8), np.float32), "at least 2 observed checkpoints"),
        (
            np.full((3, 8), np.nan, np.float32),
            "must be finite, got nan at checkpoint 0, parameter 0",
        ),
        (np.zeros((3, 8), np.int64), "must hold floats"),
    ]:
        np.save(path, array)
        with pytest.raises(ValueError, match="w.npy") as err:
            read_prefix(path, META)
        assert needle in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_prefix(tmp_path / "missing.npy", META)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        read_prefix(tmp_path / "x.csv", META)


def test_sidecar_must_be_a_json_object(tmp_path):
    assert read_sidecar(tmp_path / "none.json") == {}
    (tmp_path / "m.json").write_text(json.dumps([1]))
    with pytest.raises(ValueError, match="JSON object"):
        read_sidecar(tmp_path / "m.json")


def test_a_whole_run_reads_as_a_record_for_a_backtest(npy, tmp_path):
    # given a whole run of 11 checkpoints as .npy + metadata
    full = tmp_path / "full.npy"
    np.save(full, np.random.default_rng(0).standard_normal((11, 8)).astype(np.float32))
    meta = {k: v for k, v in META.items() if k != "total_checkpoints"}
    # when it is read as a run
    record = read_run(full, meta)
    # then it is a record of M = 10 intervals with its metadata and unknown curves
    record.check()
    assert (record.weights.shape, record.spec.run_id, record.spec.task) == (
        (11, 8),
        "full",
        "external",
    )
    assert record.spec.record_every == META["record_every"] and np.isnan(record.val_acc).all()
    with pytest.raises(ValueError, match="`total_checkpoints` must be the 11 checkpoints"):
        read_run(full, {**meta, "total_checkpoints": 20})
