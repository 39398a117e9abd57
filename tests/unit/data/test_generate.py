import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gfm.config import DataSettings, OptimizerSpace, Range, TaskSettings
from gfm.data.generate import generate, plan_runs, train_run
from gfm.data.optim import DEFAULTS, scheduled_lr
from gfm.data.tasks import evaluate_weights, flatten, make_task

ROOT = Path(__file__).resolve().parents[3]
ARRAYS = ("steps", "lr", "train_loss", "val_loss", "val_acc", "weights")


def _settings(**update) -> DataSettings:
    small = {"steps": 20, "record_every": 5, "n_train": 64, "n_test": 32, "dim": 4}
    tasks = {
        "least_squares": TaskSettings(archs=[[]], batch_sizes=[None, 16], **small),
        "mlp_regression": TaskSettings(archs=[[4], [4, 4]], batch_sizes=[16], **small),
    }
    opts = {k: v for k, v in DataSettings().optimizers.items() if k in ("sgd", "momentum", "adam")}
    base = {"seeds": 3, "tasks": tasks, "optimizers": opts}
    return DataSettings.model_validate({**base, **update})


class MemoryWriter:
    """In-memory stand-in for gfm.data.writer.DatasetWriter (has / write_run / commit)."""

    def __init__(self, done=()):
        self.done = set(done)
        self.records = {}
        self.committed = None

    def has(self, spec):
        return spec.run_id in self.done or spec.run_id in self.records

    def write_run(self, record):
        self.records[record.spec.run_id] = record

    def commit(self, cfg, run_ids=None):
        self.committed = list(run_ids)
        return {"runs": sorted(self.records)}


def _assert_same_record(a, b):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.diverged_at == b.diverged_at


def _plan_digest(specs) -> str:
    rows = [
        [s.run_id, sorted(s.hparams.items()), s.schedule, s.batch_size, s.init_seed] for s in specs
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


# ---- plan_runs ------------------------------------------------------------------------------


def test_plan_covers_every_group_with_readable_unique_ids():
    specs = plan_runs(_settings())
    # (1 + 2 archs) x 3 optimizers x 3 seeds
    assert len(specs) == 27
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert "mlp_regression-adam-4-4-s002" in ids and "least_squares-sgd-linear-s000" in ids
    assert all(re.fullmatch(r"[a-z_]+-[a-z]+-[0-9a-z-]+-s\d{3}", i) for i in ids)
    assert ids[0].startswith("least_squares-adam")  # tasks, then optimizers, sorted


def test_plan_draws_hyperparameters_within_ranges():
    cfg = _settings()
    for s in plan_runs(cfg):
        space, task = cfg.optimizers[s.optimizer], cfg.tasks[s.task]
        assert set(s.hparams) == {"lr", *DEFAULTS[s.optimizer]}
        lo, hi = space.lr.low * task.lr_scale, space.lr.high * task.lr_scale
        assert lo <= s.hparams["lr"] <= hi
        if s.optimizer == "momentum":
            assert space.momentum.low <= s.hparams["momentum"] <= space.momentum.high
            assert isinstance(s.hparams["nesterov"], bool)
        assert s.schedule in cfg.schedules and s.batch_size in task.batch_sizes
        assert (s.steps, s.record_every) == (task.steps, task.record_every)


def test_weight_decay_is_drawn_for_an_optimizer_only_where_its_range_is_set():
    # given SGD with a weight-decay range, and Adam without one
    wd = Range(low=1e-4, high=1e-2, log=True)
    cfg = _settings(
        optimizers={
            "sgd": OptimizerSpace(lr=Range(low=0.1, high=0.2), weight_decay=wd),
            "adam": OptimizerSpace(lr=Range(low=1e-3, high=2e-3)),
        }
    )
    specs = plan_runs(cfg)
    # then every SGD run draws one inside the range and no Adam run records the key
    sgd = [s.hparams["weight_decay"] for s in specs if s.optimizer == "sgd"]
    assert sgd and all(wd.low <= v <= wd.high for v in sgd) and len(set(sgd)) > 1
    assert all("weight_decay" not in s.hparams for s in specs if s.optimizer == "adam")


@pytest.mark.slow  # spawns worker processes or trains the tiny dataset
def test_plan_is_stable_across_calls_and_processes():
    # given the default plan computed here
    digest = _plan_digest(plan_runs(DataSettings()))
    assert digest == _plan_digest(plan_runs(DataSettings()))
    # when another interpreter (with another str-hash salt) computes it
    code = (
        "import hashlib, json; from gfm.config import DataSettings; "
        "from gfm.data.generate import plan_runs; "
        "rows = [[s.run_id, sorted(s.hparams.items()), s.schedule, s.batch_size, s.init_seed] "
        "for s in plan_runs(DataSettings())]; "
        "print(hashlib.sha256(json.dumps(rows).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    # then it is the same plan
    assert out.stdout.strip() == digest


def test_plan_depends_on_the_data_seed():
    a, b = plan_runs(_settings()), plan_runs(_settings(seed=1))
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert all(x.init_seed != y.init_seed for x, y in zip(a, b, strict=True))


_SGD_WITH_BETA1 = OptimizerSpace(lr=Range(low=0.1, high=0.2), beta1=Range(low=0.9, high=0.9))


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"optimizers": {"sgd": _SGD_WITH_BETA1}}, r"data\.optimizers\.sgd"),
        (  # settings refuse it on load; the plan still does for settings built without checks
            {
                "tasks": {
                    "mlp_regression": TaskSettings.model_construct(
                        archs=[[4], [4]], steps=4, record_every=2
                    )
                }
            },
            r"data\.tasks\.mlp_regression\.archs",
        ),
        (
            {"tasks": {"least_squares": TaskSettings(archs=[[4]], steps=4, record_every=2)}},
            r"data\.tasks\.least_squares\.archs.*hidden",
        ),
    ],
)
def test_bad_plans_are_rejected_naming_the_key(update, match):
    with pytest.raises(ValueError, match=match):
        plan_runs(_settings(**update))


