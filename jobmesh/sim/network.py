"""A seeded, discrete-event simulated network: the transport of deterministic simulation.

Pure: no asyncio, no sockets, no threads, no wall clock. Time is a float the caller
advances; every random choice comes from the ``random.Random`` it is given. The same
seed and the same sequence of calls give the same deliveries, bit for bit (nothing
here iterates over a set or depends on ``PYTHONHASHSEED``).

It knows nothing about what it carries: a payload is any object, its size is the
caller's ``size`` or ``len(payload)`` for bytes. Nodes are names (any sortable,
hashable value, usually ``str``) and exist as soon as they send or are sent to.

Faults, per directed link ``(src, dst)`` (see ``LinkSpec``) or across the network:

- latency: ``latency`` plus a uniform ``jitter``. Links are FIFO by default (a later
  message never arrives before an earlier one, as on a TCP connection), so jitter
  alone does not reorder; ``fifo=False`` lets it.
- loss (``loss``), duplication (``dup``: a second copy arrives up to ``latency`` later)
  and reordering (``reorder``: a message is held back by up to ``reorder_delay`` and
  later messages overtake it).
- partitions (``partition(a, b)``, two-way or ``one_way``): messages across the cut
  are dropped, both when sent and when they would arrive (in flight when the cut
  happened). ``heal()`` removes one or all.
- clogs (``clog(src, dst)``): the link holds everything that would arrive and
  releases it, in order, on ``unclog`` — FoundationDB's clogging. A clog or unclog
  may be scheduled for a later time (``at=``), and ``swizzle_clog`` schedules
  FoundationDB's "swizzle-clog": a random subset of links clogged one at a time,
  then unclogged one at a time in another random order.
- ``purge(node)``: drop what is in flight to a node (a crashed process loses the
  contents of its connections).

Driving it::

    net = SimNetwork(random.Random(seed), default=LinkSpec(latency=0.001, jitter=0.0005))
    net.send("a", "b", payload, now, size=len(frame))
    while (t := net.next_delivery_time()) is not None and t <= end:
        for at, src, dst, payload in net.deliverable(t):
            ...  # hand it to dst; its replies are net.send(..., now=at)

``next_delivery_time`` may name a time at which nothing comes out (the message
was dropped at arrival, or held by a clog, or the time is a scheduled clog
change): calling ``deliverable`` then is cheap and makes progress.
Counters: ``stats(node)`` (messages and bytes sent and received by a node, messages
of it that were lost) and ``totals`` (per fault kind).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any, Hashable, Iterable, NamedTuple

Node = Hashable


@dataclass(frozen=True)
class LinkSpec:
    """How one directed link behaves; the network's ``default`` applies to links not set."""

    latency: float = 0.001  # seconds, one way
    jitter: float = 0.0  # uniform extra delay in [0, jitter)
    loss: float = 0.0  # probability that a message is lost
    dup: float = 0.0  # probability that a message arrives twice
    reorder: float = 0.0  # probability that a message is held back (and overtaken)
    reorder_delay: float = 0.01  # how far back, at most (seconds)
    fifo: bool = True  # without faults, arrivals keep sending order (a TCP connection)

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "reorder_delay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")
        for name in ("loss", "dup", "reorder"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1]")


class Delivery(NamedTuple):
    """A message arriving: when, from whom, to whom, what."""

    at: float
    src: Node
    dst: Node
    payload: Any


@dataclass
class NodeStats:
    """What one node put on and took off the network (a lost message still cost its sender)."""

    sent_msgs: int = 0
    sent_bytes: int = 0
    recv_msgs: int = 0
    recv_bytes: int = 0
    lost_msgs: int = 0  # sent by this node and never delivered (loss, partition, purge)


