"""A SWIM-style membership core: flat per-node cost at any size (``[discovery] protocol = "swim"``).

Pure, like ``membership.Membership``: no sockets, no sleeps; the clock is a parameter
and every random choice (probe order, helpers, gossip targets) comes from the seeded
``random.Random`` it is given. The driver feeds it messages (``on_message``) and time
(``tick``; ``next_wakeup`` says when it next needs one) and carries out the outputs:
``Send`` (a point-to-point message to a ROUTER endpoint), ``ViewEvent``, ``Dropped``,
``Suspected``, ``Rejoin``.

Why SWIM (docs/discovery.md, "Design notes: heartbeat cost"): all-to-all heartbeats
cost every node O(n) messages per interval, each O(n) bytes. Here a node sends O(1)
messages per period whatever n is:

- **Probe.** Every ``period`` a node pings one member (members in a shuffled
  round-robin, so each is probed by this node once per round). No ack within
  ``rtt_timeout`` → ``ping-req`` through ``indirect_checks`` other members, which ping
  it and relay its ack. Still no ack by the end of the period → *suspect*.
- **Suspicion.** A suspect that does not refute within ``suspicion_timeout`` (grows
  with log n, so the news has time to reach it) is *dead*: dropped, tombstoned. A
  member refutes by raising its refutation counter ``n`` and spreading ``alive``.
- **Dissemination.** Changes (alive with the member's description, suspect, dead) ride
  on pings and acks, at most ``max_piggyback`` per message, each sent about
  ``retransmit_mult · ln(n+1)`` times by every node that learnt it (infection style:
  O(log n) periods to reach everyone); while changes are pending a node also sends
  them to ``gossip_fanout`` random members every ``gossip_interval``.

Versions: a member's state is ordered by ``(incarnation, rank, n)``. ``incarnation``
and ``rank`` mean what they mean in ``membership.py`` (process start; position in the
order) and the order and leader rule are the same: members ordered by rank then
name, the first leads, a joiner is ranked behind every member by the seed it joins
through. Dead is final for an ``(incarnation, rank)``: a node declared dead (it
learns so from gossip, or from the *dead notice* a peer answers its messages with)
rejoins at the back (rank raised behind every rank it knows) — so a paused or
partitioned leader does not take the leadership back, exactly as with heartbeats.

Repair is level-triggered: every ``reprobe_interval`` a node pings one remembered
dead member (with a dead notice) or sends a join to a seed that is not a member, so
views that were split meet again; a tombstoned member that another node still gossips
as alive is re-announced dead, which makes it rejoin. When two views meet, each verdict
carries the leader of the view that made it and the view with the younger leader
yields (its members join the older view, behind it), so the older leader keeps leading.
Every ``sync_interval`` a node sends one member its view's digest; a member whose view
differs answers with its list (what gossip missed; free while views agree).

A node that hears nobody for two periods is most likely the one cut off (paused,
isolated): it convicts nobody publicly then, so it moves only itself to the back
instead of declaring every member it probed dead.

Capacity figures change all the time: ``set_local(capacity=...)`` refreshes this
node's own view but spreads only with the next real change (topics, properties, a
refutation). At a thousand nodes capacity cannot reach every node every second at
flat cost; the offloader would sample it (ask a few nodes) instead.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence, Union

from .membership import RANK_STEP, Dropped, InvalidMember, MemberInfo, Rejoin
from .publication import ViewEvent, ViewPublisher
from .view import InstanceView, TopologyView

PING, ACK, PING_REQ, GOSSIP, JOIN, JOIN_REPLY, SYNC, SYNC_REPLY = (
    "swim/ping", "swim/ack", "swim/ping-req", "swim/gossip", "swim/join", "swim/join-reply", "swim/sync",
    "swim/sync-reply")
MESSAGE_TYPES = (PING, ACK, PING_REQ, GOSSIP, JOIN, JOIN_REPLY, SYNC, SYNC_REPLY)
MAX_TOMBSTONES = 4096


@dataclass(frozen=True)
class Send:
    """Send ``body`` as a message of ``type`` to the ROUTER at ``endpoint``."""

    endpoint: str
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Suspected:
    """A member stopped answering probes (for the log and for tests; it may still refute)."""

    name: str


Output = Union[Send, Suspected, Dropped, Rejoin, ViewEvent]
Key = tuple[float, float, int]  # (incarnation, rank, n)


@dataclass
class _Peer:
    info: MemberInfo
    n: int  # the highest refutation counter known (from its messages or gossip)
    suspect: bool = False
    info_n: int = -1  # the n its description ``info`` came with (its messages carry n, not info)

    def __post_init__(self) -> None:
        if self.info_n < 0:
            self.info_n = self.n

    @property
    def key(self) -> Key:
        return (self.info.incarnation, self.info.rank, self.n)


@dataclass
class _Tomb:
    incarnation: float
    rank: float
    n: int
    dropped_at: float
    info: MemberInfo | None  # to revive it when it comes back at a higher rank
    noticed_at: float = -math.inf  # last time we re-announced it (rate limit)
    local: bool = False  # convicted while we were cut off: our own belief, never announced


@dataclass
class _Update:
    entry: list[Any]
    sent: int
    order: int


@dataclass
class _Probe:
    target: str
    endpoint: str
    seq: int
    indirect_at: float
    deadline: float
    indirect_sent: bool = False
    acked: bool = False


class Swim(ViewPublisher[Output]):
    """The SWIM membership state of one node (its views are published by the rule
    ``ViewPublisher`` holds, as with heartbeats)."""

    def __init__(
        self,
        local: MemberInfo,
        *,
        now: float,
        rng: random.Random,
        seeds: Sequence[str] = (),
        period: float = 0.5,
        rtt_timeout: float | None = None,
        indirect_checks: int = 3,
        suspicion_mult: float = 3.0,
        retransmit_mult: float = 3.0,
        max_piggyback: int = 10,
        gossip_fanout: int = 2,
        gossip_interval: float | None = None,
        join_timeout: float | None = None,
        join_deadline: float | None = None,
        reprobe_interval: float | None = None,
        sync_interval: float | None = None,
        tombstone_ttl: float | None = None,
        settle: float = 0.0,
        members: Iterable[tuple[MemberInfo, int]] = (),
    ) -> None:
        if not period > 0:
            raise ValueError("period must be > 0")
        if not local.endpoint:
            raise ValueError("a SWIM member needs an endpoint (its ROUTER) to be probed at")
        self.rng = rng
        self.period = period
        self.rtt_timeout = rtt_timeout if rtt_timeout is not None else 0.4 * period
        if not 0 < self.rtt_timeout < period:
            raise ValueError("need 0 < rtt_timeout < period")
        self.indirect_checks = indirect_checks
        self.suspicion_mult = suspicion_mult
        self.retransmit_mult = retransmit_mult
        self.max_piggyback = max_piggyback
        self.gossip_fanout = gossip_fanout
        self.gossip_interval = gossip_interval if gossip_interval is not None else period / 2
        self.join_timeout = join_timeout if join_timeout is not None else max(0.5, 2 * period)
        self.reprobe_interval = reprobe_interval if reprobe_interval is not None else 10 * period
        self.tombstone_ttl = tombstone_ttl if tombstone_ttl is not None else max(30.0, 60 * period)
        self.sync_interval = sync_interval if sync_interval is not None else 30 * period
        self.settle = settle
        self.max_suspicion_factor = 6.0  # a cut-off node convicts after this many timeouts at the latest
        self.tick_hint = period / 4  # the earliest CHANGED comes after a change (coalesces bursts)
        self._local = local
        self._n = 0
        self._nver = 0  # bumped when any member's n changes (the digest covers n)
        self.seeds = [s for s in dict.fromkeys(seeds) if s != local.endpoint]
        self._peers: dict[str, _Peer] = {}
        self._tombs: dict[str, _Tomb] = {}
        self._names: list[str] | None = []  # sorted peer names, rebuilt lazily
        self._updates: dict[str, _Update] = {}
        self._order = 0
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._next_probe = now + rng.random() * period  # desynchronised phases
        self._next_gossip = now
        self._next_reprobe = now + self.reprobe_interval * (0.5 + rng.random())
        self._next_sync = now + self.sync_interval * (0.5 + rng.random())
        self._synced_at: dict[str, float] = {}
        self._digest_cache: tuple[tuple[int, int, int], str] | None = None
        self._relays: dict[int, tuple[str, int, str, float]] = {}  # our seq -> (requester ep, its seq, target, expires)
        self._suspects: dict[str, float] = {}  # name -> deadline
        self._suspected_at: dict[str, float] = {}  # name -> when the suspicion began
        self._last_heard = now  # the last message from anyone: hearing nobody means *we* are cut off
        self._via: str | None = None  # while applying a message's gossip: its sender's endpoint, name
        self._via_name: str | None = None
        self._yielded = False
        self._yielding: dict[str, float] = {}  # name -> until when: we sent it a join after its verdict
        self._joined = False
        self._join_attempt = 0
        self._next_join = now if self.seeds else math.inf
        self._last_tick = now
        self._out: list[Output] = []
        # -- Sling's events: the rule both cores share (publication.py) --
        self._init_publication(now, established=not self.seeds)
        self.join_deadline = now + (join_deadline if join_deadline is not None else max(3.0, 6 * period))
        self._ordered_cache: tuple[int, list[MemberInfo]] | None = None
        self._keys: dict[str, tuple[int, tuple[Any, ...]]] = {}
        self._member_key_cache: dict[str, tuple[MemberInfo, tuple[Any, ...], tuple[Any, ...]]] = {}
        self._instances: dict[str, tuple[MemberInfo, bool, InstanceView]] = {}
        self._install(members)  # a simulation that starts formed: INIT shows them
        if self._established:
            self._establish()

    # -- reading -------------------------------------------------------------------
    @property
    def local(self) -> MemberInfo:
        return self._local

    @property
    def key(self) -> Key:
        return (self._local.incarnation, self._local.rank, self._n)

    @property
    def joined(self) -> bool:
        return self._joined

    def member(self, name: str) -> MemberInfo | None:
        if name == self._local.name:
            return self._local
        p = self._peers.get(name)
        return p.info if p else None

    def member_names(self) -> list[str]:
        return [i.name for i in self._ordered()]

    def suspects(self) -> list[str]:
        return sorted(self._suspects)

    def size(self) -> int:
        """Members including this node (the n of the log n timers)."""
        return len(self._peers) + 1

    def _cut_off(self, now: float) -> bool:
        """We heard nobody for two periods although we probe every period: the fault is likely ours
        (paused, isolated, clogged), so we convict nobody for now (up to ``max_suspicion_factor``)."""
        return bool(self._peers) and now - self._last_heard > 2 * self.period

    def _latest_conviction(self, name: str) -> float:
        return self._suspected_at.get(name, -math.inf) + self.max_suspicion_factor * self.suspicion_timeout()

    def suspicion_timeout(self) -> float:
        return self.suspicion_mult * max(1.0, math.log10(self.size())) * self.period

    def retransmit_limit(self) -> int:
        return max(1, math.ceil(self.retransmit_mult * math.log(self.size() + 1)))

    def next_wakeup(self) -> float:
        """The next time ``tick`` has something to do (a driver may tick more often)."""
        t = min(self._next_probe, self._next_reprobe, self._next_join, self._next_sync)
        if self._probe is not None and not self._probe.acked:
            t = min(t, self._probe.deadline if self._probe.indirect_sent else self._probe.indirect_at)
        if self._suspects:
            # a deadline that falls once we are cut off (hearing nobody) waits for the latest conviction
            # (a deadline already behind the last tick that did not convict means we were cut off then)
            cut = self._last_heard + 2 * self.period if self._peers else math.inf
            after_cut = math.nextafter(cut, math.inf)  # the first instant _cut_off() is true
            t = min(t, min(d if self._last_tick <= d <= cut else max(self._latest_conviction(name), after_cut)
                           for name, d in self._suspects.items()))
        if self._relays:
            t = min(t, min(r[3] for r in self._relays.values()))
        if self._updates:
            t = min(t, self._next_gossip)
        if not self._established:
            t = min(t, self.join_deadline)
        if self._changing:
            t = min(t, self._last_change + max(self.settle, self.tick_hint))
        return t

    # -- inputs (set_local: ViewPublisher's) -----------------------------------------
    def _adopt_local(self, new: MemberInfo) -> None:
        """``set_local``'s part here: a real change (not capacity alone) is spread."""
        if new != self._local:
            spread = new.property_key() != self._local.property_key()
            self._local = new
            self._version += 1
            if spread:
                self._properties_dirty = True
                self._n += 1  # peers take a newer n as a newer description
                self._enqueue_self()

    def on_message(self, msg_type: str, body: dict[str, Any], now: float) -> list[Output]:
        """A SWIM message arrived. Raises ``InvalidMember`` if it cannot be understood."""
        if not isinstance(body, dict):
            raise InvalidMember("body must be a map")
        if msg_type == JOIN:
            self._on_join(body, now)
        elif msg_type == JOIN_REPLY:
            self._on_join_reply(body, now)
        elif msg_type in (PING, ACK, PING_REQ, GOSSIP, SYNC, SYNC_REPLY):
            sender, key = self._sender(body)
            if sender == self._local.name:
                return []  # our own name from elsewhere: not a peer (the heartbeat core reports clashes)
            resync = False
            if self._cut_off(now):
                # back in touch after hearing nobody: what we suspected meanwhile only now reaches
                # the suspects; give them a whole timeout to refute it
                timeout = self.suspicion_timeout()
                for name in self._suspects:
                    self._suspects[name] = max(self._suspects[name], now + timeout)
                resync = any(t.local for t in self._tombs.values())
            self._last_heard = now
            gossip = body.get("g", [])
            if not isinstance(gossip, list):
                raise InvalidMember("g must be a list")
            notice = self._note_sender(sender, key, now)
            self._via, self._via_name, self._yielded = self._endpoint_of(sender, body), sender, False
            for entry in gossip:
                self._apply_entry(entry, now)
            if self._yielded:
                notice = None  # we join the sender's view: it must not be told it is dead to us
            self._via = self._via_name = None
            if resync:
                self._resync(sender, body, now)
            if (msg_type in (PING, PING_REQ, SYNC) and sender not in self._peers and sender not in self._tombs
                    and isinstance(body.get("ep"), str)):
                self._sync_with(sender, body["ep"], now)  # it knows us, we do not know it: compare views
            if msg_type == SYNC:
                self._on_sync(body, now)
            elif msg_type == SYNC_REPLY:
                self._on_sync_reply(body, now)
            elif msg_type == PING:
                self._on_ping(sender, body, now, notice)
            elif msg_type == PING_REQ:
                self._on_ping_req(sender, body, now, notice)
            else:
                if msg_type == ACK:
                    self._on_ack(sender, body, now)
                if notice is not None:
                    self._notify(sender, notice, now)
        else:
            raise InvalidMember(f"unknown SWIM message type {msg_type!r}")
        self._evaluate(now)
        return self._drain()

    def tick(self, now: float) -> list[Output]:
        """Time passed: probes, suspicion timeouts, gossip, joins, repair, events."""
        stall = now - self._last_tick - self.period
        self._last_tick = now
        if stall > self.period:
            # our loop did not run: answers may be waiting in the socket; do not convict on our delay
            for name in self._suspects:
                self._suspects[name] += stall
            if self._probe is not None:
                self._probe.deadline += stall
                self._probe.indirect_at += stall
        if not self._joined and now >= self._next_join:
            self._send_join(now)
        if not self._established and now >= self.join_deadline:
            self._establish_now(now)  # nobody answered: start alone, keep trying to join
        self._run_probe(now)
        if self._suspects:
            cut_off = self._cut_off(now)
            for name, deadline in list(self._suspects.items()):
                if now >= (self._latest_conviction(name) if cut_off else deadline):
                    self._declare_dead(name, now, "suspicion timed out")
        if self._relays:
            for seq, relay in list(self._relays.items()):
                if now >= relay[3]:
                    del self._relays[seq]
        if self._updates and now >= self._next_gossip:
            self._next_gossip = now + self.gossip_interval
            for name in self._sample(self.gossip_fanout):
                self._send_to(self._peers[name].info.endpoint, GOSSIP, self._base(), now)
        if now >= self._next_reprobe:
            self._next_reprobe = now + self.reprobe_interval
            self._reprobe(now)
        if now >= self._next_sync:
            self._next_sync = now + self.sync_interval
            for name in self._sample(1):
                self._sync_with(name, self._peers[name].info.endpoint, now)  # type: ignore[arg-type]
        self._evaluate(now)
        if self._changing and now - self._last_change >= max(self.settle, self.tick_hint) - 1e-9:
            self._complete_change()
        return self._drain()

    def leave(self, now: float) -> list[Output]:
        """Shutting down: tell a few members at once; they drop us and spread it."""
        lrank, lname = self._leader_key(exclude=self._local.name)
        entry = ["d", self._local.name, self._local.incarnation, self._local.rank, self._n, True, self._local.rank,
                 lrank, lname]
        body = {"from": self._local.name, "key": list(self.key), "g": [entry]}
        for name in self._sample(max(3, self.gossip_fanout)):
            self._out.append(Send(self._peers[name].info.endpoint, GOSSIP, body))  # type: ignore[arg-type]
        return self._drain()

    def _install(self, members: Iterable[tuple[MemberInfo, int]]) -> None:
        """Members known from the start (``members=``): taken as they are, nothing to spread."""
        for info, n in members:
            if info.name != self._local.name and info.name not in self._peers:
                self._peers[info.name] = _Peer(info, n)
        self._names = None
        self._version += 1

    # -- message handlers -----------------------------------------------------------------
    def _sender(self, body: dict[str, Any]) -> tuple[str, Key]:
        name = body.get("from")
        if not isinstance(name, str) or not name:
            raise InvalidMember("from must be a non-empty string")
        key = _key(body.get("key"))
        if key is None:
            raise InvalidMember("key must be [incarnation, rank, n]")
        return name, key

    def _note_sender(self, name: str, key: Key, now: float) -> list[Any] | None:
        """A message is proof of its sender's state: a newer rank or ``n`` counts like an alive.

        Returns what the sender must hear back: a dead notice when it is tombstoned here at that
        rank (it must rejoin), or its own entry when it missed the rank a seed gave it.
        """
        peer = self._peers.get(name)
        if peer is not None:
            if key[0] == peer.info.incarnation and key[1:] > peer.key[1:]:
                if key[1] > peer.info.rank:  # it rejoined: its alive (with its description) follows
                    self._on_alive(replace(peer.info, rank=key[1]), peer.info_n, now, spread=False)
                if key[2] > peer.n:
                    self._nver += 1
                    peer.n = key[2]
                    self._clear_suspicion(peer)  # it is alive and has refuted
            elif key[0] == peer.info.incarnation and key[1] < peer.info.rank:
                return self._alive_entry(peer.info, peer.info_n)  # it missed the rank it was given: tell it
            return None
        tomb = self._tombs.get(name)
        if tomb is None:
            return None
        if not tomb.local and (key[0], key[1]) <= (tomb.incarnation, tomb.rank):
            if self._yielding.get(name, -math.inf) > now:
                return None  # we asked to join its view; its list will replace our tombstones
            return self._dead_entry(name, tomb)
        if tomb.info is not None and key[0] == tomb.incarnation:
            self._on_alive(replace(tomb.info, rank=key[1]), tomb.n, now, spread=True)
            revived = self._peers.get(name)
            if revived is not None and key[2] > revived.n:
                revived.n = key[2]
        return None

    def _on_ping(self, sender: str, body: dict[str, Any], now: float, notice: list[Any] | None) -> None:
        seq, ep = body.get("seq"), body.get("ep")
        if not isinstance(seq, int) or not isinstance(ep, str):
            raise InvalidMember("ping needs seq and ep")
        self._send_to(ep, ACK, dict(self._base(notice), seq=seq), now)

    def _on_ping_req(self, sender: str, body: dict[str, Any], now: float, notice: list[Any] | None) -> None:
        seq, ep, target, target_ep = body.get("seq"), body.get("ep"), body.get("target"), body.get("target_ep")
        if not (isinstance(seq, int) and isinstance(ep, str) and isinstance(target, str)
                and isinstance(target_ep, str)):
            raise InvalidMember("ping-req needs seq, ep, target and target_ep")
        if notice is not None:
            self._notify(sender, notice, now, endpoint=ep)
        self._seq += 1
        self._relays[self._seq] = (ep, seq, target, now + self.period)
        self._send_to(target_ep, PING, dict(self._base(), seq=self._seq, ep=self._local.endpoint), now)

    def _on_ack(self, sender: str, body: dict[str, Any], now: float) -> None:
        seq = body.get("seq")
        if not isinstance(seq, int):
            raise InvalidMember("ack needs seq")
        target = body.get("target", sender)
        p = self._probe
        if p is not None and p.seq == seq and p.target == target:
            p.acked = True
            return
        relay = self._relays.pop(seq, None)
        if relay is not None and relay[2] == sender:
            ep, their_seq, target, _ = relay
            self._send_to(ep, ACK, dict(self._base(), seq=their_seq, target=target), now)

    def _on_join(self, body: dict[str, Any], now: float) -> None:
        """A node joins through us: rank it behind everyone, answer with the member list."""
        info = MemberInfo.from_wire(body)
        n = body.get("n", 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidMember("n must be an int >= 0")
        if not info.endpoint:
            raise InvalidMember("a joiner needs an endpoint")
        if info.name == self._local.name:
            raise InvalidMember(f"name {info.name!r} is already taken by this node")
        existing = self._peers.get(info.name)
        if existing is not None and existing.info.incarnation > info.incarnation:
            raise InvalidMember(f"a newer incarnation of {info.name!r} is a member")
        if existing is not None and existing.info.incarnation == info.incarnation:
            rank = max(info.rank, existing.info.rank)  # a retried join (or a merge): keep what we know
        else:
            rank = max([info.rank, self._top_rank() + RANK_STEP])
        self._tombs.pop(info.name, None)  # an explicit join overrides a tombstone
        joiner = replace(info, rank=rank)
        self._on_alive(joiner, max(n, existing.n if existing else 0), now, spread=True)
        members = [self._alive_entry(self._local, self._n)]
        members += [self._alive_entry(p.info, p.info_n) for p in self._peers.values() if p.info.name != joiner.name]
        reply = dict(self._base(), members=members, rank=rank)
        self._send_to(joiner.endpoint, JOIN_REPLY, reply, now)  # type: ignore[arg-type]

    def _on_join_reply(self, body: dict[str, Any], now: float) -> None:
        members = body.get("members")
        if not isinstance(members, list) or not members:
            raise InvalidMember("join reply must list members")
        parsed: list[tuple[MemberInfo, int]] = []
        for item in members:
            got = _parse_alive(item)
            if got is None:
                raise InvalidMember("bad member in join reply")
            parsed.append(got)  # a suspect is listed as alive: our own probes will judge it
        rank = body.get("rank")
        if isinstance(rank, (int, float)) and not isinstance(rank, bool) and rank > self._local.rank:
            self._set_rank(float(rank))
        for info, n in parsed:
            if info.name == self._local.name:
                continue
            self._tombs.pop(info.name, None)  # the reply is authoritative
            u = self._updates.get(info.name)
            if u is not None and u.entry[0] != "a":
                del self._updates[info.name]  # our old verdicts about it must not travel on
            # nothing to spread: the seed spreads us, and every other node of a view that meets
            # this one yields (joins) itself when it meets a node that holds it dead
            self._on_alive(info, n, now, spread=False)
        self._enqueue_self()
        self._yielding.clear()
        if not self._joined:
            self._joined = True
            self._next_join = math.inf
        if not self._established:
            self._establish_now(now)

    def _sync_with(self, name: str, endpoint: str, now: float) -> None:
        """Anti-entropy: send our view's digest; a node whose view differs answers with its list.
        Repairs what gossip missed (a member spread before we joined) at flat cost while views agree."""
        if now - self._synced_at.get(name, -math.inf) < self.period:
            return
        self._synced_at[name] = now
        if len(self._synced_at) > 4 * len(self._peers) + 16:
            self._synced_at = {n: t for n, t in self._synced_at.items() if now - t < self.period}
        self._send_to(endpoint, SYNC, dict(self._base(), digest=self._digest(), ep=self._local.endpoint), now)

    def _on_sync(self, body: dict[str, Any], now: float) -> None:
        ep = body.get("ep")
        if not isinstance(ep, str):
            raise InvalidMember("sync needs ep")
        if body.get("digest") != self._digest():
            members = [self._alive_entry(self._local, self._n)]
            members += [self._alive_entry(p.info, p.info_n) for p in self._peers.values()]
            self._send_to(ep, SYNC_REPLY, dict(self._base(), members=members), now)

    def _on_sync_reply(self, body: dict[str, Any], now: float) -> None:
        members = body.get("members")
        if not isinstance(members, list):
            raise InvalidMember("sync reply must list members")
        for item in members:
            got = _parse_alive(item)
            if got is not None:
                # unlike a join reply, tombstones stand: a peer that has not heard of a death yet
                # must not resurrect the dead here (it is told instead). Our own entry may carry
                # the rank a seed gave us (see _on_alive)
                self._on_alive(got[0], got[1], now, spread=True)

    def _digest(self) -> str:
        """Our view in 16 hex digits: who, which incarnation, rank and ``n``."""
        version = (self._version, self._nver, self._n)
        if self._digest_cache is not None and self._digest_cache[0] == version:
            return self._digest_cache[1]
        h = hashlib.blake2b(digest_size=8)
        entries = [(self._local.name, self._local.incarnation, self._local.rank, self._n)]
        entries += [(p.info.name, p.info.incarnation, p.info.rank, p.n) for p in self._peers.values()]
        for e in sorted(entries):
            h.update(repr(e).encode())
        self._digest_cache = (version, h.hexdigest())
        return self._digest_cache[1]

    # -- gossip entries --------------------------------------------------------------------
    def _apply_entry(self, entry: Any, now: float) -> None:
        if not isinstance(entry, list) or len(entry) < 5 or not isinstance(entry[1], str):
            return  # bad input never crashes a node: skip the entry
        kind, name = entry[0], entry[1]
        if kind == "y":  # ["y", name, leader rank, leader name, top rank]: join the older view
            if (name == self._local.name and _num(entry[2]) and isinstance(entry[3], str) and _num(entry[4])
                    and (float(entry[2]), entry[3]) < self._leader_key(exclude=name)):
                self._rejoin(float(entry[4]), "met a view with an older leader", via=self._via)
            return
        key = _key(entry[2:5])
        if key is None:
            return
        if kind == "a":
            peer = self._peers.get(name)
            if peer is not None and key[0] == peer.info.incarnation and key[1:] <= (peer.info.rank, peer.info_n):
                return  # fast path: nothing new (most gossip a node receives)
            got = _parse_alive(entry)
            if got is not None:
                self._on_alive(got[0], got[1], now, spread=True)
        elif kind == "s":
            self._on_suspect(name, key, now)
        elif kind == "d":
            left = len(entry) > 5 and entry[5] is True
            top = entry[6] if len(entry) > 6 and _num(entry[6]) else key[1]
            ld = None
            if len(entry) > 8 and _num(entry[7]) and isinstance(entry[8], str):
                ld = (float(entry[7]), entry[8])
            self._on_dead(name, key, now, left=left, top=float(top), ld=ld)

    def _on_alive(self, info: MemberInfo, n: int, now: float, *, spread: bool) -> None:
        name = info.name
        if name == self._local.name:
            if info.incarnation == self._local.incarnation and info.rank > self._local.rank:
                # a node we joined through ranked us further back and spread it, but its reply
                # did not reach us: take the rank everyone else has (ranks only ever move back)
                self._set_rank(info.rank)
                self._n = max(self._n, n)
                self._enqueue_self()
            return
        tomb = self._tombs.get(name)
        if tomb is not None:
            if not tomb.local and (info.incarnation, info.rank) <= (tomb.incarnation, tomb.rank):
                self._reassert(name, tomb, now)
                return
            del self._tombs[name]
        peer = self._peers.get(name)
        if peer is not None:
            if info.incarnation < peer.info.incarnation:
                return
            if info.incarnation > peer.info.incarnation:
                self._remove(name, "replaced by a newer incarnation", now, tombstone=True)
                del self._tombs[name]  # the newer one is welcome
                peer = None
            elif (info.rank, n) <= (peer.info.rank, peer.info_n):
                return  # not a newer description
        if peer is None:
            self._peers[name] = _Peer(info, n)
            self._names = None
            self._version += 1
            self._topology_dirty = self._properties_dirty = True
        else:
            old = peer.info
            if old.identity() != info.identity():
                self._topology_dirty = True
            if old.property_key() != info.property_key():
                self._properties_dirty = True
            if old != info:
                self._version += 1
            refutes = (info.rank, n) > (old.rank, peer.n)
            if n > peer.n:
                self._nver += 1
                peer.n = n
            peer.info, peer.info_n = info, n
            if refutes:
                self._clear_suspicion(peer)
        if spread:
            self._enqueue(name, self._alive_entry(info, n))

    def _clear_suspicion(self, peer: _Peer) -> None:
        if peer.suspect:
            peer.suspect = False
            self._suspects.pop(peer.info.name, None)
            self._suspected_at.pop(peer.info.name, None)

    def _on_suspect(self, name: str, key: Key, now: float) -> None:
        if name == self._local.name:
            if key[:2] == self.key[:2] and key[2] >= self._n:
                self._n = key[2] + 1  # refute: a newer n says we are alive
                self._enqueue_self()
            return
        peer = self._peers.get(name)
        if peer is None or key[:2] != peer.key[:2] or key[2] < peer.n or (key[2] == peer.n and peer.suspect):
            return
        if peer.n != key[2]:
            self._nver += 1
        peer.n = key[2]
        self._suspect(peer, now)

    def _on_dead(self, name: str, key: Key, now: float, *, left: bool, top: float,
                 ld: tuple[float, str] | None) -> None:
        """A verdict. ``ld`` is the leader (rank, name) of the view that made it: when two views
        meet (a healed partition), each holds the other's members dead; the younger view (the
        one whose leader is younger) yields, so the older leader keeps leading."""
        own = self._leader_key(exclude=name)
        if name == self._local.name:
            if key[0] != self._local.incarnation or key[1] < self._local.rank or left:
                return  # about an older rank of ours (we rejoined already), or a stale leave
            sender = self._via_name
            if ld is not None and ld > own and sender is not None:
                # the verdict comes from a younger view: it yields, not we. Tell the sender: by its
                # dead notice if we hold it dead, else by a yield hint
                tomb = self._tombs.get(sender)
                if tomb is not None and not tomb.local:
                    self._notify(sender, self._dead_entry(sender, tomb), now, force=True)
                elif self._via is not None:
                    self._yield_hint(sender, self._via, now)
                return
            self._rejoin(top, "declared dead by a peer", via=self._via)
            return
        if not left and ld is not None and ld > own:
            return  # a verdict of a younger view than ours: not ours to apply (its members yield)
        peer = self._peers.get(name)
        if peer is not None:
            if (key[0], key[1]) >= (peer.info.incarnation, peer.info.rank):
                self._remove(name, "left" if left else "declared dead", now, tombstone=True)
                self._enqueue(name, self._dead_entry(name, self._tombs[name], left=left, ld=ld))
            return
        if name not in self._tombs:  # never resurrect it from stale gossip either
            self._add_tomb(name, _Tomb(key[0], key[1], key[2], now, None))

    # -- probing -------------------------------------------------------------------------
    def _run_probe(self, now: float) -> None:
        p = self._probe
        if p is not None and not p.acked:
            if not p.indirect_sent and now >= p.indirect_at:
                p.indirect_sent = True
                body = dict(self._base(), seq=p.seq, ep=self._local.endpoint, target=p.target,
                            target_ep=p.endpoint)
                for name in self._sample(self.indirect_checks, exclude=p.target, alive_only=True):
                    self._send_to(self._peers[name].info.endpoint, PING_REQ, body, now)  # type: ignore[arg-type]
            if now >= p.deadline:
                self._probe = None
                peer = self._peers.get(p.target)
                if peer is not None and not peer.suspect:
                    self._suspect(peer, now)
                    # tell it at once: if it is alive, it refutes before anyone times out
                    self._send_to(peer.info.endpoint, GOSSIP, self._base(), now)  # type: ignore[arg-type]
        if now < self._next_probe:
            return
        self._next_probe = max(self._next_probe + self.period, now + self.period / 2)
        if p is not None and p is self._probe and not p.acked and now < p.deadline:
            return  # the previous probe is still out (a stalled loop): one at a time
        target = self._next_target()
        if target is None:
            self._probe = None
            return
        info = self._peers[target].info
        self._seq += 1
        self._probe = _Probe(target, info.endpoint, self._seq, now + self.rtt_timeout,  # type: ignore[arg-type]
                             now + self.period)
        body = dict(self._base(), seq=self._seq, ep=self._local.endpoint)
        self._send_to(info.endpoint, PING, body, now)  # type: ignore[arg-type]

    def _next_target(self) -> str | None:
        while True:
            if not self._probe_order:
                if not self._peers:
                    return None
                order = sorted(self._peers)
                self.rng.shuffle(order)
                self._probe_order = order
            name = self._probe_order.pop()
            if name in self._peers:
                return name

    def _suspect(self, peer: _Peer, now: float) -> None:
        peer.suspect = True
        name = peer.info.name
        self._suspects[name] = now + self.suspicion_timeout()
        self._suspected_at[name] = now
        self._enqueue(name, ["s", name, peer.info.incarnation, peer.info.rank, peer.n])
        self._out.append(Suspected(name))

    def _declare_dead(self, name: str, now: float, reason: str) -> None:
        if name not in self._peers:
            self._suspects.pop(name, None)
            self._suspected_at.pop(name, None)
            return
        if self._cut_off(now):
            # we hear nobody: most likely we are the one cut off. Drop it from our view, but keep
            # the verdict to ourselves (no dead notice, no gossip) and resync when we hear again
            self._remove(name, reason + " (while hearing nobody)", now, tombstone=True)
            self._tombs[name].local = True
            return
        self._remove(name, reason, now, tombstone=True)
        self._enqueue(name, self._dead_entry(name, self._tombs[name]))

    def _resync(self, sender: str, body: dict[str, Any], now: float) -> None:
        """We convicted members while cut off: ask the first node we hear again for its member
        list (a join: it answers with everyone, and ranks us behind if it had dropped us)."""
        ep = self._endpoint_of(sender, body)
        if ep is not None:
            self._send_to(ep, JOIN, self._join_body(), now)

    def _reprobe(self, now: float) -> None:
        """Repair: contact one remembered dead member (with its dead notice) or a seed outside the view."""
        for name, t in list(self._tombs.items()):
            if now - t.dropped_at > self.tombstone_ttl:
                del self._tombs[name]
        candidates: list[tuple[str, str, str | None]] = []  # (sort key, endpoint, tombstoned name)
        for name in sorted(self._tombs):
            t = self._tombs[name]
            if t.info is not None and t.info.endpoint:
                candidates.append((name, t.info.endpoint, name))
        if self._joined:  # before that, the join attempts go to the seeds anyway
            member_eps = {p.info.endpoint for p in self._peers.values()}
            for ep in self.seeds:
                if ep not in member_eps:
                    candidates.append(("\x00" + ep, ep, None))
        if not candidates:
            return
        _, ep, name = candidates[self.rng.randrange(len(candidates))]
        if name is None:
            self._send_to(ep, JOIN, self._join_body(), now)
        else:
            tomb = self._tombs[name]
            notice = None if tomb.local else self._dead_entry(name, tomb)
            self._seq += 1
            self._send_to(ep, PING, dict(self._base(notice), seq=self._seq, ep=self._local.endpoint), now)

    def _send_join(self, now: float) -> None:
        ep = self.seeds[self._join_attempt % len(self.seeds)]
        self._join_attempt += 1
        rounds = self._join_attempt // len(self.seeds)
        wait = self.join_timeout
        if self._join_attempt % len(self.seeds) == 0:  # a whole round without answer: back off
            wait += min(max(2.0, 4 * self.period), 0.1 * 2 ** rounds)
        self._next_join = now + wait
        self._send_to(ep, JOIN, self._join_body(), now)

    def _join_body(self) -> dict[str, Any]:
        body = self._local.to_wire()
        body["from"] = self._local.name
        body["n"] = self._n
        return body

    # -- dissemination ---------------------------------------------------------------------
    def _base(self, notice: list[Any] | None = None) -> dict[str, Any]:
        """A message body: who we are, and what we have to spread (a notice goes first)."""
        g = self._piggyback()
        if notice is not None:
            g.insert(0, notice)
        return {"from": self._local.name, "key": [self._local.incarnation, self._local.rank, self._n], "g": g}

    def _piggyback(self) -> list[Any]:
        if not self._updates:
            return []
        limit = self.retransmit_limit()
        chosen = heapq.nsmallest(self.max_piggyback, self._updates.items(), key=lambda kv: (kv[1].sent, -kv[1].order))
        out = []
        for name, u in chosen:
            out.append(u.entry)
            u.sent += 1
            if u.sent >= limit:
                del self._updates[name]
        return out

    def _enqueue(self, name: str, entry: list[Any]) -> None:
        self._order += 1
        self._updates[name] = _Update(entry, 0, self._order)  # a newer state replaces the older one

    def _enqueue_self(self) -> None:
        self._enqueue(self._local.name, self._alive_entry(self._local, self._n))

    def _notify(self, name: str, notice: list[Any], now: float, endpoint: str | None = None,
                force: bool = False) -> None:
        """Send a tombstoned sender its dead notice (once a period at most, unless ``force``)."""
        tomb = self._tombs.get(name)
        if tomb is None or (not force and now - tomb.noticed_at < self.period):
            return
        tomb.noticed_at = now
        ep = endpoint or (tomb.info.endpoint if tomb.info else None)
        if ep:
            self._send_to(ep, GOSSIP, {"from": self._local.name, "key": list(self.key), "g": [notice]}, now)

    def _yield_hint(self, name: str, endpoint: str, now: float) -> None:
        """Tell a member of a younger view (that does not know we are alive) to join ours."""
        key = "\x00yield:" + name
        if now - self._synced_at.get(key, -math.inf) < self.period:
            return
        self._synced_at[key] = now
        lrank, lname = self._leader_key(exclude=name)
        entry = ["y", name, lrank, lname, self._top_rank()]
        self._send_to(endpoint, GOSSIP, {"from": self._local.name, "key": list(self.key), "g": [entry]}, now)

    def _reassert(self, name: str, tomb: _Tomb, now: float) -> None:
        """Someone still spreads a dead member as alive: announce it dead again (rate-limited)."""
        if now - tomb.noticed_at >= 2 * self.period:
            tomb.noticed_at = now
            self._enqueue(name, self._dead_entry(name, tomb))

    def _rejoin(self, top: float, reason: str, via: str | None = None) -> None:
        """Declared dead: go to the back (behind every rank we know), and ask the node that told us
        for its member list (a join: it ranks us behind its view, and its list replaces our tombstones)."""
        self._set_rank(max(self._top_rank(), top) + RANK_STEP)
        self._enqueue_self()
        self._out.append(Rejoin(reason))
        if via is not None:
            self._yielded = True
            if self._via_name is not None:
                self._yielding[self._via_name] = self._last_tick + self.join_timeout
            self._send_to(via, JOIN, self._join_body(), self._last_tick)

    def _set_rank(self, rank: float) -> None:
        self._local = replace(self._local, rank=rank)
        self._version += 1
        self._topology_dirty = True

    def _top_rank(self) -> float:
        ranks = [p.info.rank for p in self._peers.values()] + [t.rank for t in self._tombs.values()]
        return max([self._local.rank, *ranks])

    @staticmethod
    def _alive_entry(info: MemberInfo, n: int) -> list[Any]:
        return ["a", info.name, info.incarnation, info.rank, n, info.endpoint, info.pub_endpoint,
                list(info.topics), list(info.offload_topics), dict(info.capacity), dict(info.properties)]

    def _dead_entry(self, name: str, tomb: _Tomb, left: bool = False,
                    ld: tuple[float, str] | None = None) -> list[Any]:
        """``["d", name, inc, rank, n, left, top rank, leader rank, leader name]``: the verdict, the
        rank to rejoin behind, and the leader of the view that made it."""
        lrank, lname = ld if ld is not None else self._leader_key(exclude=name)
        return ["d", name, tomb.incarnation, tomb.rank, tomb.n, left, self._top_rank(), lrank, lname]

    def _leader_key(self, exclude: str | None = None) -> tuple[float, str]:
        """(rank, name) of our leader, not counting ``exclude`` (the member a verdict is about)."""
        ordered = self._ordered()
        first = ordered[1] if ordered[0].name == exclude and len(ordered) > 1 else ordered[0]
        return (first.rank, first.name)

    def _endpoint_of(self, name: str, body: dict[str, Any]) -> str | None:
        p, t = self._peers.get(name), self._tombs.get(name)
        ep = p.info.endpoint if p else (t.info.endpoint if t and t.info else body.get("ep"))
        return ep if isinstance(ep, str) else None

    # -- members -------------------------------------------------------------------------
    def _sample(self, k: int, exclude: str | None = None, alive_only: bool = False) -> list[str]:
        if self._names is None:
            self._names = sorted(self._peers)
        names = self._names
        if not names or k <= 0:
            return []
        pick = self.rng.sample(names, min(len(names), k + (1 if exclude else 0)))
        out = [n for n in pick if n != exclude and not (alive_only and self._peers[n].suspect)]
        return out[:k]

    def _remove(self, name: str, reason: str, now: float, tombstone: bool) -> None:
        peer = self._peers.pop(name, None)
        if peer is None:
            return
        self._names = None
        self._suspects.pop(name, None)
        self._suspected_at.pop(name, None)
        self._member_key_cache.pop(name, None)
        self._version += 1
        self._topology_dirty = self._properties_dirty = True
        if tombstone:
            self._add_tomb(name, _Tomb(peer.info.incarnation, peer.info.rank, peer.info_n, now, peer.info))
        self._out.append(Dropped(name, reason))

    def _add_tomb(self, name: str, tomb: _Tomb) -> None:
        if name not in self._tombs and len(self._tombs) >= MAX_TOMBSTONES:
            oldest = min(self._tombs, key=lambda n: (self._tombs[n].dropped_at, n))
            del self._tombs[oldest]
        self._tombs[name] = tomb

    def _send_to(self, endpoint: str, msg_type: str, body: dict[str, Any], now: float) -> None:
        self._out.append(Send(endpoint, msg_type, body))

    # -- the view's parts (ViewPublisher publishes it by the rule both cores share) -------------
    def _ordered(self) -> list[MemberInfo]:
        if self._ordered_cache is not None and self._ordered_cache[0] == self._version:
            return self._ordered_cache[1]
        infos = [self._local, *(p.info for p in self._peers.values())]
        infos.sort(key=lambda i: (i.rank, i.name))
        self._ordered_cache = (self._version, infos)
        return infos

    def _build_view(self) -> TopologyView:
        ordered = self._ordered()
        leader = ordered[0].name
        cache, fresh = self._instances, {}
        instances = []
        for i in ordered:
            # a member whose description and role did not change keeps its (frozen) InstanceView:
            # at a thousand members, rebuilding them all for every change is most of the cost
            hit = cache.get(i.name)
            if hit is not None and hit[0] is i and hit[1] == (i.name == leader):
                iv = hit[2]
            else:
                iv = InstanceView(name=i.name, incarnation=i.incarnation, endpoint=i.endpoint,
                                  pub_endpoint=i.pub_endpoint, topics=i.topics, offload_topics=i.offload_topics,
                                  capacity=dict(i.capacity), properties=dict(i.properties),
                                  leader=i.name == leader, local=i.name == self._local.name)
            fresh[i.name] = (i, i.name == leader, iv)
            instances.append(iv)
        self._instances = fresh
        return TopologyView(local=self._local.name, leader=leader, instances=tuple(instances), current=True)

    def _member_keys(self, i: MemberInfo) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        hit = self._member_key_cache.get(i.name)
        if hit is None or hit[0] is not i:
            hit = self._member_key_cache[i.name] = (i, i.identity(), (i.name, *i.property_key()))
        return hit[1], hit[2]

    def _topology_key(self) -> tuple[Any, ...]:
        k = self._keys.get("topology")
        if k is None or k[0] != self._version:
            k = self._keys["topology"] = (self._version, tuple(self._member_keys(i)[0] for i in self._ordered()))
        return k[1]

    def _properties_key(self) -> tuple[Any, ...]:
        k = self._keys.get("properties")
        if k is None or k[0] != self._version:
            k = self._keys["properties"] = (self._version, tuple(self._member_keys(i)[1] for i in self._ordered()))
        return k[1]


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(v: Any) -> Key | None:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        return None
    inc, rank, n = v
    if not (_num(inc) and _num(rank) and isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return None
    return (float(inc), float(rank), n)


def _parse_alive(entry: Any) -> tuple[MemberInfo, int] | None:
    """``["a", name, inc, rank, n, endpoint, pub, topics, offload_topics, capacity, properties]``."""
    if not isinstance(entry, list) or len(entry) < 11 or entry[0] != "a":
        return None
    key = _key(entry[2:5])
    if key is None:
        return None
    try:
        info = MemberInfo.from_wire({
            "name": entry[1], "incarnation": key[0], "rank": key[1], "endpoint": entry[5], "pub": entry[6],
            "topics": entry[7], "offload_topics": entry[8], "capacity": entry[9], "properties": entry[10],
        })
    except InvalidMember:
        return None
    if not info.endpoint:
        return None
    return info, key[2]
