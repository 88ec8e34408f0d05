"""Instructions per job of one node at its defaults, counted by valgrind's callgrind: a figure that
does not move with the machine's speed of the moment (here it swings by 2x), so it shows what a
change to the hot path is worth where jobs/s cannot. Prints ONE JSON object.

``throughput.py`` (16 slots, max_parallel 15, 1,000-job ``add_many`` batches, GC tuned as
``jobmesh node`` does) runs under callgrind twice, with ``--small`` and ``--large`` jobs; the
difference of the two totals over the difference of the jobs leaves out start-up and shutdown.
Every thread counts (SQLite runs on the loop's thread and the writer thread). ``of_which`` splits
the same difference by what ``callgrind_annotate`` gives inclusively: SQLite's statements
(``sqlite3_step``) and the cyclic garbage collector (``gc_collect_main``); the rest is mostly the
interpreter running jobmesh. Kernel time (the WAL's writes) is not counted: jobs/s still has the
last word. About a minute; needs Debian's ``valgrind`` (it prints an ``error`` without it).

    .venv/bin/python benchmarks/instructions.py [--small 5000] [--large 15000]

Compare two checkouts by running it in each (it measures the checkout it lies in); runs of one
checkout agree within about 1 %.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {"sqlite": "sqlite3_step", "gc": "gc_collect_main"}


def totals(annotated: str) -> dict[str, int]:
    """``callgrind_annotate --inclusive=yes`` text -> the program's total and each part's (the
    largest inclusive count of a function of that name: recursion counts it once)."""
    out = {"total": 0, **{k: 0 for k in PARTS}}
    for line in annotated.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*)$", line)
        if m is None:
            continue
        count, what = int(m.group(1).replace(",", "")), m.group(2)
        if what.startswith("PROGRAM TOTALS"):
            out["total"] = count
            continue
        for part, fn in PARTS.items():
            if re.search(rf"[:\s]{fn}(?:'\d+)?\s", what + " ") and count > out[part]:
                out[part] = count
    return out


def measure(jobs: int, work: Path) -> dict[str, int]:
    out_file = work / f"callgrind.{jobs}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", sys.executable,
                    str(HERE / "throughput.py"), "--capacity", "16", "--max-parallel", "15", "--repeat", "1",
                    "--jobs", str(jobs)], check=True, capture_output=True, timeout=1800)
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out_file)], check=True,
                               capture_output=True, text=True, timeout=300).stdout
    return totals(annotated)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", type=int, default=5000)
    p.add_argument("--large", type=int, default=15000)
    args = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print(json.dumps({"benchmark": "instructions", "error": "needs valgrind (Debian: apt-get install valgrind)"}))
        return 1
    if args.large <= args.small:
        print(json.dumps({"benchmark": "instructions", "error": "--large must be more jobs than --small"}))
        return 1
    with tempfile.TemporaryDirectory(prefix="jobmesh-instructions-") as d:
        small, large = measure(args.small, Path(d)), measure(args.large, Path(d))
    n = args.large - args.small
    print(json.dumps({
        "benchmark": "instructions",
        "jobs": [args.small, args.large],
        "capacity": 16,
        "max_parallel": 15,
        "instructions_per_job": round((large["total"] - small["total"]) / n),
        "of_which": {part: round((large[part] - small[part]) / n) for part in PARTS},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
