"""jobmesh against dramatiq on Redis, measured in the same run (issue 11: at least 12x).

Both run N no-op jobs end to end on this machine, one after the other, so the machine's speed
of the moment (it varies by up to 2x here) cancels out of the ratio:

- jobmesh: one node at its defaults (16 slots, max_parallel 15, SQLite WAL, GC tuned as
  ``jobmesh node`` tunes it), jobs added with ``add_many`` in batches of 1,000 and run; as
  ``throughput.py`` measures it.
- dramatiq: its Redis broker against a ``redis-server`` started here on loopback (no
  persistence: dramatiq's usual set-up), a worker at dramatiq's defaults for this machine
  (``dramatiq`` CLI: one process per core, 8 threads each), messages sent with ``actor.send``
  from this process; done when the broker holds no message (acknowledged ones are removed).

Needs ``pip install 'dramatiq[redis]'`` and Debian's ``redis-server``; without them it prints
one JSON object with an ``error``. Prints ONE JSON object.

    .venv/bin/python benchmarks/dramatiq_compare.py [--jobs 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import load_average, quiet_logs, run_on_fresh_node  # first: puts the repo on sys.path

from jobmesh.ports import free_port_pair
from throughput import run as throughput_run

TASKS = '''
import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url={url!r}))


@dramatiq.actor(max_retries=0)
def noop():
    return None
'''


def jobmesh_run(args: argparse.Namespace) -> dict[str, Any]:
    """One ``throughput.py`` run at the node defaults (its measure, not a copy of it)."""
    tp = argparse.Namespace(jobs=args.jobs, batch=1000, capacity=16, max_parallel=15, no_gc_tune=False)
    return run_on_fresh_node(throughput_run, tp)


def dramatiq_run(args: argparse.Namespace, tmp: Path, url: str) -> dict[str, Any]:
    import redis

    from dramatiq.brokers.redis import RedisBroker
    import dramatiq

    client = redis.Redis.from_url(url)
    client.flushall()
    (tmp / "bench_tasks.py").write_text(TASKS.format(url=url))
    log = open(tmp / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "bench_tasks"], cwd=tmp, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(tmp)})
    try:
        broker = RedisBroker(url=url)
        dramatiq.set_broker(broker)

        @dramatiq.actor(actor_name="noop", max_retries=0)
        def remote() -> None:  # the worker's actor, by name: this process only sends
            return None

        def pending() -> int:
            return int(client.hlen("dramatiq:default.msgs"))

        remote.send()  # warm-up: wait until the worker took it (it is up)
        deadline = time.monotonic() + 60
        while pending():
            if time.monotonic() > deadline:
                raise SystemExit("the dramatiq worker did not start within 60 s")
            time.sleep(0.01)
        n = args.jobs
        t0 = time.perf_counter()
        for _ in range(n):
            remote.send()
        deadline = time.monotonic() + 600
        while pending():
            if time.monotonic() > deadline:
                raise SystemExit("dramatiq did not finish within 600 s")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        return {"jobs_per_second": round(n / wall, 1)}
    finally:
        try:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=3, help="rounds, each jobmesh then dramatiq")
    args = p.parse_args()
    quiet_logs()
    server = shutil.which("redis-server")
    try:
        import dramatiq  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        server = None
    if server is None:
        print(json.dumps({"benchmark": "dramatiq_compare",
                          "error": "needs redis-server (Debian: apt-get install redis-server) and "
                                   "pip install 'dramatiq[redis]'"}))
        return 1
    port = free_port_pair()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="jobmesh-dramatiq-") as d:
        tmp = Path(d)
        redis_proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            rounds = []
            for _ in range(args.repeat):
                jm = jobmesh_run(args)["jobs_per_second"]
                dq = dramatiq_run(args, tmp, url)["jobs_per_second"]
                rounds.append({"jobmesh": jm, "dramatiq": dq, "ratio": round(jm / dq, 2)})
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
    ratios = [r["ratio"] for r in rounds]
    print(json.dumps({
        "benchmark": "dramatiq_compare",
        "jobs": args.jobs,
        "rounds": rounds,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "target_ratio": 12,
        "load_average_1m": load_average(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
