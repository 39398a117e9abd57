"""gfm.saved: one folder format for GFM and every baseline, one loader, old folders still read."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from gfm import saved
from gfm.baselines import BASELINES, make
from gfm.baselines import load as load_baseline
from gfm.config import GFMSettings
from gfm.model import GFM
from tests.helpers import gd_run, make_prefix

TINY = GFMSettings(width=8, depth=1, time_embedding=4, history=2)


def _gfm() -> GFM:
    model = GFM(TINY)
    with torch.no_grad():  # weights that are not the seeded initialisation
        for p in model.net.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    return model


def _forecast(model, prefix) -> torch.Tensor:
    return model.forecast(prefix, torch.tensor([prefix.t_k + 0.1, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("name", ["gfm", "linear", "wnn"])
def test_gfm_and_baselines_save_one_format_that_every_loader_reads(tmp_path, name):
    # given a GFM or a baseline (wnn: one with tensors)
    if name == "gfm":
        model = _gfm()
    elif name == "wnn":
        model = make("wnn", {"steps": 3, "batch_runs": 2, "batch_params": 4}).fit([gd_run(0)])
    else:
        model = make(name)
    prefix = make_prefix(k=4, M=10)
    # when it is saved by its own save and by gfm.saved.save
    model.save(tmp_path / "own")
    saved.save(model, tmp_path / "generic")
    # then both folders are the same format, and each loader rebuilds the same forecaster
    for folder in ("own", "generic"):
        doc = json.loads((tmp_path / folder / saved.FILE).read_text())
        assert (doc["format_version"], doc["kind"]) == (saved.FORMAT_VERSION, name)
        again = saved.load(tmp_path / folder)
        assert type(again) is type(model)
        assert torch.equal(_forecast(again, prefix), _forecast(model, prefix))
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == sorted(
        p.name for p in (tmp_path / "generic").iterdir()
    )
    loader = GFM.load if name == "gfm" else load_baseline
    assert torch.equal(_forecast(loader(tmp_path / "own"), prefix), _forecast(model, prefix))


def _legacy_gfm(folder, model: GFM) -> None:
    """The folder gfm 0.1's GFM.save wrote: config.json + model.safetensors."""
    folder.mkdir(parents=True)
    config = {
        "format_version": 1,
        "name": "gfm",
        "gfm": {**model.cfg.model_dump(mode="json"), "adjoint": False},  # a setting since removed
        "train": model.train_cfg.model_dump(mode="json"),
        "n_context": model.net.n_context,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(dict(model.net.state_dict()), str(folder / "model.safetensors"))


def test_folders_of_gfm_0_1_still_load(tmp_path):
    # given the three layouts gfm 0.1 wrote: GFM.save, a baseline's save, and `gfm train`'s
    model, prefix = _gfm(), make_prefix(k=4, M=10)
    _legacy_gfm(tmp_path / "gfm", model)
    (tmp_path / "linear").mkdir()
    old = {"name": "linear", "format_version": 1, "config": {"window": 5}}
    (tmp_path / "linear" / "config.json").write_text(json.dumps(old))
    save_file({}, str(tmp_path / "linear" / "state.safetensors"))
    _legacy_gfm(tmp_path / "train" / "model", model)
    manifest = {"format": 1, "kind": "gfm", "class": "gfm.model.GFM", "gfm_version": "0.1.0"}
    (tmp_path / "train" / saved.FILE).write_text(json.dumps(manifest))
    # then each loads, through gfm.saved and through its class
    linear = saved.load(tmp_path / "linear")
    assert isinstance(linear, BASELINES["linear"]) and linear.config["window"] == 5
    for folder in ("gfm", "train"):
        for again in (saved.load(tmp_path / folder), GFM.load(tmp_path / folder)):
            assert torch.equal(_forecast(again, prefix), _forecast(model, prefix))


def test_saving_replaces_a_forecaster_folder_but_never_other_files(tmp_path):
    # given a saved linear baseline
    make("linear", {"window": 3}).save(tmp_path / "m")
    # when a GFM is saved over it, the folder is the GFM's alone
    _gfm().save(tmp_path / "m")
    assert isinstance(saved.load(tmp_path / "m"), GFM)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [saved.FILE, saved.WEIGHTS]
    # and a folder of other files is never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="other files"):
        _gfm().save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_save_that_fails_midway_leaves_the_previous_folder(tmp_path):
    make("linear", {"window": 3}).save(tmp_path / "m")
    before = (tmp_path / "m" / saved.FILE).read_text()

    class Broken(GFM):
        def save(self, path):  # writes half a folder, then fails
            path.mkdir()
            (path / saved.FILE).write_text("{")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(saved, "kind_of", lambda f: "gfm")
        saved.save(Broken(TINY), tmp_path / "m")
    assert (tmp_path / "m" / saved.FILE).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind


def test_errors_name_the_file_and_the_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match=saved.FILE):
        saved.load(tmp_path)
    make("linear").save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / saved.FILE).read_text())
    (tmp_path / "m" / saved.FILE).write_text(json.dumps({**doc, "kind": "prophet"}))
    with pytest.raises(ValueError, match=r"`kind` must be one of .*'gfm'"):
        saved.load(tmp_path / "m")
    with pytest.raises(ValueError, match="not a known forecaster kind"):
        saved.save(object(), tmp_path / "x")
    with pytest.raises(ValueError, match="shadow"):
        saved.register("linear")(type("Mine", (), {}))
        saved.kinds()
    saved._EXTRA.pop("linear", None)
    shutil.rmtree(tmp_path / "m")
