"""The pure membership core, deterministically: a simulated network and clock, no sockets.

``Sim`` runs several ``Membership`` cores the way the discovery actor does (heartbeats
every interval to the nodes subscribed to the sender's PUB endpoint, ticks, joins
through a seed's ROUTER, rejoins), with nodes that can be killed, paused and
restarted. Every scenario also checks Sling's event guarantees on every node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from jobmesh.discovery.membership import (
    Connect,
    Disconnect,
    Dropped,
    InvalidMember,
    ListenerHub,
    MemberInfo,
    Membership,
    NameClash,
    NameTaken,
    Rejoin,
    ViewEvent,
)
from jobmesh.discovery.probe import PeerBook, Prober
from jobmesh.discovery.view import TopologyEvent, TopologyEventType as T

INTERVAL = 0.5
TIMEOUT = 2.5
DT = 0.1


@dataclass
class SimNode:
    name: str
    m: Membership
    seeds: list[str]
    subs: set[str] = field(default_factory=set)
    events: list[TopologyEvent] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    rejoins: list[str] = field(default_factory=list)
    alive: bool = True
    paused: bool = False
    next_hb: float = 0.0
    last_sent: float = 0.0
    prober: Prober | None = None
    book: PeerBook = field(default_factory=PeerBook)


class Sim:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.nodes: dict[str, SimNode] = {}
        self.retired: list[SimNode] = []  # earlier incarnations, for the event checks
        self.probing = False  # level-triggered repair on: nodes probe seeds and remembered members
        self.cut: set[frozenset[str]] = set()  # pairs that cannot reach each other (partitions)
        self.books: dict[str, PeerBook] = {}  # each node's remembered members (its data directory)

    # -- nodes -----------------------------------------------------------------
    def start(self, name: str, seeds: list[str] | None = None, incarnation: float | None = None) -> SimNode:
        if name in self.nodes:
            self.retired.append(self.nodes[name])
        inc = self.now if incarnation is None else incarnation
        local = MemberInfo(name, inc, inc, endpoint=f"router:{name}", pub_endpoint=f"pub:{name}", topics=("t/a",))
        m = Membership(local, now=self.now, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT,
                       expect_join=bool(seeds))
        node = SimNode(name, m, list(seeds or []), next_hb=self.now, last_sent=self.now,
                       prober=Prober(0.1, min(TIMEOUT, max(1.0, 4 * INTERVAL))),
                       book=self.books.setdefault(name, PeerBook()))
        self.nodes[name] = node
        self.apply(node, m.drain())
        if seeds:
            self.join(node, [f"router:{s}" for s in seeds])
        return node

    def kill(self, name: str) -> None:
        self.nodes[name].alive = False

    def pause(self, name: str) -> None:
        self.nodes[name].paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        node.paused = False
        # the heartbeat thread measured its own gap; the next tick learns about it
        silence = self.now - node.last_sent
        self.apply(node, node.m.tick(self.now, own_silence=silence))

    def up(self, node: SimNode) -> bool:
        return node.alive and not node.paused

    # -- plumbing ----------------------------------------------------------------
    def by_router(self, endpoint: str) -> SimNode | None:
        name = endpoint.split(":", 1)[1]
        node = self.nodes.get(name)
        return node if node is not None and self.up(node) else None

    def reachable(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def partition(self, *groups: list[str]) -> None:
        self.cut = {frozenset((x, y)) for g in groups for h in groups if g is not h for x in g for y in h}

    def heal(self) -> None:
        self.cut = set()

    def join(self, node: SimNode, endpoints: list[str]) -> bool:
        for ep in endpoints:
            seed = self.by_router(ep)
            if seed is None or seed is node or not self.reachable(seed.name, node.name):
                continue
            outs, reply = seed.m.on_join_request(node.m.join_body(), self.now)
            self.apply(seed, outs)
            self.apply(node, node.m.on_join_reply(reply, self.now))
            return True
        return False

    def probe(self, node: SimNode) -> None:
        """What the discovery actor's join loop does between rejoins (DESIGN §3 repair)."""
        assert node.prober is not None
        if node.m.rejoining:
            return
        members = node.m.members()
        candidates = [f"router:{s}" for s in node.seeds] + node.book.endpoints(self.now)
        candidates = [c for c in candidates if c != node.m.local.endpoint]
        for ep in node.prober.due(candidates, {e for _, e in members if e}, {n for n, _ in members}, self.now):
            if self.join(node, [ep]):
                node.prober.answered(ep, ep.split(":", 1)[1], self.now)
            else:
                node.prober.unanswered(ep, self.now)

    def apply(self, node: SimNode, outs: list[Any]) -> None:
        for o in outs:
            if isinstance(o, Connect):
                assert o.endpoint not in node.subs
                node.subs.add(o.endpoint)
            elif isinstance(o, Disconnect):
                node.subs.remove(o.endpoint)
            elif isinstance(o, ViewEvent):
                node.events.append(o.event)
            elif isinstance(o, Dropped):
                node.dropped.append(o)
            elif isinstance(o, Rejoin):
                node.rejoins.append(o.reason)
                self.join(node, node.m.endpoints() + [f"router:{s}" for s in node.seeds])

    def step(self) -> None:
        self.now = round(self.now + DT, 6)
        for node in list(self.nodes.values()):
            if not self.up(node) or self.now + 1e-9 < node.next_hb:
                continue
            node.next_hb = self.now + INTERVAL
            node.last_sent = self.now
            body = node.m.heartbeat_body(self.now)
            for other in self.nodes.values():
                if (other is not node and self.up(other) and node.m.local.pub_endpoint in other.subs
                        and self.reachable(node.name, other.name)):
                    self.apply(other, other.m.on_heartbeat(body, self.now))
        for node in self.nodes.values():
            if self.up(node):
                self.apply(node, node.m.tick(self.now))
                node.book.seen([(n, e) for n, e in node.m.members() if n != node.name], self.now)
                if self.probing:
                    self.probe(node)

    def run(self, seconds: float) -> None:
        for _ in range(int(round(seconds / DT))):
            self.step()

    def run_until(self, cond: Any, limit: float) -> float:
        """Step until ``cond()``; the simulated time it took."""
        t0 = self.now
        while not cond():
            assert self.now - t0 <= limit + 1e-9, f"not reached within {limit}s"
            self.step()
        return self.now - t0

    # -- checks ------------------------------------------------------------------
    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if self.up(n)]

    def views(self) -> dict[str, list[str]]:
        return {n.name: n.m.view.names for n in self.live()}

    def agreed(self, names: list[str], leader: str | None = None) -> bool:
        for n in self.live():
            v = n.m.view
            if v.names != names or not v.current or (leader and v.leader != leader):
                return False
        return True

    def check_events(self) -> None:
        for node in [*self.nodes.values(), *self.retired]:
            check_event_order(node.events)


