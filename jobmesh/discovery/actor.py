"""The discovery actor: the async shell around the membership core (DESIGN §2 discovery).

``DiscoveryActor(node)`` is started by the node when ``node.config.bind`` is set.
It owns:

- the node's ``Endpoint`` (its ROUTER, ``--bind``), where it answers ``join``
  requests; other parts (transfer) register their own message types on
  ``actor.endpoint`` — registrations survive actor restarts;
- a ``HeartbeatSender`` thread with the PUB socket (``pub_endpoint``);
- a SUB socket connected to every known member's PUB endpoint;
- tasks: receive heartbeats, tick the core, join through the seeds (DEALER
  request with timeout, next seed on failure, retried while alone), monitor the
  event loop's lag.

Public face for the node: ``view`` (the current ``TopologyView``),
``add_listener(cb)`` / ``remove_listener(cb)`` (Sling's TopologyEventListener:
INIT first, events in order, sync or async callbacks), ``set_property(key, value)``
(user properties carried by the heartbeats, reach every member within one interval).

Two parts live in modules of their own: ``joining.py`` (``Joining``, a part of the actor: the
join loop, probes of seeds and remembered members, the join request it answers, refused
and clashing names, the peer book) and ``listeners.py`` (a queue and a task per listener).
"""

from __future__ import annotations

import asyncio
import random
from .. import clock as _clock
from .. import rng as _rng
from typing import Any, Iterable, Protocol

import msgpack
import structlog

from .. import wire
from ..offloading import probe_topic
from ..actor import Actor
from ..errors import ValidationError
from ..wakeup import Wakeup
from ..topics import matches
from ..transport import Endpoint, Transport, load_curve_keys

from .heartbeat import HeartbeatReceiver, HeartbeatSender
from .joining import MAX_PROBES_IN_FLIGHT, PEER_BOOK_REFRESH, Joining
from .listeners import LISTENER_QUEUE_LIMIT, Listener, _ListenerTask
from .membership import (
    Connect,
    Disconnect,
    Dropped,
    InvalidMember,
    ListenerHub,
    MemberInfo,
    Membership,
    NameClash,
    Rejoin,
    ViewEvent,
)
from .probe import PeerBook, Prober
from .view import InstanceView, TopologyView

log = structlog.get_logger("jobmesh.discovery")

MAX_USER_PROPERTIES_BYTES = 256 * 1024  # heartbeats stay far below the wire maximum


class DiscoveryHost(Protocol):
    """What discovery needs from its node."""

    name: str
    config: Any
    started_at: float

    def fail(self, error: Exception) -> None: ...

    def consumer_topics(self) -> list[str]: ...

    def capacity_snapshot(self) -> dict[str, Any]: ...


def offload_topics_for(topics: Iterable[str], enabled: Iterable[str], disabled: Iterable[str]) -> list[str]:
    """Consumer topics enabled for offloading by the ``[offloading]`` patterns (a pattern counts as
    matched when the consumer pattern itself, read as a topic, matches)."""
    enabled, disabled = list(enabled), list(disabled)
    out = []
    for t in topics:
        probe = probe_topic(t)
        if any(p == t or matches(p, probe) for p in enabled) and not any(p == t or matches(p, probe) for p in disabled):
            out.append(t)
    return out


