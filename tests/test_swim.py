"""The SWIM membership core, deterministically: cores on the simulated network (jobmesh.sim).

Every scenario runs ``swim.Swim`` cores through ``SwimCluster`` (point-to-point messages,
msgpack on the way, ticks when a core asks) and checks Sling's event guarantees on every node.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobmesh.discovery.membership import InvalidMember, MemberInfo
from jobmesh.discovery.swim import ACK, GOSSIP, JOIN, PING, Send, Swim
from jobmesh.discovery.view import TopologyEventType as T
from jobmesh.sim import LinkSpec
from jobmesh.sim.membership import SwimCluster
from test_membership import check_event_order

PERIOD = 0.5
ROOT = Path(__file__).resolve().parent.parent


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def check_events(c: SwimCluster) -> None:
    for node in [*c.nodes.values(), *c.retired]:
        if node.events:
            check_event_order(node.events)


def all_dropped(c: SwimCluster, name: str) -> bool:
    return all(n.core.member(name) is None for n in c.live())


def test_nodes_joining_one_by_one_converge_in_join_order_and_the_first_leads() -> None:
    c = SwimCluster(seed=1)
    c.start("n0")
    rng = random.Random(1)
    for i in range(1, 10):
        c.start(f"n{i}", seeds=[f"n{rng.randrange(i)}"])  # through any node already there
        c.run_for(0.2)
    took = c.run_until(c.agreed, limit=3.0)
    assert took is not None, {n.name: n.core.view.names for n in c.live()}
    view = c.nodes["n5"].core.view
    assert view.names == names(10) and view.leader == "n0"  # joiners ranked behind everyone
    assert [i.name for i in view.instances if i.leader] == ["n0"]
    check_events(c)


def test_a_killed_member_is_dropped_by_all_within_a_bound_and_nobody_else_is() -> None:
    c = SwimCluster(seed=2)
    c.form(names(10))
    c.run_for(2.0)
    c.kill("n4")
    bound = 3 * PERIOD + c.nodes["n0"].core.suspicion_timeout() + 1.0
    took = c.run_until(lambda: all_dropped(c, "n4"), limit=bound, check_every=0.01)
    assert took is not None and took <= bound
    c.run_for(1.0)
    assert c.agreed() and c.nodes["n0"].core.view.names == [n for n in names(10) if n != "n4"]
    assert all([d.name for d in n.dropped] == ["n4"] for n in c.live())
    check_events(c)


def test_a_killed_leader_is_replaced_by_the_next_oldest() -> None:
    c = SwimCluster(seed=3)
    c.form(names(6))
    c.run_for(1.0)
    c.kill("n0")
    assert c.run_until(lambda: all_dropped(c, "n0") and c.agreed(), limit=6.0) is not None
    assert {n.core.view.leader for n in c.live()} == {"n1"}


def isolate(c: SwimCluster, name: str, seconds: float) -> None:
    """Clog every link into and out of ``name`` for a while (held, not lost), then release them."""
    others = [n for n in c.nodes if n != name]
    for o in others:
        c.net.clog(o, name)
        c.net.clog(name, o)
    c.run_for(seconds)
    for o in others:
        c.net.unclog(o, name)
        c.net.unclog(name, o)


def test_a_false_suspicion_is_refuted_and_nobody_is_dropped() -> None:
    c = SwimCluster(seed=4)
    c.form(names(8))
    c.run_for(2.0)
    before = c.nodes["n3"].core.key
    isolate(c, "n3", 1.2)  # long enough to be suspected, shorter than the suspicion timeout
    c.run_for(4.0)
    assert any("n3" in n.suspected for n in c.live())
    assert c.nodes["n3"].core.key[2] > before[2]  # n3 refuted with a newer n
    assert all(not n.dropped for n in c.live())
    assert c.agreed() and c.nodes["n0"].core.view.names == names(8)


def test_a_node_cut_off_longer_than_the_timeout_moves_only_itself_to_the_back() -> None:
    c = SwimCluster(seed=5)
    c.form(names(8))
    c.run_for(2.0)
    isolate(c, "n3", 12.0)  # others drop n3; n3, hearing nobody, convicts nobody publicly
    assert c.run_until(lambda: c.agreed() and len(c.nodes["n0"].core.view.names) == 8, limit=5.0) is not None
    assert c.nodes["n0"].core.view.names == [n for n in names(8) if n != "n3"] + ["n3"]
    assert c.nodes["n3"].rejoins and all(not n.rejoins for n in c.live() if n.name != "n3")
    assert all([d.name for d in n.dropped] == ["n3"] for n in c.live() if n.name != "n3")
    check_events(c)


def test_a_partition_heals_into_one_view_and_the_older_side_keeps_its_leader() -> None:
    c = SwimCluster(seed=6)
    c.form(names(8))
    c.run_for(2.0)
    left, right = names(8)[:5], names(8)[5:]
    c.net.partition(left, right)
    split = c.run_until(lambda: all(len(c.nodes[n].core.member_names()) == (5 if n in left else 3) for n in c.nodes),
                        limit=8.0)
    assert split is not None
    assert c.nodes["n6"].core.member_names()[0] == "n5"  # the minority side led by its oldest
    c.net.heal()
    took = c.run_until(lambda: c.agreed() and len(c.nodes["n0"].core.view.names) == 8, limit=10.0)
    assert took is not None
    view = c.nodes["n7"].core.view
    assert view.leader == "n0" and view.names[:5] == left  # the younger side yielded, behind
    assert all(not c.nodes[n].rejoins for n in left)
    check_events(c)


def test_a_restarted_node_is_a_new_incarnation_at_the_back() -> None:
    c = SwimCluster(seed=7)
    c.form(names(5))
    c.run_for(1.0)
    c.kill("n0")
    c.run_for(0.3)
    c.start("n0", seeds=["n2"])  # back before the others noticed: the newer incarnation replaces it
    assert c.run_until(lambda: c.agreed() and len(c.nodes["n1"].core.view.names) == 5, limit=6.0) is not None
    view = c.nodes["n1"].core.view
    assert view.names == ["n1", "n2", "n3", "n4", "n0"] and view.leader == "n1"
    assert view.instance("n0").incarnation == c.nodes["n0"].core.local.incarnation
    check_events(c)


def test_leaving_drops_at_once() -> None:
    c = SwimCluster(seed=8)
    c.form(names(6))
    c.run_for(1.0)
    node = c.nodes["n2"]
    outs = node.core.leave(c.now)
    assert outs and all(isinstance(o, Send) and o.type == GOSSIP for o in outs)
    c._call(node, outs)
    c.kill("n2")
    took = c.run_until(lambda: all_dropped(c, "n2"), limit=1.5, check_every=0.01)
    assert took is not None and took < 1.0
    assert all(n.dropped[-1].reason == "left" for n in c.live())


def test_a_property_change_spreads_as_properties_changed_and_capacity_alone_stays_local() -> None:
    c = SwimCluster(seed=9)
    c.form(names(5))
    c.run_for(1.0)
    n1 = c.nodes["n1"]
    c._call(n1, n1.core.set_local(c.now, capacity={"slots": 16, "active": 5, "queued": 0, "throughput": 1.0}))
    c._call(n1, n1.core.set_local(c.now, topics=["demo/work", "demo/other"]))
    c.run_for(2.0)
    for n in c.live():
        assert n.core.member("n1").topics == ("demo/work", "demo/other")
        if n.name != "n1":
            assert n.events[-1].type == T.PROPERTIES_CHANGED
            assert n.core.member("n1").capacity["active"] == 5  # went along with the real change
    check_events(c)


def test_per_node_cost_is_flat_in_the_number_of_nodes() -> None:
    cost = {}
    for n in (8, 64):
        c = SwimCluster(seed=10)
        c.form([f"m{i:03d}" for i in range(n)])
        c.run_for(1.0)
        c.net.reset_stats()
        c.run_for(4.0)
        stats = [c.net.stats(x) for x in c.nodes]
        cost[n] = (sum(s.sent_msgs for s in stats) / n / 4.0, sum(s.sent_bytes for s in stats) / n / 4.0)
    assert cost[8][0] == pytest.approx(cost[64][0], rel=0.1) and cost[8][0] <= 5  # a ping and an ack per period
    assert cost[8][1] == pytest.approx(cost[64][1], rel=0.1)


def fault_schedule(seed: int) -> tuple[bool, str]:
    """A seeded mix of faults (partitions, one-way cuts, clogs, swizzle-clog, kills, pauses, restarts,
    loss, duplication, reordering); after healing, every live node must agree on one view."""
    r = random.Random(seed)
    link = LinkSpec(latency=0.001, jitter=0.002, loss=r.choice([0, 0, 0.01, 0.05]), dup=0.01, reorder=0.01)
    c = SwimCluster(seed=seed, link=link)
    all_names = names(r.randint(3, 9))
    if r.random() < 0.5:
        c.form(all_names)
    else:
        c.start("n0")
        for i, name in enumerate(all_names[1:], 1):
            c.start(name, seeds=[r.choice(all_names[:i])])
            c.run_for(r.random())
    c.run_for(2.0)
    killed: set[str] = set()
    trace = hashlib.sha256()
    for _ in range(r.randint(1, 4)):
        fault = r.choice(["part", "oneway", "clog", "swizzle", "kill", "pause", "restart"])
        live = [x for x in all_names if x not in killed]
        if fault == "part":
            c.net.partition(r.sample(live, r.randint(1, len(live) - 1)))
        elif fault == "oneway":
            c.net.partition(r.sample(live, r.randint(1, len(live) - 1)), one_way=True)
        elif fault == "clog":
            x = r.choice(live)
            for o in all_names:
                if o != x:
                    c.net.clog(o, x)
                    c.net.clog(x, o)
        elif fault == "swizzle":
            c.net.swizzle_clog(all_names, start=c.now, step=r.uniform(0.05, 0.5))
        elif fault == "kill" and len(live) > 2:
            x = r.choice(live[1:])
            c.kill(x)
            killed.add(x)
        elif fault == "pause":
            x = r.choice(live)
            c.pause(x)
            c.run_for(r.uniform(0.5, 8))
            c.resume(x)
        elif fault == "restart":
            x = r.choice(live)
            c.kill(x)
            c.run_for(r.uniform(0, 4))
            c.start(x, seeds=[r.choice([y for y in live if y != x])])
        c.run_for(r.uniform(0.5, 15))
        trace.update(repr(sorted((n.name, n.core.key, n.core.member_names()) for n in c.live())).encode())
        c.net.heal()
        c.net.unclog_all()
    c.net.set_default(loss=0.0)
    want = sorted(x for x in all_names if x not in killed)
    ok = c.run_until(lambda: c.agreed() and sorted(c.live()[0].core.view.names) == want, limit=60.0) is not None
    check_events(c)
    trace.update(repr([(n.name, [e.type.value for e in n.events]) for n in c.nodes.values()]).encode())
    return ok, trace.hexdigest()


# seeds that found bugs (kept as regression cases), then a few more
@pytest.mark.parametrize("seed", [11, 24, 166, 337, 0, 1, 2, 3, 5, 8])
def test_after_any_fault_schedule_heals_every_live_node_agrees_on_one_view(seed: int) -> None:
    ok, _ = fault_schedule(seed)
    assert ok, f"seed {seed}: no agreement within 60 s after healing"


def test_the_same_seed_gives_the_same_trace_whatever_the_hash_seed() -> None:
    assert fault_schedule(4)[1] == fault_schedule(4)[1]
    assert fault_schedule(4)[1] != fault_schedule(6)[1]
    code = "import sys; sys.path.insert(0, 'tests'); from test_swim import fault_schedule; print(fault_schedule(4)[1])"
    for hashseed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == fault_schedule(4)[1]


def test_a_seeded_node_starts_alone_after_its_join_deadline_and_joins_when_the_seed_appears() -> None:
    c = SwimCluster(seed=12)
    b = c.start("b", seeds=["a"])  # "a" is not up yet
    c.run_for(1.0)
    assert not b.events and not b.core.established
    c.run_for(3.0)
    assert [e.type for e in b.events] == [T.TOPOLOGY_INIT] and b.core.view.names == ["b"]
    c.start("a")
    assert c.run_until(lambda: c.agreed() and len(b.core.view.names) == 2, limit=5.0) is not None
    assert b.core.view.names == ["a", "b"]  # the joiner goes behind the node it joined
    check_events(c)


def make(name: str = "a", now: float = 100.0, **kw: Any) -> Swim:
    info = MemberInfo(name, now, now, endpoint=name)
    return Swim(info, now=now, rng=random.Random(0), **kw)


def test_bad_messages_are_refused_with_a_reason_and_bad_gossip_entries_are_skipped() -> None:
    s = make()
    for msg_type, body in [
        ("swim/nope", {}),
        (PING, {"key": [1, 1, 0]}),  # no from
        (PING, {"from": "b", "key": [1, "x", 0]}),
        (PING, {"from": "b", "key": [1, 1, 0], "g": "notalist"}),
        (PING, {"from": "b", "key": [1, 1, 0], "g": [], "seq": 1}),  # no ep
        (ACK, {"from": "b", "key": [1, 1, 0], "g": []}),  # no seq
        (JOIN, {"name": "", "incarnation": 1}),
        (JOIN, {"name": "a", "incarnation": 1, "endpoint": "a"}),  # our own name
    ]:
        with pytest.raises(InvalidMember):
            s.on_message(msg_type, body, 101.0)
    junk = [["a", "x"], ["s", 5, 1, 1, 0], ["d", "y", "bad", 1, 0], "text", None,
            ["a", "z", 1.0, 1.0, 0, None, None, [], [], {}, {}]]  # an alive entry without an endpoint
    outs = s.on_message(PING, {"from": "b", "key": [1.0, 1.0, 0], "g": junk, "seq": 1, "ep": "b"}, 101.0)
    assert ACK in [o.type for o in outs if isinstance(o, Send)]  # (and a sync: b knows us, we do not know b)
    assert s.member_names() == ["a"]


def test_constructor_rejects_bad_timing_and_a_member_without_endpoint() -> None:
    with pytest.raises(ValueError):
        make(period=0)
    with pytest.raises(ValueError):
        make(period=0.5, rtt_timeout=0.5)
    with pytest.raises(ValueError):
        Swim(MemberInfo("a", 1.0, 1.0), now=1.0, rng=random.Random(0))