def check_event_order(events: list[TopologyEvent]) -> None:
    assert events, "no events at all"
    assert events[0].type == T.TOPOLOGY_INIT
    assert events[0].new_view is not None and events[0].new_view.current
    changing = False
    for e in events[1:]:
        assert e.type != T.TOPOLOGY_INIT, "INIT twice"
        if e.type == T.TOPOLOGY_CHANGING:
            assert not changing, "two CHANGING in a row"
            assert e.new_view is None and e.old_view is not None and not e.old_view.current
            changing = True
        elif e.type == T.TOPOLOGY_CHANGED:
            assert changing, "CHANGED without CHANGING"
            assert e.new_view is not None and e.new_view.current
            changing = False
        else:
            assert e.type == T.PROPERTIES_CHANGED
            assert not changing, "PROPERTIES_CHANGED inside a change"
            assert e.old_view is not None and e.new_view is not None
            assert e.old_view.names == e.new_view.names


def types(events: list[TopologyEvent]) -> list[str]:
    return [e.type.value for e in events]


# -- scenarios -------------------------------------------------------------------------


def test_a_node_alone_is_its_own_leader_and_gets_init_at_once() -> None:
    sim = Sim()
    a = sim.start("a")
    assert types(a.events) == ["TOPOLOGY_INIT"]
    v = a.m.view
    assert v.names == ["a"] and v.leader == "a" and v.current
    assert v.instances[0].local and v.instances[0].leader
    assert v.to_json()["instances"][0]["topics"] == ["t/a"]


def test_three_nodes_seeded_in_a_chain_form_one_topology_within_two_intervals() -> None:
    sim = Sim()
    sim.start("a")
    sim.run(1)
    sim.start("b", seeds=["a"])
    sim.run(0.3)
    sim.start("c", seeds=["b"])  # c knows only b
    took = sim.run_until(lambda: sim.agreed(["a", "b", "c"], leader="a"), limit=2 * INTERVAL)
    assert took <= 2 * INTERVAL
    c = sim.nodes["c"]
    # c's INIT came after its join, already with the whole topology it was told about
    assert c.events[0].type == T.TOPOLOGY_INIT and c.events[0].new_view.names == ["a", "b", "c"]
    sim.run(5)
    assert sim.agreed(["a", "b", "c"], leader="a")
    assert all(not n.dropped for n in sim.nodes.values())
    sim.check_events()


def test_ten_nodes_all_learn_each_other_quickly() -> None:
    sim = Sim()
    sim.start("n0")
    names = ["n0"]
    for i in range(1, 10):
        sim.step()
        sim.start(f"n{i}", seeds=[f"n{i - 1}"])  # a chain: each knows only the previous one
        names.append(f"n{i}")
    sim.run_until(lambda: sim.agreed(names, leader="n0"), limit=2 * INTERVAL)
    sim.check_events()


