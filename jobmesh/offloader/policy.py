"""Rebalancing decisions, pure: which queued jobs move to which node, or nothing.

Inputs are data (the topology view with every node's advertised capacity, a summary
of the local node's queued jobs, known job durations, recent move history, the
time); the output is a ``Plan`` of moves. No I/O, no clock of its own, so every rule
below is tested deterministically.

The policy (see ``docs/offloading.md`` for the long version):

* **Push, by one water level.** Every node plans only for the jobs it is the
  origin of and has never moved. For a group of jobs (queue, topic) it computes,
  over the nodes that can run them, the backlog per slot at which what the busy
  nodes can shed equals what the others can take, and sends its own excess to the
  nodes below that level in proportion to their room. Every origin computes the
  same level from the same view, so concurrent origins' moves add up to each
  node's room instead of all filling the same idle node; and the first decision
  moves most of a burst at once, in proportion to free capacity, instead of
  trickling it. Whether to move at all compares expected finish times here and
  there plus a transfer cost (as dask's work stealing compares expected wait
  against transfer cost).
* **Hysteresis.** Nothing moves unless the gap between here and the best node
  exceeds ``hysteresis`` job durations: a balanced topology causes no moves.
* **Capability routing.** A job whose topic this node cannot run (no consumer,
  topic disabled, another topic exclusive here) goes to capable nodes at once,
  spread by capacity; a job that no node can run stays queued (``unassignable``).
* **Ordered queues** are never split: a queue's jobs stay where they are in flight
  (``placed_on``), else at home when this node can run them, else on one node
  chosen by rendezvous hashing over the capable nodes — stable across rounds and
  origins, and disturbed only when that node leaves.
* **No ping-pong.** Moved jobs are not in the summary (only the origin moves a job,
  and only once, until its target dies); moves sent recently count as load at
  their target until its advertisement has caught up (``pending_window``); a node
  that just sent us jobs is neither a target for our balancing moves nor a victim
  of our steal requests for ``cooldown`` seconds.
* **Payload** (issue 14): a move's plan says how much waiting it saves per job at its
  target (``Move.saves``); once the jobs are taken, ``assign_payload`` gives each job with
  payload to the planned target that needs the fewest bytes sent (one that already holds
  its blobs first) and keeps it home when sending its bytes (``transfer_rate``) would take
  longer than the wait it saves. Jobs no node but a remote one can run always go.
* **Stealing** is a hint for speed: an idle node asks the most loaded node for
  work (``plan_steal``: at least its free slots, at most what would even the two
  out); the busy node answers with the thief's part of the same topology-wide
  balance (``plan_moves(only_target=..., limit=..., target_free=...)``), so two
  thieves asking at once do not each take the lot.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..discovery.view import InstanceView, TopologyView
from ..errors import ValidationError
from ..topics import matches

__all__ = [
    "Move",
    "MoveRecord",
    "NodeLoad",
    "Plan",
    "PolicyConfig",
    "QueueSummary",
    "StealAsk",
    "assign_payload",
    "can_run",
    "plan_moves",
    "plan_steal",
    "rendezvous_choice",
]

# Keys read from InstanceView.capacity / .properties (the heartbeat's advertisement).
CAP_SLOTS = "slots"
CAP_ACTIVE = "active"
CAP_QUEUED = "queued"
CAP_THROUGHPUT = "throughput"  # jobs finished per second, recent window
CAP_MOVABLE = "movable"  # queued jobs the node may still move (its own, never moved); default: queued
PROP_DISABLED = "offload_disabled_topics"  # patterns this node refuses even if enabled


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the policy, with defaults sized for jobs of tens of ms and more."""

    default_duration: float = 1.0  # seconds, for a topic with no known average duration
    transfer_cost: float = 0.005  # seconds a move adds (round trip + commits at both ends)
    hysteresis: float = 1.0  # in job durations: below this gap the topology counts as balanced
    pending_window: float = 1.0  # s: recent moves not yet visible in the target's advertisement
    cooldown: float = 5.0  # s: a node that sent us jobs is not a target/victim for this long
    steal_interval: float = 1.0  # s between two steal requests to the same node
    max_moves: int = 100_000  # jobs moved per decision at most (bounds the loop)
    # bytes/s a job's payload is assumed to move at (benchmarks/payload.py measures 110-200 MB/s on
    # loopback; a network is slower): a job moves only if its bytes take less than the wait it saves
    transfer_rate: float = 100e6

    def __post_init__(self) -> None:
        if self.default_duration <= 0 or self.transfer_cost < 0 or self.hysteresis < 0:
            raise ValidationError("default_duration > 0, transfer_cost >= 0, hysteresis >= 0")
        if self.transfer_rate <= 0:
            raise ValidationError("transfer_rate must be > 0 (bytes per second)")
        if self.pending_window < 0 or self.cooldown < 0 or self.steal_interval < 0 or self.max_moves < 1:
            raise ValidationError("windows must be >= 0 and max_moves >= 1")


