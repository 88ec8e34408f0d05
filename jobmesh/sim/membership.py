"""The membership cores alone (no stores, no actors) on the simulated network.

Two drivers, each doing around its core what the discovery actor does, on a
``SimNetwork`` and a virtual clock, deterministically from one seed:

- ``HeartbeatCluster`` drives ``membership.Membership``: every node publishes
  ``heartbeat_body()`` each interval to the nodes whose SUB is connected to its PUB
  (one copy per subscriber, as ZeroMQ's PUB sends them; a new subscription hears
  only after ``connect_delay``), heartbeats are fed to the core at its ticks (a
  quarter interval, as the actor absorbs what its receiver thread collected), joins
  go over point-to-point messages with the actor's timeout and retries, a seed
  publishes at once after a join and a joiner bursts a heartbeat every tick for two
  intervals. For large n it can run in *sampled* mode: only ``observers`` run a core;
  the others publish a real-size heartbeat (their member list with every age at the
  timeout, i.e. vouching for nobody) and process nothing. That keeps 1,000 nodes
  feasible in Python and is exact for what an observer sees without loss (see
  ``benchmarks/membership_sim.py``).
- ``SwimCluster`` drives ``swim.Swim``: messages go point to point, ticks happen
  when the core asks (``next_wakeup``).

Messages are msgpack-encoded for their size (``frame_size``: version frame + type +
body, as ``wire.encode`` frames them) and decoded again before delivery, so a core
only ever sees what would come off the wire. Time spent in the cores and in decoding
is measured per node (``NodeState.cpu``). Nodes can be started, formed (a topology
that already exists), killed, paused and resumed; hooks (``on_call``) run after
every call into a core, so a benchmark can time the exact moment a view changed.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgpack

from ..discovery.membership import (Connect, Disconnect, Dropped, InvalidMember, MemberInfo, Membership, Rejoin,
                                    ViewEvent)
from ..discovery.swim import Send, Suspected, Swim
from ..discovery.view import TopologyEvent
from .network import LinkSpec, SimNetwork

VERSION_FRAME_SIZE = 3  # b"jm1"
HEARTBEAT = "heartbeat"
HB_JOIN, HB_JOIN_REPLY = "join", "join_reply"


def frame_size(msg_type: str, packed_body: bytes) -> int:
    """Bytes on the wire for one message, as ``wire.encode`` frames it (ZeroMQ's own framing aside)."""
    return VERSION_FRAME_SIZE + len(msg_type) + len(packed_body)


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def default_info(name: str, incarnation: float, endpoint: str | None = None) -> MemberInfo:
    """A node as the benchmark shows it: one consumer topic, a capacity like a real node's."""
    return MemberInfo(
        name, incarnation, incarnation, endpoint=endpoint or name, pub_endpoint=f"{name}/pub",
        topics=("demo/work",), offload_topics=("demo/work",),
        capacity={"slots": 16, "active": 0, "queued": 0, "throughput": 0.0},
    )


@dataclass
class NodeState:
    name: str
    core: Any  # Membership | Swim; None for a background node of a sampled heartbeat cluster
    alive: bool = True
    paused: bool = False
    inbox: list[tuple[float, str, Any]] = field(default_factory=list)
    events: list[TopologyEvent] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)
    rejoins: list[str] = field(default_factory=list)
    cpu: float = 0.0  # seconds in the core and in decoding what it received
    calls: int = 0
    wake: float = math.inf
    last_tick_at: float = -math.inf
    ticks_at_once: int = 0

    @property
    def up(self) -> bool:
        return self.alive and not self.paused


