"""The names every part agrees on: optimizers, schedules, tasks, hyperparameter keys.

One home for each registry of names; the implementations are chosen by these keys
(``gfm.data.optim`` builds optimizers and schedules, ``gfm.data.tasks.TASKS`` the tasks) and a
test checks they cover exactly these. Kept free of torch so that settings load fast.
"""

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
TASKS = ("least_squares", "mlp_regression", "digits_mlp", "mnist_cnn")
HPARAM_KEYS = ("lr", "momentum", "nesterov", "alpha", "beta1", "beta2", "weight_decay")
"""Keys of ``RunSpec.hparams`` (and of a forecast request's ``hparams``, and ``hp_*`` columns)."""
MANIFEST_FILE = "manifest.json"
"""A dataset's manifest (``gfm.data.format``): here, so that training runs need no Parquet."""

__all__ = ["HPARAM_KEYS", "MANIFEST_FILE", "OPTIMIZERS", "SCHEDULES", "TASKS", "check_known"]


def check_known(names: object, known: tuple[str, ...], what: str) -> None:
    """Raise ValueError naming the ``names`` that are not ``known`` (``what``: "task", ...)."""
    unknown = sorted(set(names) - set(known))  # type: ignore[call-overload]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; expected some of {list(known)}")