class DiscoveryActor(Joining, Actor):
    """Heartbeats, membership and topology events for one node."""

    tick_fraction = 4  # ticks per heartbeat interval (and heartbeat reads: batches of a quarter interval)
    lag_warning = 0.1  # seconds of event-loop lag worth a log line

    def __init__(self, node: DiscoveryHost) -> None:
        super().__init__("discovery")
        self.node = node
        cfg = node.config
        self.interval: float = cfg.discovery.heartbeat_interval
        self.timeout: float = cfg.discovery.heartbeat_timeout
        self.bind: str = cfg.bind
        self.pub: str = cfg.pub_endpoint
        self.advertise, self.advertise_pub = cfg.advertise_endpoint, cfg.advertise_pub_endpoint  # what peers dial
        self.seeds: list[str] = [s for s in cfg.seeds if s != cfg.bind]
        self.log = log.bind(node=node.name)
        self.curve = load_curve_keys(cfg.security)  # bad keys: a ConfigError before anything binds
        self.endpoint = Endpoint(node.name)
        self.endpoint.register("join", self._on_join)
        self.endpoint.on_activity(self._on_activity)
        # properties the node was given before discovery started
        early = getattr(node, "properties", None)
        self._user_properties: dict[str, Any] = dict(early) if isinstance(early, dict) else {}
        self._hub = ListenerHub()
        self._listeners: list[_ListenerTask] = []
        self._core: Membership | None = None
        self._transport: Transport | None = None
        self._sender: HeartbeatSender | None = None
        self._receiver: HeartbeatReceiver | None = None
        self._join_wanted = Wakeup()
        # level-triggered repair: seeds and remembered endpoints that are not live members
        self._prober = Prober(initial=0.1, cap=min(self.timeout, max(1.0, 4 * self.interval)),
                             rng=random.Random(_rng.current().getrandbits(64)))
        self._book: PeerBook = PeerBook()
        self._book_saved_at = 0.0
        self._name_refused_since: float | None = None
        self._name_clash_log_at = 0.0
        self.seed_probes = 0  # probes sent (join requests to endpoints that are not members)
        self.merges = 0  # probes that brought members we did not have (two views met)
        self._last_payload_at = 0.0
        # after a join, heartbeat every tick for a while: members that just learnt about us
        # from gossip connect to our PUB and hear us without waiting a whole interval
        self._burst_ticks = 0
        self.loop_lag = 0.0  # the largest event-loop lag seen in the last monitor window
        self.heartbeats_received = 0
        self.messages_dropped = 0
        self._drop_log_at = 0.0

    # -- public face ------------------------------------------------------------------
    @property
    def view(self) -> TopologyView:
        if self._core is None:
            return self._alone_view()
        return self._core.view

    @property
    def transport(self) -> Transport | None:
        """The node's transport (for the transfer actor's DEALERs), once started."""
        return self._transport

    def add_listener(self, callback: Listener) -> None:
        """Sling's TopologyEventListener: INIT first, then every event, in order."""
        task = _ListenerTask(callback, self.node.name)
        self._listeners.append(task)
        for t, event in self._hub.add(task):
            t.put(event)

    def remove_listener(self, callback: Listener) -> None:
        for task in [t for t in self._listeners if t.callback == callback]:
            self._hub.remove(task)
            self._listeners.remove(task)
            task.task.cancel()

    def set_property(self, key: str, value: Any) -> None:
        """Publish ``key = value`` in this node's heartbeats (``None`` removes it).

        Raises ``ValidationError`` for a value msgpack cannot carry or properties
        beyond ``MAX_USER_PROPERTIES_BYTES`` — the caller keeps running.
        """
        if not isinstance(key, str) or not key:
            raise ValidationError("property key must be a non-empty string")
        props = dict(self._user_properties)
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
        try:
            size = len(msgpack.packb(props, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as e:
            raise ValidationError(f"property {key!r} cannot be published: {e}") from None
        if size > MAX_USER_PROPERTIES_BYTES:
            raise ValidationError(
                f"properties would take {size} bytes; at most {MAX_USER_PROPERTIES_BYTES} ride in a heartbeat"
            )
        self._user_properties = props
        if self._core is not None:
            self._apply(self._core.set_local(_clock.monotonic(), properties=props))
            self._publish_heartbeat(send_now=True)

    # -- lifecycle ----------------------------------------------------------------------
    async def on_start(self) -> None:
        now = _clock.monotonic()
        if self._transport is None:  # kept across crash restarts: other parts' DEALERs stay valid
            make = getattr(self.node, "transport_factory", None) or Transport
            self._transport = make(self.node.name, self.curve)
        try:
            self.endpoint.bind(self._transport, self.bind)
            self._sender = HeartbeatSender(self._transport, self.pub, self.interval, self.timeout, self.node.name)
            self._receiver = HeartbeatReceiver(self._transport, self.node.name,
                                               period=self.interval / self.tick_fraction)
            for part in (self._sender, self._receiver):
                if self._transport.threads:  # a thread binds its socket: wait for it off the loop
                    await asyncio.get_running_loop().run_in_executor(None, part.start_and_wait)
                else:
                    part.start_and_wait()  # a task on this loop (the simulation)
        except BaseException:
            self._close_sockets(keep_transport=False)
            raise
        if self._core is None:
            self._book = self._load_book()
            self._core = Membership(
                self._local_info(),
                now=now,
                heartbeat_interval=self.interval,
                heartbeat_timeout=self.timeout,
                expect_join=bool(self.seeds),
            )
        else:  # a restart after a crash: same membership, fresh sockets
            self._core.resubscribe()
        self._apply(self._core.drain())
        self._publish_heartbeat(send_now=True)
        self.spawn(self.endpoint.run(), name="discovery:router")
        self.spawn(self._tick_loop(), name="discovery:tick")
        self.spawn(self._join_loop(), name="discovery:join")
        self.spawn(self._lag_monitor(), name="discovery:lag")
        self._join_wanted.set()  # probe the seeds (and remembered members) at once
        self.log.info(
            "discovery started", bind=self.bind, pub=self.pub, seeds=self.seeds, secure=self.curve is not None,
            remembered=len(self._book),
        )
        for ep in (self.advertise, self.advertise_pub):
            if "://*" in ep or "://0.0.0.0" in ep or "://[::]" in ep:
                # peers connect to the endpoints we advertise, and cannot connect to a wildcard
                self.log.warning("a wildcard endpoint is advertised to peers", endpoint=ep,
                                 hint="set advertise (--advertise tcp://HOST) to an address they reach")

    async def on_stop(self) -> None:
        final = None
        stopping = self._stopping  # a real stop, not the pause before a restart after a crash
        if stopping:
            for task in self._listeners:
                task.task.cancel()
        # only a real stop says goodbye: after a crash we come back at once, in the same place
        if stopping and self._core is not None and self._sender is not None:
            try:
                final = wire.encode("heartbeat", self._heartbeat_body(leaving=True))
            except wire.WireError:
                final = None
        if self._sender is not None:
            sender = self._sender
            if self._transport is not None and not self._transport.threads:
                sender.stop(final)
            else:
                await asyncio.get_running_loop().run_in_executor(None, lambda: sender.stop(final))
        self._close_sockets(keep_transport=not stopping)

    def _close_sockets(self, keep_transport: bool) -> None:
        self.endpoint.close()
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        if self._sender is not None and self._sender.is_alive():
            self._sender.stop()
        self._sender = None
        if self._transport is not None and not keep_transport:
            self._transport.close()
            self._transport = None

    async def receive(self, msg: Any) -> Any:
        if msg == "view":
            return self.view
        raise ValidationError(f"discovery does not understand {msg!r}")

    # -- the node's side of the heartbeat -------------------------------------------------
    def _alone_view(self) -> TopologyView:
        info = self._local_info()
        inst = InstanceView(
            name=info.name, incarnation=info.incarnation, endpoint=info.endpoint, pub_endpoint=info.pub_endpoint,
            topics=info.topics, offload_topics=info.offload_topics, capacity=dict(info.capacity),
            properties=dict(info.properties), leader=True, local=True,
        )
        return TopologyView(local=info.name, leader=info.name, instances=(inst,), current=False)

    def _local_topics(self) -> tuple[list[str], list[str]]:
        node = self.node
        try:
            topics = sorted(node.consumer_topics())
        except Exception:
            self.log.exception("consumer_topics failed")
            topics = []
        getter = getattr(node, "offload_topics", None)
        try:
            if callable(getter):
                offload = sorted(getter())
            else:
                off = node.config.offloading
                offload = offload_topics_for(topics, off.enabled_topics, off.disabled_topics)
        except Exception:
            self.log.exception("offload topics failed")
            offload = []
        return topics, offload

    def _capacity(self) -> dict[str, Any]:
        try:
            return dict(self.node.capacity_snapshot())
        except Exception:
            self.log.exception("capacity_snapshot failed")
            return {}

    def _local_info(self) -> MemberInfo:
        topics, offload = self._local_topics()
        inc = float(self.node.started_at)
        return MemberInfo(
            name=self.node.name, incarnation=inc, rank=inc, endpoint=self.advertise, pub_endpoint=self.advertise_pub,
            topics=tuple(topics), offload_topics=tuple(offload), capacity=self._capacity(),
            properties=dict(self._user_properties),
        )

    def _heartbeat_body(self, leaving: bool = False) -> dict[str, Any]:
        assert self._core is not None
        body = self._core.heartbeat_body(_clock.monotonic(), leaving=leaving)
        body["version"] = wire.PROTOCOL_VERSION
        return body

    def _publish_heartbeat(self, send_now: bool = False) -> None:
        if self._core is None or self._sender is None:
            return
        try:
            frames = wire.encode("heartbeat", self._heartbeat_body())
        except wire.WireError as e:
            self.log.error("heartbeat cannot be encoded", reason=e.reason)
            return
        self._sender.publish(frames, send_now=send_now)
        self._last_payload_at = _clock.monotonic()

    def _refresh_local(self, now: float) -> None:
        assert self._core is not None
        topics, offload = self._local_topics()
        self._apply(
            self._core.set_local(now, topics=topics, offload_topics=offload, capacity=self._capacity())
        )

    # -- carrying out what the core decided ----------------------------------------------
    def _apply(self, outs: list[Any]) -> None:
        for o in outs:
            if isinstance(o, ViewEvent):
                for task, event in self._hub.publish(o.event):
                    task.put(event)
                ev = o.event
                if ev.type.value in ("TOPOLOGY_INIT", "TOPOLOGY_CHANGED"):
                    v = ev.new_view
                    self.log.info("topology", kind=ev.type.value, members=v.names, leader=v.leader)
                    self._remember(v)
            elif isinstance(o, Connect):
                if self._receiver is not None:
                    self._receiver.connect(o.endpoint)
            elif isinstance(o, Disconnect):
                if self._receiver is not None:
                    self._receiver.disconnect(o.endpoint)
            elif isinstance(o, NameClash):
                self._name_clash(o.incarnation)
            elif isinstance(o, Dropped):
                self.log.info("member dropped", member=o.name, reason=o.reason)
            elif isinstance(o, Rejoin):
                self.log.warning("rejoining the topology", reason=o.reason)
                self._join_wanted.set()
                self._publish_heartbeat(send_now=True)  # our new rank, at once

    def _dropped(self, reason: str, **kw: Any) -> None:
        now = _clock.monotonic()
        if now - self._drop_log_at > 1.0:  # garbage floods must not flood the log
            self._drop_log_at = now
            self.log.warning("heartbeat dropped", reason=reason, dropped_total=self.messages_dropped, **kw)

    # -- tasks ---------------------------------------------------------------------
    def _absorb_heartbeats(self) -> None:
        """Feed the core what the receiver thread collected since the last tick."""
        assert self._receiver is not None and self._core is not None
        batch, reasons, rejected = self._receiver.take()
        if rejected:
            self.messages_dropped += rejected
            self._dropped(reasons[0] if reasons else "rejected", count=rejected)
        for arrived, body in batch:
            try:
                outs = self._core.on_heartbeat(body, arrived)
            except InvalidMember as e:
                self.messages_dropped += 1
                self._dropped(str(e))
                continue
            self.heartbeats_received += 1
            self._apply(outs)

    async def _tick_loop(self) -> None:
        period = self.interval / self.tick_fraction
        while True:
            await asyncio.sleep(period)
            now = _clock.monotonic()
            core = self._core
            assert core is not None and self._sender is not None
            due = now - self._last_payload_at >= self.interval * 0.9
            self._absorb_heartbeats()
            if due:
                self._refresh_local(now)
            self._apply(core.tick(now, own_silence=self._sender.take_max_gap()))
            self._refresh_book()
            if self._burst_ticks > 0:
                self._burst_ticks -= 1
                self._publish_heartbeat(send_now=True)
            elif due:
                self._publish_heartbeat()

    def _on_activity(self, sender: str, incarnation: Any = None) -> None:
        if self._core is not None and isinstance(incarnation, (int, float)) and not isinstance(incarnation, bool):
            self._core.touch(sender, _clock.monotonic(), float(incarnation))

    def _warn_lag(self, lag: float) -> None:
        """Say which async jobs were on the loop (one of them blocked it) and what to do."""
        describe = getattr(self.node, "describe_running_jobs", None)
        on_loop: list[dict[str, Any]] = []
        if callable(describe):
            try:
                on_loop = [j for j in describe() if j.get("async")]
            except Exception:
                on_loop = []
        if not on_loop:
            self.log.warning("event loop lag", lag_ms=round(lag * 1000, 1))
            return
        self.log.warning("event loop lag: an async consumer blocked the loop; make a blocking consumer a plain def "
                         "(it then runs in a thread)", lag_ms=round(lag * 1000, 1), running=len(on_loop),
                         jobs=[f"{j['job_id']} {j['topic']} ({j['consumer']})" for j in on_loop[:3]])

    async def _lag_monitor(self) -> None:
        """Measure how late the loop wakes up; a blocked loop is logged (heartbeats go on regardless)."""
        period = 0.5
        worst = 0.0
        window_start = _clock.monotonic()
        while True:
            t0 = _clock.monotonic()
            await asyncio.sleep(period)
            now = _clock.monotonic()
            lag = max(0.0, now - t0 - period)
            worst = max(worst, lag)
            self.loop_lag = max(self.loop_lag, lag)
            if lag > self.lag_warning:
                self._warn_lag(lag)
            if now - window_start >= 10.0:  # loop_lag: the worst lag of the last window
                self.loop_lag, worst, window_start = worst, 0.0, now


__all__ = ["DiscoveryActor", "DiscoveryHost", "LISTENER_QUEUE_LIMIT", "MAX_PROBES_IN_FLIGHT",
           "MAX_USER_PROPERTIES_BYTES", "PEER_BOOK_REFRESH", "Listener", "offload_topics_for"]
