"""benchmarks/client.py in a small run: it prints one JSON object with both figures."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO


def test_client_benchmark_prints_one_json_object() -> None:
    r = subprocess.run([sys.executable, "benchmarks/client.py", "--jobs", "200", "--concurrency", "8",
                        "--batch-jobs", "2000", "--batch", "500"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=True)
    data = json.loads(r.stdout.strip())
    assert data["benchmark"] == "client" and data["add_jobs"] == 200 and data["add_many_jobs"] == 2000
    assert data["add_jobs_per_second"] > 0 and data["add_many_jobs_per_second"] > 0
    assert data["jobs_recorded"] == 2201  # the warm-up job, the adds and the batches: all recorded
