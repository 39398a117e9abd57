"""Record training trajectories: plan the runs, train each one, hand the records to a writer.

``plan_runs`` turns ``DataSettings`` into a deterministic list of ``RunSpec``; ``train_run``
trains one run and records M+1 checkpoints; ``generate`` runs the plan in parallel processes
(or hands it to a ``Runner``, e.g. a Dask cluster driven by ``flows/generate.py``), resumes what
a writer already holds and commits the dataset. Every engine gives bit-identical records, so
the dataset hash does not depend on where the runs trained: runs train in processes pinned to
machine-independent kernels (``gfm._torch.kernel_env``) on one thread, with oneDNN off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from gfm._torch import kernels_pinned, pinned_environ, reproducible
from gfm.config import DataSettings, Range, TaskSettings
from gfm.data.lock import dataset_lock
from gfm.data.names import MANIFEST_FILE, OPTIMIZERS
from gfm.data.optim import DEFAULTS, OPTIONAL, build_optimizer, scheduled_lr
from gfm.data.pool import init_worker, stop_pool
from gfm.data.schema import RunRecord, RunSpec, arch_name
from gfm.data.space import DiskFull, disk_full, no_space, plan_bytes
from gfm.data.tasks import TASK_CLASSES, flatten, make_task, param_meta

if TYPE_CHECKING:
    from gfm.data.format import Manifest

__all__ = [
    "GenerateReport",
    "Runner",
    "Writer",
    "check_root",
    "generate",
    "pending",
    "plan_runs",
    "train_run",
]

log = logging.getLogger("gfm.data")

_RANGED = ("momentum", "alpha", "beta1", "beta2", "weight_decay")  # OptimizerSpace range fields
_ORDER_TAG = 2  # seeds the minibatch order's stream (tasks.py uses 1 for synthetic problems)


class Writer(Protocol):
    """Where finished runs go (``gfm.data.writer.DatasetWriter``)."""

    def has(self, spec: RunSpec) -> bool:
        """Whether the run (or its divergence marker) is already stored."""
        ...

    def write_run(self, record: RunRecord) -> None:
        """Store one finished run; a diverged record is stored as a divergence marker."""
        ...

    def commit(self, cfg: DataSettings, run_ids: Iterable[str] | None = None) -> Manifest:
        """Publish the dataset of ``run_ids`` (all written, others dropped) at ``cfg.root``."""
        ...


Runner = Callable[[list[RunSpec], DataSettings], Iterable[RunRecord]]
"""Trains the given specs (``train_run`` each) and yields their records in any order."""


@dataclass
class GenerateReport:
    """What ``generate`` did.

    Attributes:
        planned: runs in the plan.
        skipped: planned runs the writer already had (resume).
        trained: runs trained now, diverged ones included.
        diverged: (run_id, step) of each run trained now whose loss or weights became non-finite.
        seconds: wall-clock time of the whole call.
        manifest: what ``writer.commit`` returned (a ``gfm.data.format.Manifest``).
    """

    planned: int
    skipped: int
    trained: int
    diverged: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0
    manifest: Any = None


def _rng(*key: object) -> np.random.Generator:
    """A generator seeded by a stable hash of ``key`` (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("/".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))


def _draw(rng: np.random.Generator, r: Range) -> float:
    """One value from ``r``: uniform on [low, high], or log-uniform when ``r.log``.

        uniform:      x ~ U(low, high)
        log-uniform:  x = exp(u),  u ~ U(log low, log high)

    Log-uniform spreads learning rates evenly over orders of magnitude.
    """
    if r.log:
        return float(math.exp(rng.uniform(math.log(r.low), math.log(r.high))))
    return float(rng.uniform(r.low, r.high))


