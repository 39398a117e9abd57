"""gfm.ops.study without training: the search space, the study's name and first trial."""

import optuna
import pytest

from gfm.config import load_settings
from gfm.ops.study import open_study, study_name, suggest, tune


def test_suggest_names_dimensions_by_dotted_key_and_keeps_integer_settings_integer():
    # given a space over a categorical, an integer range and a log float range
    s = load_settings(None, environ={})
    trial = optuna.trial.FixedTrial(
        {
            "gfm.variant": "free",
            "gfm.prior": True,
            "gfm.width": 64,
            "gfm.depth": 3,
            "gfm.history": 8,
            "train.lr": 1e-3,
        }
    )
    # when
    params = suggest(trial, s.tune.space.flat())
    # then
    assert params["gfm.depth"] == 3 and isinstance(params["gfm.depth"], int)
    assert params["train.lr"] == pytest.approx(1e-3)
    assert set(params) == set(s.tune.space.flat())


def test_study_name_changes_with_the_data_and_the_space_only():
    s = load_settings(None, environ={})
    name = study_name(s, "abc.dir")
    assert name.startswith("gfm-") and name == study_name(s, "abc.dir")
    assert study_name(s, "def.dir") != name
    other = load_settings(None, ["tune.space={gfm: {width: {choices: [8]}}}"], environ={})
    assert study_name(other, "abc.dir") != name
    moved = load_settings(
        None, ["train.model_dir=elsewhere", "tune.storage=sqlite:////x.db"], environ={}
    )
    assert study_name(moved, "abc.dir") == name  # where things are stored is not what they are


def test_new_study_tries_the_configured_settings_first(tmp_path):
    s = load_settings(
        None,
        [
            f"tune.storage=sqlite:///{tmp_path}/o.db",
            "tune.space={gfm: {width: {choices: [32, 64]}}}",
        ],
        environ={},
    )
    study = open_study(s, "v1")
    (first,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert first.system_attrs["fixed_params"] == {"gfm.width": 64}
    # reopened, it is the same study and nothing is enqueued twice
    again = open_study(s, "v1")
    assert again.study_name == study.study_name and len(again.trials) == 1


def test_no_trials_means_no_study(tmp_path):
    s = load_settings(
        None, ["tune.n_trials=0", f"tune.storage=sqlite:///{tmp_path}/o.db"], environ={}
    )
    result = tune(s, [], [], dataset_version="v1")
    assert result.best_params == {} and result.n_new == 0
    assert not (tmp_path / "o.db").exists()


def test_tuning_needs_validation_runs(tmp_path):
    s = load_settings(None, [f"tune.storage=sqlite:///{tmp_path}/o.db"], environ={})
    with pytest.raises(ValueError, match="must have train and val runs"):
        tune(s, [object()], [], dataset_version="v1")


def test_a_trial_orphaned_on_sqlite_is_failed_so_the_next_run_does_not_wait_forever(tmp_path):
    # given a study on sqlite holding a RUNNING trial that never had a heartbeat (its process
    # was killed between creating the trial and the heartbeat thread's first beat)
    from gfm.ops.claims import SharedStudy

    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()
    claim = SharedStudy(storage, study, grace_s=0.0)
    retried = []
    # when the next run looks twice (first sight, then past the grace period)
    claim.fail_orphans(lambda s, t: retried.append(t.number))
    claim.fail_orphans(lambda s, t: retried.append(t.number))
    # then the trial is failed and handed to the retry callback
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL and retried == [orphan.number]
