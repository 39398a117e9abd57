"""The fault suite's summary (benchmarks/faults.py): totals and cases per issue item."""

from __future__ import annotations

from benchmarks.faults import item_of, summarise


def _row(case: str, fault: str, ok: bool, lost: str = "n/a") -> dict[str, str]:
    return {
        "case": case,
        "fault": fault,
        "expected": "",
        "observed": "as expected" if ok else "assert 1 == 2",
        "pass": str(ok),
        "data_lost": lost,
    }


def test_item_of_reads_the_item_a_fault_names() -> None:
    assert item_of("item 7: SIGKILL of gfm generate") == "7"
    assert item_of("load: a slow Prefect API") == "load"
    assert item_of("a fault of no item") == "-"


def test_the_summary_counts_passes_losses_and_items() -> None:
    rows = [
        _row("a", "item 1: flip", True, "no"),
        _row("b", "item 1: nan", False, "yes"),
        _row("c", "item 10: lock", True),
    ]
    text = summarise(rows)
    assert "**3 cases, 2 passed, 1 failed; data lost in 1** (2 cases checked" in text
    assert "| 1 | 2 | 1 |" in text and "| 10 | 1 | 1 |" in text
    assert text.index("| 1 |") < text.index("| 10 |")  # items in number order
    assert "- `b`: assert 1 == 2" in text


def test_a_fault_must_name_the_issue_item_it_covers() -> None:
    from tests.faults.report import _labelled

    assert _labelled("item 7: SIGKILL of gfm generate") and _labelled("load: a slow API")
    assert not _labelled("item 15: not an item of the issue")
    assert not _labelled("SIGKILL of gfm generate") and not _labelled("item x: y")
