"""GFM as a Forecaster: save/load round trip (JSON + safetensors, no pickle), clear errors."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gfm import saved
from gfm.config import GFMSettings, TrainSettings
from gfm.data.schema import ParamMeta
from gfm.forecaster import Forecaster, Prefix
from gfm.model import GFM

NAMED = [
    ("c1.weight", (16, 1, 3, 3)),
    ("c1.bias", (16,)),
    ("fc.weight", (10, 64)),
    ("fc.bias", (10,)),
]
HPARAMS = {
    "sgd": {},
    "momentum": {"momentum": 0.9, "nesterov": True},
    "rmsprop": {"alpha": 0.99},
    "adam": {"beta1": 0.9, "beta2": 0.999},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "weight_decay": 0.01},
}


def _prefix(optimizer: str, named=NAMED, k: int = 10, M: int = 40, seed: int = 0) -> Prefix:
    params = ParamMeta.from_named_shapes(named)
    g = torch.Generator().manual_seed(seed)
    D = len(params)
    steps = 0.05 * torch.randn(D, generator=g) + 0.02 * torch.randn(k, D, generator=g)
    w = torch.cat([0.1 * torch.randn(1, D, generator=g), steps]).cumsum(0).float()
    return Prefix(
        w=w,
        M=M,
        lr=torch.full((M + 1,), 0.01, dtype=torch.float64),
        optimizer=optimizer,
        hparams={"lr": 0.01, **HPARAMS[optimizer]},
        record_every=4,
        params=params,
        task="mnist_cnn",
    )


def _model(variant: str) -> GFM:
    return GFM(GFMSettings(variant=variant, width=16, depth=2), TrainSettings(seed=1))


def test_gfm_is_a_forecaster():
    model = _model("optimizer")
    assert isinstance(model, Forecaster) and model.name == "gfm"


@pytest.mark.parametrize("variant", ["optimizer", "free"])
def test_save_load_round_trip_gives_identical_forecasts(tmp_path, variant):
    # given a model whose weights are not the seeded initialisation
    model = _model(variant)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    t = torch.tensor([0.5, 1.0])
    before = {o: model.forecast(_prefix(o), t) for o in HPARAMS}
    # when
    model.save(tmp_path / "gfm")
    loaded = GFM.load(tmp_path / "gfm")
    # then
    assert sorted(p.name for p in (tmp_path / "gfm").iterdir()) == [saved.FILE, saved.WEIGHTS]
    assert loaded.cfg == model.cfg and loaded.train_cfg == model.train_cfg
    for o, expected in before.items():
        got = loaded.forecast(_prefix(o), t)
        assert got.dtype == torch.float32 and got.shape == (2, expected.shape[1])
        assert torch.equal(got, expected)


def test_config_is_plain_json(tmp_path):
    _model("free").save(tmp_path)
    doc = json.loads((tmp_path / saved.FILE).read_text())
    assert doc["kind"] == "gfm" and doc["config"]["gfm"]["variant"] == "free"


def test_the_saved_model_does_not_depend_on_where_the_workflow_keeps_models(tmp_path):
    # given the same model under settings that name two different model folders
    a = GFM(GFMSettings(width=16, depth=2), TrainSettings(seed=1, model_dir=Path("/a/models/gfm")))
    b = GFM(GFMSettings(width=16, depth=2), TrainSettings(seed=1, model_dir=Path("/b/m")))
    # when both are saved
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    # then the folders hold the same bytes (one DVC hash in any checkout), and it loads
    for name in (saved.FILE, "weights.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (
        "model_dir" not in json.loads((tmp_path / "a" / saved.FILE).read_text())["config"]["train"]
    )
    assert GFM.load(tmp_path / "a").train_cfg.seed == 1


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=saved.FILE):
        GFM.load(tmp_path)
    _model("optimizer").save(tmp_path)
    doc = json.loads((tmp_path / saved.FILE).read_text())
    (tmp_path / saved.FILE).write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        GFM.load(tmp_path)
    (tmp_path / saved.FILE).write_text(json.dumps({**doc, "kind": "linear"}))
    with pytest.raises(ValueError, match="kind"):
        GFM.load(tmp_path)
    (tmp_path / saved.FILE).write_text(json.dumps({**doc, "config": {"gfm": {"widht": 3}}}))
    with pytest.raises(ValueError, match="widht"):
        GFM.load(tmp_path)


def test_one_network_serves_any_architecture():
    # the same model forecasts runs of two different architectures and sizes
    model = _model("optimizer")
    other = [("net.0.weight", (32, 16)), ("net.0.bias", (32,)), ("net.2.weight", (1, 32))]
    a = model.forecast(_prefix("adam"), torch.tensor([1.0]))
    b = model.forecast(_prefix("adam", named=other), torch.tensor([1.0]))
    assert a.shape == (1, 810) and b.shape == (1, 576)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_mismatched_prefix_is_rejected_by_name():
    model = _model("optimizer")
    prefix = _prefix("adam")
    with pytest.raises(ValueError, match=r"prefix\.optimizer"):
        model.forecast(dataclasses.replace(prefix, optimizer="lbfgs"), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"prefix\.params"):
        bad = ParamMeta.from_named_shapes(NAMED[:2])
        model.forecast(dataclasses.replace(prefix, params=bad), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="`t`"):
        model.forecast(prefix, torch.tensor([0.1]))


def test_forecast_of_a_mnist_cnn_sized_run_is_finite():
    # given a default-size model (with its prior) and a run the size of the largest dataset
    # network (14,378 parameters); what it costs is measured by benchmarks/forecast_cost.py
    named = [
        ("c1.weight", (16, 1, 3, 3)),
        ("c1.bias", (16,)),
        ("c2.weight", (32, 16, 3, 3)),
        ("c2.bias", (32,)),
        ("c3.weight", (32, 32, 3, 3)),
        ("c3.bias", (32,)),
        ("fc.weight", (10, 32)),
        ("fc.bias", (10,)),
    ]
    model = GFM()
    prefix = _prefix("adam", named=named, k=12, M=50)
    # when
    out = model.forecast(prefix, torch.tensor([0.5, 1.0]))
    # then
    assert out.shape == (2, 14378) and np.isfinite(out.numpy()).all()
