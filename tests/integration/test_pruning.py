"""ForecastPruner inside real Optuna studies on sqlite storage, with forecasters from a baseline
name, a saved folder and the MLflow registry; failures fall back to not pruning; the README's
example runs.

The trials run gradient descent on a diagonal quadratic, L(w) = ½ Σ_j h_j (w_j − 1)², whose
path is geometric, w_s − 1 = (1 − α h)^s (w_0 − 1): the geometric baseline forecasts its final
weights exactly, so which trial is pruned follows from the closed form.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from gfm import saved, tracking
from gfm.baselines import make
from gfm.config import Settings, TrackingSettings
from gfm.ops import ForecastPruner
from gfm.ops.pruning import FORECAST, FORECAST_ERROR, FORECASTS, PRUNED
from gfm.stopping import FileStore
from tests.helpers import make_prefix

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
S, R = 40, 4  # steps per trial, record_every (M = 10)
# α per trial: two finished trials (loss 0.041, 0.0042), one far too slow (closed-form final
# loss 0.54), one that starts behind but ends best (5.5e-5)
ALPHAS = [0.05, 0.1, 0.005, 0.2]


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = torch.tensor([1.0, 0.5])
        self.w = nn.Parameter(torch.zeros(2))

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.h * (self.w - 1.0) ** 2).sum()


def final_loss(alpha: float) -> float:
    h = torch.tensor([1.0, 0.5], dtype=torch.float64)
    return float(0.5 * (h * (1 - alpha * h) ** (2 * S)).sum())


def loss_of(model: Quadratic) -> float:
    return float(model.loss().detach())


def objective(pruner: ForecastPruner, *, record: bool = True):
    def run(trial: optuna.Trial) -> float:
        alpha = trial.suggest_float("alpha", 1e-3, 0.5, log=True)
        model = Quadratic()
        opt = torch.optim.SGD(model.parameters(), lr=alpha)
        rec = pruner.recorder(trial, model, opt, total_steps=S, record_every=R) if record else None
        for step in range(1, S + 1):
            opt.zero_grad()
            model.loss().backward()
            opt.step()
            if rec is not None:
                rec.step()
            if step % R == 0:
                trial.report(loss_of(model), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return loss_of(model)

    return run


def study_with(pruner: ForecastPruner, db: Path, alphas=ALPHAS, **kwargs) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="quad", pruner=pruner)
    for alpha in alphas:
        study.enqueue_trial({"alpha": alpha})
    study.optimize(objective(pruner, **kwargs), n_trials=len(alphas))
    return study


def pruner_for(forecaster, settings: Settings | None = None, **options) -> ForecastPruner:
    options = {
        "n_best": 1,
        "warmup_steps": 3 * R,
        "min_trials": 2,
        "calibrate": False,
        "metric": "loss",
        **options,
    }
    return ForecastPruner(loss_of, forecaster=forecaster, settings=settings, **options)


@pytest.fixture
def registry(template_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A real MLflow store whose `gfm` champion is the geometric baseline."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_store, db)
    settings = Settings(tracking=TrackingSettings(uri=f"sqlite:///{db}", experiment="pruning"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking.uri)
    tracking.configure(settings.tracking)
    with tracking.start_run("train", dataset_version="md5-abc", repo=ROOT):
        info = tracking.log_forecaster(make("geometric"), input_example=make_prefix())
    version = tracking.register(info.model_uri, settings.registry)
    tracking.promote(version, {settings.registry.metric: 0.5}, settings.registry)
    return settings


@pytest.fixture(params=["name", "folder", "registry"])
def source(request, tmp_path: Path):
    """The geometric baseline by name, as a saved folder, and as the registry's champion."""
    if request.param == "name":
        return "geometric", None
    if request.param == "folder":
        return str(saved.save(make("geometric"), tmp_path / "geo")), None
    return "models:/gfm@champion", request.getfixturevalue("registry")


def test_prunes_the_trial_forecast_to_end_badly_and_keeps_the_one_forecast_to_end_best(
    source, tmp_path
):
    # given a study whose third trial (α = 0.005) ends at loss 0.54 and fourth (α = 0.2) at 5.5e-5
    forecaster, settings = source
    pruner = pruner_for(forecaster, settings)
    # when it runs with the forecast pruner
    study = study_with(pruner, tmp_path / "optuna.db")
    # then the slow trial is pruned at the first step after the warm-up, from its exact forecast
    first, second, slow, fast = study.trials
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert slow.last_step == 3 * R
    assert slow.user_attrs[FORECAST] == pytest.approx(final_loss(0.005), rel=1e-3)
    assert re.fullmatch(
        r"prune: forecast final loss 0\.5\d+ > best 0\.0042\d+ \(step 12 of 40, geometric\)",
        slow.user_attrs[PRUNED],
    )
    # and the trial that is behind at step 12 but ends best is kept
    assert fast.value == pytest.approx(final_loss(0.2), rel=1e-3) and fast.value < second.value
    assert float(fast.user_attrs[FORECASTS]["12"]) == pytest.approx(fast.value, rel=1e-3)
    assert study.best_trial.number == fast.number