@dataclass(frozen=True)
class NodeLoad:
    """One node as the policy sees it: capability and advertised load."""

    name: str
    slots: int
    active: int = 0
    queued: int = 0
    throughput: float = 0.0
    movable: int | None = None  # None: all queued jobs count as movable
    topics: tuple[str, ...] = ()  # consumer patterns
    enabled: tuple[str, ...] = ("**",)  # offloading-enabled patterns (exclusive: just one)
    disabled: tuple[str, ...] = ()
    local: bool = False

    @classmethod
    def from_instance(cls, inst: InstanceView) -> "NodeLoad":
        cap: Mapping[str, Any] = inst.capacity or {}
        disabled = inst.properties.get(PROP_DISABLED, ()) if inst.properties else ()
        return cls(
            name=inst.name,
            slots=max(0, _int(cap.get(CAP_SLOTS), 1)),
            active=max(0, _int(cap.get(CAP_ACTIVE), 0)),
            queued=max(0, _int(cap.get(CAP_QUEUED), 0)),
            throughput=max(0.0, _float(cap.get(CAP_THROUGHPUT), 0.0)),
            movable=None if cap.get(CAP_MOVABLE) is None else max(0, _int(cap.get(CAP_MOVABLE), 0)),
            topics=tuple(inst.topics),
            enabled=tuple(inst.offload_topics),
            disabled=tuple(d for d in disabled if isinstance(d, str)) if isinstance(disabled, (list, tuple)) else (),
            local=inst.local,
        )


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return int(value)


