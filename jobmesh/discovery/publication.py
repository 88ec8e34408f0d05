"""How a membership core publishes its view: the rule both cores share.

Both membership cores, heartbeats (``membership.Membership``) and SWIM (``swim.Swim``),
publish views by the same rule, Sling's: ``TOPOLOGY_INIT`` once established, then
``TOPOLOGY_CHANGING`` as soon as the set, order or endpoints differ from the published
view and ``TOPOLOGY_CHANGED`` once the change has settled (the settle clock
``_last_change`` counts from the latest change seen), and ``PROPERTIES_CHANGED`` alone
when only properties changed. ``ViewPublisher`` holds that rule once, so the two cannot
drift apart; how members are learnt, ordered and keyed stays in each core (the hooks
``_build_view``, ``_topology_key``, ``_properties_key`` and ``_adopt_local``), and so does
when a change has settled (each core's ``tick`` calls ``_complete_change``). Pure: no I/O,
the clock is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Iterable, TypeVar, cast

from .view import TopologyEvent, TopologyEventType, TopologyView

if TYPE_CHECKING:
    from .membership import MemberInfo

OutputT = TypeVar("OutputT")  # a core's output union (it includes ViewEvent)


@dataclass(frozen=True)
class ViewEvent:
    event: TopologyEvent


class ViewPublisher(Generic[OutputT]):
    """The publication state of a membership core and the rule that moves it (a base class).

    A core calls ``_init_publication`` in its constructor, ``_evaluate`` after every input,
    and ``_complete_change`` from ``tick`` once ``_last_change`` is ``settle`` behind.
    """

    _out: list[OutputT]  # the core's outputs, handed out by ``_drain``
    _local: MemberInfo  # this node's own description

    def _init_publication(self, now: float, *, established: bool) -> None:
        self._version = 0  # bumped by every change a view shows (capacity included)
        self._view_cache: tuple[tuple[Any, ...], TopologyView] | None = None
        self._established = established
        self._changing = False
        self._last_change = now
        self._published: TopologyView | None = None
        self._published_topology: tuple[Any, ...] = ()
        self._published_properties: tuple[Any, ...] = ()
        self._seen_topology: tuple[Any, ...] = ()
        # what changed since the last evaluation: keeps a message that changes nothing cheap
        self._topology_dirty = True
        self._properties_dirty = True

    # -- the core's part -----------------------------------------------------------
    def _build_view(self) -> TopologyView:
        """The view of the members as they are now (current)."""
        raise NotImplementedError

    def _topology_key(self) -> tuple[Any, ...]:
        """What a topology change is made of (set, order, endpoints)."""
        raise NotImplementedError

    def _properties_key(self) -> tuple[Any, ...]:
        """What a PROPERTIES_CHANGED is made of (capacity left out)."""
        raise NotImplementedError

    def _adopt_local(self, new: MemberInfo) -> None:
        """Take ``new`` as this node's description: bump the version, mark what is dirty."""
        raise NotImplementedError

    # -- reading -------------------------------------------------------------------
    @property
    def established(self) -> bool:
        return self._established

    @property
    def changing(self) -> bool:
        return self._changing

    @property
    def view(self) -> TopologyView:
        """The view to show now: during a change (or before INIT) it is not current.

        Cached until something it shows changes: other parts read ``node.topology`` often.
        """
        key = (self._version, self._established, self._changing, id(self._published))
        if self._view_cache is not None and self._view_cache[0] == key:
            return self._view_cache[1]
        if not self._established:
            view = replace(self._build_view(), current=False)
        elif self._changing and self._published is not None:
            view = replace(self._published, current=False)
        else:
            view = self._build_view()
        self._view_cache = (key, view)
        return view

    # -- inputs --------------------------------------------------------------------
    def set_local(
        self,
        now: float,
        *,
        topics: Iterable[str] | None = None,
        offload_topics: Iterable[str] | None = None,
        capacity: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> list[OutputT]:
        """This node's own properties changed (consumer topics, capacity, user properties).

        What the change dirties (and, with SWIM, spreads) is the core's ``_adopt_local``.
        """
        changes: dict[str, Any] = {}
        if topics is not None:
            changes["topics"] = tuple(topics)
        if offload_topics is not None:
            changes["offload_topics"] = tuple(offload_topics)
        if capacity is not None:
            changes["capacity"] = dict(capacity)
        if properties is not None:
            changes["properties"] = dict(properties)
        self._adopt_local(replace(self._local, **changes))
        self._evaluate(now)
        return self._drain()

    def drain(self) -> list[OutputT]:
        """Outputs not yet handed out (e.g. the INIT of a node that starts alone)."""
        return self._drain()

    # -- the rule ------------------------------------------------------------------
    def _publish(self, view: TopologyView) -> None:
        self._published = view
        self._published_topology = self._topology_key()
        self._seen_topology = self._published_topology
        self._published_properties = self._properties_key()

    def _establish(self) -> None:
        self._established = True
        view = self._build_view()
        self._publish(view)
        self._emit(TopologyEventType.TOPOLOGY_INIT, None, view)

    def _establish_now(self, now: float) -> None:
        self._last_change = now
        self._establish()

    def _evaluate(self, now: float) -> None:
        """Compare the members with the published view: start a change, or publish new properties."""
        if not self._established:
            return
        if self._topology_dirty:
            self._topology_dirty = False
            topo = self._topology_key()
            if topo != self._seen_topology:
                self._seen_topology = topo
                self._last_change = now  # the settle time counts from the latest change
            if topo != self._published_topology and not self._changing:
                self._changing = True
                old = replace(self._published, current=False) if self._published else None
                self._emit(TopologyEventType.TOPOLOGY_CHANGING, old, None)
        if self._changing:
            return  # CHANGED (at the next tick) will carry the new properties too
        if self._properties_dirty:
            self._properties_dirty = False
            if self._properties_key() != self._published_properties:
                old = self._published
                new = self._build_view()
                self._publish(new)
                self._emit(TopologyEventType.PROPERTIES_CHANGED, replace(old, current=False) if old else None, new)

    def _complete_change(self) -> None:
        """The change has settled: publish the view it led to (``TOPOLOGY_CHANGED``)."""
        old = self._published
        new = self._build_view()
        self._changing = False
        self._publish(new)
        self._emit(TopologyEventType.TOPOLOGY_CHANGED, replace(old, current=False) if old else None, new)

    def _emit(self, kind: TopologyEventType, old: TopologyView | None, new: TopologyView | None) -> None:
        """Hand out a topology event (as a ``ViewEvent``, with the core's other outputs)."""
        self._out.append(cast(OutputT, ViewEvent(TopologyEvent(kind, old, new))))

    def _drain(self) -> list[OutputT]:
        out, self._out = self._out, []
        return out