def test_killed_leader_is_dropped_within_timeout_plus_interval_and_next_oldest_leads() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.step()
    sim.start("c", seeds=["a"])
    sim.run(2)
    assert sim.agreed(["a", "b", "c"], leader="a")
    sim.kill("a")
    took = sim.run_until(lambda: sim.agreed(["b", "c"], leader="b"), limit=TIMEOUT + INTERVAL)
    assert took >= TIMEOUT - INTERVAL  # not before the timeout
    for n in sim.live():
        assert [d.name for d in n.dropped] == ["a"]
        assert types(n.events)[-2:] == ["TOPOLOGY_CHANGING", "TOPOLOGY_CHANGED"]
        assert n.events[-1].old_view.names == ["a", "b", "c"]
    sim.run(10)
    assert sim.agreed(["b", "c"], leader="b")
    sim.check_events()


def test_leader_does_not_change_when_others_join_or_leave() -> None:
    sim = Sim()
    sim.start("m")  # the leader's name sorts last: the order is by rank, not name
    sim.step()
    sim.start("a", seeds=["m"])
    sim.run(1)
    assert sim.agreed(["m", "a"], leader="m")
    sim.start("b", seeds=["a"])
    sim.run(1)
    assert sim.agreed(["m", "a", "b"], leader="m")
    sim.kill("a")
    sim.run(TIMEOUT + 1)
    assert sim.agreed(["m", "b"], leader="m")
    sim.check_events()


def test_paused_member_is_dropped_then_rejoins_at_the_back_without_ghosts() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.step()
    sim.start("c", seeds=["a"])
    sim.run(2)
    sim.pause("b")
    sim.run_until(lambda: sim.nodes["a"].m.view.names == ["a", "c"], limit=TIMEOUT + INTERVAL)
    sim.run(2)  # paused for well over the timeout
    sim.resume("b")
    assert sim.nodes["b"].rejoins, "b did not notice it had been dropped"
    sim.run_until(lambda: sim.agreed(["a", "c", "b"], leader="a"), limit=2 * INTERVAL)
    sim.run(10)
    assert sim.agreed(["a", "c", "b"], leader="a")
    sim.check_events()


def test_paused_leader_does_not_take_the_leadership_back() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.step()
    sim.start("c", seeds=["b"])
    sim.run(2)
    sim.pause("a")
    sim.run_until(lambda: sim.agreed(["b", "c"], leader="b"), limit=TIMEOUT + INTERVAL)
    sim.run(1)
    sim.resume("a")
    sim.run_until(lambda: sim.agreed(["b", "c", "a"], leader="b"), limit=2 * INTERVAL)
    sim.run(10)
    assert sim.agreed(["b", "c", "a"], leader="b")
    sim.check_events()


def test_briefly_paused_member_is_not_dropped() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.run(2)
    sim.pause("b")
    sim.run(TIMEOUT - 2 * INTERVAL)
    sim.resume("b")
    sim.run(5)
    assert sim.agreed(["a", "b"], leader="a")
    assert not sim.nodes["b"].rejoins and not sim.nodes["a"].dropped


def test_dropped_member_told_by_a_peer_rejoins_even_if_its_own_heartbeats_looked_fine() -> None:
    """The asymmetric case: a peer dropped us, but our heartbeat thread saw no long gap."""
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.run(2)
    b = sim.nodes["b"]
    sim.pause("b")
    sim.run(TIMEOUT + 1)
    b.paused = False  # resume without the thread's gap report
    b.last_sent = sim.now
    sim.run_until(lambda: sim.agreed(["a", "b"], leader="a"), limit=3 * INTERVAL)
    assert b.rejoins and "dropped us" in b.rejoins[0]
    sim.check_events()


def test_restart_with_the_same_name_replaces_the_old_incarnation_at_the_back() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.step()
    sim.start("c", seeds=["a"])
    sim.run(2)
    sim.kill("a")
    sim.run(0.5)  # back before anyone timed it out
    sim.start("a", seeds=["b"])
    sim.run_until(lambda: sim.agreed(["b", "c", "a"], leader="b"), limit=2 * INTERVAL)
    for n in sim.live():
        assert n.m.view.names.count("a") == 1
        assert n.m.member("a").incarnation == sim.nodes["a"].m.local.incarnation
    # late heartbeats of the old incarnation change nothing
    old = MemberInfo("a", 1000.0, 1000.0, "router:a", "pub:a").to_wire()
    b = sim.nodes["b"]
    assert b.m.on_heartbeat(dict(old, members=[], dropped=[]), sim.now) == []
    assert b.m.view.names == ["b", "c", "a"]
    sim.run(10)
    assert sim.agreed(["b", "c", "a"], leader="b")
    sim.check_events()


def test_joiner_with_an_older_clock_still_goes_to_the_back() -> None:
    sim = Sim()
    sim.start("a")
    sim.step()
    sim.start("b", seeds=["a"])
    sim.run(1)
    sim.start("z", seeds=["b"], incarnation=10.0)  # its clock is far behind
    sim.run_until(lambda: sim.agreed(["a", "b", "z"], leader="a"), limit=2 * INTERVAL)
    assert sim.nodes["z"].m.local.rank > sim.nodes["b"].m.local.rank
    sim.check_events()