# ---- train_run ------------------------------------------------------------------------------


def _spec(run_id: str, cfg: DataSettings | None = None):
    cfg = cfg or _settings()
    return next(s for s in plan_runs(cfg) if s.run_id == run_id), cfg


def test_train_run_records_every_checkpoint():
    spec, cfg = _spec("mlp_regression-adam-4-4-s000")
    task_cfg = cfg.tasks[spec.task]
    rec = train_run(spec, task_cfg)
    # M + 1 = 20 / 5 + 1 checkpoints, step 0 first
    np.testing.assert_array_equal(rec.steps, [0, 5, 10, 15, 20])
    assert rec.weights.shape == (5, len(rec.params)) and rec.weights.dtype == np.float32
    expected_lr = [
        scheduled_lr(spec.schedule, spec.hparams["lr"], int(s), spec.steps) for s in rec.steps
    ]
    np.testing.assert_allclose(rec.lr, expected_lr)
    # checkpoint 0 is the initialisation, and 20 small Adam steps already help
    task = make_task(spec.task, task_cfg, spec.init_seed)
    np.testing.assert_array_equal(rec.weights[0], flatten(task.build(spec.hidden, spec.init_seed)))
    assert rec.val_loss[-1] < rec.val_loss[0] and rec.train_loss[-1] < rec.train_loss[0]
    assert rec.diverged_at is None and np.isnan(rec.val_acc).all()
    # evaluate_weights rebuilds the run's data: same held-out loss as recorded
    loss, _ = evaluate_weights(spec, task_cfg, rec.weights[-1])
    assert loss == pytest.approx(rec.val_loss[-1], rel=1e-5)