@dataclass
class NetTotals:
    """Network-wide counters, one per fate a message can have."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0  # random loss
    partitioned: int = 0  # dropped at a partition (when sent or when arriving)
    purged: int = 0
    duplicated: int = 0
    reordered: int = 0
    held: int = 0  # arrivals held by a clog (delivered later on unclog)


@dataclass(frozen=True)
class Partition:
    """A cut: nothing from ``a`` reaches ``b`` (nor ``b`` -> ``a`` unless ``one_way``).

    ``b`` None means every node not in ``a``.
    """

    a: frozenset
    b: frozenset | None
    one_way: bool = False

    def blocks(self, src: Node, dst: Node) -> bool:
        if src in self.a and (dst not in self.a if self.b is None else dst in self.b):
            return True
        if self.one_way:
            return False
        return dst in self.a and (src not in self.a if self.b is None else src in self.b)


_CLOG, _UNCLOG = 0, 1


class SimNetwork:
    """Point-to-point messages between named nodes with seeded delays and faults."""

    def __init__(self, rng: random.Random, default: LinkSpec | None = None) -> None:
        self.rng = rng
        self.default = default or LinkSpec()
        self.totals = NetTotals()
        self.now = -math.inf  # the latest time a call named; time never goes back
        self._links: dict[tuple[Node, Node], LinkSpec] = {}
        self._last_at: dict[tuple[Node, Node], float] = {}  # FIFO: latest arrival per link
        self._queue: list[tuple[float, int, Node, Node, Any, int]] = []  # (at, seq, src, dst, payload, size)
        self._controls: list[tuple[float, int, int, Node, Node]] = []  # (at, seq, kind, src, dst)
        self._seq = 0
        self._partitions: list[Partition] = []
        self._clogged: dict[tuple[Node, Node], None] = {}  # insertion-ordered, never a set
        self._held: dict[tuple[Node, Node], list[tuple[float, int, Node, Node, Any, int]]] = {}
        self._stats: dict[Node, NodeStats] = {}

    # -- configuration -------------------------------------------------------------
    def set_default(self, **changes: Any) -> None:
        """Change the default link (e.g. ``loss=0.01``) for every link not set one by one."""
        self.default = replace(self.default, **changes)

    def set_link(self, src: Node, dst: Node, *, both_ways: bool = False, **changes: Any) -> None:
        """Change one directed link (``latency=``, ``jitter=``, ``loss=``, ``dup=``, ...)."""
        allowed = {f.name for f in fields(LinkSpec)}
        bad = set(changes) - allowed
        if bad:
            raise TypeError(f"unknown link field(s): {', '.join(sorted(map(str, bad)))}")
        for s, d in ([(src, dst), (dst, src)] if both_ways else [(src, dst)]):
            self._links[(s, d)] = replace(self.link(s, d), **changes)

    def reset_link(self, src: Node, dst: Node) -> None:
        """Back to the default."""
        self._links.pop((src, dst), None)

    def link(self, src: Node, dst: Node) -> LinkSpec:
        return self._links.get((src, dst), self.default)

    # -- partitions ----------------------------------------------------------------
    def partition(self, a: Iterable[Node], b: Iterable[Node] | None = None, *, one_way: bool = False) -> Partition:
        """Cut ``a`` from ``b`` (from everyone else if ``b`` is None); ``heal(p)`` undoes it."""
        p = Partition(frozenset(a), None if b is None else frozenset(b), one_way)
        self._partitions.append(p)
        return p

    def heal(self, partition: Partition | None = None) -> None:
        """Remove one partition, or all of them (clogs are separate: ``unclog_all``)."""
        if partition is None:
            self._partitions.clear()
        else:
            self._partitions = [p for p in self._partitions if p is not partition]

    def blocked(self, src: Node, dst: Node) -> bool:
        return any(p.blocks(src, dst) for p in self._partitions)

    # -- clogs ---------------------------------------------------------------------
    def clog(self, src: Node, dst: Node, at: float | None = None) -> None:
        """Hold every arrival on ``src -> dst`` until unclogged (now, or from time ``at``)."""
        if at is None:
            self._clogged[(src, dst)] = None
        else:
            self._schedule(at, _CLOG, src, dst)

    def unclog(self, src: Node, dst: Node, at: float | None = None) -> None:
        """Release what the link held, in order, now (or at time ``at``)."""
        if at is None:
            self._release(src, dst, self.now)
        else:
            self._schedule(at, _UNCLOG, src, dst)

    def unclog_all(self) -> None:
        """Release every clogged link now, and forget the clogs and unclogs scheduled for later
        (a swizzle-clog still under way would clog links again after a heal)."""
        self._controls = []
        for src, dst in list(self._clogged):
            self._release(src, dst, self.now)

    def clogged(self) -> list[tuple[Node, Node]]:
        return list(self._clogged)

    def swizzle_clog(
        self, nodes: Iterable[Node], *, start: float, step: float, fraction: float = 0.5
    ) -> list[tuple[float, str, Node, Node]]:
        """FoundationDB's swizzle-clog, scheduled: clog a random ``fraction`` of the directed
        links among ``nodes`` one every ``step`` seconds from ``start``, then unclog them one
        every ``step`` in another random order. Returns the plan ``[(at, "clog"|"unclog", src, dst)]``.

        Why: faults that arrive and leave one link at a time reach states that a clean
        partition never does (asymmetric, half-connected, changing while a protocol reacts).
        """
        ordered = sorted(set(nodes))
        links = [(s, d) for s in ordered for d in ordered if s != d]
        count = max(1, round(fraction * len(links))) if links else 0
        chosen = self.rng.sample(links, count)
        release = list(chosen)
        self.rng.shuffle(release)
        plan: list[tuple[float, str, Node, Node]] = []
        t = start
        for s, d in chosen:
            self.clog(s, d, at=t)
            plan.append((t, "clog", s, d))
            t += step
        for s, d in release:
            self.unclog(s, d, at=t)
            plan.append((t, "unclog", s, d))
            t += step
        return plan

    # -- traffic -------------------------------------------------------------------
    def send(self, src: Node, dst: Node, payload: Any, now: float, size: int | None = None) -> None:
        """Put a message on the link ``src -> dst`` at time ``now``; it may be lost, late, doubled."""
        self._advance(now)
        if size is None:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError("size is required for a payload that is not bytes")
            size = len(payload)
        st = self._node(src)
        st.sent_msgs += 1
        st.sent_bytes += size
        self.totals.sent += 1
        if self._partitions and self.blocked(src, dst):
            self.totals.partitioned += 1
            st.lost_msgs += 1
            return
        spec = self._links.get((src, dst), self.default)
        rng = self.rng
        if spec.loss and rng.random() < spec.loss:
            self.totals.lost += 1
            st.lost_msgs += 1
            return
        at = now + spec.latency + (rng.random() * spec.jitter if spec.jitter else 0.0)
        if spec.reorder and rng.random() < spec.reorder:
            # held back: does not move the FIFO mark, so later messages overtake it
            at += rng.random() * spec.reorder_delay
            self.totals.reordered += 1
        elif spec.fifo:
            key = (src, dst)
            last = self._last_at.get(key, -math.inf)
            if at < last:
                at = last
            self._last_at[key] = at
        self._push(at, src, dst, payload, size)
        if spec.dup and rng.random() < spec.dup:
            self.totals.duplicated += 1
            self._push(at + rng.random() * max(spec.latency, 1e-6), src, dst, payload, size)

    def next_delivery_time(self) -> float | None:
        """When ``deliverable`` may next have something (a message due, or a scheduled clog change)."""
        t = self._queue[0][0] if self._queue else None
        if self._controls and (t is None or self._controls[0][0] < t):
            t = self._controls[0][0]
        return t

    def deliverable(self, now: float) -> list[Delivery]:
        """Every message that arrives by ``now``, in arrival order (clog changes applied in time order)."""
        self._advance(now)
        out: list[Delivery] = []
        q, controls = self._queue, self._controls
        while True:
            # a clog change due at the same time as an arrival applies first
            if controls and controls[0][0] <= now and (not q or controls[0][0] <= q[0][0]):
                at, _, kind, src, dst = heapq.heappop(controls)
                if kind == _CLOG:
                    self._clogged[(src, dst)] = None
                else:
                    self._release(src, dst, at)
                continue
            if not q or q[0][0] > now:
                return out
            item = heapq.heappop(q)
            at, _, src, dst, payload, size = item
            if self._partitions and self.blocked(src, dst):
                self.totals.partitioned += 1
                self._node(src).lost_msgs += 1
                continue
            if self._clogged and (src, dst) in self._clogged:
                self._held.setdefault((src, dst), []).append(item)
                self.totals.held += 1
                continue
            st = self._node(dst)
            st.recv_msgs += 1
            st.recv_bytes += size
            self.totals.delivered += 1
            out.append(Delivery(at, src, dst, payload))

    def purge(self, node: Node, *, inbound: bool = True, outbound: bool = False) -> int:
        """Drop what is in flight (and held) to ``node`` (and from it, with ``outbound``); how many."""

        def doomed(src: Node, dst: Node) -> bool:
            return (inbound and dst == node) or (outbound and src == node)

        kept = [m for m in self._queue if not doomed(m[2], m[3])]
        dropped = [m for m in self._queue if doomed(m[2], m[3])]
        for key in list(self._held):
            if doomed(*key):
                dropped.extend(self._held.pop(key))
        if dropped:
            heapq.heapify(kept)
            self._queue = kept
            for m in dropped:
                self._node(m[2]).lost_msgs += 1
            self.totals.purged += len(dropped)
        return len(dropped)

    def in_flight(self) -> int:
        """Messages on their way or held by a clog."""
        return len(self._queue) + sum(len(v) for v in self._held.values())

    # -- counters ------------------------------------------------------------------
    def stats(self, node: Node) -> NodeStats:
        return self._node(node)

    def nodes(self) -> list[Node]:
        """Every node seen so far, in the order first seen."""
        return list(self._stats)

    def reset_stats(self) -> None:
        """Zero the per-node counters (e.g. after a warm-up), keeping messages in flight."""
        self._stats = {n: NodeStats() for n in self._stats}
        self.totals = NetTotals()

    # -- internals -----------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if now < self.now:
            raise ValueError(f"time went back: {now} after {self.now}")
        self.now = now

    def _node(self, node: Node) -> NodeStats:
        st = self._stats.get(node)
        if st is None:
            st = self._stats[node] = NodeStats()
        return st

    def _push(self, at: float, src: Node, dst: Node, payload: Any, size: int) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, src, dst, payload, size))
        self._node(dst)

    def _schedule(self, at: float, kind: int, src: Node, dst: Node) -> None:
        self._seq += 1
        heapq.heappush(self._controls, (at, self._seq, kind, src, dst))

    def _release(self, src: Node, dst: Node, at: float) -> None:
        key = (src, dst)
        self._clogged.pop(key, None)
        held = self._held.pop(key, [])
        for _, _, s, d, payload, size in held:  # in the order they arrived
            self._push(at, s, d, payload, size)
        if held and self._last_at.get(key, -math.inf) < at:
            self._last_at[key] = at