def _check_plan(cfg: DataSettings) -> None:
    """Refuse a plan gfm cannot generate, before any run trains.

    The seed split must leave training seeds; optimizer ranges must be ones their optimizer
    uses; a task's architectures must be distinct and fit it.

    Raises:
        ValueError: naming the setting, what it must be and what it is.
    """
    s = cfg.splits
    if s.val_seeds + s.test_seeds >= cfg.seeds:
        raise ValueError(
            f"data.seeds must be larger than data.splits.val_seeds + data.splits.test_seeds "
            f"({s.val_seeds + s.test_seeds}) so that some runs are left to train on, got "
            f"{cfg.seeds}"
        )
    for name, space in cfg.optimizers.items():
        unused = [
            k
            for k in _RANGED
            if getattr(space, k) is not None and k not in DEFAULTS[name] and k not in OPTIONAL
        ]
        if unused:
            raise ValueError(
                f"data.optimizers.{name}: {unused} must be unset, {name} does not use them"
            )
        if space.nesterov_prob > 0 and "nesterov" not in DEFAULTS[name]:
            raise ValueError(
                f"data.optimizers.{name}.nesterov_prob must be 0 ({name} has no Nesterov option), "
                f"got {space.nesterov_prob}"
            )
    for task, task_cfg in cfg.tasks.items():
        names = [arch_name(a) for a in task_cfg.archs]
        if len(set(names)) != len(names):
            raise ValueError(f"data.tasks.{task}.archs must be distinct, got {names}")
        for arch in task_cfg.archs:
            try:
                TASK_CLASSES[task].check_hidden(tuple(arch))
            except ValueError as err:
                raise ValueError(f"data.tasks.{task}.archs: {err}") from None


def plan_runs(cfg: DataSettings) -> list[RunSpec]:
    """Every run of the dataset, in a fixed order, with its drawn hyperparameters.

    For each task (sorted), optimizer (sorted), architecture (as listed) and seed index
    0..seeds-1, a generator seeded by sha256(cfg.seed, task, optimizer, arch, seed) draws

        lr = lr_scale · draw(space.lr),  then each other range the optimizer uses
        (momentum, alpha, beta1, beta2, weight_decay; its default when the range is unset),
        nesterov ~ Bernoulli(nesterov_prob) for ``momentum``,
        schedule ~ U(cfg.schedules),  batch_size ~ U(task.batch_sizes)

    and ``init_seed`` comes from the same key plus ``"init"``. Same settings → same plan, in any
    process; hyperparameters are stored complete, so nobody downstream needs defaults.

    Args:
        cfg: the dataset settings.

    Returns:
        The runs; run_id is ``{task}-{optimizer}-{arch}-s{seed:03d}``, e.g.
        ``digits_mlp-adam-32-32-s003``.

    Raises:
        ValueError: the seed split leaves no training seed, an optimizer space sets a range its
            optimizer does not use, a task lists the same architecture twice, or an
            architecture does not fit its task.
    """
    _check_plan(cfg)
    specs = []
    for task in sorted(cfg.tasks):
        task_cfg = cfg.tasks[task]
        for opt in sorted(cfg.optimizers):
            space = cfg.optimizers[opt]
            for hidden in task_cfg.archs:
                arch = arch_name(hidden)
                for seed in range(cfg.seeds):
                    rng = _rng(cfg.seed, task, opt, arch, seed)
                    hparams: dict[str, float | bool] = {
                        "lr": task_cfg.lr_scale * _draw(rng, space.lr)
                    }
                    for key in _RANGED:
                        r = getattr(space, key)
                        if key in DEFAULTS[opt]:
                            hparams[key] = DEFAULTS[opt][key] if r is None else _draw(rng, r)
                        elif key in OPTIONAL and r is not None:  # drawn only when configured
                            hparams[key] = _draw(rng, r)
                    if "nesterov" in DEFAULTS[opt]:
                        hparams["nesterov"] = bool(rng.random() < space.nesterov_prob)
                    schedule = cfg.schedules[int(rng.integers(len(cfg.schedules)))]
                    batch_size = task_cfg.batch_sizes[int(rng.integers(len(task_cfg.batch_sizes)))]
                    init_seed = int(_rng(cfg.seed, task, opt, arch, seed, "init").integers(2**31))
                    specs.append(
                        RunSpec(
                            run_id=f"{task}-{opt}-{arch}-s{seed:03d}",
                            task=task,
                            hidden=tuple(hidden),
                            optimizer=opt,
                            hparams=hparams,
                            schedule=schedule,
                            batch_size=batch_size,
                            seed=seed,
                            init_seed=init_seed,
                            steps=task_cfg.steps,
                            record_every=task_cfg.record_every,
                        )
                    )
    return specs