def test_full_batch_gd_on_least_squares_matches_the_recurrence():
    # given full-batch GD with a constant lr on the run's own least-squares problem
    spec, cfg = _spec("least_squares-sgd-linear-s000")
    spec = dataclasses.replace(spec, hparams={"lr": 0.2}, schedule="constant", batch_size=None)
    task_cfg = cfg.tasks[spec.task]
    # when the run is trained
    rec = train_run(spec, task_cfg)
    # then each checkpoint follows w <- w - lr * (2/N) A^T (A w - y), A = [X, 1]
    X, y = (t.double().numpy() for t in make_task(spec.task, task_cfg, spec.init_seed).train)
    A = np.hstack([X, np.ones((len(X), 1))])  # (N, dim + 1): weight entries, then the bias
    w = rec.weights[0].astype(np.float64)
    for i in range(1, len(rec.steps)):
        for _ in range(spec.record_every):
            w = w - 0.2 * (2 / len(X)) * A.T @ (A @ w - y[:, 0])
        np.testing.assert_allclose(rec.weights[i], w, rtol=1e-4, atol=1e-5)
    # and the held-out loss ends near the noise floor (noise = 0.1)
    assert rec.val_loss[-1] < 0.1 * rec.val_loss[0]


def test_same_spec_gives_bit_identical_arrays():
    spec, cfg = _spec("mlp_regression-sgd-4-s001")
    assert spec.batch_size == 16  # minibatches, so data order matters
    _assert_same_record(
        train_run(spec, cfg.tasks[spec.task]), train_run(spec, cfg.tasks[spec.task])
    )


def test_different_seed_index_gives_different_initial_weights():
    cfg = _settings()
    a, _ = _spec("mlp_regression-adam-4-s000", cfg)
    b, _ = _spec("mlp_regression-adam-4-s001", cfg)
    wa, wb = (train_run(s, cfg.tasks[s.task]).weights[0] for s in (a, b))
    assert not np.array_equal(wa, wb)


def test_huge_lr_run_stops_with_diverged_at():
    spec, cfg = _spec("least_squares-sgd-linear-s000")
    spec = dataclasses.replace(spec, hparams={"lr": 1e6}, batch_size=None)
    rec = train_run(spec, cfg.tasks[spec.task])
    assert rec.diverged_at is not None and 0 < rec.diverged_at <= spec.steps
    assert 1 <= len(rec.steps) < spec.n_checkpoints and (rec.steps <= rec.diverged_at).all()
    assert np.isfinite(rec.weights).all() and np.isfinite(rec.val_loss).all()


def test_train_run_rejects_bad_spec():
    spec, cfg = _spec("least_squares-sgd-linear-s000")
    with pytest.raises(ValueError, match="record_every"):
        train_run(dataclasses.replace(spec, steps=12), cfg.tasks[spec.task])


# ---- generate -------------------------------------------------------------------------------


def test_generate_reports_and_hands_over_diverged_runs():
    # given sgd with an absurd learning rate
    huge = OptimizerSpace(lr=Range(low=1e5, high=1e6, log=True))
    cfg = _settings(optimizers={"sgd": huge, "adam": DataSettings().optimizers["adam"]})
    writer = MemoryWriter()
    # when the dataset is generated
    report = generate(cfg, workers=1, writer=writer)
    # then every sgd run is reported diverged and handed to the writer as such
    sgd_ids = sorted(s.run_id for s in plan_runs(cfg) if s.optimizer == "sgd")
    assert sorted(rid for rid, _ in report.diverged) == sgd_ids
    assert all(writer.records[rid].diverged for rid in sgd_ids)
    assert not any(r.diverged for rid, r in writer.records.items() if rid not in sgd_ids)
    assert (report.planned, report.skipped, report.trained) == (18, 0, 18)
    assert report.manifest == {"runs": sorted(writer.records)}


