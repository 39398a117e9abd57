"""The fault-injection suite's results (issue 15): run ``tests/faults`` and tabulate it.

Runs ``pytest -m faults tests/faults --faults-csv benchmarks/results/faults.csv`` in a child
process (the suite starts real ``gfm`` processes, servers and a PostgreSQL client; nothing is
mocked), then writes ``benchmarks/results/faults.md``: the totals (cases, passed, data lost) and
the cases per issue item. The CSV has one row per case: case, fault, expected, observed, pass,
data_lost (``no`` where a case checked the data it put at risk, ``n/a`` where none was).

    python -m benchmarks.faults [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def run_suite(csv_path: Path) -> int:
    """Run the fault suite in a child pytest, writing ``csv_path``; pytest's exit status."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "faults", "tests/faults"]
    return subprocess.call([*cmd, "--faults-csv", str(csv_path)], cwd=ROOT)


def item_of(fault: str) -> str:
    """The issue item a case's fault names (``item 7: ...`` → ``7``, ``load: ...`` → ``load``)."""
    match = re.match(r"(?:item (\d+)|(load)):", fault)
    return (match.group(1) or match.group(2)) if match else "-"


def summarise(rows: list[dict[str, str]]) -> str:
    """Markdown: the totals, then cases and passes per issue item."""
    passed = sum(r["pass"] == "True" for r in rows)
    lost = sum(r["data_lost"] == "yes" for r in rows)
    checked = sum(r["data_lost"] in ("yes", "no") for r in rows)
    per_item = Counter(item_of(r["fault"]) for r in rows)
    ok_item = Counter(item_of(r["fault"]) for r in rows if r["pass"] == "True")
    lines = [
        "# Fault suite (issue 15)",
        "",
        f"**{len(rows)} cases, {passed} passed, {len(rows) - passed} failed; data lost in "
        f"{lost}** ({checked} cases checked the data they put at risk file by file).",
        "",
        "| item | cases | passed |",
        "|---|---|---|",
        *(
            f"| {item} | {per_item[item]} | {ok_item[item]} |"
            for item in sorted(
                per_item, key=lambda i: (not i.isdigit(), int(i) if i.isdigit() else 0)
            )
        ),
        "",
        "Failed cases:" if passed < len(rows) else "No case failed.",
        *(f"- `{r['case']}`: {r['observed']}" for r in rows if r["pass"] != "True"),
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the suite, write faults.csv and faults.md under ``--out``, print the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out.resolve() / "faults.csv"
    status = run_suite(csv_path)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    summary = summarise(rows)
    _write(args.out / "faults.md", summary)
    print(summary.split("\n")[2])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