def test_seed_that_does_not_answer_means_init_alone_after_the_join_deadline() -> None:
    sim = Sim()
    a = sim.start("a", seeds=["nobody"])
    assert a.events == [] and not a.m.view.current
    took = sim.run_until(lambda: bool(a.events), limit=3.5)
    assert took >= 2.9
    assert types(a.events) == ["TOPOLOGY_INIT"] and a.events[0].new_view.names == ["a"]
    # the seed comes up later; a retried join merges the two
    sim.start("nobody")
    sim.apply(a, a.m.tick(sim.now))
    assert sim.join(a, ["router:nobody"])
    # a joined an existing topology, so it goes behind its members
    sim.run_until(lambda: sim.agreed(["nobody", "a"], leader="nobody"), limit=2 * INTERVAL)
    sim.check_events()


# -- the core's rules, one at a time -------------------------------------------------------


def make(name: str = "a", now: float = 100.0, **kw: Any) -> Membership:
    local = MemberInfo(name, now, now, f"router:{name}", f"pub:{name}")
    return Membership(local, now=now, heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT, **kw)


def hb(name: str, inc: float, rank: float | None = None, **extra: Any) -> dict[str, Any]:
    body = MemberInfo(name, inc, inc if rank is None else rank, f"router:{name}", f"pub:{name}").to_wire()
    body.update(members=[], dropped=[])
    body.update(extra)
    return body


def tick_to(m: Membership, start: float, end: float, step: float = 0.1) -> list[Any]:
    """Tick regularly from ``start`` to ``end`` (as the actor does), collecting outputs."""
    outs: list[Any] = []
    t = start
    while t < end - 1e-9:
        t = min(end, round(t + step, 6))
        outs += m.tick(t)
    return outs


def events_of(outs: list[Any]) -> list[str]:
    return [o.event.type.value for o in outs if isinstance(o, ViewEvent)]


def test_join_then_heartbeat_change_events_and_non_current_view_during_the_change() -> None:
    m = make()
    assert events_of(m.drain()) == ["TOPOLOGY_INIT"]
    outs = m.on_heartbeat(hb("b", 101.0), 101.0)
    assert Connect("pub:b") in outs
    assert events_of(outs) == ["TOPOLOGY_CHANGING"]
    assert not m.view.current and m.view.names == ["a"]  # the old view, marked not current
    outs = m.on_heartbeat(hb("c", 101.5), 101.1)  # a second change while changing: no CHANGING
    assert events_of(outs) == []
    outs = m.tick(101.2)
    assert events_of(outs) == ["TOPOLOGY_CHANGED"]
    ev = outs[-1].event
    assert ev.old_view.names == ["a"] and ev.new_view.names == ["a", "b", "c"]
    assert m.view.current and m.view.names == ["a", "b", "c"]


def test_settle_time_coalesces_a_burst_of_changes() -> None:
    m = make(settle=1.0)
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.1)
    assert events_of(m.tick(100.5)) == []
    m.on_heartbeat(hb("c", 101.0), 100.9)
    assert events_of(m.tick(101.5)) == []
    assert events_of(m.tick(101.95)) == ["TOPOLOGY_CHANGED"]


def test_properties_only_change_is_properties_changed_alone_and_capacity_is_silent() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.1)
    m.tick(100.2)
    outs = m.on_heartbeat(hb("b", 101.0, topics=["x/**"]), 100.3)
    assert events_of(outs) == ["PROPERTIES_CHANGED"]
    ev = outs[-1].event
    assert ev.old_view.instance("b").topics == () and ev.new_view.instance("b").topics == ("x/**",)
    outs = m.on_heartbeat(hb("b", 101.0, topics=["x/**"], capacity={"slots": 4, "active": 1}), 100.4)
    assert events_of(outs) == []
    assert m.view.instance("b").capacity == {"slots": 4, "active": 1}
    outs = m.set_local(100.5, properties={"zone": "eu"})
    assert events_of(outs) == ["PROPERTIES_CHANGED"]
    assert m.view.instance("a").properties == {"zone": "eu"}
    assert m.heartbeat_body(100.5)["properties"] == {"zone": "eu"}
    assert events_of(m.set_local(100.6, properties={"zone": "eu"})) == []  # no change, no event


def test_property_change_during_a_change_is_carried_by_changed() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.1)
    assert events_of(m.set_local(100.15, topics=["y"])) == []
    outs = m.tick(100.2)
    assert events_of(outs) == ["TOPOLOGY_CHANGED"]
    assert outs[-1].event.new_view.instance("a").topics == ("y",)
    assert events_of(m.tick(100.3)) == []