class _Cluster:
    """What both drivers share: nodes, timers, the network, the clock, hooks."""

    def __init__(self, rng: random.Random, net: SimNetwork | None, link: LinkSpec | None, start: float) -> None:
        self.rng = rng
        self.net = net or SimNetwork(random.Random(rng.getrandbits(64)),
                                     link or LinkSpec(latency=0.0005, jitter=0.0005))
        self.now = start
        self.nodes: dict[str, NodeState] = {}
        self.retired: list[NodeState] = []
        self.on_call: list[Callable[[NodeState, float], None]] = []
        self._timers: list[tuple[float, int, str, str]] = []  # (at, seq, node, kind)
        self._seq = 0

    # -- nodes ---------------------------------------------------------------------
    def live(self) -> list[NodeState]:
        return [n for n in self.nodes.values() if n.up and n.core is not None]

    def kill(self, name: str) -> None:
        """kill -9: the node stops; what is in flight to it is lost."""
        self.nodes[name].alive = False
        self.net.purge(name)

    def pause(self, name: str) -> None:
        """SIGSTOP: the node does nothing; messages to it wait in its socket."""
        self.nodes[name].paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        node.paused = False
        inbox, node.inbox = node.inbox, []
        for _, kind, payload in inbox:
            self._receive(node, kind, payload)
        self._resumed(node)

    def agreed(self) -> bool:
        """Every live node shows the same current view (members, order, leader)."""
        views = [n.core.view for n in self.live()]
        if not views or not all(v.current for v in views):
            return False
        first = (views[0].names, views[0].leader)
        return all((v.names, v.leader) == first for v in views)

    # -- running -------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self._run(self.now + seconds, None, 0.0)

    def run_until(self, cond: Callable[[], bool], limit: float, check_every: float = 0.05) -> float | None:
        """Run until ``cond()`` (checked every ``check_every`` simulated seconds); the time it
        took, or None when ``limit`` passed first."""
        t0 = self.now
        return (self.now - t0) if self._run(t0 + limit, cond, check_every) else None

    def _run(self, end: float, cond: Callable[[], bool] | None, check_every: float) -> bool:
        next_check = self.now
        while True:
            if cond is not None and self.now >= next_check:
                if cond():
                    return True
                next_check = self.now + check_every
            t_net = self.net.next_delivery_time()
            t_timer = self._timers[0][0] if self._timers else math.inf
            t = min(t_timer, t_net if t_net is not None else math.inf)
            if cond is not None:
                t = min(t, next_check)
            if t > end:
                self.now = max(self.now, end)
                return cond() if cond is not None else False
            self.now = max(self.now, t)
            if t_net is not None and t_net <= self.now:
                for at, src, dst, payload in self.net.deliverable(self.now):
                    node = self.nodes.get(dst)
                    if node is None or not node.alive:
                        continue
                    kind, data = payload
                    if node.paused:
                        node.inbox.append((at, kind, data))
                    else:
                        self._receive(node, kind, data)
            while self._timers and self._timers[0][0] <= self.now:
                at, _, name, kind = heapq.heappop(self._timers)
                node = self.nodes.get(name)
                if node is not None and node.alive:
                    self._timer(node, kind, at)

    def _at(self, t: float, name: str, kind: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (t, self._seq, name, kind))

    def _send(self, src: str, dst: str, kind: str, body: dict[str, Any], packed: bytes | None = None) -> None:
        data = pack(body) if packed is None else packed
        self.net.send(src, dst, (kind, data), self.now, size=frame_size(kind, data))

    def _decode(self, node: NodeState, data: Any) -> Any:
        t0 = time.perf_counter()
        body = unpack(data) if isinstance(data, bytes) else data
        node.cpu += time.perf_counter() - t0
        return body

    def _collect(self, node: NodeState, outs: list[Any]) -> None:
        for o in outs:
            if isinstance(o, ViewEvent):
                node.events.append(o.event)
            elif isinstance(o, Dropped):
                node.dropped.append(o)
            elif isinstance(o, Suspected):
                node.suspected.append(o.name)
            elif isinstance(o, Rejoin):
                node.rejoins.append(o.reason)

    def _hooks(self, node: NodeState) -> None:
        for hook in self.on_call:
            hook(node, self.now)

    # driver-specific
    def _receive(self, node: NodeState, kind: str, data: Any) -> None:
        raise NotImplementedError

    def _timer(self, node: NodeState, kind: str, at: float) -> None:
        raise NotImplementedError

    def _resumed(self, node: NodeState) -> None:
        raise NotImplementedError


