"""The PostgreSQL side of a study that several workers share: the claim lock and orphaned trials."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SharedStudy"]

log = logging.getLogger("gfm.tune")


class SharedStudy:
    """The PostgreSQL side of a study shared by workers: the claim lock, and orphaned trials.

    ``acquire``/``release``: an advisory lock per study, held from counting the study's trials
    until this worker's new trial is RUNNING (a worker killed while holding it loses its
    connection, which releases it). ``fail_orphans``: a worker killed between creating its
    trial and the trial's first heartbeat leaves a RUNNING trial that Optuna never finds stale;
    one seen without a heartbeat for the whole grace period is failed here and handed to the
    retry callback. The lock exists on PostgreSQL only (other storage has one process); orphans
    are failed on sqlite too, where they come from a run that was killed (nothing else can be
    running on a one-process storage), so that the next run does not wait for them forever.
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