def test_any_message_is_proof_of_life() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    for t in (101.0, 102.0, 103.0, 104.0):
        m.touch("b", t)
        tick_to(m, t - 1.0, t)
    assert "b" in m.member_names()
    outs = tick_to(m, 104.0, 106.6)
    assert [o for o in outs if isinstance(o, Dropped)] == [Dropped("b", "no heartbeat for 2.6s")]
    assert Disconnect("pub:b") in outs


def test_a_stalled_event_loop_does_not_drop_everyone() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.tick(100.1)
    outs = m.tick(110.0)  # the loop was blocked for 10 s; b's heartbeats wait in the socket
    assert not [o for o in outs if isinstance(o, Dropped)]
    m.on_heartbeat(hb("b", 101.0), 110.0)
    assert m.member_names() == ["a", "b"]


def test_gossip_makes_a_candidate_not_a_member_and_expires() -> None:
    m = make()
    m.drain()
    ghost = ["g", 50.0, 50.0, "router:g", "pub:g"]
    outs = m.on_heartbeat(hb("b", 101.0, members=[ghost, ["a", 100.0, 100.0, "router:a", "pub:a"]]), 100.1)
    assert Connect("pub:g") in outs and Connect("pub:b") in outs and Connect("pub:a") not in outs
    m.tick(100.2)
    assert m.member_names() == ["a", "b"]
    outs = []
    for t in (101.0, 102.0, 102.5):
        m.on_heartbeat(hb("b", 101.0), t)
        outs += tick_to(m, t - 0.5, t + 0.1)
    assert Disconnect("pub:g") in outs
    assert m.member_names() == ["a", "b"]


def test_tombstone_ignores_the_same_rank_and_accepts_a_rejoin_behind_everyone() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 99.0), 100.0)  # b is older: it leads
    m.tick(100.1)
    assert m.view.leader == "b"
    tick_to(m, 100.1, 103.0)
    assert m.member_names() == ["a"]
    assert m.heartbeat_body(103.0)["dropped"] == [["b", 99.0, 99.0]]
    m.tick(103.1)
    assert m.on_heartbeat(hb("b", 99.0), 103.2) == []  # the same rank: ignored
    assert m.member_names() == ["a"]
    m.on_heartbeat(hb("b", 99.0, rank=100.5), 103.3)  # rejoined behind us
    m.tick(103.4)
    assert m.member_names() == ["a", "b"] and m.view.leader == "a"


def test_being_listed_as_dropped_triggers_one_rejoin_and_moves_us_back() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.1)
    m.tick(100.2)
    assert m.view.leader == "a"
    outs = m.on_heartbeat(hb("b", 101.0, dropped=[["a", 100.0, 100.0]]), 100.3)
    assert [o for o in outs if isinstance(o, Rejoin)]
    assert m.rejoining and m.local.rank > 101.0
    outs = m.on_heartbeat(hb("b", 101.0, dropped=[["a", 100.0, 100.0]]), 100.4)
    assert not [o for o in outs if isinstance(o, Rejoin)]  # one rejoin at a time
    # the reply replaces what we believed: d is gone, c is new
    reply = {"members": [dict(hb("b", 101.0), age=0.0), dict(hb("c", 101.2), age=0.3)], "rank": 101.3}
    m.on_heartbeat(hb("d", 101.1), 100.45)
    m.on_join_reply(reply, 100.5)
    assert not m.rejoining
    m.tick(100.6)
    assert m.view.names == ["b", "c", "a"] and m.view.leader == "b"


def test_own_silence_longer_than_the_timeout_means_rejoin() -> None:
    m = make()
    m.drain()
    assert not [o for o in m.tick(100.1, own_silence=2.0) if isinstance(o, Rejoin)]
    outs = m.tick(100.2, own_silence=3.0)
    assert [o.reason for o in outs if isinstance(o, Rejoin)] == ["own heartbeats were silent for 3.0s"]


def test_join_request_ranks_the_joiner_behind_everyone_and_replies_with_ages() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.tick(100.1)
    outs, reply = m.on_join_request(MemberInfo("z", 5.0, 5.0, "router:z", "pub:z").to_wire(), 101.0)
    assert Connect("pub:z") in outs
    assert reply["rank"] > 101.0
    assert [x["name"] for x in reply["members"]] == ["a", "b"]
    assert reply["members"][1]["age"] == pytest.approx(1.0)
    assert reply["leader"] == "a"
    # a retried join keeps the rank it was given
    _, again = m.on_join_request(MemberInfo("z", 5.0, 5.0, "router:z", "pub:z").to_wire(), 101.1)
    assert again["rank"] == reply["rank"]
    with pytest.raises(InvalidMember, match="already in this topology"):
        m.on_join_request(MemberInfo("a", 1.0, 1.0).to_wire(), 101.2)
    m.on_heartbeat(hb("y", 102.0), 101.3)
    with pytest.raises(InvalidMember, match="newer incarnation"):
        m.on_join_request(MemberInfo("y", 50.0, 50.0, "router:y", "pub:y").to_wire(), 101.4)
    # another process under a live member's name, elsewhere: refused, naming where the holder is
    with pytest.raises(NameTaken, match="a node named y is already in this topology at router:y"):
        m.on_join_request(MemberInfo("y", 150.0, 150.0, "router:y2", "pub:y2").to_wire(), 101.5)