class SwimCluster(_Cluster):
    """``Swim`` cores on a simulated network: messages point to point, ticks when a core asks."""

    def __init__(self, seed: int = 0, *, net: SimNetwork | None = None, link: LinkSpec | None = None,
                 start: float = 1000.0, **swim_options: Any) -> None:
        super().__init__(random.Random(seed), net, link, start)
        self.options = swim_options

    def start(self, name: str, seeds: Iterable[str] = (), incarnation: float | None = None) -> NodeState:
        """A new process: joins through ``seeds`` (node names are their endpoints)."""
        if name in self.nodes:
            self.retired.append(self.nodes[name])
            self.net.purge(name)
        inc = self.now if incarnation is None else incarnation
        core = Swim(default_info(name, inc), now=self.now, rng=random.Random(self.rng.getrandbits(64)),
                    seeds=list(seeds), **self.options)
        node = NodeState(name, core)
        self.nodes[name] = node
        self._call(node, core.drain())
        return node

    def form(self, names: list[str]) -> None:
        """Nodes that form one topology already (ranked in this order), as if joined long ago."""
        infos = [default_info(n, self.now - len(names) + i) for i, n in enumerate(names)]
        members = [(info, 0) for info in infos]
        for i, name in enumerate(names):
            core = Swim(infos[i], now=self.now, rng=random.Random(self.rng.getrandbits(64)), members=members,
                        **self.options)
            node = NodeState(name, core)
            self.nodes[name] = node
            self._call(node, core.drain())

    def _call(self, node: NodeState, outs: list[Any]) -> None:
        for o in outs:
            if isinstance(o, Send):
                self._send(node.name, o.endpoint, o.type, o.body)
        self._collect(node, outs)
        self._schedule(node)
        self._hooks(node)

    def _schedule(self, node: NodeState) -> None:
        w = max(node.core.next_wakeup(), self.now)
        if w != node.wake:
            node.wake = w  # an earlier timer entry for this node is now stale
            if w < math.inf:
                self._at(w, node.name, "tick")

    def _receive(self, node: NodeState, kind: str, data: Any) -> None:
        body = self._decode(node, data)
        t0 = time.perf_counter()
        try:
            outs = node.core.on_message(kind, body, self.now)
        except InvalidMember:
            outs = []  # a refused join, a malformed message: the actor logs it
        node.cpu += time.perf_counter() - t0
        node.calls += 1
        self._call(node, outs)

    def _timer(self, node: NodeState, kind: str, at: float) -> None:
        if node.paused or at != node.wake:
            return  # paused (resume ticks it), or a stale entry
        if at == node.last_tick_at:
            node.ticks_at_once += 1
            if node.ticks_at_once > 1000:
                raise RuntimeError(f"{node.name}: the core keeps asking for a tick at {at} (next_wakeup bug)")
        else:
            node.last_tick_at, node.ticks_at_once = at, 0
        t0 = time.perf_counter()
        outs = node.core.tick(self.now)
        node.cpu += time.perf_counter() - t0
        node.calls += 1
        node.wake = math.inf
        self._call(node, outs)

    def _resumed(self, node: NodeState) -> None:
        node.wake = self.now
        self._timer(node, "tick", self.now)


