"""How the discovery actor joins a topology and keeps looking for the rest of it (DESIGN §3).

The join protocol's I/O around the membership core: the join loop (a rejoin when the core
asks, and for the node's whole life a level-triggered probe of every seed and remembered
endpoint that is not a live member, so a restarted seed, a seed that was down at start or a
healed split all converge), the join request it answers on its ROUTER, what a refused or
clashing name does to the node, and the peer book of remembered members the probes use.
It is a part of ``DiscoveryActor`` (a mixin: it reads and sets the actor's state), kept in a
module of its own so that the actor's file holds its lifecycle, heartbeats and ticks.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Coroutine

from .. import clock as _clock
from .. import wire
from ..errors import NameInUse, ValidationError
from ..plants import PLANTS
from ..transport import Dealer, PeerUnreachable, RequestTimeout
from .membership import InvalidMember, Membership, NameTaken
from .probe import PeerBook, load_peer_book, save_peer_book
from .view import TopologyView

if TYPE_CHECKING:
    from ..transport import Transport
    from ..wakeup import Wakeup
    from .probe import Prober

MAX_PROBES_IN_FLIGHT = 16
PEER_BOOK_REFRESH = 60.0  # s between rewrites of the remembered endpoints while nothing changes


class Joining:
    """Joins, probes, names and remembered members (a part of ``DiscoveryActor``)."""

    if TYPE_CHECKING:  # the actor's state and methods this part uses
        node: Any
        log: Any
        interval: float
        timeout: float
        bind: str
        advertise: str
        seeds: list[str]
        tick_fraction: int
        seed_probes: int
        merges: int
        _core: Membership | None
        _transport: Transport | None
        _prober: Prober
        _book: PeerBook
        _book_saved_at: float
        _burst_ticks: int
        _join_wanted: Wakeup
        _name_refused_since: float | None
        _name_clash_log_at: float

        def _apply(self, outs: list[Any]) -> None: ...
        def _publish_heartbeat(self, send_now: bool = False) -> None: ...
        def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]: ...

    async def _join_loop(self) -> None:
        """Rejoin when the core asks; besides, for the node's whole life, probe every seed and
        remembered endpoint that is not a live member (DESIGN §3: repair is level-triggered, so a
        restarted seed, a seed that was down at start or a healed split all converge)."""
        attempt_timeout = max(0.5, 2 * self.interval)
        backoff_min, backoff_max = 0.1, min(self.timeout, max(1.0, 4 * self.interval))
        backoff = backoff_min
        period = self.interval / 2
        while True:
            await self._join_wanted.wait(period)
            core = self._core
            assert core is not None
            if core.rejoining:
                if await self._join_once(core, attempt_timeout):
                    backoff = backoff_min
                    continue
                await asyncio.sleep(backoff)  # nobody answered: try again, less and less often
                backoff = min(backoff_max, backoff * 2)
                self._join_wanted.set()
                continue
            self._probe_round(core, attempt_timeout)

    def probe_candidates(self) -> list[str]:
        """Seeds and remembered endpoints (ours excluded), whether live members or not."""
        own = {self.bind, self.advertise}
        eps = [*self.seeds, *self._book.endpoints(_clock.wall())]
        return [e for e in dict.fromkeys(eps) if e not in own]

    def _probe_round(self, core: Membership, attempt_timeout: float) -> None:
        if PLANTS.active("no-seed-reprobe") and core.joined:
            return  # planted bug (simulation): once joined, never look for the others again
        members = core.members()
        live_eps = {ep for _, ep in members if ep}
        live_names = {n for n, _ in members}
        now = _clock.monotonic()
        due = self._prober.due(self.probe_candidates(), live_eps, live_names, now)
        for ep in due[:MAX_PROBES_IN_FLIGHT]:
            self.spawn(self._probe(ep, attempt_timeout), name=f"discovery:probe:{ep}")
        for ep in due[MAX_PROBES_IN_FLIGHT:]:
            self._prober.unanswered(ep, now)  # next round

    async def _probe(self, endpoint: str, timeout: float) -> None:
        core = self._core
        assert core is not None
        self.seed_probes += 1
        reply = await self._ask_join(endpoint, timeout)
        now = _clock.monotonic()
        if reply is None:
            self._prober.unanswered(endpoint, now)
            return
        if core is not self._core:
            return
        before = set(core.member_names())
        try:
            outs = core.on_join_reply(reply, now)
        except InvalidMember as e:
            self.log.warning("bad join reply", seed=endpoint, error=str(e))
            self._prober.unanswered(endpoint, now)
            return
        self._name_refused_since = None
        members = reply.get("members") or [{}]
        responder = members[0].get("name") if isinstance(members[0], dict) else None
        self._prober.answered(endpoint, responder if isinstance(responder, str) else None, now)
        self._apply(outs)
        added = sorted(set(core.member_names()) - before)
        if added:
            self._publish_heartbeat(send_now=True)
            self._burst_ticks = 2 * self.tick_fraction
            if len(before) > 1:
                self.merges += 1
                self.log.warning("topologies merged", via=endpoint, added=added[:10], count=len(added),
                                 members=len(core.member_names()))
            else:
                self.log.info("joined", via=endpoint, members=core.member_names())

    async def _join_once(self, core: Membership, attempt_timeout: float) -> bool:
        # a rejoin asks the members we know first, the seeds after
        targets = list(dict.fromkeys([*core.endpoints(), *self.seeds]))
        for ep in targets:
            reply = await self._ask_join(ep, attempt_timeout)
            if reply is None:
                continue
            try:
                outs = core.on_join_reply(reply, _clock.monotonic())
            except InvalidMember as e:
                self.log.warning("bad join reply", seed=ep, error=str(e))
                continue
            self._apply(outs)
            self._publish_heartbeat(send_now=True)
            self._burst_ticks = 2 * self.tick_fraction
            self.log.info("rejoined", via=ep, members=core.member_names())
            return True
        return False

    async def _ask_join(self, endpoint: str, timeout: float) -> dict[str, Any] | None:
        assert self._transport is not None and self._core is not None
        body = self._core.join_body()
        body["from"] = self.node.name
        dealer = Dealer(self._transport, endpoint)
        try:
            msg = await dealer.request("join", body, timeout)
        except (RequestTimeout, PeerUnreachable) as e:
            self.log.info("join attempt failed", seed=endpoint, error=str(e))
            return None
        finally:
            dealer.close()
        if msg.type == "error":
            if msg.body.get("reason") == "name_taken":
                self._name_refused(endpoint, str(msg.body.get("error")))
            else:
                self.log.warning("join refused", seed=endpoint, error=msg.body.get("error"))
            return None
        if msg.type != "join_reply":
            self.log.warning("unexpected answer to join", seed=endpoint, type=msg.type)
            return None
        return msg.body

    def _on_join(self, identity: bytes, msg: wire.Message) -> tuple[str, dict[str, Any]]:
        core = self._core
        if core is None:
            raise ValidationError("discovery is not running")
        try:
            outs, reply = core.on_join_request(msg.body, _clock.monotonic())  # InvalidMember -> error reply
        except NameTaken as e:
            self.log.warning("join refused: the name is taken", joiner_endpoint=msg.body.get("endpoint"),
                             name=e.name, holder=e.holder_endpoint)
            return "error", {"error": str(e), "reason": "name_taken", "holder": e.holder_endpoint}
        self._apply(outs)
        self._publish_heartbeat(send_now=True)  # spread the newcomer to everyone at once
        return "join_reply", reply

    # -- names and remembered members ------------------------------------------------------
    def _name_refused(self, endpoint: str, error: str) -> None:
        """A member refused our join: our name is taken by a live node. A restart under a new
        endpoint looks the same for an interval or two (the old process was just heard), so
        only a refusal that lasts a heartbeat timeout ends this node, with the member's words."""
        now = _clock.monotonic()
        if self._name_refused_since is None:
            self._name_refused_since = now
            self.log.warning("join refused: the name is taken; retrying in case it was our own "
                             "previous process", seed=endpoint, error=error)
            return
        if now - self._name_refused_since >= self.timeout:
            self.log.error("name already taken in the topology; stopping", error=error)
            self.node.fail(NameInUse(error))

    def _name_clash(self, other_incarnation: float) -> None:
        """Heartbeats under our name from another process: the newer of the two gives way."""
        assert self._core is not None
        own = self._core.local.incarnation
        if other_incarnation < own:
            self.log.error("another node with this name is in the topology; stopping",
                           other_incarnation=other_incarnation, own_incarnation=own)
            self.node.fail(NameInUse(
                f"a node named {self.node.name} is already in this topology; choose another --name"))
            return
        now = _clock.monotonic()
        if now - self._name_clash_log_at > 30.0:
            self._name_clash_log_at = now
            self.log.warning("a newer process uses this node's name; it will stop",
                             other_incarnation=other_incarnation, own_incarnation=own)

    def _load_book(self) -> PeerBook:
        data = getattr(self.node.config, "data", None)
        if not data:
            return PeerBook()
        book = load_peer_book(data)
        book.expire(_clock.wall())
        return book

    def _remember(self, view: TopologyView) -> None:
        """Every member seen goes into the peer book (probed after a restart if it is not back)."""
        now = _clock.wall()
        self._book.seen([(i.name, i.endpoint) for i in view.instances if not i.local], now)
        self._save_book(now)

    def _save_book(self, now: float, force: bool = False) -> None:
        data = getattr(self.node.config, "data", None)
        if not data or not (self._book.dirty or force):
            return
        try:
            save_peer_book(data, self._book)
            self._book_saved_at = now
        except OSError as e:
            self.log.warning("remembered members not saved", error=str(e))

    def _refresh_book(self) -> None:
        now = _clock.wall()
        if now - self._book_saved_at < PEER_BOOK_REFRESH or self._core is None:
            return
        self._book.expire(now)
        self._book.seen([(n, ep) for n, ep in self._core.members() if n != self.node.name], now)
        self._save_book(now, force=True)


__all__ = ["Joining", "MAX_PROBES_IN_FLIGHT", "PEER_BOOK_REFRESH"]