def test_leaving_heartbeat_drops_at_once() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.tick(100.1)
    outs = m.on_heartbeat(hb("b", 101.0, leaving=True), 100.2)
    assert Dropped("b", "left") in outs
    assert events_of(outs) == ["TOPOLOGY_CHANGING"]
    assert events_of(m.tick(100.3)) == ["TOPOLOGY_CHANGED"]
    assert m.leave(100.4)["leaving"] is True


def test_heartbeat_with_our_own_name_is_reported_not_added() -> None:
    m = make()
    m.drain()
    assert m.on_heartbeat(hb("a", 200.0), 100.1) == [NameClash(200.0)]
    assert m.on_heartbeat(hb("a", 100.0), 100.2) == []  # our own echo
    assert m.member_names() == ["a"]


def test_a_rejoin_with_nobody_left_ends() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.tick(100.1)
    m.tick(100.2, own_silence=5.0)
    assert m.rejoining
    tick_to(m, 100.2, 103.0)  # b is gone too
    assert m.member_names() == ["a"] and not m.rejoining


@pytest.mark.parametrize(
    "body, what",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 3}, "name"),
        ({"name": "b"}, "incarnation"),
        ({"name": "b", "incarnation": "x"}, "incarnation"),
        ({"name": "b", "incarnation": float("nan")}, "incarnation"),
        ({"name": "b", "incarnation": True}, "incarnation"),
        ({"name": "b", "incarnation": 1, "endpoint": 5}, "endpoint"),
        ({"name": "b", "incarnation": 1, "topics": "x"}, "topics"),
        ({"name": "b", "incarnation": 1, "topics": [1]}, "topics"),
        ({"name": "b", "incarnation": 1, "capacity": []}, "maps"),
        ({"name": "b", "incarnation": 1, "members": {}}, "lists"),
    ],
)
def test_invalid_heartbeats_are_refused_with_a_reason(body: dict[str, Any], what: str) -> None:
    m = make()
    m.drain()
    with pytest.raises(InvalidMember, match=what):
        m.on_heartbeat(body, 100.1)
    assert m.member_names() == ["a"]


def test_bad_gossip_entries_are_skipped() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0, members=[["x"], "junk", [1, 2, 3, 4, 5]]), 100.1)
    assert m.member_names() == ["a", "b"]


def test_join_reply_validation() -> None:
    m = make(expect_join=True)
    with pytest.raises(InvalidMember):
        m.on_join_reply({"members": []}, 100.1)
    with pytest.raises(InvalidMember):
        m.on_join_reply({"members": ["x"]}, 100.1)
    with pytest.raises(InvalidMember):
        m.on_join_reply({"members": [{"name": "b"}]}, 100.1)
    assert not m.established


def test_constructor_rejects_bad_timing() -> None:
    with pytest.raises(ValueError):
        make(heartbeat_interval=1.0, heartbeat_timeout=1.0) if False else Membership(
            MemberInfo("a", 1, 1), now=0, heartbeat_interval=1.0, heartbeat_timeout=1.0
        )


# -- listener hub -------------------------------------------------------------------


def test_listener_hub_gives_init_first_and_defers_it_during_a_change() -> None:
    m = make()
    hub = ListenerHub()
    early = object()
    assert hub.add(early) == []  # nothing established yet
    deliveries = [d for o in m.drain() if isinstance(o, ViewEvent) for d in hub.publish(o.event)]
    assert [(x is early, e.type) for x, e in deliveries] == [(True, T.TOPOLOGY_INIT)]
    ev = [o.event for o in m.on_heartbeat(hb("b", 101.0), 100.1) if isinstance(o, ViewEvent)]
    assert [(x is early, e.type) for x, e in hub.publish(ev[0])] == [(True, T.TOPOLOGY_CHANGING)]
    late = object()
    assert hub.add(late) == []  # mid-change: wait for the new view
    ev = [o.event for o in m.tick(100.2) if isinstance(o, ViewEvent)]
    got = hub.publish(ev[0])
    assert [(x is early, e.type) for x, e in got] == [(True, T.TOPOLOGY_CHANGED), (False, T.TOPOLOGY_INIT)]
    assert got[1][1].new_view.names == ["a", "b"]
    later = object()
    (x, e), = hub.add(later)
    assert x is later and e.type == T.TOPOLOGY_INIT and e.new_view.names == ["a", "b"]
    hub.remove(early)
    assert len(hub) == 2


