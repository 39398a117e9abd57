from pathlib import Path

import pytest
import yaml

from gfm.config import Settings, SettingsError, apply_params, env_overrides, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_params_yaml_names_every_setting_whatever_its_values():
    # given the project's params.yaml (a user's to edit: its values are theirs, so the suite
    # checks only that it is a complete, valid settings file) and the defaults in code
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    defaults = load_settings(None, environ={}).model_dump(mode="json")
    # then it names every section and every setting of each section, and nothing else
    assert set(tree) == set(defaults)
    for section, values in defaults.items():
        assert set(tree[section]) == set(values), section


def test_a_users_edit_of_params_yaml_reaches_the_settings(tmp_path):
    # given a copy of params.yaml with a user's own values
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree["gfm"]["width"] = 8
    tree["train"]["steps"] = 123
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    # when loaded, then they are the settings (and nothing in the suite compares them to defaults)
    loaded = load_settings(tmp_path / "params.yaml", environ={})
    assert (loaded.gfm.width, loaded.train.steps) == (8, 123)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("unknown_key", "data.seedz: unknown key"),
        ("negative_steps", "data.tasks.least_squares.steps"),
        ("unknown_optimizer", "adagrad"),
        ("wrong_type", "train.lr"),
        ("not_mapping", "must be a mapping"),
    ],
)
def test_invalid_files_name_the_key(confs, name, needle):
    # when a broken params file is loaded
    with pytest.raises(SettingsError) as err:
        load_settings(confs / "invalid" / f"{name}.yaml", environ={})
    # then the message names the file and the offending key
    assert needle in str(err.value)
    assert f"{name}.yaml" in str(err.value)


def test_unknown_optimizer_lists_the_valid_ones(confs):
    with pytest.raises(SettingsError, match="expected some of \\['sgd', 'momentum'"):
        load_settings(confs / "invalid" / "unknown_optimizer.yaml", environ={})


def test_unknown_solver_lists_allowed_values():
    with pytest.raises(SettingsError, match=r"gfm.solver: .*'euler', 'rk4' or 'dopri5'"):
        load_settings(None, ["gfm.solver=midpoint"], environ={})


def test_set_overrides_parse_yaml_values():
    s = load_settings(
        None, ["data.seeds=8", "data.schedules=[cosine]", "train.lr=3e-4"], environ={}
    )
    assert s.data.seeds == 8
    assert s.data.schedules == ["cosine"]
    assert s.train.lr == pytest.approx(3e-4)


def test_set_rejects_malformed_pairs():
    with pytest.raises(SettingsError, match="KEY=VALUE"):
        load_settings(None, ["data.seeds"], environ={})


def test_environment_overrides_deployment_uris_and_set_wins():
    env = {"GFM_TRACKING__URI": "http://127.0.0.1:5000", "GFM_DATA__SEEDS": "6", "OTHER": "x"}
    assert env_overrides(env) == {"data.seeds": 6, "tracking.uri": "http://127.0.0.1:5000"}
    s = load_settings(None, ["data.seeds=7"], environ=env)
    assert s.tracking.uri == "http://127.0.0.1:5000"
    assert s.data.seeds == 7  # --set is applied after the environment