def _check_spec(spec: RunSpec) -> None:
    if spec.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"{spec.run_id}: optimizer must be one of {list(OPTIMIZERS)}, got {spec.optimizer!r}"
        )
    if spec.steps <= 0 or spec.record_every <= 0 or spec.steps % spec.record_every:
        raise ValueError(
            f"{spec.run_id}: steps must be a positive multiple of record_every, "
            f"got steps={spec.steps}, record_every={spec.record_every}"
        )
    if spec.batch_size is not None and spec.batch_size <= 0:
        raise ValueError(
            f"{spec.run_id}: batch_size must be positive or None, got {spec.batch_size}"
        )


def train_run(spec: RunSpec, task_cfg: TaskSettings) -> RunRecord:
    """Train one run and record its trajectory.

    Everything random (synthetic problem, initialisation, minibatch order) comes from
    ``spec.init_seed`` and torch runs on one thread with oneDNN off (``gfm._torch.reproducible``),
    so the same spec gives bit-identical arrays in any process whose kernels are pinned
    (``gfm._torch.pin_kernels``: the ``gfm`` command, the worker processes of ``generate``);
    in a process that is not, a warning says the bits may differ from other machines'.
    Checkpoints are taken at steps 0, r, 2r, ..., S (r = record_every, S = steps, M = S / r);
    at each one the weights, the learning rate about to be used, the train loss (on the task's
    fixed train subsample) and the held-out loss and accuracy are recorded.

    Args:
        spec: the run.
        task_cfg: the settings of ``spec.task``.

    Returns:
        The record with (M+1,)-long arrays, or, if a loss or the weights became NaN/inf, the
        checkpoints before that with ``diverged_at`` set to the step where it happened.

    Raises:
        ValueError: unknown task or optimizer, bad hparams, or steps/record_every/batch_size
            out of range.
    """
    _check_spec(spec)
    if not kernels_pinned():
        warnings.warn(
            "train_run: this process's torch/MKL kernels are not pinned (gfm._torch.pin_kernels "
            "before any tensor op, or start it with gfm._torch.kernel_env()), so the recorded "
            "bits may differ from another machine's",
            RuntimeWarning,
            stacklevel=2,
        )
    with reproducible():
        return _train(spec, task_cfg)


def _train(spec: RunSpec, task_cfg: TaskSettings) -> RunRecord:
    task = make_task(spec.task, task_cfg, spec.init_seed)
    model = task.build(spec.hidden, spec.init_seed)
    opt = build_optimizer(spec.optimizer, model.parameters(), spec.hparams)
    meta = param_meta(model)
    # data order gets a stream of its own: init and the synthetic problem draw from others
    order_seed = int(np.random.SeedSequence([spec.init_seed, _ORDER_TAG]).generate_state(1)[0])
    gen = torch.Generator().manual_seed(order_seed)
    X, y = task.train
    N = len(X)
    B = N if spec.batch_size is None else min(spec.batch_size, N)
    base_lr = float(spec.hparams["lr"])
    perm, pos = torch.randperm(N, generator=gen), 0
    rec: dict[str, list] = {
        k: [] for k in ("steps", "lr", "train_loss", "val_loss", "val_acc", "w")
    }
    diverged_at = None

    for step in range(spec.steps + 1):
        # the lr of the update w_step -> w_step+1, also what checkpoint `step` records
        lr = scheduled_lr(spec.schedule, base_lr, step, spec.steps)

        # record before updating, so checkpoint i holds w after i·record_every updates
        if step % spec.record_every == 0:
            model.eval()
            w = flatten(model)  # (D,)
            train_loss, _ = task.loss_and_acc(model, "train")
            val_loss, val_acc = task.loss_and_acc(model, "test")
            model.train()
            if not (np.isfinite(w).all() and math.isfinite(train_loss) and math.isfinite(val_loss)):
                diverged_at = step
                break
            for k, v in zip(rec, (step, lr, train_loss, val_loss, val_acc, w), strict=True):
                rec[k].append(v)
        if step == spec.steps:
            break

        # the schedule is a pure function of the step, so set it rather than using a torch scheduler
        for group in opt.param_groups:
            group["lr"] = lr

        # shuffle once per epoch and drop the last partial batch (DataLoader(shuffle, drop_last))
        if B == N:
            xb, yb = X, y
        else:
            if pos + B > N:
                perm, pos = torch.randperm(N, generator=gen), 0
            idx = perm[pos : pos + B]
            pos += B
            xb, yb = X[idx], y[idx]

        loss = task.loss(model(xb), yb)
        # a non-finite minibatch loss means the weights have blown up; later checkpoints are noise
        if not math.isfinite(loss.item()):
            diverged_at = step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return RunRecord(
        spec=spec,
        steps=np.asarray(rec["steps"], dtype=np.int64),
        lr=np.asarray(rec["lr"], dtype=np.float64),
        train_loss=np.asarray(rec["train_loss"], dtype=np.float64),
        val_loss=np.asarray(rec["val_loss"], dtype=np.float64),
        val_acc=np.asarray(rec["val_acc"], dtype=np.float64),
        weights=np.asarray(rec["w"], dtype=np.float32).reshape(-1, len(meta)),  # (M+1, D)
        params=meta,
        diverged_at=diverged_at,
    )


