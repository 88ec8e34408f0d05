"""The membership core of discovery: who is in the topology, who leads, what changed.

Pure: no sockets, no sleeps, the clock is a parameter. The discovery actor feeds it
what arrives (heartbeats, join requests and replies, its own property changes, a
periodic ``tick``) and carries out what comes back: ``Connect``/``Disconnect`` of the
SUB socket, ``Rejoin`` requests, and ``ViewEvent`` topology events.

Decisions, and why:

- Failure detection: a member not heard from (any message counts) for
  ``heartbeat_timeout`` is dropped. Time the local event loop spent stalled is not
  held against peers (their heartbeats were queued in the socket meanwhile).
- Order and leader: members are ordered by *rank*, then name; the first is the
  leader. A node's rank is its incarnation (start time), raised on joining to just
  behind every member already in the topology — so a newcomer, a restarted node
  (new incarnation) and a paused node that rejoins all go to the back, whatever
  their clocks say, and the leader changes only when it leaves. Every member
  advertises its rank, so all views agree on the order once they agree on the set.
- Learning newcomers: a seed answers a join with its member list and from then on
  gossips the newcomer in its heartbeats. Gossip only makes a *candidate*: we connect
  to its PUB endpoint, but it becomes a member only when its own heartbeat arrives.
  A dead node that some peer has not yet timed out is therefore never resurrected.
- Dropped nodes leave a tombstone (name, incarnation, rank), announced in
  heartbeats for a while. A heartbeat from a tombstoned node with the same rank is
  ignored; the node itself sees it is listed as dropped (or that its own heartbeats
  stopped for longer than the timeout, e.g. SIGSTOP), and rejoins at the back.
- Events keep Sling's guarantees: ``TOPOLOGY_INIT`` first (once the initial join is
  done or given up), ``TOPOLOGY_CHANGING`` then ``TOPOLOGY_CHANGED`` for a change of
  members, order or endpoints (coalesced while ``settle`` has not passed), and
  ``PROPERTIES_CHANGED`` alone when only properties changed. Capacity figures change
  all the time and are not properties in that sense: they refresh the current view
  silently (read ``view`` for fresh capacity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Union

from ..plants import PLANTS
from .publication import ViewEvent, ViewPublisher
from .view import InstanceView, TopologyEvent, TopologyEventType, TopologyView

RANK_STEP = 1e-3  # how far behind the last member a joiner is ranked (seconds)
MAX_TOMBSTONES = 512
MAX_CANDIDATES = 1024
MAX_NAME_LENGTH = 200


class InvalidMember(ValueError):
    """A heartbeat or join body whose member description cannot be used."""


class NameTaken(InvalidMember):
    """A join under a name that a live member of another process already has."""

    def __init__(self, name: str, holder_endpoint: str | None) -> None:
        super().__init__(f"a node named {name} is already in this topology at {holder_endpoint or 'an unknown endpoint'}; "
                         f"choose another --name")
        self.name = name
        self.holder_endpoint = holder_endpoint


@dataclass(frozen=True)
class MemberInfo:
    """What a node says about itself in its heartbeats."""

    name: str
    incarnation: float
    rank: float
    endpoint: str | None = None
    pub_endpoint: str | None = None
    topics: tuple[str, ...] = ()
    offload_topics: tuple[str, ...] = ()
    capacity: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> tuple[Any, ...]:
        """What a topology change is made of (set, order, endpoints)."""
        return (self.name, self.incarnation, self.rank, self.endpoint, self.pub_endpoint)

    def property_key(self) -> tuple[Any, ...]:
        """What a PROPERTIES_CHANGED is made of (capacity deliberately left out)."""
        return (self.topics, self.offload_topics, self.properties)

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "rank": self.rank,
            "endpoint": self.endpoint,
            "pub": self.pub_endpoint,
            "topics": list(self.topics),
            "offload_topics": list(self.offload_topics),
            "capacity": dict(self.capacity),
            "properties": dict(self.properties),
        }

    def gossip(self) -> list[Any]:
        return [self.name, self.incarnation, self.rank, self.endpoint, self.pub_endpoint]

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "MemberInfo":
        """Validate a peer's self-description; ``InvalidMember`` says what is wrong."""
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidMember("name must be a non-empty string")
        inc = _number(body.get("incarnation"), "incarnation")
        rank = _number(body.get("rank", inc), "rank")
        endpoint = _opt_str(body.get("endpoint"), "endpoint")
        pub = _opt_str(body.get("pub"), "pub")
        topics = _str_tuple(body.get("topics", []), "topics")
        offload = _str_tuple(body.get("offload_topics", []), "offload_topics")
        capacity = body.get("capacity", {})
        props = body.get("properties", {})
        if not isinstance(capacity, dict) or not isinstance(props, dict):
            raise InvalidMember("capacity and properties must be maps")
        return cls(name, inc, rank, endpoint, pub, topics, offload, capacity, props)

    @classmethod
    def from_gossip(cls, item: Any) -> "MemberInfo":
        if not isinstance(item, (list, tuple)) or len(item) not in (5, 6):
            raise InvalidMember("gossip entry must be [name, incarnation, rank, endpoint, pub, age]")
        name, inc, rank, endpoint, pub = item[:5]
        return cls.from_wire({"name": name, "incarnation": inc, "rank": rank, "endpoint": endpoint, "pub": pub})


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidMember(f"{what} must be a finite number")
    return float(v)


