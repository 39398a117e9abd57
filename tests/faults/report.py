"""The fault suite's results table (issue 15): one row per case of ``tests/faults``.

Every test in ``tests/faults`` declares what it does and what should happen::

    @pytest.mark.fault("item 1: a one-byte flip in a checkpoint", "exit 1, one line naming the file")
    def test_...(kept): ...

and a test that puts existing data at risk checks it with the ``kept`` fixture
(``kept(before, after)`` with two :func:`tests.faults.helpers.snapshot` s), which records whether
any file that existed before the fault was lost or changed. ``pytest tests/faults
--faults-csv PATH`` (``python -m benchmarks.faults``) writes the table: case, fault, expected,
observed (``as expected`` or the failure's first line), pass, data_lost (``no``, ``yes``, or
``n/a`` where the case puts no existing data at risk). A faults test without the marker, or whose
fault does not start with the issue item it covers (``item 7: ``) or ``load: ``, fails
collection, so the table never leaves a case out nor counts one under no item.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

COLUMNS = ("case", "fault", "expected", "observed", "pass", "data_lost")
_ROWS = pytest.StashKey[dict[str, dict[str, str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults-csv",
        default=None,
        metavar="PATH",
        help="write the fault suite's results table (case, fault, expected, observed, pass, "
        "data_lost) to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fault(fault, expected): what a fault-suite case does and what should happen (issue 15)",
    )
    config.stash[_ROWS] = {}


def _in_suite(item: pytest.Item) -> bool:
    return item.get_closest_marker("faults") is not None


_ITEMS = range(1, 15)  # issue 15's numbered items; ``load:`` is its "make run under load" check


def _labelled(fault: str) -> bool:
    """``item N: ...`` with N one of the issue's items, or ``load: ...``."""
    head, sep, _ = fault.partition(":")
    if not sep:
        return False
    if head == "load":
        return True
    word, _, number = head.partition(" ")
    return word == "item" and number.isdigit() and int(number) in _ITEMS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    suite = [i for i in items if _in_suite(i)]
    missing = [i.nodeid for i in suite if i.get_closest_marker("fault") is None]
    if missing:
        raise pytest.UsageError(
            "fault-suite tests without @pytest.mark.fault(fault, expected): " + ", ".join(missing)
        )
    unlabelled = [i.nodeid for i in suite if not _labelled(_declared(i)[0])]
    if unlabelled:
        raise pytest.UsageError(
            "fault-suite faults must start with 'item N: ' (N = 1..14, the issue's item) or "
            "'load: ': " + ", ".join(unlabelled)
        )


@pytest.fixture
def kept(record_property: Callable[[str, object], None]) -> Callable[..., None]:
    """``kept(before, after, exact=False)``: assert every file of ``before`` is in ``after``
    unchanged and record ``data_lost`` for the results table; with ``exact``, also that no file
    was added (a refused command wrote nothing)."""

    def check(before: dict[str, str], after: dict[str, str], *, exact: bool = False) -> None:
        lost = sorted(p for p, digest in before.items() if after.get(p) != digest)
        record_property("data_lost", "yes" if lost else "no")
        assert not lost, f"files lost or changed by the fault: {lost}"
        if exact:
            assert sorted(after) == sorted(before), "files added by a refused command"

    return check


def _declared(item: pytest.Item) -> tuple[str, str]:
    marker = item.get_closest_marker("fault")
    assert marker is not None  # collection refused the suite's tests without one
    args = dict(zip(("fault", "expected"), marker.args, strict=False)) | marker.kwargs
    return str(args.get("fault", "")), str(args.get("expected", ""))


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message if crash is not None else report.longrepr)
    return (text.strip().splitlines() or ["failed"])[0][:200]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    """Fill the case's row from each phase: a failure in any phase is the observation."""
    report = yield
    if not _in_suite(item):
        return report
    fault, expected = _declared(item)
    row = item.config.stash[_ROWS].setdefault(
        item.nodeid,
        {"case": item.nodeid.split("::", 1)[-1], "fault": fault, "expected": expected},
    )
    if report.failed or report.skipped:
        row.update(observed=_first_line(report), **{"pass": "False"})
    elif report.when == "call":
        row.setdefault("observed", "as expected")
        row.setdefault("pass", "True")
    row["data_lost"] = str(
        dict(report.user_properties).get("data_lost", row.get("data_lost", "n/a"))
    )
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--faults-csv")
    rows = session.config.stash.get(_ROWS, {})
    if not path or not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for nodeid in sorted(rows):
            writer.writerow({c: rows[nodeid].get(c, "") for c in COLUMNS})
    os.replace(tmp, path)