def _run_all(specs: list[RunSpec], cfg: DataSettings, workers: int) -> Iterator[RunRecord]:
    """Train ``specs``, yielding records as they finish.

    Inline when one worker suffices and this process's kernels are pinned; otherwise in
    spawned processes started with the pinned kernels (``pinned_environ``), so the records do
    not depend on the number of workers nor on what the calling process ran before. The
    workers die with this process, even by SIGKILL (``gfm.data.pool.init_worker``); on an
    error, SIGTERM (``gfm.data.stop``), Ctrl-C or an early close they are stopped at once.
    """
    if not specs:
        return
    if workers == 1 and kernels_pinned():
        for spec in specs:
            yield train_run(spec, cfg.tasks[spec.task])
        return
    # spawn: a fresh interpreter per worker, safe with torch's threads (fork is not), and one
    # that reads the kernel variables before its first tensor op
    ctx = multiprocessing.get_context("spawn")
    with pinned_environ():
        pool = ProcessPoolExecutor(
            min(workers, len(specs)),
            mp_context=ctx,
            initializer=init_worker,
            initargs=(os.getpid(),),
        )
        try:
            futures = [pool.submit(train_run, spec, cfg.tasks[spec.task]) for spec in specs]
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # error, Terminated, Ctrl-C, close(): do not wait for runs
            stop_pool(pool)
            raise
        pool.shutdown()


def check_root(root: Path) -> None:
    """Refuse, before any run trains, a ``data.root`` the dataset cannot be written to.

    It must be absent, an empty folder, or a gfm dataset (a folder with a manifest), which the
    new dataset replaces; anything else would be found only at commit, after every run trained.

    Raises:
        ValueError: ``root`` is a file, or a folder of other files; the message says what to do.
    """
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"{root}: data.root must be a dataset folder (or absent), got a file; point "
            "data.root at a folder"
        )
    if root.is_dir() and not (root / MANIFEST_FILE).is_file() and any(root.iterdir()):
        raise ValueError(
            f"{root}: data.root must be a gfm dataset (with {MANIFEST_FILE}), an empty folder or "
            "absent, got a folder of other files; point data.root at a new folder"
        )


def pending(cfg: DataSettings, writer: Writer | None = None) -> list[RunSpec]:
    """The planned runs the writer (default: the dataset of ``cfg.root``) does not hold yet."""
    if writer is None:
        from gfm.data.writer import DatasetWriter

        writer = DatasetWriter(cfg.root)
    return [spec for spec in plan_runs(cfg) if not writer.has(spec)]