def _opt_str(v: Any, what: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise InvalidMember(f"{what} must be a string")
    return v


def _str_tuple(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InvalidMember(f"{what} must be a list of strings")
    return tuple(v)


# -- outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Connect the SUB socket to this PUB endpoint."""

    endpoint: str


@dataclass(frozen=True)
class Disconnect:
    endpoint: str


@dataclass(frozen=True)
class Rejoin:
    """Ask a member (or a seed) for the member list again; ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True)
class Dropped:
    """A member was removed (for the log: who, and why)."""

    name: str
    reason: str


@dataclass(frozen=True)
class NameClash:
    """Another process publishes heartbeats under our name (misconfiguration, or we were
    replaced by a newer incarnation that peers now prefer)."""

    incarnation: float


Output = Union[Connect, Disconnect, Rejoin, Dropped, NameClash, ViewEvent]


@dataclass
class _Member:
    info: MemberInfo
    last_seen: float  # when we last heard it ourselves
    heard_of: float = -math.inf  # when a peer last heard it, by the peer's gossip (SWIM's indirect proof)


@dataclass
class _Tombstone:
    incarnation: float
    rank: float
    dropped_at: float


class Membership(ViewPublisher[Output]):
    """The membership state of one node, driven by its discovery actor (its views are published
    by the rule ``ViewPublisher`` holds)."""

    def __init__(
        self,
        local: MemberInfo,
        *,
        now: float,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 2.5,
        expect_join: bool = False,
        join_deadline: float | None = None,
        settle: float = 0.0,
    ) -> None:
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise ValueError("need 0 < heartbeat_interval < heartbeat_timeout")
        self._init_publication(now, established=not expect_join)
        self._local = local
        self.interval = heartbeat_interval
        self.timeout = heartbeat_timeout
        self.settle = settle
        # a seeded node waits for its join (bounded) before announcing TOPOLOGY_INIT
        self.join_deadline = now + (join_deadline if join_deadline is not None else max(3.0, 6 * heartbeat_interval))
        self.tombstone_ttl = max(30.0, 12 * heartbeat_timeout)
        self.tombstone_announce = 4 * heartbeat_timeout
        # a member heard this recently is alive: a join under its name from elsewhere is refused
        self.name_guard = 2 * heartbeat_interval
        self._members: dict[str, _Member] = {}
        self._candidates: dict[str, tuple[MemberInfo, float]] = {}  # name -> (gossip, expires)
        self._tombstones: dict[str, _Tombstone] = {}
        self._subscribed: set[str] = set()
        self._joined = False
        self._rejoining = False
        self._last_tick = now
        self._out: list[Output] = []
        self._subscriptions_dirty = True  # the SUB socket must follow what changed (see _evaluate)
        if self._established:
            self._establish()

    # -- reading -------------------------------------------------------------
    @property
    def joined(self) -> bool:
        """True once a member list came back from a join (being joined by others does not count:
        a node whose seed was down must still reach it, or two topologies would stay apart)."""
        return self._joined

    @property
    def rejoining(self) -> bool:
        return self._rejoining

    def member_names(self) -> list[str]:
        return [i.name for i in self._ordered()]

    def member(self, name: str) -> MemberInfo | None:
        if name == self.local.name:
            return self.local
        m = self._members.get(name)
        return m.info if m else None

    def endpoints(self) -> list[str]:
        """ROUTER endpoints of the other members (where to send a rejoin)."""
        return [m.info.endpoint for m in self._members.values() if m.info.endpoint]

    def members(self) -> list[tuple[str, str | None]]:
        """(name, ROUTER endpoint) of every live member, this node included."""
        return [(self.local.name, self.local.endpoint), *((n, m.info.endpoint) for n, m in self._members.items())]

    def join_body(self) -> dict[str, Any]:
        """A join request for this node. A node that already has members asks to *merge*: its
        topology meets another one (a healed split, a restarted seed), and its members keep their
        ranks so the usual rule picks one leader over the merged view. A node alone (just started,
        or rejoining after it was dropped) joins fresh and is ranked behind everyone."""
        body = self.local.to_wire()
        if self._established and not self._rejoining and self._members:
            body["merge"] = True
        return body

    @property
    def local(self) -> MemberInfo:
        """This node's own description (what its heartbeats say)."""
        return self._local

    @local.setter
    def local(self, value: MemberInfo) -> None:
        if value != self._local:
            self._version += 1
        self._local = value

    def heartbeat_body(self, now: float, leaving: bool = False) -> dict[str, Any]:
        """What this node publishes: itself, the members it knows, the ones it dropped."""
        body = self.local.to_wire()
        body["members"] = [
            [*m.info.gossip(), round(max(0.0, now - m.last_seen), 3)] for m in self._members.values()
        ]
        body["dropped"] = [
            [name, t.incarnation, t.rank]
            for name, t in self._tombstones.items()
            if now - t.dropped_at <= self.tombstone_announce
        ]
        if leaving:
            body["leaving"] = True
        return body

    def join_reply_body(self, joiner: MemberInfo, now: float) -> dict[str, Any]:
        """The member list for a joiner, with each member's age so the joiner's timers match ours."""
        members = [dict(self.local.to_wire(), age=0.0)]
        for m in self._members.values():
            if m.info.name == joiner.name:
                continue
            members.append(dict(m.info.to_wire(), age=max(0.0, now - m.last_seen)))
        assigned = self._members[joiner.name].info.rank if joiner.name in self._members else joiner.rank
        return {"members": members, "rank": assigned, "leader": self._leader_name()}

    # -- inputs (set_local: ViewPublisher's) ----------------------------------
    def _adopt_local(self, new: MemberInfo) -> None:
        """``set_local``'s part here: the next heartbeat carries ``new`` (capacity included)."""
        if new.property_key() != self.local.property_key():
            self._properties_dirty = True
        self.local = new

    def on_heartbeat(self, body: dict[str, Any], now: float) -> list[Output]:
        """A heartbeat arrived. Raises ``InvalidMember`` if it cannot be understood."""
        info = MemberInfo.from_wire(body)
        gossip = body.get("members", [])
        dropped = body.get("dropped", [])
        if not isinstance(gossip, list) or not isinstance(dropped, list):
            raise InvalidMember("members and dropped must be lists")
        if info.name == self.local.name:
            # another process with our name: peers keep the newer incarnation; say so
            return [NameClash(info.incarnation)] if info.incarnation != self.local.incarnation else []
        for entry in dropped:
            if (
                isinstance(entry, (list, tuple))
                and len(entry) == 3
                and entry[0] == self.local.name
                and entry[1] == self.local.incarnation
                and isinstance(entry[2], (int, float))
                and entry[2] >= self.local.rank
            ):
                self._start_rejoin(f"{info.name} dropped us", now)
                break
        if body.get("leaving") is True:
            m = self._members.get(info.name)
            if m is not None and m.info.incarnation == info.incarnation:
                self._drop(info.name, "left", now)
            self._evaluate(now)
            return self._drain()
        self._accept(info, now, direct=True)
        for item in gossip:
            if isinstance(item, list) and len(item) in (5, 6):  # fast path: someone we know already
                known = self._members.get(item[0]) if isinstance(item[0], str) else None
                if known is not None and known.info.incarnation == item[1]:
                    age = item[5] if len(item) == 6 else None
                    if isinstance(age, (int, float)) and not isinstance(age, bool) and 0 <= age < self.timeout:
                        # the sender heard it directly ``age`` seconds before building this
                        # heartbeat (up to an interval before sending it): alive, even if its
                        # heartbeats do not reach us (a lost connection, a dropped message)
                        known.heard_of = max(known.heard_of, now - age - self.interval)
                    continue
                if item[0] == self.local.name:
                    continue
            try:
                g = MemberInfo.from_gossip(item)
            except InvalidMember:
                continue
            self._consider_candidate(g, now)
        self._evaluate(now)
        return self._drain()

    def touch(self, name: str, now: float, incarnation: float | None = None) -> None:
        """Any message from a member is proof of life — of that incarnation only: a restarted
        process under the same name must not keep its dead predecessor alive."""
        m = self._members.get(name)
        if m is not None and (incarnation is None or incarnation == m.info.incarnation):
            m.last_seen = max(m.last_seen, now)

    def on_join_request(self, body: dict[str, Any], now: float) -> tuple[list[Output], dict[str, Any]]:
        """A node asks to join through us: rank it behind everyone, answer with the member list."""
        info = MemberInfo.from_wire(body)
        if info.name == self.local.name:
            raise NameTaken(info.name, self.local.endpoint)
        existing = self._members.get(info.name)
        if (existing is not None and existing.info.incarnation != info.incarnation
                and existing.info.endpoint != info.endpoint and now - existing.last_seen < self.name_guard):
            # another process, elsewhere, that we hear right now: not a restart of that node
            raise NameTaken(info.name, existing.info.endpoint)
        if existing is not None and existing.info.incarnation > info.incarnation:
            raise InvalidMember(f"a newer incarnation of {info.name!r} is a member")
        if existing is not None and existing.info.incarnation == info.incarnation:
            rank = max(info.rank, existing.info.rank)  # a retried join: keep the rank we gave
        elif body.get("merge") is True:
            rank = info.rank  # two topologies meet: everyone keeps their rank (see join_body)
        else:
            others = [m.info.rank for n, m in self._members.items() if n != info.name]
            rank = max([info.rank, self.local.rank + RANK_STEP, *(r + RANK_STEP for r in others)])
        self._tombstones.pop(info.name, None)  # an explicit join overrides a tombstone
        self._accept(replace(info, rank=rank), now, direct=True)
        self._evaluate(now)
        return self._drain(), self.join_reply_body(info, now)

    def on_join_reply(self, body: dict[str, Any], now: float) -> list[Output]:
        """The member list came back; a rejoin replaces what we believed."""
        members = body.get("members")
        if not isinstance(members, list) or not members:
            raise InvalidMember("join reply must list members")
        parsed: list[tuple[MemberInfo, float]] = []
        for item in members:
            if not isinstance(item, dict):
                raise InvalidMember("join reply member must be a map")
            age = item.get("age", 0.0)
            age = _number(age, "age") if age is not None else 0.0
            # trust the seed's ages only up to one interval: a seed whose loop lagged reports
            # stale ages, and dropping a live member right after joining would tombstone it
            parsed.append((MemberInfo.from_wire(item), min(max(0.0, age), self.interval)))
        rank = body.get("rank")
        if isinstance(rank, (int, float)) and not isinstance(rank, bool) and rank > self.local.rank:
            self.local = replace(self.local, rank=float(rank))
            self._topology_dirty = True
        if self._rejoining:
            listed = {info.name for info, _ in parsed}
            for name in list(self._members):
                if name not in listed:
                    self._remove(name, "not in the member list after rejoin", now, tombstone=False)
        for info, age in parsed:
            if info.name == self.local.name:
                continue
            self._tombstones.pop(info.name, None)
            self._accept(info, now - age, direct=True)
        self._joined = True
        self._rejoining = False
        if not self._established:
            self._establish_now(now)
        self._evaluate(now)
        return self._drain()

    def tick(self, now: float, own_silence: float = 0.0) -> list[Output]:
        """Time passed: detect failures, expire candidates and tombstones, finish changes.

        ``own_silence`` is the longest gap between this node's own heartbeats since the
        last tick (measured by the heartbeat thread): longer than the timeout means the
        others have dropped us (SIGSTOP, a frozen VM) and we must rejoin.
        """
        stall = now - self._last_tick - self.interval
        self._last_tick = now
        if stall > self.interval:
            # our loop was not listening; what piled up in the socket is still to be read
            for m in self._members.values():
                m.last_seen = min(now, m.last_seen + stall)
        if own_silence > self.timeout:
            self._start_rejoin(f"own heartbeats were silent for {own_silence:.1f}s", now)
        elif self._rejoining and not self._members:
            self._rejoining = False  # nobody left to rejoin: we are the topology
        for name, m in list(self._members.items()):
            if now - max(m.last_seen, m.heard_of) > self.timeout:
                self._drop(name, f"no heartbeat for {now - m.last_seen:.1f}s", now)
        for name, (_, expires) in list(self._candidates.items()):
            if now >= expires:
                del self._candidates[name]
                self._subscriptions_dirty = True
        for name, t in list(self._tombstones.items()):
            if now - t.dropped_at > self.tombstone_ttl:
                del self._tombstones[name]
        if not self._established and now >= self.join_deadline:
            self._establish_now(now)  # nobody answered: start alone, keep trying to join
        self._evaluate(now)
        if self._changing and now - self._last_change >= self.settle:
            self._complete_change()
        return self._drain()

    def leave(self, now: float) -> dict[str, Any]:
        """The last heartbeat of a node shutting down (peers drop it at once)."""
        return self.heartbeat_body(now, leaving=True)

    # -- internals -----------------------------------------------------------
    def _accept(self, info: MemberInfo, seen: float, direct: bool) -> None:
        tomb = self._tombstones.get(info.name)
        if tomb is not None:
            if info.incarnation < tomb.incarnation or (
                info.incarnation == tomb.incarnation and info.rank <= tomb.rank
            ):
                return  # dropped; it has to rejoin (and so move to the back) first
            del self._tombstones[info.name]
        current = self._members.get(info.name)
        if current is not None:
            if info.incarnation < current.info.incarnation:
                return  # a stale process of an older incarnation
            if info.incarnation > current.info.incarnation:
                self._remove(info.name, "replaced by a newer incarnation", seen, tombstone=True)
                current = None
        if current is None:
            self._members[info.name] = _Member(info, seen)
            self._version += 1
            self._topology_dirty = self._properties_dirty = self._subscriptions_dirty = True
        else:
            old = current.info
            if old.identity() != info.identity():
                self._topology_dirty = self._subscriptions_dirty = True
            if old.property_key() != info.property_key():
                self._properties_dirty = True
            if info != old:
                self._version += 1
            current.info = info
            current.last_seen = max(current.last_seen, seen)
        if self._candidates.pop(info.name, None) is not None:
            self._subscriptions_dirty = True

    def _consider_candidate(self, g: MemberInfo, now: float) -> None:
        if g.name == self.local.name or not g.pub_endpoint:
            return
        current = self._members.get(g.name)
        if current is not None and current.info.incarnation >= g.incarnation:
            return
        tomb = self._tombstones.get(g.name)
        if tomb is not None and (g.incarnation, g.rank) <= (tomb.incarnation, tomb.rank):
            return
        if g.name not in self._candidates and len(self._candidates) >= MAX_CANDIDATES:
            return
        previous = self._candidates.get(g.name)
        if previous is None or previous[0].pub_endpoint != g.pub_endpoint:
            self._subscriptions_dirty = True
        self._candidates[g.name] = (g, now + self.timeout)

    def _drop(self, name: str, reason: str, now: float) -> None:
        self._remove(name, reason, now, tombstone=True)

    def _remove(self, name: str, reason: str, now: float, tombstone: bool) -> None:
        m = self._members.pop(name, None)
        if m is None:
            return
        self._version += 1
        self._topology_dirty = self._properties_dirty = self._subscriptions_dirty = True
        if tombstone:
            if len(self._tombstones) >= MAX_TOMBSTONES:
                oldest = min(self._tombstones, key=lambda n: self._tombstones[n].dropped_at)
                del self._tombstones[oldest]
            self._tombstones[name] = _Tombstone(m.info.incarnation, m.info.rank, now)
        self._out.append(Dropped(name, reason))

    def _start_rejoin(self, reason: str, now: float) -> None:
        if self._rejoining:
            return
        self._rejoining = True
        ranks = [m.info.rank for m in self._members.values()]
        ranks += [t.rank for t in self._tombstones.values()]
        top = max(ranks, default=self.local.rank)
        if top >= self.local.rank:
            self.local = replace(self.local, rank=top + RANK_STEP)
        else:
            self.local = replace(self.local, rank=self.local.rank + RANK_STEP)
        self._topology_dirty = True
        self._out.append(Rejoin(reason))

    def _ordered(self) -> list[MemberInfo]:
        infos = [self.local, *(m.info for m in self._members.values())]
        infos.sort(key=lambda i: (i.rank, i.name))
        return infos

    def _leader_name(self) -> str:
        return self._ordered()[0].name

    def _build_view(self) -> TopologyView:
        ordered = self._ordered()
        leader = ordered[-1 if PLANTS.active("leader-not-oldest") else 0].name
        instances = tuple(
            InstanceView(
                name=i.name,
                incarnation=i.incarnation,
                endpoint=i.endpoint,
                pub_endpoint=i.pub_endpoint,
                topics=i.topics,
                offload_topics=i.offload_topics,
                capacity=dict(i.capacity),
                properties=dict(i.properties),
                leader=i.name == leader,
                local=i.name == self.local.name,
            )
            for i in ordered
        )
        return TopologyView(local=self.local.name, leader=leader, instances=instances, current=True)

    def _topology_key(self) -> tuple[Any, ...]:
        return tuple(i.identity() for i in self._ordered())

    def _properties_key(self) -> tuple[Any, ...]:
        return tuple((i.name, *i.property_key()) for i in self._ordered())

    def _evaluate(self, now: float) -> None:
        """Connect to (or disconnect from) what changed first, then publish by the shared rule."""
        if self._subscriptions_dirty:
            self._subscriptions_dirty = False
            self._sync_subscriptions()
        super()._evaluate(now)

    def _sync_subscriptions(self) -> None:
        wanted = {m.info.pub_endpoint for m in self._members.values() if m.info.pub_endpoint}
        wanted |= {g.pub_endpoint for g, _ in self._candidates.values() if g.pub_endpoint}
        wanted.discard(self.local.pub_endpoint)  # type: ignore[arg-type]
        for ep in sorted(wanted - self._subscribed):
            self._out.append(Connect(ep))
        for ep in sorted(self._subscribed - wanted):
            self._out.append(Disconnect(ep))
        self._subscribed = wanted  # type: ignore[assignment]

    def resubscribe(self) -> None:
        """The SUB socket was recreated (actor restart): connect to every member again."""
        self._subscribed = set()
        self._subscriptions_dirty = True
        self._evaluate(self._last_tick)


# -- listeners -----------------------------------------------------------------


class ListenerHub:
    """Which listener gets which event, so that each sees INIT first and pairs in order.

    A listener added while no view is established, or during a change, gets its INIT
    when the change completes (with the new view), never a CHANGED without CHANGING.
    """

    def __init__(self) -> None:
        self._entries: list[list[Any]] = []  # [listener, initialized]
        self._current: TopologyView | None = None
        self._changing = False

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, listener: Any) -> list[tuple[Any, TopologyEvent]]:
        entry = [listener, False]
        self._entries.append(entry)
        if self._current is not None and not self._changing:
            entry[1] = True
            return [(listener, TopologyEvent(TopologyEventType.TOPOLOGY_INIT, None, self._current))]
        return []

    def remove(self, listener: Any) -> None:
        self._entries = [e for e in self._entries if e[0] != listener]

    def publish(self, event: TopologyEvent) -> list[tuple[Any, TopologyEvent]]:
        t = event.type
        if t == TopologyEventType.TOPOLOGY_CHANGING:
            self._changing = True
            return [(e[0], event) for e in self._entries if e[1]]
        if t in (TopologyEventType.TOPOLOGY_INIT, TopologyEventType.TOPOLOGY_CHANGED):
            self._changing = False
        self._current = event.new_view
        out: list[tuple[Any, TopologyEvent]] = []
        for e in self._entries:
            if e[1]:
                if t != TopologyEventType.TOPOLOGY_INIT:
                    out.append((e[0], event))
            elif self._current is not None:
                e[1] = True
                out.append((e[0], TopologyEvent(TopologyEventType.TOPOLOGY_INIT, None, self._current)))
        return out
