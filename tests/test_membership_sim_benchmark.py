"""benchmarks/membership_sim.py in quick mode: it runs, prints one JSON object of the documented shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("msgs_sent_per_node_s", "msgs_recv_per_node_s", "bytes_sent_per_node_s", "bytes_recv_per_node_s",
           "cpu_per_node_pct")


def test_quick_run_prints_one_json_object_with_both_protocols() -> None:
    out = subprocess.run([sys.executable, "benchmarks/membership_sim.py", "--sizes", "10", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["benchmark"] == "membership_sim" and data["quick"] is True
    assert set(data["results"]) == {"heartbeat", "swim"}
    for proto, by_size in data["results"].items():
        r = by_size["10"]
        assert r["nodes"] == 10 and r["mode"] == "full" and r["figures"] == "all measured, over every node"
        assert 0 < r["join_convergence_s"] < 2 and 1 < r["failure_detection_s"] < 6
        for window in ("steady", "during_changes"):
            assert set(r[window]) == set(FIGURES)
    hb, swim = data["results"]["heartbeat"]["10"], data["results"]["swim"]["10"]
    assert hb["steady"]["msgs_sent_per_node_s"] == 18.0  # 9 subscribers, 2 heartbeats a second
    assert swim["steady"]["msgs_sent_per_node_s"] <= 5  # a ping and an ack per period
    assert hb["heartbeat_bytes"] > swim["mean_message_bytes"]