def generate(
    cfg: DataSettings,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    writer: Writer | None = None,
    runner: Runner | None = None,
) -> GenerateReport:
    """Train every planned run the writer does not have yet and commit the dataset.

    Args:
        cfg: the dataset settings.
        workers: parallel processes (default ``cfg.workers``); 1 trains inline.
        progress: called as ``progress(done, total)`` after each run trained now (a progress
            bar of the caller's; gfm itself only logs).
        writer: where records go (default ``gfm.data.writer.DatasetWriter(cfg.root)``); runs for which
            ``writer.has(spec)`` is true are skipped, so an interrupted generation resumes.
        runner: trains the runs instead of the local process pool (``workers`` is then unused),
            e.g. Prefect tasks on a Dask cluster; records are written here, in this process.

    Returns:
        A ``GenerateReport``; diverged runs are listed there and handed to the writer, which keeps
        them out of the dataset.

    The dataset folder's lock (``gfm.data.lock``) is held from planning to commit: a second
    generation of the same folder stops at once instead of training everything again.

    Raises:
        ValueError: ``workers`` < 1, the plan is invalid (see ``plan_runs``), or ``cfg.root``
            is neither absent, an empty folder nor a dataset (``check_root``: before training).
        DatasetLocked: another process is generating this dataset; the message names it.
        DiskFull: a write ran out of space, quota or file-size limit (``gfm.data.space``): the
            message names the file, the space the plan needs and the space free; the staging
            folder was removed and the previous dataset is unchanged.
    """
    start = time.perf_counter()
    n_workers = cfg.workers if workers is None else workers
    if n_workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {n_workers}")
    with dataset_lock(cfg.root):
        if writer is None:
            from gfm.data.writer import DatasetWriter

            check_root(cfg.root)
            writer = DatasetWriter(cfg.root)
        try:
            return _generate(cfg, n_workers, progress, writer, runner, start)
        except OSError as err:
            if not no_space(err) or isinstance(err, DiskFull):
                raise
            raise _disk_full(err, cfg, writer) from None


def _disk_full(err: OSError, cfg: DataSettings, writer: Writer) -> DiskFull:
    """``gfm.data.space.disk_full`` for this generation: the plan's size, the writer's staging."""
    try:
        needed: tuple[int, str] | None = plan_bytes(plan_runs(cfg), cfg)
    except Exception:  # noqa: BLE001 - an estimate must never hide the out-of-space message
        needed = None
    staging = getattr(writer, "staging", None)
    error = disk_full(err, cfg.root, staging if isinstance(staging, Path) else None, needed)
    recover = getattr(writer, "recover", None)
    if callable(recover):  # a swap cut between its renames: put the previous dataset back
        with contextlib.suppress(OSError):
            recover()
    return error


def _generate(
    cfg: DataSettings,
    n_workers: int,
    progress: Callable[[int, int], None] | None,
    writer: Writer,
    runner: Runner | None,
    start: float,
) -> GenerateReport:
    """The body of ``generate`` (same arguments), run under the dataset's lock."""
    specs = plan_runs(cfg)
    todo = [spec for spec in specs if not writer.has(spec)]
    log.info(
        "planned %d runs, %d already stored, training %d on %d worker(s)",
        len(specs),
        len(specs) - len(todo),
        len(todo),
        n_workers,
    )

    diverged: list[tuple[str, int]] = []
    records = runner(todo, cfg) if runner is not None and todo else _run_all(todo, cfg, n_workers)
    # closed on any error (a full disk in write_run), so a pool stops now, not when collected
    with contextlib.closing(records) if hasattr(records, "close") else contextlib.nullcontext():
        for done, record in enumerate(records, start=1):
            writer.write_run(record)
            if record.diverged_at is not None:
                diverged.append((record.spec.run_id, record.diverged_at))
                log.warning("%s diverged at step %d", record.spec.run_id, record.diverged_at)
            else:
                log.debug("%s done: val_loss %.4g", record.spec.run_id, record.val_loss[-1])
            if progress is not None:
                progress(done, len(todo))

    # naming the plan lets the writer drop staged runs of an earlier, different plan
    manifest = writer.commit(cfg, run_ids=[spec.run_id for spec in specs])
    seconds = time.perf_counter() - start
    log.info("trained %d runs (%d diverged) in %.1f s", len(todo), len(diverged), seconds)
    return GenerateReport(
        planned=len(specs),
        skipped=len(specs) - len(todo),
        trained=len(todo),
        diverged=diverged,
        seconds=seconds,
        manifest=manifest,
    )
