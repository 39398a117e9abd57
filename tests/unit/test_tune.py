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


def _draw(study, space):
    trial = study.ask()
    return trial, suggest(trial, space)


def test_a_reopened_study_does_not_draw_its_killed_trial_again(tmp_path):
    # given a study whose first drawn trial (after the configured one) was running when its
    # process was killed
    s = load_settings(None, [f"tune.storage=sqlite:///{tmp_path}/o.db"], environ={})
    space = s.tune.space.flat()
    study = open_study(s, "v1")
    anchor, _ = _draw(study, space)
    study.tell(anchor, 0.5)
    _, killed = _draw(study, space)
    # when the study is reopened and draws its next trial
    _, drawn = _draw(open_study(s, "v1"), space)
    # then that is not the killed trial's configuration again (the seed's stream restarted)
    assert drawn != killed


def test_a_new_study_draws_what_its_seed_always_drew(tmp_path):
    s = load_settings(None, [f"tune.storage=sqlite:///{tmp_path}/o.db"], environ={})
    other = load_settings(None, [f"tune.storage=sqlite:///{tmp_path}/p.db"], environ={})
    space = s.tune.space.flat()
    draws = []
    for settings in (s, other):
        study = open_study(settings, "v1")
        study.tell(study.ask(), 0.5)  # the configured trial
        draws.append(_draw(study, space)[1])
    assert draws[0] == draws[1]


def test_no_configuration_is_drawn_twice_while_a_new_one_is_left(tmp_path):
    # given a space of 4 configurations
    s = load_settings(
        None,
        [
            f"tune.storage=sqlite:///{tmp_path}/o.db",
            "tune.space={gfm: {width: {choices: [32, 64]}, depth: {low: 2, high: 3}}}",
        ],
        environ={},
    )
    space = s.tune.space.flat()
    study = open_study(s, "v1")
    configs = []
    for i in range(5):
        trial, params = _draw(study, space)
        study.tell(trial, float(i))
        configs.append(tuple(params.values()))
    # then the first 4 trials are the 4 configurations, and the 5th repeats one (none is left)
    assert len(set(configs[:4])) == 4 and configs[4] in configs[:4]


def test_the_sampler_draws_from_the_distributions_suggest_asks_for(tmp_path):
    from gfm.ops.sampling import distributions

    s = load_settings(
        None,
        [
            f"tune.storage=sqlite:///{tmp_path}/o.db",
            "tune.space.gfm.depth={low: 1, high: 5, step: 2}",
        ],
        environ={},
    )
    space = s.tune.space.flat()
    study = open_study(s, "v1")
    study.tell(study.ask(), 0.5)
    trial, _ = _draw(study, space)
    assert study.trials[trial.number].distributions == distributions(space)


def test_process_gone_only_for_a_process_of_this_machine_that_ended():
    import os
    import subprocess

    from gfm.ops.claims import process_gone, process_token

    child = subprocess.Popen(["sleep", "60"])
    token = process_token(child.pid)
    assert not process_gone(token) and not process_gone(process_token())
    host, rest = token.split("|", 1)
    assert not process_gone(f"other-{host}|{rest}")  # another machine's: cannot tell
    assert not process_gone(None) and not process_gone(f"{host}:{child.pid}")
    # the pid taken by a later process is not the recorded one
    assert process_gone(token.rsplit("|", 1)[0] + "|1")
    child.kill()
    child.wait()
    assert process_gone(token)
    assert not process_gone(process_token(os.getpid()))


def test_neither_a_finished_nor_a_waiting_configuration_is_drawn(tmp_path):
    from gfm.ops.sampling import distributions

    # given a space of 3 widths: the configured one finished, another waiting to run (a retry)
    s = load_settings(
        None,
        [
            f"tune.storage=sqlite:///{tmp_path}/o.db",
            "tune.space={gfm: {width: {choices: [32, 64, 128]}}}",
        ],
        environ={},
    )
    dists = distributions(s.tune.space.flat())
    study = open_study(s, "v1")
    anchor, _ = _draw(study, s.tune.space.flat())  # gfm.width=64, the configured value
    study.tell(anchor, 0.5)
    new = study.ask()  # the trial to draw for
    waiting = optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params={"gfm.width": 32}, distributions=dists
    )
    study.add_trial(waiting)
    # when the sampler draws its configuration
    frozen = study.trials[new.number]
    space = study.sampler.infer_relative_search_space(study, frozen)
    drawn = study.sampler.sample_relative(study, frozen, space)
    # then it is the one left
    assert drawn == {"gfm.width": 128}
