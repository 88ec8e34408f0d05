"""docs/troubleshooting.md lists messages jobmesh really prints: each fixed piece of each code span
of its tables' first column (``…`` marks the parts that vary) is in a string of the library."""

from __future__ import annotations

import ast
import re

from helpers import REPO

DOC = REPO / "docs" / "troubleshooting.md"


def library_strings() -> list[str]:
    """Every string literal and f-string of jobmesh/, a formatted part shown as ``…``, quotes dropped."""
    out = []
    for path in (REPO / "jobmesh").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                out.append("".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
    return [s.replace("'", "").replace('"', "") for s in out]


def documented() -> list[str]:
    spans = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            first = line.split(" | ")[0]
            spans += [a or b for a, b in re.findall(r"``\s*(.+?)\s*``|`([^`]+)`", first)]
    return spans


def test_every_documented_message_is_one_jobmesh_prints() -> None:
    strings = library_strings()
    spans = documented()
    assert len(spans) >= 30
    missing = []
    for span in spans:
        pieces = [p.strip().replace("'", "") for p in span.split("…") if len(p.strip()) >= 4]
        if not all(any(p in s for s in strings) for p in pieces):  # a message may be built of several strings
            missing.append(span)
    assert not missing, "documented but not printed by jobmesh: " + "; ".join(missing)