def test_persistence_prunes_the_trial_that_starts_slow_but_ends_best(tmp_path):
    # given the same study judged by the current weights (what MedianPruner's view amounts to)
    study = study_with(pruner_for("persistence"), tmp_path / "optuna.db")
    # then the best trial is pruned: its loss at step 12 (0.022) is above the best final (0.0042)
    assert study.trials[3].state == TrialState.PRUNED
    assert study.best_value == pytest.approx(final_loss(0.1), rel=1e-3)


def test_calibration_and_the_nth_best_spare_close_calls(tmp_path):
    # given persistence corrected by its median error on finished trials, judged against the
    # 2nd best with three finished trials first
    alphas = [0.05, 0.1, 0.06, 0.2, 0.005]
    pruner = pruner_for("persistence", n_best=2, min_trials=3, calibrate=True)
    study = study_with(pruner, tmp_path / "optuna.db", alphas=alphas)
    # then only the hopeless trial is pruned
    assert [t.state for t in study.trials].count(TrialState.PRUNED) == 1
    assert study.trials[4].state == TrialState.PRUNED
    assert "2nd best" in study.trials[4].user_attrs[PRUNED]


class Broken:
    name = "broken"

    def forecast(self, prefix, t):
        raise RuntimeError("forecaster broke")


def test_a_pruner_failure_is_reported_and_the_trial_goes_on(tmp_path, caplog):
    # given a forecaster that raises
    with caplog.at_level(logging.WARNING, logger="gfm.pruning"):
        study = study_with(pruner_for(Broken()), tmp_path / "optuna.db")
    # then no trial fails or is pruned, and each failure is logged and kept on the trial
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "trial 2 at step 12: forecast failed, not pruned: RuntimeError: forecaster broke" in (
        caplog.text
    )
    # the last report before the run is over (step 40: nothing left to forecast)
    assert study.trials[2].user_attrs[FORECAST_ERROR] == "step 36: RuntimeError: forecaster broke"


def test_a_score_that_is_not_finite_is_a_failure_too(tmp_path, caplog):
    pruner = ForecastPruner(
        lambda m: float("nan"), forecaster="geometric", n_best=1, min_trials=0, warmup_steps=R
    )
    with caplog.at_level(logging.WARNING, logger="gfm.pruning"):
        study = study_with(pruner, tmp_path / "optuna.db", alphas=[0.05, 0.005])
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert "`score` at the forecast final weights must be finite" in caplog.text


def test_a_trial_without_a_recorder_is_not_pruned_and_says_what_is_missing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gfm.pruning"):
        study = study_with(pruner_for("geometric"), tmp_path / "optuna.db", record=False)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert caplog.text.count("has no recorded checkpoints") == len(ALPHAS)  # once per trial
    assert "pruner.recorder(trial, model, optimizer" in caplog.text


def test_a_file_store_keeps_every_trial_for_other_processes(tmp_path):
    store = FileStore(tmp_path / "checkpoints")
    study = study_with(pruner_for("geometric", store=store), tmp_path / "optuna.db")
    keys = store.keys()
    assert keys == [f"quad/trial-{n:05d}" for n in range(len(ALPHAS))]
    # another process reads the pruned trial's prefix: its checkpoints up to step 12
    code = (
        "import sys; from gfm.stopping import FileStore; "
        "p = FileStore(sys.argv[1]).prefix(sys.argv[2]); print(p.k, p.M, p.optimizer)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store.root), keys[2]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["3", "10", "sgd"]
    assert study.trials[2].state == TrialState.PRUNED


@pytest.mark.parametrize(
    ("forecaster", "needle"),
    [
        ("models:/gfm@nope", "'models:/gfm@nope': could not load it from the registry"),
        ("models:/other@champion", "could not load it from the registry"),
        ("no/such/folder", "no such folder"),
        ("lstm", "learns from training runs"),
    ],
)
def test_bad_forecaster_sources_give_one_clear_line(registry, forecaster, needle):
    with pytest.raises(ValueError) as err:
        ForecastPruner(loss_of, forecaster=forecaster, settings=registry)
    message = str(err.value)
    assert needle in message and "\n" not in message and message.startswith("ForecastPruner: ")


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(title) :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


@pytest.mark.slow
def test_the_readme_examples_run(tmp_path):
    # given the README's Optuna example and its plain-loop example, on a tiny budget
    study = _readme_block("### Pruning trials by forecast")
    loop = _readme_block("### Early stopping by forecast")
    tiny = {
        r"(?m)^N_TRIALS = \d+": "N_TRIALS = 3",
        r"min_trials=\d+": "min_trials=1",
        r'FORECASTER = "[^"]*"': 'FORECASTER = "linear"',
    }
    for pattern, value in tiny.items():
        assert re.search(pattern, study), pattern
        study = re.sub(pattern, value, study)
    loop = re.sub(r'saved\.load\("models/gfm"\)', 'baselines.make("linear")', loop)
    loop = "from gfm import baselines\n" + loop
    (tmp_path / "study.py").write_text(study)
    (tmp_path / "loop.py").write_text(loop)
    # when they run
    said = {}
    for script in ("study.py", "loop.py"):
        out = subprocess.run(
            [sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        said[script] = out.stdout
    # then they finish and say what they found
    assert re.search(r"best \d\.\d+ .* of 3 pruned", said["study.py"])
    assert (tmp_path / "optuna-pruning.db").is_file()
    assert re.search(r"forecast final accuracy [\d.]+ (<|>=) threshold 0\.9 \(step \d+ of 200, linear\)", said["loop.py"])  # fmt: skip