def test_relative_sqlite_uris_become_absolute(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("tracking: {uri: 'sqlite:///m.db'}\n")
    s = load_settings(p, environ={})
    assert s.tracking.uri == f"sqlite:///{tmp_path.resolve()}/m.db"
    assert s.tune.storage == f"sqlite:///{tmp_path.resolve()}/optuna.db"


def test_splits_need_no_seeds_until_generation():
    # a step on an imported dataset never uses data.seeds: the plan's check is generation's
    # (tests/unit/test_split_overrides.py), so the settings load whatever the counts
    s = load_settings(None, ["data.seeds=2"], environ={})
    assert s.data.seeds == 2 and s.data.splits.val_seeds + s.data.splits.test_seeds == 2


def test_record_every_must_divide_steps():
    with pytest.raises(SettingsError, match="multiple of record_every"):
        load_settings(
            None,
            {"data.tasks": {"least_squares": {"archs": [[]], "steps": 10, "record_every": 3}}},
            environ={},
        )


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(Exception, match="frozen"):
        s.train.lr = 1.0  # type: ignore[misc]


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_search_space_is_keyed_like_params_yaml_and_checked():
    # given / when
    s = load_settings(
        ROOT / "params.yaml", ["tune.space.gfm.width={choices: [16, 32]}"], environ={}
    )
    # then the override replaced one dimension of the file's space and the others stay
    assert s.tune.space.flat()["gfm.width"].choices == [16, 32]
    assert "train.lr" in s.tune.space.flat()
    # unknown keys, invalid choices and half ranges are named
    with pytest.raises(SettingsError, match="tune.space.*unknown key gfm.'widht'"):
        load_settings(None, ["tune.space.gfm.widht={choices: [8]}"], environ={})
    with pytest.raises(SettingsError, match="solver: choice 'midpoint' is not valid"):
        load_settings(None, ["tune.space.gfm.solver={choices: [interval, midpoint]}"], environ={})
    with pytest.raises(SettingsError, match="both `low` and `high`"):
        load_settings(None, ["tune.space.train.lr={low: 0.001}"], environ={})
    with pytest.raises(SettingsError, match="unknown key train.'device'"):
        load_settings(None, ["tune.space.train.device={choices: [cpu]}"], environ={})


def test_apply_params_validates_dotted_keys():
    s = load_settings(None, environ={})
    t = apply_params(s, {"gfm.width": 128, "train.lr": 3e-4})
    assert (t.gfm.width, t.train.lr, t.train.model_dir) == (128, 3e-4, s.train.model_dir)
    with pytest.raises(SettingsError, match="gfm.*width"):
        apply_params(s, {"gfm.width": -1})
    with pytest.raises(SettingsError, match="section.key"):
        apply_params(s, {"width": 3})


def test_model_dir_resolves_against_the_params_folder(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train: {model_dir: out/m}\n")
    assert load_settings(p, environ={}).train.model_dir == tmp_path.resolve() / "out" / "m"


def test_optuna_storage_defaults_to_beside_the_mlflow_store(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("tracking: {uri: 'sqlite:///store/m.db'}\n")
    s = load_settings(p, environ={})
    assert s.tune.storage == f"sqlite:///{tmp_path.resolve()}/store/optuna.db"
    server = load_settings(p, ["tracking.uri=http://mlflow:5000"], environ={})
    assert server.tune.storage == f"sqlite:///{tmp_path.resolve()}/optuna.db"


def test_team_mode_is_one_switch_below_the_environment_and_set():
    # given the defaults, then team mode switched on from the environment
    local = load_settings(None, environ={})
    env = {"GFM_TEAM__ENABLED": "true"}
    team = load_settings(None, environ=env)
    # then the shared services replace the embedded stores, and nothing else changes
    assert (local.team_mode, team.team_mode) == (False, True)
    assert local.tracking.uri.startswith("sqlite:///") and local.data.executor == "process"
    assert team.tracking.uri == "http://127.0.0.1:5000"
    assert team.tune.storage == "postgresql+psycopg://postgres@127.0.0.1:5432/gfm_optuna"
    assert team.data.executor == "dask" and team.gfm == local.gfm
    # and one team value can be changed, while the environment and --set still win
    moved = load_settings(
        None,
        ["team.tracking.uri=http://127.0.0.1:5001", "data.executor=process"],
        environ={**env, "GFM_TUNE__HEARTBEAT_S": "3"},
    )
    assert moved.tracking.uri == "http://127.0.0.1:5001"
    assert moved.data.executor == "process" and moved.tune.heartbeat_s == 3
    assert moved.tune.storage == team.tune.storage  # the team default for a key not changed


def test_team_values_are_checked_by_key():
    with pytest.raises(SettingsError, match="team.*uir"):
        load_settings(None, ["team.tracking.uir=http://x"], environ={})
    with pytest.raises(SettingsError, match="executor"):
        load_settings(None, ["team.enabled=true", "team.data.executor=threads"], environ={})


def test_removed_settings_say_where_they_went():
    with pytest.raises(SettingsError, match=r"gfm\.adjoint: removed"):
        load_settings(None, ["gfm.adjoint=true"], environ={})
    with pytest.raises(SettingsError, match="accelerate: .*benchmarks/accelerate.yaml"):
        load_settings(None, ["accelerate.seeds=3"], environ={})
