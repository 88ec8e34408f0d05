"""``python -m jobmesh.sim``: whole jobmesh nodes on a simulated network and clock.

    python -m jobmesh.sim --seeds 200            # seeds 1..200; exit 0 if no invariant broke
    python -m jobmesh.sim --seeds 50-80 --jobs 2 # a range, on two processes
    python -m jobmesh.sim --seed 17              # replay one seed exactly, with its trace
    python -m jobmesh.sim --plant forget-before-ack --seeds 200   # must find it: exits 1, prints the seed
    python -m jobmesh.sim --list-plants

The last line printed is one JSON object: ``{"seeds", "violations", "simulated_s", "wall_s", ...}``.
A seed replays bit for bit: the same seed, plant and options give the same run (string
hashing is fixed for that: the command re-executes itself with ``PYTHONHASHSEED=0``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from ..plants import KNOWN


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if hi:
            out += list(range(int(lo), int(hi) + 1))
        elif len(text.split(",")) == 1 and "-" not in text:
            out += list(range(1, int(lo) + 1))  # "--seeds 200" means seeds 1..200
        else:
            out.append(int(lo))
    return out


def _run(args: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    from .harness import SimConfig, Simulation

    seed, opts = args
    r = Simulation(SimConfig(seed=seed, **opts)).run()
    out = r.to_json()
    out["trace"] = r.trace
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, "-m", "jobmesh.sim", *argv], env)
    p = argparse.ArgumentParser(prog="python -m jobmesh.sim", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, help="run (replay) this one seed and print its trace")
    p.add_argument("--seeds", help="N (seeds 1..N), A-B, or a list: 3,7,9")
    p.add_argument("--plant", choices=sorted(KNOWN), help="plant a known bug; exits 1 once a seed finds it")
    p.add_argument("--list-plants", action="store_true", help="print the plant names, one a line")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--duration", type=float, default=40.0, help="simulated seconds of workload and faults")
    p.add_argument("--rate", type=float, default=2.0, help="workload operations per simulated second")
    p.add_argument("--no-faults", action="store_true", help="no nemesis (the workload only)")
    p.add_argument("--delays", type=float, default=0.0,
                   help="share of adds delayed 0.2-10 s (queues then defer after 3 s, windows of 8)")
    p.add_argument("--jobs", type=int, default=1, help="processes to run seeds on")
    p.add_argument("--trace", type=int, default=60, help="trace lines shown for a violation")
    args = p.parse_args(argv)
    if args.list_plants:
        for name in sorted(KNOWN):
            print(name)
        return 0
    if args.seed is None and args.seeds is None:
        p.error("give --seed N or --seeds N")
    seeds = [args.seed] if args.seed is not None else _seeds(args.seeds)
    opts = {"nodes": args.nodes, "duration": args.duration, "job_rate": args.rate, "faults": not args.no_faults,
            "delays": args.delays,
            "plant": args.plant, "trace_tail": max(args.trace, 1) if args.seed is None else 400}
    t0 = time.monotonic()
    simulated = 0.0
    violations: list[dict[str, Any]] = []
    ran = 0
    work = [(s, opts) for s in seeds]
    pool = multiprocessing.get_context("fork").Pool(args.jobs) if args.jobs > 1 and len(seeds) > 1 else None
    results = pool.imap(_run, work) if pool is not None else map(_run, work)
    try:
        for res in results:
            ran += 1
            simulated += res["simulated_s"]
            if args.seed is not None:
                for line in res["trace"][-args.trace * 4:]:
                    print(line)
            if not res["ok"]:
                violations.append(res)
                print(f"seed {res['seed']}: {res['violation']}: {res['detail']}", flush=True)
                if args.seed is None:
                    for line in res["trace"][-args.trace:]:
                        print("   " + line)
                plant = f" --plant {args.plant}" if args.plant else ""
                print(f"replay: python -m jobmesh.sim --seed {res['seed']}{plant}"
                      f"{'' if args.duration == 40.0 else f' --duration {args.duration:g}'}"
                      f"{'' if args.rate == 2.0 else f' --rate {args.rate:g}'}"
                      f"{f' --delays {args.delays:g}' if args.delays else ''}"
                      f"{' --no-faults' if args.no_faults else ''}", flush=True)
                if args.plant:
                    break
    finally:
        if pool is not None:
            pool.terminate()
    summary = {"seeds": ran, "violations": len(violations), "simulated_s": round(simulated, 1),
               "wall_s": round(time.monotonic() - t0, 1)}
    if args.plant:
        summary["plant"] = args.plant
        summary["found_at"] = violations[0]["seed"] if violations else None
    if violations and not args.plant:
        summary["failed_seeds"] = [v["seed"] for v in violations]
    print(json.dumps(summary))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
