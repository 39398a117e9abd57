"""Killed and interrupted tuning (issue 15, items 4, 6 and 14): the real ``gfm tune`` in its own
process on the micro dataset, killed with SIGKILL mid-trial and resumed, one of its two workers
killed, Ctrl-C (SIGINT to its process group, as a terminal sends it) mid-trial and while the
workers start. Afterwards the study holds distinct configurations, the killed trial failed and
retried once with its parameters, the finished trials and the dataset unchanged, no MLflow run of
a dead process left RUNNING and no process left behind. Two workers need PostgreSQL
(``TEST_POSTGRES_URL``, as the service faults): skipped without one outside CI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
import pytest
from mlflow import MlflowClient

from gfm.config import Settings, load_settings
from gfm.data.generate import generate
from gfm.ops import dataset_version
from gfm.ops.claims import process_token
from gfm.ops.study import study_name
from gfm.tracking import configure
from tests.faults.helpers import GFM, MICRO, gfm, gfm_env, snapshot

pytestmark = [pytest.mark.faults, pytest.mark.slow]

T = TypeVar("T")
POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
FAIL = optuna.trial.TrialState.FAIL
# 3 finished trials of 20 steps; no pruning, so that every trial's value is compared; the default
# 10 s heartbeat: a dead worker's trial is noticed by its pid, not by waiting out the heartbeat
TUNE = """\
tune:
  n_trials: 3
  trial_steps: 20
  eval_every: 10
  pruner_startup_trials: 10
  timeout_s: 300
"""


# ------------------------------------------------------------------ helpers


def project(folder: Path, extra: str = "") -> Settings:
    """The micro dataset generated in ``folder/data`` and params.yaml with the tune settings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(MICRO + TUNE + extra)
    settings = load_settings(folder / "params.yaml", environ={})
    generate(settings.data, workers=1)
    return settings


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``gfm tune *args`` in its own process group (a terminal's Ctrl-C reaches the whole group);
    its output goes to ``cwd/out.log`` (no pipe to fill)."""
    log = (cwd / "out.log").open("w")
    return subprocess.Popen(
        [str(GFM), "tune", *args],
        cwd=cwd,
        env=gfm_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def output(cwd: Path) -> list[str]:
    return [ln.rstrip() for ln in (cwd / "out.log").read_text().splitlines() if ln.strip()]


def no_traceback(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "Aborted" not in text, text


def load_study(settings: Settings) -> optuna.Study:
    name = study_name(settings, dataset_version(settings.data.root))
    return optuna.load_study(study_name=name, storage=settings.tune.storage)


def trials(settings: Settings) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or [] while it does not exist yet (or sqlite is busy)."""
    try:
        return load_study(settings).get_trials()
    except Exception:  # not created yet (KeyError), or the database locked for a moment
        return []


def wait_for(what: str, check: Callable[[], T | None], proc: subprocess.Popen[str]) -> T:
    """Poll ``check()`` until it returns something truthy; fail if ``proc`` ends first."""
    timeout = 240
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"gfm tune ended ({proc.returncode}) before {what}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no {what} within {timeout} s")


def mid_trial(
    settings: Settings, worker: str | None = None, first: int = 0
) -> Callable[[], optuna.trial.FrozenTrial | None]:
    """A check: a RUNNING trial numbered ``first`` or later that drew all its params (so it
    trains; Optuna stores each param as it is drawn, so a trial between two draws has some),
    run by ``worker`` (host:pid) when given."""
    space = settings.tune.space.flat().keys()

    def check() -> optuna.trial.FrozenTrial | None:
        for t in trials(settings):
            running = t.state == optuna.trial.TrialState.RUNNING
            if not running or t.number < first or t.params.keys() != space:
                continue
            if worker is None or t.user_attrs.get("gfm.worker") == worker:
                return t
        return None

    return check


def finished_trials(settings: Settings) -> dict[str, str]:
    """``{"trial <n>": its state, value, params and start}`` of each finished trial: a snapshot
    for ``kept`` (a finished trial is data the fault must not lose or change)."""
    return {
        f"trial {t.number}": repr((t.state, t.value, t.params, t.datetime_start))
        for t in trials(settings)
        if t.state in FINISHED
    }


def config(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
    return tuple(sorted(t.params.items()))


def mlflow_runs(settings: Settings, step: str) -> list[Any]:
    client = MlflowClient(tracking_uri=settings.tracking.uri)
    exp = client.get_experiment_by_name(settings.tracking.experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`gfm.step` = '{step}'")


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(stat.parent.name), cmdline))
    return found


def workers_of(pid: int) -> list[int]:
    """The spawned worker processes of ``gfm tune`` (not multiprocessing's resource tracker)."""
    return [p for p, cmd in children(pid) if "spawn_main" in cmd]


