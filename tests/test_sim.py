"""Deterministic simulation (issue 10): whole nodes on a simulated network and virtual clock.

The CI set (``test_ci_seeds``) runs as many seeds as fit in about three minutes on two
cores; the others check that the simulator is exact (a seed replays bit for bit) and has
teeth (each planted bug is found).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import background
from jobmesh.plants import KNOWN
from jobmesh.sim.harness import SimConfig, Simulation, run_seed
from jobmesh.sim.loop import NodeRun, SimLoop, SimulationStuck

REPO = Path(__file__).resolve().parent.parent

# CI: seeds 1..CI_SEEDS and the regression seeds at the CLI's defaults (40 s of workload and faults,
# healing, 20 s stable; ~70 simulated s a seed), on two processes: under 3 minutes on two quiet
# cores and over 200 simulated minutes of mesh time in total.
CI_SEEDS = int(os.environ.get("JOBMESH_SIM_CI_SEEDS", "180"))

# Seeds a bug was found with, kept as regression cases (see the closing notes of issue 10).
# 239: a clock set back 30 s, then kill -9 and restart: the restart's incarnation (its start
# time) was below its dead predecessor's, whose name its own join messages kept alive; the
# mesh refused it for good. Fixed: incarnations grow per data directory; proof of life counts
# only the member's own incarnation.
# 1073: a job offered to an unreachable target, stopped at home, then retried: the stop left its
# old attempt in flight, the retry's offer was refused with a log line only, and the record said
# "handed off" with nobody holding it. Fixed three ways: a stop recorded at home withdraws the
# attempt; a refused offer comes home; the origin's consistency check brings home any record
# handed off that the protocol does not hold (handoff_orphaned).
# 283: a leader's clock set 30 s ahead fired the next 30 s of slots early (the missed ones coalesced
# into one fire), then a jump back put its offset at 0: the schedule-fires check took the mesh for
# one with no skew and expected slots it had rightly never fired again. Fixed in the invariant: the
# check starts as far after healing as any clock was ever ahead. Found once the nemesis stopped
# dying at its first lossy-link fault (until then most seeds drew a handful of faults).
REGRESSION_SEEDS: list[int] = [239, 283, 1073, 1253]  # 1253: the same as 1073

# Each plant with the first seed that finds it through the CLI at --duration 20 (the CLI finds
# each within 200 seeds at its defaults too).
PLANT_SEEDS = {
    "forget-before-ack": 3,  # 1 before issue 14 (the blob hooks in the transfer path change the schedule)
    "no-handoff-resend": 1,
    "run-superseded-copy": 9,
    "leader-not-oldest": 1,
    "no-seed-reprobe": 11,
}


def _cli(*args: str, timeout: float = 300) -> tuple[int, str, dict]:
    p = subprocess.run([sys.executable, "-m", "jobmesh.sim", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr, json.loads(p.stdout.strip().splitlines()[-1])


def test_the_virtual_loop_jumps_to_the_next_timer_and_runs_a_paused_run_later() -> None:
    import asyncio
    import contextvars

    from jobmesh.sim.loop import CURRENT_RUN

    loop = SimLoop()
    seen: list[tuple[str, float]] = []
    run = NodeRun("a", 1)
    ctx = contextvars.Context()
    ctx.run(CURRENT_RUN.set, run)

    async def ticking() -> None:
        for _ in range(3):
            await asyncio.sleep(10)
            seen.append(("a", loop.time()))

    async def main() -> None:
        loop.create_task(ticking(), context=ctx)
        await asyncio.sleep(15)
        run.paused = True
        await asyncio.sleep(20)  # a's timer at 20 fires now, frozen until the resume
        loop.resume(run)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        run.alive = False  # killed: its last timer is dropped
        await asyncio.sleep(100)

    loop.run_until_complete(main())
    loop.close()
    assert seen == [("a", 10.0), ("a", 35.0)]
    assert run.dropped >= 1


def test_a_simulation_with_nothing_scheduled_is_stuck_not_hung() -> None:
    loop = SimLoop()
    with pytest.raises(SimulationStuck):
        loop.run_until_complete(_forever(loop))
    loop.close()


async def _forever(loop: SimLoop) -> None:
    await loop.create_future()


def test_the_same_seed_gives_the_same_trace_twice() -> None:
    a = run_seed(5, duration=15)
    other = run_seed(6, duration=15)
    b = run_seed(5, duration=15)
    assert a.ok and b.ok and other.ok, (a.to_json(), b.to_json(), other.to_json())
    assert a.digest == b.digest and a.trace == b.trace
    assert other.digest != a.digest
    assert a.faults > 0 and a.accepted > 0


def test_a_seed_replays_exactly_in_another_process() -> None:
    """The CLI fixes string hashing (PYTHONHASHSEED=0), so a seed is the same run anywhere."""
    outs = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-m", "jobmesh.sim", "--seeds", "3-3", "--duration", "10"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        outs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert outs[0]["simulated_s"] == outs[1]["simulated_s"]
    in_process = [Simulation(SimConfig(seed=3, duration=10)).run() for _ in range(2)]
    assert in_process[0].digest == in_process[1].digest


def test_the_nemesis_draws_faults_until_the_workload_ends() -> None:
    """Seeds 3 and 4 drew a lossy link first: the nemesis raised (``call_later`` with keywords)
    and drew no fault after it, and every later lossy draw ended the fault schedule of its seed
    the same way; the runs passed, testing a fraction of what they claimed (one fault in 40 s)."""
    for seed in (3, 4):
        sim = Simulation(SimConfig(seed=seed))
        result = sim.run()
        assert result.ok, result.to_json()
        assert result.faults >= 15, result.faults  # one every 0.5-3 s for 40 s


def test_a_harness_part_that_dies_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A nemesis (or workload, or checker) that dies of an error is a failed run, not a pass."""
    async def broken(self: Simulation) -> None:
        await asyncio.sleep(1.0)
        raise TypeError("a bug in the nemesis")

    monkeypatch.setattr(Simulation, "_nemesis", broken)
    result = Simulation(SimConfig(seed=1, duration=5)).run()
    assert not result.ok and result.violation == "harness-alive", result.to_json()
    assert "a bug in the nemesis" in (result.detail or "")