def test_real_writer_keeps_diverged_runs_out_of_the_dataset(tmp_path):
    from gfm.data.format import read_manifest

    huge = OptimizerSpace(lr=Range(low=1e5, high=1e6, log=True))
    cfg = _settings(
        root=tmp_path / "data",
        tasks={"least_squares": _settings().tasks["least_squares"]},
        optimizers={"sgd": huge, "adam": DataSettings().optimizers["adam"]},
    )
    report = generate(cfg, workers=1)
    manifest = read_manifest(cfg.root)
    assert sorted(d.run_id for d in manifest.diverged) == sorted(r for r, _ in report.diverged)
    assert (manifest.counts.runs, manifest.counts.diverged) == (3, 3)
    assert not list((cfg.root / "checkpoints").glob("*-sgd-*"))


@pytest.mark.slow  # spawns worker processes or trains the tiny dataset
def test_generate_with_two_workers_equals_inline():
    cfg = _settings()
    inline, parallel = MemoryWriter(), MemoryWriter()
    generate(cfg, workers=1, writer=inline)
    generate(cfg, workers=2, writer=parallel)
    assert sorted(inline.records) == sorted(parallel.records)
    for run_id, record in inline.records.items():
        _assert_same_record(record, parallel.records[run_id])


def test_generate_resumes_skipping_runs_the_writer_has():
    cfg = _settings()
    planned = [s.run_id for s in plan_runs(cfg)]
    writer = MemoryWriter(done=planned[:10])
    seen = []
    report = generate(cfg, workers=1, progress=lambda *a: seen.append(a), writer=writer)
    assert (report.planned, report.skipped, report.trained) == (27, 10, 17)
    assert seen[-1] == (17, 17) and len(seen) == 17
    assert sorted(writer.records) == sorted(planned[10:])
    assert writer.committed == planned


def test_a_runner_trains_only_what_is_missing_and_the_writer_gets_every_record():
    # given a writer holding some runs, and a runner (as the Dask flow is) that trains in reverse
    cfg = _settings()
    planned = [s.run_id for s in plan_runs(cfg)]
    asked = []

    def runner(specs, settings):
        asked.extend(s.run_id for s in specs)
        return [train_run(s, settings.tasks[s.task]) for s in reversed(specs)]

    inline, via_runner = MemoryWriter(done=planned[:5]), MemoryWriter(done=planned[:5])
    generate(cfg, workers=1, writer=inline)
    report = generate(cfg, writer=via_runner, runner=runner)
    # then the runner was handed the missing runs only, and their records are the inline ones
    assert asked == planned[5:] and report.trained == len(planned) - 5
    for run_id, record in inline.records.items():
        _assert_same_record(record, via_runner.records[run_id])
    # and with nothing missing the runner is not called
    asked.clear()
    generate(cfg, writer=MemoryWriter(done=planned), runner=runner)
    assert asked == []


def test_generate_rejects_zero_workers():
    with pytest.raises(ValueError, match="workers"):
        generate(_settings(), workers=0, writer=MemoryWriter())


@pytest.mark.slow  # spawns worker processes or trains the tiny dataset
def test_generate_with_the_real_writer(tiny_settings):
    from gfm.data.checkpoints import read_checkpoints

    # given the tiny settings (every task and optimizer) and an empty data root
    cfg = tiny_settings.data
    # when the dataset is generated, then generated again
    first = generate(cfg, workers=1)
    second = generate(cfg, workers=1)
    # then every planned run is kept or marked diverged, and the second call reuses them all
    assert first.manifest.counts.runs + first.manifest.counts.diverged == first.planned
    assert (second.skipped, second.trained) == (first.planned, 0)
    assert second.manifest.hash == first.manifest.hash
    # and a stored run scores its own final weights as recorded
    spec = next(s for s in plan_runs(cfg) if s.task == "digits_mlp")
    rec = read_checkpoints(cfg.root / "checkpoints" / f"{spec.run_id}.parquet")
    loss, acc = evaluate_weights(spec, cfg.tasks[spec.task], rec.weights[-1])
    assert (loss, acc) == pytest.approx((rec.val_loss[-1], rec.val_acc[-1]), rel=1e-5)