def group_gone(pgid: int, timeout: float = 30) -> bool:
    """Whether every process of the group has ended (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


# ------------------------------------------------------------------ SIGKILL mid-trial, resume


@dataclass
class Resumed:
    settings: Settings
    killed: int  # the number of the trial the kill interrupted
    kept_before: dict[str, str]  # finished trials before the resume (finished_trials)
    data_before: dict[str, str]
    killed_pid: int
    status: int  # of the resumed gfm tune
    lines: list[str]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """``gfm tune`` killed (SIGKILL) while its first drawn trial trains, then run again."""
    cwd = tmp_path_factory.mktemp("killed")
    settings = project(cwd)
    data_before = snapshot(settings.data.root)
    proc = start(cwd)
    running = wait_for("a drawn trial training", mid_trial(settings, first=1), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept_before = finished_trials(settings)
    assert kept_before, "the kill should come after the first (configured) trial finished"
    status, lines = gfm("tune", cwd=cwd, timeout=600)
    return Resumed(settings, running.number, kept_before, data_before, proc.pid, status, lines)


@pytest.mark.fault(
    "item 4: gfm tune killed (SIGKILL) mid-trial, then run again",
    "the resumed study finishes its 3 trials, every finished trial a different configuration",
)
def test_a_resumed_study_draws_no_configuration_twice(resumed: Resumed) -> None:
    assert resumed.status == 0, resumed.lines
    finished = [t for t in load_study(resumed.settings).get_trials() if t.state in FINISHED]
    assert len(finished) == 3
    assert len({config(t) for t in finished}) == 3, [(t.number, t.params) for t in finished]


@pytest.mark.fault(
    "item 4: gfm tune killed (SIGKILL) mid-trial, then run again",
    "the killed trial is FAIL and run again exactly once with its params; finished trials kept",
)
def test_the_killed_trial_is_failed_and_retried_once(
    resumed: Resumed, kept: Callable[..., None]
) -> None:
    assert resumed.status == 0, resumed.lines
    by_number = {t.number: t for t in load_study(resumed.settings).get_trials()}
    killed = by_number[resumed.killed]
    assert killed.state == FAIL
    retries = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == killed.params
    kept(resumed.kept_before, finished_trials(resumed.settings))  # untouched by the resume


@pytest.mark.fault(
    "item 14: gfm tune killed (SIGKILL), then run again",
    "the killed process's MLflow tune run is KILLED, the new one FINISHED; trial runs kept",
)
def test_the_killed_tune_run_is_not_left_running(resumed: Resumed) -> None:
    assert resumed.status == 0, resumed.lines
    runs = {r.data.tags.get("gfm.pid"): r for r in mlflow_runs(resumed.settings, "tune")}
    statuses = sorted(r.info.status for r in runs.values())
    assert statuses == ["FINISHED", "KILLED"], statuses
    assert runs[str(resumed.killed_pid)].info.status == "KILLED"
    trial_runs = mlflow_runs(resumed.settings, "trial")
    assert trial_runs and all(r.info.status == "FINISHED" for r in trial_runs)
    assert any(f"{resumed.killed_pid}" in line and "KILLED" in line for line in resumed.lines)


@pytest.mark.fault(
    "item 4: gfm tune killed (SIGKILL) mid-trial, then run again", "the dataset is kept"
)
def test_a_killed_and_resumed_study_keeps_the_dataset(
    resumed: Resumed, kept: Callable[..., None]
) -> None:
    assert resumed.status == 0, resumed.lines
    kept(resumed.data_before, snapshot(resumed.settings.data.root))


# ------------------------------------------------------------------ stale MLflow runs


@pytest.mark.fault(
    "item 14: RUNNING MLflow tune runs of the study, one of a dead process, one of a live one",
    "the next gfm tune marks the dead process's run KILLED and leaves the live one RUNNING",
)
def test_only_tune_runs_of_dead_processes_are_marked_killed(tmp_path: Path) -> None:
    settings = project(tmp_path)
    name = study_name(settings, dataset_version(settings.data.root))
    alive, dead = subprocess.Popen(["sleep", "600"]), subprocess.Popen(["sleep", "600"])
    tokens = {"alive": process_token(alive.pid), "dead": process_token(dead.pid)}
    dead.kill()
    dead.wait()
    host = socket.gethostname()
    tokens["elsewhere"] = tokens["dead"].replace(host, f"other-{uuid.uuid4().hex[:6]}", 1)
    exp = configure(settings.tracking)  # the experiment as gfm makes it
    client = MlflowClient(tracking_uri=settings.tracking.uri)
    ids = {}
    for label, token in tokens.items():
        tags = {"gfm.step": "tune", "gfm.study": name, "gfm.process": token}
        ids[label] = client.create_run(exp, tags=tags).info.run_id
    try:
        status, lines = gfm("tune", "--set", "tune.n_trials=1", cwd=tmp_path, timeout=600)
        assert status == 0, lines
        state = {label: client.get_run(i).info.status for label, i in ids.items()}
        # another machine's process cannot be checked from here: its run is left as it is
        assert state == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}, state
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------ Ctrl-C


@pytest.mark.fault(
    "item 14: Ctrl-C (SIGINT to the process group) while gfm tune trains a trial",
    "exit 130, one line 'interrupted: ... study kept at <storage>, rerun to resume', no "
    "traceback; the tune run KILLED; the trial failed, its retry enqueued; finished trials kept",
)
def test_ctrl_c_mid_trial_exits_130_with_one_line(
    tmp_path: Path, kept: Callable[..., None]
) -> None:
    settings = project(tmp_path)
    proc = start(tmp_path)
    running = wait_for("a drawn trial training", mid_trial(settings, first=1), proc)
    before = finished_trials(settings)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, output(tmp_path)
    lines = output(tmp_path)
    no_traceback(lines)
    (line,) = [ln for ln in lines if "interrupted" in ln.lower()]
    assert line == lines[-1]
    assert line.startswith("interrupted: ") and line.endswith(
        f"study kept at {settings.tune.storage}, rerun to resume"
    ), line
    kept(before, finished_trials(settings))
    assert [r.info.status for r in mlflow_runs(settings, "tune")] == ["KILLED"]
    # the interrupted trial is failed, and its retry waits for the next start
    by_number = {t.number: t for t in trials(settings)}
    assert by_number[running.number].state == FAIL
    (retry,) = [
        t for t in by_number.values() if t.system_attrs.get("failed_trial") == running.number
    ]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.params == by_number[running.number].params


# ------------------------------------------------------------------ two workers (PostgreSQL)


@pytest.fixture
def pg_storage() -> Iterator[str]:
    """A new PostgreSQL database for the study, dropped afterwards."""
    from gfm.ops import stack

    try:
        stack.database_exists(f"{POSTGRES}/postgres")
    except ConnectionError as err:
        message = f"needs PostgreSQL at {POSTGRES} (TEST_POSTGRES_URL): {err}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message + " -- skipped outside CI, where it fails")
    url = f"{POSTGRES}/gfm_fault_tune_{uuid.uuid4().hex[:8]}"
    stack.create_database(url)
    yield url
    stack.drop_database(url)


@pytest.mark.fault(
    "item 6: one worker of gfm tune --workers 2 killed (SIGKILL) mid-trial",
    "the other goes on, the killed trial is FAIL and retried, exit 0 with the 3 trials finished; "
    "finished trials kept",
)
def test_killing_one_of_two_workers_spares_the_other(
    tmp_path: Path, pg_storage: str, kept: Callable[..., None]
) -> None:
    settings = project(tmp_path, f"  storage: {pg_storage}\n")
    assert settings.tune.storage == pg_storage
    proc = start(tmp_path, "--workers", "2")
    host = socket.gethostname()

    def a_worker_mid_trial() -> tuple[int, optuna.trial.FrozenTrial] | None:
        for pid in workers_of(proc.pid):
            t = mid_trial(settings, worker=f"{host}:{pid}")()
            if t is not None:
                return pid, t
        return None

    victim, running = wait_for("a worker training a trial", a_worker_mid_trial, proc)
    os.kill(victim, signal.SIGKILL)
    before = finished_trials(settings)
    try:
        status = proc.wait(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = output(tmp_path)
    assert status == 0, "\n".join(lines[-40:])
    no_traceback(lines)
    by_number = {t.number: t for t in load_study(settings).get_trials()}
    assert by_number[running.number].state == FAIL
    (retry,) = [
        t for t in by_number.values() if t.system_attrs.get("failed_trial") == running.number
    ]
    assert retry.state in FINISHED and retry.params == by_number[running.number].params
    finished = [t for t in by_number.values() if t.state in FINISHED]
    assert len(finished) == 3 and len({config(t) for t in finished}) == 3
    waiting = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    assert not [t for t in by_number.values() if t.state in waiting]
    assert group_gone(proc.pid)
    kept(before, finished_trials(settings))


@pytest.mark.fault(
    "item 14: Ctrl-C while gfm tune --workers 2 starts its workers",
    "exit 130, one line, no worker traceback, no worker process left",
)
def test_ctrl_c_while_the_workers_start(tmp_path: Path, pg_storage: str) -> None:
    project(tmp_path, f"  storage: {pg_storage}\n")
    proc = start(tmp_path, "--workers", "2")
    wait_for("two workers", lambda: len(workers_of(proc.pid)) == 2, proc)
    time.sleep(1.0)  # importing torch and gfm
    os.killpg(proc.pid, signal.SIGINT)
    try:
        status = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = output(tmp_path)
    assert status == 130, lines
    no_traceback(lines)
    (line,) = [ln for ln in lines if "interrupted" in ln.lower()]
    assert line.startswith("interrupted: ") and line.endswith(
        f"study kept at {pg_storage}, rerun to resume"
    ), line
    assert group_gone(proc.pid)