class HeartbeatCluster(_Cluster):
    """``Membership`` cores with all-to-all heartbeats, as the discovery actor runs them."""

    tick_fraction = 4

    def __init__(self, seed: int = 0, *, net: SimNetwork | None = None, link: LinkSpec | None = None,
                 start: float = 1000.0, interval: float = 0.5, timeout: float = 2.5,
                 connect_delay: float | None = None) -> None:
        super().__init__(random.Random(seed), net, link, start)
        self.interval = interval
        self.timeout = timeout
        self.connect_delay = connect_delay if connect_delay is not None else 2 * self.net.default.latency
        self.subs: dict[str, dict[str, float]] = {}  # publisher -> {subscriber: hears from}
        self._pub_of: dict[str, str] = {}  # pub endpoint -> node
        self._batches: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._burst: dict[str, int] = {}
        self._joining: dict[str, list[str]] = {}  # node -> join targets left in this round
        self._background: dict[str, tuple[bytes, Any, float]] = {}  # node -> (packed, decoded, decode s)
        self.seeds: dict[str, list[str]] = {}
        self._last_sent: dict[str, float] = {}
        self._silence: dict[str, float] = {}

    # -- nodes ---------------------------------------------------------------------
    def start(self, name: str, seeds: Iterable[str] = (), incarnation: float | None = None) -> NodeState:
        if name in self.nodes:
            self.retired.append(self.nodes[name])
            self.net.purge(name)
            for subs in self.subs.values():
                subs.pop(name, None)
        inc = self.now if incarnation is None else incarnation
        seeds = list(seeds)
        core = Membership(default_info(name, inc), now=self.now, heartbeat_interval=self.interval,
                          heartbeat_timeout=self.timeout, expect_join=bool(seeds))
        node = NodeState(name, core)
        self.nodes[name] = node
        self.seeds[name] = seeds
        self._pub_of[core.local.pub_endpoint] = name
        self.subs.setdefault(name, {})
        self._batches[name] = []
        self._apply(node, core.drain())
        self._start_timers(name)
        self._publish(node)
        if seeds:
            self._want_join(node)
        return node

    def form(self, names: list[str], observers: Iterable[str] | None = None) -> None:
        """A topology that exists already. With ``observers``, only those run a core (sampled mode)."""
        watch = set(names) if observers is None else set(observers)
        infos = [default_info(n, self.now - len(names) + i) for i, n in enumerate(names)]
        listing = [dict(i.to_wire(), age=0.0) for i in infos]
        gossip = [[*i.gossip(), self.timeout] for i in infos]  # background nodes vouch for nobody
        for i, name in enumerate(names):
            self._pub_of[infos[i].pub_endpoint] = name  # type: ignore[index]
            self.subs.setdefault(name, {})
            self._batches[name] = []
        decode_s: float | None = None  # what decoding one background heartbeat costs (all are the same size)
        for i, name in enumerate(names):
            if name in watch:
                core = Membership(infos[i], now=self.now, heartbeat_interval=self.interval,
                                  heartbeat_timeout=self.timeout)
                node = NodeState(name, core)
                self.nodes[name] = node
                self.seeds[name] = []
                core.drain()
                t0 = time.perf_counter()
                outs = core.on_join_reply({"members": [m for m in listing if m["name"] != name]}, self.now)
                node.cpu += time.perf_counter() - t0
                self._apply(node, outs, delay=0.0)
            else:
                body = dict(infos[i].to_wire(), members=gossip[:i] + gossip[i + 1:], dropped=[], version=1)
                packed = pack(body)
                if decode_s is None:
                    runs = []
                    for _ in range(7):
                        t0 = time.perf_counter()
                        unpack(packed)
                        runs.append(time.perf_counter() - t0)
                    decode_s = sorted(runs)[3]
                self._background[name] = (packed, unpack(packed), decode_s)
                self.nodes[name] = NodeState(name, None)
            self._start_timers(name)

    def body_size(self, name: str) -> int:
        """The frame size of ``name``'s heartbeat now."""
        if name in self._background:
            return frame_size(HEARTBEAT, self._background[name][0])
        return frame_size(HEARTBEAT, pack(self._body(self.nodes[name])))

    # -- plumbing ------------------------------------------------------------------
    def _start_timers(self, name: str) -> None:
        self._at(self.now + self.rng.random() * self.interval, name, "hb")
        if name not in self._background:
            self._at(self.now + self.rng.random() * self.interval / self.tick_fraction, name, "tick")

    def _body(self, node: NodeState) -> dict[str, Any]:
        body = node.core.heartbeat_body(self.now)
        body["version"] = 1
        return body

    def _publish(self, node: NodeState) -> None:
        if node.name in self._background:
            packed, decoded, _ = self._background[node.name]
            payload: Any = decoded  # decoded once; each receiver is charged the decode time
        else:
            packed = pack(self._body(node))
            payload = packed
        size = frame_size(HEARTBEAT, packed)
        for sub, hears_from in self.subs[node.name].items():
            target = self.nodes.get(sub)
            if target is not None and target.alive and self.now >= hears_from:
                self.net.send(node.name, sub, (HEARTBEAT, payload), self.now, size=size)

    def _apply(self, node: NodeState, outs: list[Any], delay: float | None = None) -> None:
        wait = self.connect_delay if delay is None else delay
        for o in outs:
            if isinstance(o, Connect):
                pub = self._pub_of.get(o.endpoint)
                if pub is not None:
                    self.subs[pub][node.name] = self.now + wait
            elif isinstance(o, Disconnect):
                pub = self._pub_of.get(o.endpoint)
                if pub is not None:
                    self.subs[pub].pop(node.name, None)
            elif isinstance(o, Rejoin):
                self._want_join(node)
                self._publish(node)
        self._collect(node, outs)
        self._hooks(node)

    def _want_join(self, node: NodeState) -> None:
        core: Membership = node.core
        if core.rejoining:
            targets = [*core.endpoints(), *self.seeds[node.name]]
        else:
            targets = [*self.seeds[node.name], *core.endpoints()]
        self._joining[node.name] = list(dict.fromkeys(t for t in targets if t != node.name))
        self._try_join(node)

    def _try_join(self, node: NodeState) -> None:
        targets = self._joining.get(node.name)
        if not targets:
            self._joining.pop(node.name, None)
            core: Membership = node.core
            if core.rejoining or (self.seeds[node.name] and not core.joined):  # a round failed: back off
                self._at(self.now + max(2.0, 4 * self.interval), node.name, "rejoin")
            return
        ep = targets.pop(0)
        body = dict(node.core.local.to_wire(), **{"from": node.name})
        self._send(node.name, ep, HB_JOIN, body)
        self._at(self.now + max(0.5, 2 * self.interval), node.name, "join-timeout")

    def _receive(self, node: NodeState, kind: str, data: Any) -> None:
        core: Membership = node.core
        if core is None:
            return
        if kind == HEARTBEAT:
            if isinstance(data, bytes):
                body = self._decode(node, data)
            else:  # a background node's heartbeat, decoded once: charge the decode to this receiver
                body = data
                node.cpu += self._background[data["name"]][2]
            self._batches[node.name].append((self.now, body))  # the receiver thread keeps the arrival time
        elif kind == HB_JOIN:
            body = self._decode(node, data)
            t0 = time.perf_counter()
            try:
                outs, reply = core.on_join_request(body, self.now)
            except InvalidMember:
                return
            finally:
                node.cpu += time.perf_counter() - t0
            self._apply(node, outs)
            self._send(node.name, body["from"], HB_JOIN_REPLY, reply)
            self._publish(node)  # spread the newcomer at once
        elif kind == HB_JOIN_REPLY:
            if node.name not in self._joining:
                return  # a late answer to a round already over
            body = self._decode(node, data)
            t0 = time.perf_counter()
            outs = core.on_join_reply(body, self.now)
            node.cpu += time.perf_counter() - t0
            del self._joining[node.name]
            self._apply(node, outs)
            self._publish(node)
            self._burst[node.name] = 2 * self.tick_fraction

    def _timer(self, node: NodeState, kind: str, at: float) -> None:
        name = node.name
        if kind == "hb":
            self._at(self.now + self.interval, name, "hb")
            if not node.paused:
                self._publish(node)
                self._last_sent[name] = self.now
            return
        if kind in ("join-timeout", "rejoin"):
            if node.paused:
                return
            if kind == "rejoin":
                self._want_join(node)
            elif name in self._joining:
                self._try_join(node)
            return
        self._at(self.now + self.interval / self.tick_fraction, name, "tick")
        if node.paused:
            return
        core: Membership = node.core
        batch, self._batches[name] = self._batches[name], []
        t0 = time.perf_counter()
        outs: list[Any] = []
        for arrived, body in batch:
            try:
                outs.extend(core.on_heartbeat(body, arrived))
            except InvalidMember:
                pass
        outs.extend(core.tick(self.now, own_silence=self._silence.pop(name, 0.0)))
        node.cpu += time.perf_counter() - t0
        node.calls += 1 + len(batch)
        self._apply(node, outs)
        if self._burst.get(name, 0) > 0:
            self._burst[name] -= 1
            self._publish(node)

    def _resumed(self, node: NodeState) -> None:
        # its heartbeat thread measured its own gap; the next tick learns about it
        self._silence[node.name] = self.now - self._last_sent.get(node.name, self.now)
