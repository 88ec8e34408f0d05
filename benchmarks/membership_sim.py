"""Membership at scale, in simulation: all-to-all heartbeats against SWIM, at 10, 100 and 1,000 nodes.

Prints one JSON object. For each protocol and size, the real cores (``membership.Membership``
fed its own ``heartbeat_body()`` through ``on_heartbeat``; ``swim.Swim``) run on the seeded
simulated network of ``jobmesh.sim`` (0.5 ms ± 0.5 ms links, no loss) and a virtual clock:

- ``join_convergence_s``: a new node joins through a random member; simulated seconds until
  every node's member set includes it.
- ``failure_detection_s``: a member is killed (kill -9: silent); seconds until every other
  node has dropped it.
- ``steady``: messages and bytes sent and received per node per second with nothing
  happening (message sizes: msgpack body + type + version frame, as ``wire.encode`` frames
  them), and the CPU the node's core spends (core calls + decoding, wall time, % of one core).
- ``during_changes``: the same from the join until the failure was detected everywhere.

All-to-all heartbeats cost every node O(n) heartbeats per interval, each O(n) bytes: O(n²)
work per interval in one Python process. So at sizes above ``--full-max`` the heartbeat
cluster runs *sampled*: ``observers`` nodes (the seed, the joiner and a random sample) run
their core and receive every heartbeat, exactly as in the full run; the other nodes publish a
real-size heartbeat (their member list, every age at the timeout: they vouch for nobody)
and process nothing. Without loss that is exact for what an observer sees: a newcomer becomes
a member at an observer when the seed's gossip and then the newcomer's own heartbeat reach it,
and a dead node is dropped a timeout after its last heartbeat reached it, neither of which
depends on other receivers. Times are then the maximum over the observers, received
figures and CPU are measured at the observers, and sent figures are extrapolated (each node
publishes one heartbeat per interval, sent once per subscriber: (n - 1) copies of the measured
size). The JSON says, per figure, which are measured and which extrapolated.

    python benchmarks/membership_sim.py [--sizes 10,100,1000] [--protocols heartbeat,swim]
                                        [--seed 1] [--quick] [--full-max 20] [--observers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobmesh.sim import LinkSpec  # noqa: E402
from jobmesh.sim.membership import HeartbeatCluster, NodeState, SwimCluster  # noqa: E402

INTERVAL, TIMEOUT = 0.5, 2.5  # the node's defaults ([discovery] heartbeat_interval, heartbeat_timeout)
LINK = LinkSpec(latency=0.0005, jitter=0.0005)


def per_node(cluster: Any, names: list[str], seconds: float, cpu0: dict[str, float]) -> dict[str, float]:
    """Per node and second over ``seconds``: messages and bytes each way, and core CPU in % of a core."""
    stats = [cluster.net.stats(n) for n in names]
    k = len(names) * seconds
    cpu = [cluster.nodes[n].cpu - cpu0.get(n, 0.0) for n in names if cluster.nodes[n].core is not None]
    return {
        "msgs_sent_per_node_s": round(sum(s.sent_msgs for s in stats) / k, 2),
        "msgs_recv_per_node_s": round(sum(s.recv_msgs for s in stats) / k, 2),
        "bytes_sent_per_node_s": round(sum(s.sent_bytes for s in stats) / k, 1),
        "bytes_recv_per_node_s": round(sum(s.recv_bytes for s in stats) / k, 1),
        "cpu_per_node_pct": round(100 * mean(cpu) / seconds, 3) if cpu else None,
    }


def cpu_snapshot(cluster: Any) -> dict[str, float]:
    return {name: node.cpu for name, node in cluster.nodes.items()}


class Watch:
    """Times, per node, the first moment a condition on its core holds (checked after every call)."""

    def __init__(self, cluster: Any, nodes: list[str], cond: Any) -> None:
        self.cluster, self.cond = cluster, cond
        self.waiting = set(nodes)
        self.at: dict[str, float] = {}
        cluster.on_call.append(self)
        for name in sorted(self.waiting):  # some may hold already
            self(cluster.nodes[name], cluster.now)

    def __call__(self, node: NodeState, now: float) -> None:
        if node.name in self.waiting and node.core is not None and self.cond(node):
            self.waiting.discard(node.name)
            self.at[node.name] = now

    def done(self) -> bool:
        return not self.waiting

    def close(self) -> None:
        self.cluster.on_call.remove(self)


def experiment(protocol: str, n: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    t_wall = time.perf_counter()
    rng = random.Random(seed)
    names = [f"n{i:04d}" for i in range(n)]
    sampled = protocol == "heartbeat" and n > args.full_max
    quick = args.quick
    if protocol == "heartbeat":
        cluster: Any = HeartbeatCluster(seed, link=LINK, interval=INTERVAL, timeout=TIMEOUT)
        if sampled:
            k = args.observers or (20 if n <= 200 else 3)
            if quick:
                k = min(k, 3)
            observers = sorted(rng.sample(names, k))
            cluster.form(names, observers=observers)
        else:
            observers = names
            cluster.form(names)
    else:
        cluster = SwimCluster(seed, link=LINK, period=INTERVAL)
        cluster.form(names)
        observers = names
    start_sim = cluster.now
    cluster.run_for(2 * INTERVAL)  # the views formed settle (CHANGED), probes get going

    # steady state
    steady_s = 1.0 if quick or sampled else args.steady
    cluster.net.reset_stats()
    cpu0 = cpu_snapshot(cluster)
    cluster.run_for(steady_s)
    steady = per_node(cluster, observers, steady_s, cpu0)
    hb_size = None
    if protocol == "heartbeat":
        hb_size = cluster.body_size(names[-1] if not sampled else next(x for x in names if x not in observers))
        if sampled:  # sent figures: each heartbeat goes once to each of the n - 1 subscribers
            steady["msgs_sent_per_node_s"] = round((n - 1) / INTERVAL, 2)
            steady["bytes_sent_per_node_s"] = round(hb_size * (n - 1) / INTERVAL, 1)

    # a node joins
    cluster.net.reset_stats()
    cpu0 = cpu_snapshot(cluster)
    t_changes = cluster.now
    seed_node = rng.choice(observers)
    joiner = "joiner"
    cluster.start(joiner, seeds=[seed_node])
    watchers = [x for x in [*observers, joiner] if x != joiner]
    t0 = cluster.now
    watch = Watch(cluster, watchers, lambda node: node.core.member(joiner) is not None)
    ok = cluster.run_until(watch.done, limit=30.0, check_every=0.01) is not None
    join_s = round(max(watch.at.values()) - t0, 3) if ok else None
    join_p50 = round(sorted(watch.at.values())[len(watch.at) // 2] - t0, 3) if ok else None
    watch.close()
    cluster.run_for(0.5 if quick or sampled else 1.0)

    # a member dies
    candidates = [x for x in names if x != seed_node and (x not in observers or not sampled)]
    victim = rng.choice(candidates)
    cluster.kill(victim)
    t1 = cluster.now
    watchers = [x for x in [*observers, joiner] if x != victim]
    watch = Watch(cluster, watchers, lambda node: node.core.member(victim) is None)
    ok = cluster.run_until(watch.done, limit=60.0, check_every=0.01) is not None
    detect_s = round(max(watch.at.values()) - t1, 3) if ok else None
    detect_p50 = round(sorted(watch.at.values())[len(watch.at) // 2] - t1, 3) if ok else None
    watch.close()
    changes_s = cluster.now - t_changes
    measured_nodes = [x for x in [*observers, joiner] if x != victim]
    during = per_node(cluster, measured_nodes, changes_s, cpu0)
    if sampled:
        during["msgs_sent_per_node_s"] = steady["msgs_sent_per_node_s"]
        during["bytes_sent_per_node_s"] = steady["bytes_sent_per_node_s"]

    out: dict[str, Any] = {
        "nodes": n,
        "mode": "sampled" if sampled else "full",
        "join_convergence_s": join_s,
        "join_convergence_median_s": join_p50,
        "failure_detection_s": detect_s,
        "failure_detection_median_s": detect_p50,
        "steady": steady,
        "during_changes": during,
        "simulated_s": round(cluster.now - start_sim, 2),
        "wall_s": round(time.perf_counter() - t_wall, 2),
    }
    if protocol == "heartbeat":
        out["heartbeat_bytes"] = hb_size  # one heartbeat frame of a member of an n-node topology
    else:
        core = cluster.nodes[names[0]].core
        out["suspicion_timeout_s"] = round(core.suspicion_timeout(), 3)
        out["retransmits_per_update"] = core.retransmit_limit()
        sent = steady["msgs_sent_per_node_s"]
        out["mean_message_bytes"] = round(steady["bytes_sent_per_node_s"] / sent, 1) if sent else None
    if sampled:
        out["observers"] = len(observers) + 1  # and the joiner
        out["figures"] = {
            "join_convergence_s": "measured: the latest of the observers",
            "failure_detection_s": "measured: the latest of the observers",
            "msgs_recv_per_node_s, bytes_recv_per_node_s, cpu_per_node_pct": "measured at the observers",
            "msgs_sent_per_node_s, bytes_sent_per_node_s": "extrapolated: (n - 1) copies per interval of the "
                                                           "measured heartbeat_bytes",
        }
    else:
        out["figures"] = "all measured, over every node"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000", help="comma-separated cluster sizes")
    p.add_argument("--protocols", default="heartbeat,swim")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="short windows, fewer observers (a smoke test)")
    p.add_argument("--steady", type=float, default=4.0, help="seconds of steady state measured (full runs)")
    p.add_argument("--full-max", type=int, default=20, help="largest heartbeat cluster simulated in full")
    p.add_argument("--observers", type=int, default=0, help="observers of a sampled heartbeat cluster")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    protocols = [s for s in args.protocols.split(",") if s]
    for proto in protocols:
        if proto not in ("heartbeat", "swim"):
            p.error(f"unknown protocol {proto!r}")
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for proto in protocols:
        results[proto] = {str(n): experiment(proto, n, args, args.seed) for n in sizes}
    core = SwimCluster(0, period=INTERVAL)
    core.start("x")
    swim = core.nodes["x"].core
    print(json.dumps({
        "benchmark": "membership_sim",
        "command": "python benchmarks/membership_sim.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "quick": args.quick,
        "params": {
            "heartbeat": {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "ticks_per_interval": 4},
            "swim": {"period_s": swim.period, "rtt_timeout_s": swim.rtt_timeout,
                     "indirect_checks": swim.indirect_checks, "suspicion_mult": swim.suspicion_mult,
                     "retransmit_mult": swim.retransmit_mult, "max_piggyback": swim.max_piggyback,
                     "gossip_fanout": swim.gossip_fanout, "gossip_interval_s": swim.gossip_interval,
                     "sync_interval_s": swim.sync_interval},
            "link": {"latency_s": LINK.latency, "jitter_s": LINK.jitter, "loss": LINK.loss},
        },
        "method": ("simulated time on jobmesh.sim.SimNetwork (seeded, deterministic: the times and counts "
                   "repeat for a seed; cpu_per_node_pct is wall time in the cores on this machine). "
                   "Sizes are msgpack bodies + type + version frame. Heartbeat clusters larger than "
                   f"{args.full_max} are sampled; see each entry's 'figures'."),
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 2),
        "load": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