def test_stale_ages_in_a_join_reply_do_not_drop_members_right_after_joining() -> None:
    m = make(expect_join=True)
    reply = {"members": [dict(hb("s", 90.0), age=0.0), dict(hb("x", 91.0), age=2.4)], "rank": 100.5}
    m.on_join_reply(reply, 100.0)
    outs = tick_to(m, 100.0, 101.9)  # x gets at least timeout - interval to be heard
    assert not [o for o in outs if isinstance(o, Dropped)]
    outs = tick_to(m, 101.9, 102.2)
    assert [o.name for o in outs if isinstance(o, Dropped)] == ["x"]  # x's age counted, up to an interval
    outs = tick_to(m, 102.2, 102.6)
    assert [o.name for o in outs if isinstance(o, Dropped)] == ["s"]


def test_a_member_heard_by_a_peer_is_not_dropped_and_a_dead_one_still_is() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.on_heartbeat(hb("c", 101.5), 100.0)
    m.tick(100.1)
    # from now on only b's heartbeats reach us; b keeps hearing c
    t = 100.1
    while t < 104.0:
        t = round(t + 0.1, 6)
        if abs((t * 10) % 5) < 1e-6:  # every 0.5 s
            c_entry = ["c", 101.5, 101.5, "router:c", "pub:c", 0.2]
            m.on_heartbeat(hb("b", 101.0, members=[c_entry]), t)
        m.tick(t)
    assert m.member_names() == ["a", "b", "c"]
    # c dies: b's reports of it age, and c is dropped a timeout (and an interval) later
    age = 0.2
    outs: list[Any] = []
    while t < 108.0 and "c" in m.member_names():
        t = round(t + 0.1, 6)
        age = round(age + 0.1, 6)
        if abs((t * 10) % 5) < 1e-6:
            m.on_heartbeat(hb("b", 101.0, members=[["c", 101.5, 101.5, "router:c", "pub:c", age]]), t)
        outs += m.tick(t)
    assert "c" not in m.member_names()
    assert 105.5 <= t <= 106.5  # ~ a timeout after the last evidence (b heard it at ~103.8)


def test_the_view_is_cached_until_something_it_shows_changes() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0, capacity={"active": 1}), 100.0)
    m.tick(100.1)
    v = m.view
    assert m.view is v
    m.on_heartbeat(hb("b", 101.0, capacity={"active": 1}), 100.2)  # the same again
    m.set_local(100.2)
    assert m.view is v
    m.on_heartbeat(hb("b", 101.0, capacity={"active": 2}), 100.3)  # capacity: silent, but shown
    assert m.view is not v and m.view.instance("b").capacity == {"active": 2}


# -- level-triggered repair: probing seeds and remembered members (issue 9) --------------


def one_topology(sim: Sim) -> bool:
    names = sorted(n.name for n in sim.live())
    views = [n.m.view for n in sim.live()]
    return all(v.current and sorted(v.names) == names for v in views) and len({v.leader for v in views}) == 1


def test_restarted_seedless_first_node_finds_the_mesh_it_left() -> None:
    """The star start: a alone, b and c seeded with a; kill -9 a and start it again as before
    (no seeds): it probes the members it remembers, and one topology with one leader forms."""
    sim = Sim()
    sim.probing = True
    sim.start("a")
    sim.run(1)
    sim.start("b", ["a"])
    sim.start("c", ["a"])
    sim.run_until(lambda: sim.agreed(["a", "b", "c"], leader="a"), 3)
    sim.kill("a")
    sim.run_until(lambda: sim.agreed(["b", "c"], leader="b"), TIMEOUT + 1)
    sim.start("a")
    took = sim.run_until(lambda: one_topology(sim) and len(sim.views()["a"]) == 3, 2 * TIMEOUT)
    assert took <= 2 * TIMEOUT
    assert sim.views()["a"] == ["b", "c", "a"]  # the restarted node is a new incarnation: at the back
    sim.check_events()


def test_a_restarted_seed_without_memory_is_found_by_the_nodes_seeded_with_it() -> None:
    """Same, but a's data directory is gone: b and c keep probing their seed for their whole life."""
    sim = Sim()
    sim.probing = True
    sim.start("a")
    sim.run(1)
    sim.start("b", ["a"])
    sim.start("c", ["a"])
    sim.run_until(lambda: sim.agreed(["a", "b", "c"]), 3)
    sim.kill("a")
    sim.run(TIMEOUT + 2)
    sim.books["a"] = PeerBook()
    sim.start("a")
    sim.run_until(lambda: one_topology(sim) and len(sim.views()["b"]) == 3, 2 * TIMEOUT)
    assert {v.leader for v in (n.m.view for n in sim.live())} == {"b"}  # b was the oldest left
    sim.check_events()