@pytest.mark.parametrize("plant", sorted(KNOWN))
def test_each_planted_bug_is_found(plant: str) -> None:
    seed = PLANT_SEEDS[plant]
    code, out, last = _cli("--plant", plant, "--seeds", f"{seed}-{seed}", "--duration", "20")
    assert code == 1 and last["found_at"] == seed, out[-3000:]


def test_without_a_plant_those_seeds_pass() -> None:
    seeds = ",".join(f"{s}-{s}" for s in sorted(set(PLANT_SEEDS.values())))
    code, out, last = _cli("--seeds", seeds, "--duration", "20", "--jobs", "2")
    assert code == 0 and last["violations"] == 0, out[-3000:]


def test_the_cli_lists_plants_and_exits_1_with_the_seed_for_a_plant() -> None:
    p = subprocess.run([sys.executable, "-m", "jobmesh.sim", "--list-plants"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == sorted(KNOWN)
    p = subprocess.run([sys.executable, "-m", "jobmesh.sim", "--plant", "leader-not-oldest", "--seeds", "200",
                        "--duration", "20"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["violations"] == 1 and last["found_at"] is not None
    assert f"replay: python -m jobmesh.sim --seed {last['found_at']} --plant leader-not-oldest" in p.stdout


def test_delayed_jobs_under_faults_and_no_repair_without_a_fault() -> None:
    """A share of the adds delayed, queues deferring after 3 s with windows of 8: the on-disk and
    full-window paths under every fault; with the nemesis off, no repair at all. Seed 4 with the
    nemesis off found the watchdog taking delayed jobs behind a full window for lost (CI had seen
    ``watchdog_requeue == 4`` in test_job_options); seed 100 a round delivered twice dropping a copy
    accepted in between (test_transfer_protocol has it as a pure test)."""
    for extra, seeds in ((["--no-faults"], "1-5"), ([], "1-4,100")):
        p = subprocess.run([sys.executable, "-m", "jobmesh.sim", "--seeds", seeds, "--delays", "0.3",
                            "--jobs", "2", *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
        last = json.loads(p.stdout.strip().splitlines()[-1])
        assert p.returncode == 0 and last["violations"] == 0, p.stdout[-4000:] + p.stderr[-2000:]


def ci_seeds() -> str:
    return ",".join([f"1-{CI_SEEDS}"] + [f"{s}-{s}" for s in REGRESSION_SEEDS])


@pytest.mark.timeout(600)
def test_ci_seeds() -> None:
    """The CI set: no invariant breaks in any seed (the regression seeds replayed exactly as the CLI
    found them, among them), and enough simulated mesh time is covered. It runs in the background
    from the start of the suite (tests/background.py) and this test, run last, collects it."""
    argv = background.sim_argv(ci_seeds())
    run = background.start("ci-seeds", argv, niced=True) if background.enabled() else None
    if run is not None:
        code, out, err = run.result(timeout=580)
    else:
        p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=580)
        code, out, err = p.returncode, p.stdout, p.stderr
    assert out.strip(), f"the simulator printed nothing (exit {code}): {err[-4000:]}"
    last = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and last["violations"] == 0, out[-6000:] + err[-2000:]
    assert last["seeds"] == CI_SEEDS + len(REGRESSION_SEEDS)
    if CI_SEEDS >= 170:
        assert last["simulated_s"] >= 200 * 60, last