def _float(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def can_run(node: NodeLoad | InstanceView, topic: str) -> bool:
    """Whether ``node`` may run jobs of ``topic``: it has a consumer for it, the topic is
    enabled there, and not disabled. Applies to the local node too (a topic disabled
    or excluded by an exclusive setting does not run there, wherever it was added)."""
    load = node if isinstance(node, NodeLoad) else NodeLoad.from_instance(node)
    if load.slots < 1:
        return False
    if not any(matches(p, topic) for p in load.topics):
        return False
    if not any(matches(p, topic) for p in load.enabled):
        return False
    return not any(matches(p, topic) for p in load.disabled)


@dataclass(frozen=True)
class QueueSummary:
    """Queued jobs of one (queue, topic) at the local node that the policy may move:
    those this node is the origin of and that were never moved (or whose target died).

    ``placed_on`` (ordered queues): the node where this queue's jobs are in flight now.
    """

    queue: str
    topic: str
    count: int
    ordered: bool = False
    oldest_age: float = 0.0
    placed_on: str | None = None


@dataclass(frozen=True)
class MoveRecord:
    """A past move between two nodes (sent by this node, or received from another)."""

    at: float
    source: str
    target: str
    count: int
    kind: str = "move"  # "move" (pushed) | "stolen" (answer to a steal request) | "steal_request"


@dataclass(frozen=True)
class Move:
    """Send ``count`` queued jobs of (queue, topic) to ``target``."""

    queue: str
    topic: str
    count: int
    target: str
    reason: str  # "capability" | "balance" | "ordered" | "steal"
    # seconds of waiting a job saves by running at ``target`` instead of here (inf: it cannot run
    # here, or an ordered queue's home): the most its payload's transfer may take
    saves: float = math.inf


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    unassignable: list[QueueSummary] = field(default_factory=list)  # nobody can run these: stay queued
    held: bool = False  # the view is changing: decisions that need it wait for the next one

    @property
    def total(self) -> int:
        return sum(m.count for m in self.moves)

    def by_target(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.moves:
            out[m.target] = out.get(m.target, 0) + m.count
        return out


@dataclass(frozen=True)
class StealAsk:
    """Ask ``victim`` for up to ``count`` jobs of ``topics``."""

    victim: str
    count: int
    topics: tuple[str, ...]


def rendezvous_choice(key: str, nodes: Iterable[str]) -> str | None:
    """Highest-random-weight choice: stable for a key, moves only if the winner leaves."""
    best: tuple[bytes, str] | None = None
    for n in nodes:
        h = hashlib.blake2b(f"{key}\0{n}".encode(), digest_size=8).digest()
        if best is None or (h, n) > best:
            best = (h, n)
    return None if best is None else best[1]


# --------------------------------------------------------------------------- push


def _loads(view: TopologyView) -> tuple[NodeLoad, dict[str, NodeLoad]]:
    nodes: dict[str, NodeLoad] = {}
    local: NodeLoad | None = None
    for inst in view.instances:
        load = NodeLoad.from_instance(inst)
        nodes[load.name] = load
        if inst.local or inst.name == view.local:
            local = load
    if local is None:
        raise ValidationError(f"the view has no local instance {view.local!r}")
    return local, nodes


def _duration(topic: str, durations: Mapping[str, float], local: NodeLoad, cfg: PolicyConfig) -> float:
    d = durations.get(topic)
    if d is not None and d > 0:
        return d
    # no history for this topic: the local node's recent mean, when it is saturated
    if local.throughput > 0 and local.slots > 0 and local.active >= local.slots:
        return local.active / local.throughput
    return cfg.default_duration


def plan_moves(
    view: TopologyView,
    queued: Sequence[QueueSummary],
    now: float,
    durations: Mapping[str, float] | None = None,
    history: Sequence[MoveRecord] = (),
    config: PolicyConfig | None = None,
    only_target: str | None = None,
    limit: int | None = None,
    target_free: int | None = None,
) -> Plan:
    """Decide which of the local node's movable queued jobs go where.

    ``only_target``/``limit``/``target_free`` answer a steal request: moves only to the
    thief, at most ``limit`` jobs, the thief's own fresh count of free slots taking the
    place of its advertised load.
    """
    cfg = config or PolicyConfig()
    durations = durations or {}
    plan = Plan()
    if not view.current:
        plan.held = True
        return plan
    local, nodes = _loads(view)
    budget = max(0, min(cfg.max_moves, limit if limit is not None else cfg.max_moves))

    # backlog (jobs) per node: advertised active + queued, plus our recent moves it may not show yet
    backlog: dict[str, float] = {n: float(l.active + l.queued) for n, l in nodes.items()}
    movable_here = sum(max(0, q.count) for q in queued)
    backlog[local.name] = float(local.active + max(local.queued, movable_here))
    cooling: set[str] = set()
    for rec in history:
        if rec.kind not in ("move", "stolen"):
            continue
        if rec.source == local.name and rec.target in backlog and now - rec.at <= cfg.pending_window:
            backlog[rec.target] += rec.count
        if (rec.kind == "move" and rec.target == local.name and rec.source != local.name
                and now - rec.at <= cfg.cooldown):
            cooling.add(rec.source)  # it pushed jobs to us: we push none back for a while
    if only_target is not None and target_free is not None and only_target in nodes:
        fresh = max(0, nodes[only_target].slots - max(0, target_free))
        backlog[only_target] = float(fresh)

    groups = sorted(
        (q for q in queued if q.count > 0),
        key=lambda q: (not q.ordered, -q.oldest_age, q.queue, q.topic),
    )
    for g in groups:
        capable = [n for n in nodes.values() if can_run(n, g.topic)]
        if not capable:
            plan.unassignable.append(g)
            continue
        if budget <= 0:
            continue
        local_ok = any(n.name == local.name for n in capable)
        remotes = [n for n in capable if n.name != local.name]
        if only_target is not None:
            remotes = [n for n in remotes if n.name == only_target]
        d = _duration(g.topic, durations, local, cfg)

        if g.ordered:
            target = _ordered_home(g, local, local_ok, capable)
            if target is None or target == local.name:
                continue
            if only_target is not None and target != only_target:
                continue
            count = min(g.count, budget)
            plan.moves.append(Move(g.queue, g.topic, count, target, "ordered"))
            backlog[target] += count
            backlog[local.name] -= count
            budget -= count
            continue

        if not remotes:
            continue
        if not local_ok:
            # capability routing: every job goes, spread by capacity; cooldown does not apply
            moved = _fill(remotes, backlog, d, cfg, min(g.count, budget))
            reason = "capability"
        else:
            candidates = [n for n in remotes if n.name not in cooling]
            if not candidates:
                continue
            if not _imbalanced(local, candidates, backlog, d, cfg):
                continue
            # our part of the topology-wide balance (answering a steal: only the thief's part)
            movable = {n.name: (n.queued if n.movable is None else min(n.movable, n.queued))
                       for n in capable}
            movable[local.name] = g.count
            moved = _share(local, capable, candidates, backlog, movable, min(g.count, budget))
            reason = "steal" if only_target is not None else "balance"
        here = _finish(backlog[local.name], local.slots, d) if local_ok and local.slots >= 1 else math.inf
        for target, count in sorted(moved.items()):
            saves = math.inf
            if reason != "capability" and here != math.inf:
                t = nodes[target]  # the job taken is the newest here; there, it is about the count/2-th new one
                saves = max(0.0, here - _finish(backlog[target] + (count + 1) / 2, t.slots, d))
            plan.moves.append(Move(g.queue, g.topic, count, target, reason, saves))
            if reason != "capability":  # (_fill updates the targets' backlog itself)
                backlog[target] += count
            backlog[local.name] -= count
            budget -= count
    return plan


def _ordered_home(g: QueueSummary, local: NodeLoad, local_ok: bool, capable: list[NodeLoad]) -> str | None:
    """Where an ordered queue's jobs run: where they already are, else home, else HRW."""
    names = {n.name for n in capable}
    if g.placed_on is not None and g.placed_on in names:
        return g.placed_on
    if local_ok:
        return local.name
    return rendezvous_choice(g.queue, sorted(names - {local.name}))


def _share(local: NodeLoad, members: list[NodeLoad], candidates: list[NodeLoad],
           backlog: Mapping[str, float], movable: Mapping[str, int], cap: int) -> dict[str, int]:
    """This node's part of the topology-wide water filling.

    Every origin computes the same level ``T`` (jobs per slot) from the same view: a
    node above it sheds what it can (at most its movable jobs), a node below it takes
    ``T*slots - backlog``. This node sends its own outflow to the sinks in proportion
    to their room, so that when several busy origins push at once, their moves add up
    to each sink's room instead of each of them filling the same idle node.
    """
    slots = {n.name: float(n.slots) for n in members}

    def outflow(name: str, level: float) -> float:
        return min(float(movable.get(name, 0)), max(0.0, backlog[name] - level * slots[name]))

    def inflow(name: str, level: float) -> float:
        return max(0.0, level * slots[name] - backlog[name])

    lo, hi = 0.0, max(backlog[n] / slots[n] for n in slots)
    for _ in range(60):  # bisection: total outflow falls and total inflow rises with the level
        mid = (lo + hi) / 2
        if sum(outflow(n, mid) for n in slots) > sum(inflow(n, mid) for n in slots):
            lo = mid
        else:
            hi = mid
    level = (lo + hi) / 2
    mine = outflow(local.name, level)  # at most our movable count; ``cap`` applies after the split
    room = {n.name: inflow(n.name, level) for n in candidates}
    total_room = sum(room.values())
    total_inflow = sum(inflow(n, level) for n in slots)
    if mine <= 0 or total_room <= 0 or total_inflow <= 0:
        return {}
    # each sink's part of our outflow; cooling sinks (not candidates) get nothing from us
    exact = {n: mine * r / total_inflow for n, r in room.items() if r > 0}
    wanted = sum(exact.values())
    if wanted > cap:
        exact = {n: v * cap / wanted for n, v in exact.items()}
        wanted = float(cap)
    count = min(cap, math.floor(wanted + 0.5 - 1e-9))  # a half job stays home
    out = {n: math.floor(v + 1e-9) for n, v in exact.items()}
    rest = count - sum(out.values())
    for n in sorted(exact, key=lambda n: (-(exact[n] - out[n]), n))[:max(0, rest)]:
        out[n] += 1
    return {n: c for n, c in out.items() if c > 0}


def _finish(backlog: float, slots: int, d: float) -> float:
    return backlog * d / slots


def _imbalanced(local: NodeLoad, remotes: list[NodeLoad], backlog: Mapping[str, float], d: float,
                cfg: PolicyConfig) -> bool:
    """Is the gap between here and the best remote above the hysteresis?"""
    if local.slots < 1:
        return True
    here = _finish(backlog[local.name], local.slots, d)
    best = min(_finish(backlog[n.name] + 1, n.slots, d) + cfg.transfer_cost for n in remotes)
    return here - best > cfg.hysteresis * d


def _fill(remotes: list[NodeLoad], backlog: dict[str, float], d: float, cfg: PolicyConfig,
          count: int) -> dict[str, int]:
    """Capability routing: ``count`` jobs, one at a time, each to the node where it would
    finish first (weighted round robin by capacity). Updates the targets' ``backlog``."""
    heap = [(_finish(backlog[n.name] + 1, n.slots, d) + cfg.transfer_cost, i, n.name, n.slots)
            for i, n in enumerate(remotes)]
    heapq.heapify(heap)
    moved: dict[str, int] = {}
    for _ in range(count):
        _finish_at, i, name, slots = heap[0]
        moved[name] = moved.get(name, 0) + 1
        backlog[name] += 1
        heapq.heapreplace(heap, (_finish(backlog[name] + 1, slots, d) + cfg.transfer_cost, i, name, slots))
    return moved


def assign_payload(
    to_send: Sequence[Mapping[str, int]],
    moves: Sequence[Move],
    config: PolicyConfig | None = None,
) -> list[str | None]:
    """Which planned target each taken job goes to, or None (it stays here).

    ``to_send[i]``: for job ``i``, the bytes of its payload each target of ``moves`` would still
    need (0: it holds them all; a target not named needs the job's whole payload, ``"*"``).
    ``moves``: the plan's moves of one (queue, topic), each with its count and ``saves``.
    Jobs are placed largest payload first, each to the target with room left that needs the
    fewest bytes (ties: the one that saves the most waiting, then the name); a job whose bytes
    would take longer to send (at ``transfer_rate``, plus ``transfer_cost``) than the wait its
    move saves stays here. Jobs without payload fill what room is left, in order.
    """
    cfg = config or PolicyConfig()
    room: dict[str, int] = {}
    saves: dict[str, float] = {}
    for m in moves:
        room[m.target] = room.get(m.target, 0) + m.count
        saves[m.target] = max(saves.get(m.target, 0.0), m.saves)
    out: list[str | None] = [None] * len(to_send)

    def need(i: int, target: str) -> int:
        b = to_send[i]
        return int(b.get(target, b.get("*", 0)))

    heavy = sorted((i for i in range(len(to_send)) if any(need(i, t) for t in room)),
                   key=lambda i: (-max(need(i, t) for t in room), i))
    light = [i for i in range(len(to_send)) if not any(need(i, t) for t in room)]
    for i in heavy:
        best: tuple[int, float, str] | None = None
        for t, left in room.items():
            if left <= 0:
                continue
            n = need(i, t)
            if n / cfg.transfer_rate + cfg.transfer_cost > saves[t]:
                continue  # its bytes take longer than the wait it saves there
            key = (n, -saves[t], t)
            if best is None or key < best:
                best = key
        if best is not None:
            out[i] = best[2]
            room[best[2]] -= 1
    for i in light:
        for t in sorted(room, key=lambda t: (-saves[t], t)):
            if room[t] > 0:
                out[i] = t
                room[t] -= 1
                break
    return out


# --------------------------------------------------------------------------- pull


def plan_steal(
    view: TopologyView,
    now: float,
    history: Sequence[MoveRecord] = (),
    config: PolicyConfig | None = None,
) -> StealAsk | None:
    """An idle node's question: whom to ask for work, and for how much (or None).

    Asks only when this node has free slots and nothing queued, only a node whose
    backlog per slot exceeds one job plus the hysteresis (it has jobs waiting that
    we could start now), never a node that just sent us jobs, and at most once per
    ``steal_interval`` per node.
    """
    cfg = config or PolicyConfig()
    if not view.current:
        return None
    local, nodes = _loads(view)
    free = local.slots - local.active - local.queued
    if free <= 0 or local.queued > 0 or not local.topics:
        return None
    recent_source: set[str] = set()
    last_ask: dict[str, float] = {}
    last_from: dict[str, float] = {}
    for rec in history:
        if rec.kind == "move" and rec.target == local.name and now - rec.at <= cfg.cooldown:
            recent_source.add(rec.source)  # it pushed jobs to us: take none away from it
        if rec.kind == "steal_request" and rec.source == local.name:
            last_ask[rec.target] = max(rec.at, last_ask.get(rec.target, rec.at))
        if rec.kind in ("move", "stolen") and rec.target == local.name:
            last_from[rec.source] = max(rec.at, last_from.get(rec.source, rec.at))
    # a request is outstanding until the victim answered with jobs or steal_interval passed
    recently_asked = {v for v, at in last_ask.items()
                      if now - at < cfg.steal_interval and last_from.get(v, -1e300) < at}
    best: tuple[float, str, int] | None = None
    for n in nodes.values():
        if n.name == local.name or n.name in recent_source or n.name in recently_asked or n.slots < 1:
            continue
        if not any(_overlap(p, q) for p in n.topics for q in local.topics):
            continue  # no topic in common, as far as the patterns tell
        per_slot = (n.active + n.queued) / n.slots
        if per_slot - 1 <= cfg.hysteresis or n.queued <= 0:
            continue
        if best is None or (per_slot, n.name) > best[:2]:
            # as many as would even out the two of us (the victim's policy caps it to our share)
            mine = local.active + local.queued
            even = ((n.active + n.queued) * local.slots - mine * n.slots) / (local.slots + n.slots)
            best = (per_slot, n.name, max(free, min(int(even), n.queued)))
    if best is None:
        return None
    return StealAsk(best[1], best[2], tuple(local.topics))


def _overlap(p: str, q: str) -> bool:
    """Whether two topic patterns may match a common topic (approximate, never too strict
    for the patterns jobmesh allows: wildcards only in the last segment)."""
    if p == q or matches(p, q) or matches(q, p):
        return True
    # strip the wildcard tails and compare the literal prefixes
    def head(x: str) -> tuple[str, bool]:
        if x.endswith("/**") or x.endswith("/*"):
            return x.rsplit("/", 1)[0] + "/", True
        if x in ("*", "**"):
            return "", True
        return x, False

    hp, wp = head(p)
    hq, wq = head(q)
    if wp and (q.startswith(hp) or hq.startswith(hp)):
        return True
    return wq and (p.startswith(hq) or hp.startswith(hq))