def test_all_seeded_mesh_heals_after_two_restarts_that_found_each_other_first() -> None:
    """Four nodes each seeded with the others; c and d stop and start again at once, and join
    each other before anyone else: without reprobing that stays two topologies for good."""
    sim = Sim()
    sim.probing = True
    names = ["a", "b", "c", "d"]
    for n in names:
        sim.start(n, [x for x in names if x != n])
    sim.run_until(lambda: one_topology(sim) and len(sim.views()["a"]) == 4, 5)
    sim.kill("c")
    sim.kill("d")
    sim.run(TIMEOUT + 1)
    sim.partition(["a", "b"], ["c", "d"])  # the restarts reach only each other at first
    sim.start("c", [x for x in names if x != "c"])
    sim.start("d", [x for x in names if x != "d"])
    sim.run(4)
    assert sorted(sim.views()["c"]) == ["c", "d"] and sorted(sim.views()["a"]) == ["a", "b"]
    sim.heal()
    took = sim.run_until(lambda: one_topology(sim) and len(sim.views()["a"]) == 4, 2 * TIMEOUT)
    assert took <= 2 * TIMEOUT
    assert sim.nodes["a"].m.view.leader == "a"
    sim.check_events()


def test_a_healed_partition_merges_into_one_topology_and_the_oldest_leads() -> None:
    sim = Sim()
    sim.probing = True
    sim.start("a")
    for n in ["b", "c", "d"]:
        sim.run(0.3)
        sim.start(n, ["a"])
    sim.run_until(lambda: one_topology(sim) and len(sim.views()["a"]) == 4, 5)
    sim.partition(["a", "b"], ["c", "d"])
    sim.run_until(lambda: sim.views()["c"] == ["c", "d"] and sim.views()["a"] == ["a", "b"], TIMEOUT + 2)
    sim.run(10)
    sim.heal()
    took = sim.run_until(lambda: one_topology(sim) and len(sim.views()["d"]) == 4, 2 * TIMEOUT)
    assert took <= 2 * TIMEOUT
    assert sim.nodes["d"].m.view.leader == "a"  # ranks kept through the merge: the oldest leads
    assert sim.views()["d"] == ["a", "b", "c", "d"]
    sim.check_events()


def test_a_merge_join_keeps_the_joiners_rank_and_a_fresh_join_does_not() -> None:
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.tick(100.1)
    body = MemberInfo("z", 5.0, 5.0, "router:z", "pub:z").to_wire()
    _, fresh = m.on_join_request(body, 101.0)
    assert fresh["rank"] > 101.0
    _, merged = m.on_join_request({**MemberInfo("w", 6.0, 6.0, "router:w", "pub:w").to_wire(), "merge": True}, 101.0)
    assert merged["rank"] == 6.0
    m.tick(101.1)
    assert m.view.leader == "w"  # the usual rule over the merged view: the oldest rank leads
    alone = make()
    assert "merge" not in alone.join_body()  # a node alone joins fresh, behind everyone


def test_prober_backs_off_to_its_cap_and_forgets_live_members() -> None:
    p = Prober(0.1, 2.0)
    assert p.due(["x", "y"], set(), set(), 0.0) == ["x", "y"]
    assert p.due(["x", "y"], set(), set(), 0.0) == []  # in flight
    t = 0.0
    for _ in range(8):
        p.unanswered("x", t)
        t += 2.0
        assert p.due(["x"], set(), set(), t) == ["x"]
    assert p._state["x"].delay == 2.0  # capped: never slower than the cap
    p.answered("y", "ny", 0.0)
    assert p.due(["y"], set(), {"ny"}, 10.0) == []  # answered by a live member under another address
    p.unanswered("x", t)
    assert p.due(["x"], {"x"}, set(), 100.0) == []
    assert p.pending() == []  # live members are not tracked


def test_peer_book_expires_and_survives_bad_files(tmp_path: Any) -> None:
    from jobmesh.discovery.probe import load_peer_book, save_peer_book

    book = PeerBook(ttl=100.0)
    book.seen([("b", "tcp://b:1"), ("c", "tcp://c:1"), ("d", None)], 1000.0)
    assert book.endpoints(1050.0) == ["tcp://b:1", "tcp://c:1"]
    save_peer_book(tmp_path, book)
    again = load_peer_book(tmp_path, ttl=100.0)
    assert again.endpoints(1050.0) == ["tcp://b:1", "tcp://c:1"] and again.name_at("tcp://b:1") == "b"
    assert again.endpoints(1200.0) == []
    (tmp_path / "peers.json").write_text("{not json")
    assert len(load_peer_book(tmp_path)) == 0
    (tmp_path / "peers.json").write_text('{"peers": {"tcp://x:1": {"name": 3, "seen": "no"}, "y": 5}}')
    assert len(load_peer_book(tmp_path)) == 0


def test_a_message_from_another_incarnation_is_no_proof_of_life() -> None:
    """A restarted process's messages must not keep its dead predecessor a member (seed 239)."""
    m = make()
    m.drain()
    m.on_heartbeat(hb("b", 101.0), 100.0)
    m.touch("b", 102.0, incarnation=150.0)  # the new process, not the member we know
    m.tick(102.0)
    m.touch("b", 102.5, incarnation=101.0)
    assert m.member("b") is not None
    m.touch("b", 104.0, incarnation=150.0)
    tick_to(m, 102.6, 105.2)
    assert m.member("b") is None  # dropped: only its own incarnation's messages counted
