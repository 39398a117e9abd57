"""The side of a study that workers share: the claim lock, orphaned and dead workers' trials.

A process is named by a token, ``host|boot id|pid namespace|pid|start time`` (``process_token``),
recorded on each trial (user attribute ``gfm.process``) and on each MLflow run of tuning (tag
``gfm.process``). ``process_gone`` tells from a token whether that process has ended, when it
can: only for a process of this machine, this boot and this pid namespace (another machine's is
known dead only by its trial's heartbeat); a pid reused by a later process does not pass for the
recorded one, since its start time differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "PROCESS_ATTR",
    "WORKER_ATTR",
    "NoInterruptedTrial",
    "SharedStudy",
    "process_gone",
    "process_token",
    "retry_interrupted",
]

log = logging.getLogger("gfm.tune")
WORKER_ATTR = "gfm.worker"  # host:pid of the process that ran a trial
PROCESS_ATTR = "gfm.process"  # its process_token: whether it still runs


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid``; None: no such process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]


def _machine() -> list[str]:
    """This process's host, boot id and pid namespace ("" where the system has no /proc)."""
    ns = ""
    with contextlib.suppress(OSError):
        ns = os.readlink("/proc/self/ns/pid")
    return [socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), ns]


def process_token(pid: int | None = None) -> str:
    """``host|boot id|pid namespace|pid|start time`` of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    stat = _stat(pid)
    return "|".join([*_machine(), str(pid), stat[1] if stat else ""])


def process_gone(token: str | None) -> bool:
    """Whether the process of ``token`` (``process_token``) has ended.

    Ended: it no longer exists, is a zombie, or its pid now belongs to a process started later.
    False when this cannot be told here: a token of another machine, boot or pid namespace, or
    no token.
    """
    parts = (token or "").split("|")
    if len(parts) != 5 or not parts[3].isdigit() or parts[:3] != _machine():
        return False
    pid, start = int(parts[3]), parts[4]
    if pid == os.getpid():
        return False
    if not Path("/proc/self/stat").exists():  # no /proc: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False
    stat = _stat(pid)
    return stat is None or stat[0] == "Z" or (bool(start) and stat[1] != start)


class SharedStudy:
    """The side of a study shared by workers: the claim lock, orphaned and dead workers' trials.

    ``acquire``/``release``: an advisory lock per study, held from counting the study's trials
    until this worker's new trial is RUNNING (a worker killed while holding it loses its
    connection, which releases it). ``fail_orphans``: a worker killed between creating its
    trial and the trial's first heartbeat leaves a RUNNING trial that Optuna never finds stale;
    one seen without a heartbeat for the whole grace period is failed here and handed to the
    retry callback. The lock exists on PostgreSQL only (other storage has one process); orphans
    are failed on sqlite too, where they come from a run that was killed (nothing else can be
    running on a one-process storage), so that the next run does not wait for them forever.
    ``fail_dead``: a RUNNING trial whose process (``gfm.process``) is known to have ended is
    failed and retried at once, without waiting out its heartbeat.
    """

    def __init__(self, storage: str | None, study: Any, grace_s: float) -> None:
        self._engine = None
        self._locking = (storage or "").startswith("postgresql")
        if self._locking or (storage or "").startswith("sqlite"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(storage, poolclass=NullPool)
        self._study = study
        digest = hashlib.sha256(f"gfm-claim/{study.study_name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._grace_s = grace_s
        self._first_seen: dict[int, float] = {}  # trial number -> when first seen orphaned
        self._conn: Any = None

    def acquire(self) -> None:
        """Take the study's claim lock (PostgreSQL; a no-op on other storage)."""
        if not self._locking or self._conn is not None:
            return
        from sqlalchemy import text

        self._conn = self._engine.connect()
        self._conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._conn.commit()

    def release(self) -> None:
        """Give the claim lock back."""
        if self._conn is None:
            return
        from sqlalchemy import text

        conn, self._conn = self._conn, None
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            conn.commit()
        finally:
            conn.close()

    def fail_orphans(self, retry: Callable[[Any, Any], None] | None) -> None:
        """Fail RUNNING trials that never had a heartbeat for the grace period; retry them.

        ``retry(study, trial)`` is Optuna's retry callback (the study's FrozenTrial).
        """
        if self._engine is None or (self._locking and self._conn is None):
            return  # on PostgreSQL only under the claim lock
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState
        from sqlalchemy import text

        # Optuna's schema: trials (state enum by name), trial_heartbeats, studies
        orphaned = text(
            "SELECT t.number FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :name AND t.state = 'RUNNING' "
            "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)"
        )
        name = self._study.study_name
        if self._conn is not None:
            seen = {int(n) for (n,) in self._conn.execute(orphaned, {"name": name})}
            self._conn.commit()
        else:
            with self._engine.connect() as conn:
                seen = {int(n) for (n,) in conn.execute(orphaned, {"name": name})}
        now = time.monotonic()
        self._first_seen = {n: self._first_seen.get(n, now) for n in seen}
        stale = {n for n, t0 in self._first_seen.items() if now - t0 > self._grace_s}
        for trial in self._study.get_trials(deepcopy=False):
            if trial.number not in stale:
                continue
            try:
                self._study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # it finished after all
            log.warning("trial %d: its worker died before its first heartbeat", trial.number)
            if retry is not None:
                retry(self._study, self._study._storage.get_trial(trial._trial_id))

    def fail_dead(self, retry: Callable[[Any, Any], None] | None) -> list[int]:
        """Fail the RUNNING trials whose process has ended (``process_gone``); retry them.

        On PostgreSQL only under the claim lock (two workers would retry one trial twice).

        Returns:
            The numbers of the trials failed.
        """
        if self._locking and self._conn is None:
            return []
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        failed = []
        for trial in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            token = trial.user_attrs.get(PROCESS_ATTR)
            if not process_gone(token):
                continue
            try:
                self._study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            log.warning(
                "trial %d: its worker %s is gone (killed?); failed, to run again",
                trial.number,
                trial.user_attrs.get(WORKER_ATTR, "?"),
            )
            failed.append(trial.number)
            if retry is not None:
                retry(self._study, self._study._storage.get_trial(trial._trial_id))
        return failed


def retry_interrupted(study: Any, trial_id: int | None, retry: Callable[[Any, Any], None]) -> None:
    """Fail the trial a Ctrl-C interrupted, if Optuna did not, and enqueue its retry.

    As for a worker that died: its parameters run again on the next start (``tune.max_retry``).
    """
    from optuna.trial import TrialState

    if trial_id is None:
        return
    trial = study._storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:
        study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        trial = study._storage.get_trial(trial_id)
    if trial.state == TrialState.FAIL:
        retry(study, trial)


class NoInterruptedTrial(logging.Filter):
    """Drops Optuna's report of a trial failed by Ctrl-C: a traceback, then its value.

    The command says in one line that it was interrupted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._then_value = False

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the two records of a trial a KeyboardInterrupt failed."""
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self._then_value = True
            return False
        if self._then_value and "failed with value" in record.getMessage():
            self._then_value = False
            return False
        return True
