"""Prometheus metrics for one node, on a per-node ``CollectorRegistry``.

Two sources feed ``/metrics``:

* ``JobMetricsRecorder`` listens to the node's notifications and keeps totals per
  queue (added, finished, failed, cancelled, stopped, removed) and histograms of
  waiting and processing time. It is plain Python (dicts and bucket arrays, no
  locks): a listener runs for every job transition, so at the engine's 15k jobs/s
  the prometheus-client objects' per-call locking would cost more than the jobs.
  It starts listening at the first scrape, not at node start: a listener makes the
  engine build a notification for every transition, a cost a node nobody scrapes
  should not pay. So these counters and histograms cover the time since the first
  scrape (Prometheus' ``rate()`` and ``increase()`` handle a counter that starts
  late); the Sling statistics below are totals since the node started.
* A snapshot taken on scrape (``NodeMetrics.snapshot``): jobs queued/active per queue,
  suspended queues, topology size and leadership, advertised capacity, actor
  mailbox depths, and the offloading parts' own counters (``node.transfer.stats()``,
  ``node.offloader.stats()``, discovery's heartbeat counters and loop lag). Those
  parts count on their own paths anyway; the scrape only reads the numbers, so
  offloading costs nothing more for being exported. A node without ``bind`` has
  none of them and exports none of their families.

``NodeCollector`` turns both into metric families only when Prometheus scrapes.
Not the global registry: several nodes may live in one process (tests, the demo).
"""

from __future__ import annotations

import bisect
from .. import clock as _clock
from dataclasses import dataclass, field
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..actor import Actor

# seconds; from a fast no-op job to an hour-long render
TIME_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)

# notification topic -> counter name (without the jobmesh_jobs_ prefix / _total suffix)
EVENT_COUNTERS: dict[str, str] = {
    "job/added": "added",
    "job/finished": "finished",
    "job/failed": "failed",
    "job/cancelled": "cancelled",
    "job/stopped": "stopped",
    "job/removed": "removed",
}

COUNTER_HELP: dict[str, str] = {
    "added": "Jobs added on this node (origin).",
    "finished": "Jobs that succeeded.",
    "failed": "Failed attempts that will be retried.",
    "cancelled": "Jobs given up or ended in error (no retry).",
    "stopped": "Jobs stopped on request.",
    "removed": "Jobs removed.",
}


class Histogram:
    """Cumulative-on-export bucket counts; ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``le`` label text and the cumulative count."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((_le(bound), total))
        total += self.counts[-1]
        out.append(("+Inf", total))
        return out


# discovery actor attributes exported when present (read on scrape)
DISCOVERY_FIELDS: tuple[str, ...] = ("loop_lag", "heartbeats_received", "messages_dropped", "seed_probes", "merges")

# what each kind of repair means (DESIGN §3: a repair is a missed transition found; it should stay 0)
REPAIR_KINDS: dict[str, str] = {
    "watchdog_requeue": "a QUEUED job no queue was dispatching, put back in its window",
    "handoff_lost": "a job a target did not hold although the origin believed so, queued at home again",
    "copy_unwanted": "a copy its origin no longer wanted, dropped at the target",
    "handoff_orphaned": "a job recorded as handed off that no peer held in the protocol, queued at home again",
}


def _le(bound: float) -> str:
    return repr(float(bound))


class JobMetricsRecorder:
    """Totals and time histograms per queue, fed one notification at a time."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {name: {} for name in EVENT_COUNTERS.values()}
        self.waiting: dict[str, Histogram] = {}
        self.processing: dict[str, Histogram] = {}

    def observe(self, notification: Any) -> None:
        """Count a transition (and time a finished attempt); never raises."""
        try:
            topic = notification.topic
            name = EVENT_COUNTERS.get(topic)
            if name is None:
                return
            queue = getattr(notification, "queue", None) or "main"
            per_queue = self.counts[name]
            per_queue[queue] = per_queue.get(queue, 0) + 1
            ms = getattr(notification, "processing_time", None)
            if ms is not None and topic in ("job/finished", "job/failed", "job/cancelled", "job/stopped"):
                h = self.processing.get(queue)
                if h is None:
                    h = self.processing[queue] = Histogram()
                h.observe(ms / 1000.0)
        except Exception:  # a metrics bug must never break job processing
            return

    def observe_started(self, notification: Any) -> None:
        try:
            ms = getattr(notification, "waiting_time", None)
            if ms is None:
                return
            queue = getattr(notification, "queue", None) or "main"
            h = self.waiting.get(queue)
            if h is None:
                h = self.waiting[queue] = Histogram()
            h.observe(ms / 1000.0)
        except Exception:
            return

    def __call__(self, notification: Any) -> None:
        """The sync ``EventBus`` listener: must be cheap and must never raise."""
        if getattr(notification, "topic", None) == "job/started":
            self.observe_started(notification)
        else:
            self.observe(notification)


@dataclass
class Snapshot:
    """What a scrape reads from the node, gathered before the families are built."""

    node: str = ""
    incarnation: float = 0.0
    queues: list[dict[str, Any]] = field(default_factory=list)
    topology_size: int = 1
    topology_current: bool = True
    is_leader: bool = True
    capacity: dict[str, Any] = field(default_factory=dict)
    mailboxes: dict[str, int] = field(default_factory=dict)
    transfer: dict[str, Any] | None = None  # TransferActor.stats(); None without bind
    offloader: dict[str, Any] | None = None  # OffloaderActor.stats(); None without bind
    blobs: dict[str, Any] | None = None  # BlobActor.stats(): job payload store and transfers
    discovery: dict[str, Any] | None = None  # loop_lag, heartbeats_received, messages_dropped, probes
    repairs: dict[str, int] = field(default_factory=dict)  # node.repairs(): level-triggered repairs by kind
    scrape_error: str | None = None
    taken_at: float = field(default_factory=_clock.wall)


def build_families(snap: Snapshot, rec: JobMetricsRecorder) -> list[Metric]:
    """Pure: a snapshot and the recorder -> Prometheus metric families."""
    fams: list[Metric] = []
    info = GaugeMetricFamily("jobmesh_node_info", "This node (value is always 1).", labels=["node"])
    info.add_metric([snap.node], 1)
    fams.append(info)
    fams.append(GaugeMetricFamily("jobmesh_node_start_time_seconds", "Node incarnation (start time, epoch s).", value=snap.incarnation))

    jobs = GaugeMetricFamily("jobmesh_jobs", "Jobs currently queued or active, by queue and state.", labels=["queue", "state"])
    suspended = GaugeMetricFamily("jobmesh_queue_suspended", "1 when the queue is suspended.", labels=["queue"])
    avg_wait = GaugeMetricFamily("jobmesh_queue_average_waiting_seconds", "Sling statistics: average waiting time.", labels=["queue"])
    avg_proc = GaugeMetricFamily("jobmesh_queue_average_processing_seconds", "Sling statistics: average processing time.", labels=["queue"])
    totals = CounterMetricFamily(
        "jobmesh_queue_jobs",
        "Sling statistics since the node started: finished (succeeded), failed (will retry), "
        "cancelled (given up/error/stopped/dropped), processed (finished + cancelled).",
        labels=["queue", "outcome"],
    )
    for q in snap.queues:
        name = str(q.get("name", "?"))
        stats = q.get("statistics") or {}
        jobs.add_metric([name, "QUEUED"], _num(stats.get("queued")))
        jobs.add_metric([name, "ACTIVE"], _num(stats.get("active")))
        suspended.add_metric([name], 1 if q.get("suspended") else 0)
        avg_wait.add_metric([name], _num(stats.get("average_waiting_time")) / 1000.0)
        avg_proc.add_metric([name], _num(stats.get("average_processing_time")) / 1000.0)
        for outcome in ("finished", "failed", "cancelled", "processed"):
            totals.add_metric([name, outcome], _num(stats.get(outcome)))
    fams += [jobs, suspended, avg_wait, avg_proc, totals]

    for name, per_queue in rec.counts.items():
        c = CounterMetricFamily(f"jobmesh_jobs_{name}", COUNTER_HELP[name], labels=["queue"])
        for queue, n in sorted(per_queue.items()):
            c.add_metric([queue], n)
        fams.append(c)

    for metric, source, help_text in (
        ("jobmesh_job_waiting_seconds", rec.waiting, "Time from added (or retry due) to started."),
        ("jobmesh_job_processing_seconds", rec.processing, "Time a consumer spent on a job attempt."),
    ):
        h = HistogramMetricFamily(metric, help_text, labels=["queue"])
        for queue, hist in sorted(source.items()):
            h.add_metric([queue], hist.cumulative(), hist.sum)
        fams.append(h)

    fams.append(GaugeMetricFamily("jobmesh_topology_instances", "Nodes in the topology this node sees.", value=snap.topology_size))
    fams.append(GaugeMetricFamily("jobmesh_topology_leader", "1 when this node is the leader.", value=1 if snap.is_leader else 0))
    fams.append(GaugeMetricFamily("jobmesh_topology_current", "0 while a topology change is under way.", value=1 if snap.topology_current else 0))

    cap = GaugeMetricFamily("jobmesh_capacity", "Advertised capacity: slots, active, queued, throughput (jobs/s).", labels=["kind"])
    for kind, value in sorted(snap.capacity.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cap.add_metric([kind], value)
    fams.append(cap)

    mb = GaugeMetricFamily("jobmesh_actor_mailbox_depth", "Messages waiting in each actor's mailbox.", labels=["actor"])
    for actor, depth in sorted(snap.mailboxes.items()):
        mb.add_metric([actor], depth)
    fams.append(mb)

    rep = CounterMetricFamily(
        "jobmesh_repairs",
        "Repairs by the level-triggered checks, by kind (each one is a missed transition found; "
        "it should stay 0): " + "; ".join(f"{k} = {v}" for k, v in REPAIR_KINDS.items()) + ".",
        labels=["kind"])
    for kind in sorted(set(REPAIR_KINDS) | set(snap.repairs)):
        rep.add_metric([kind], _num(snap.repairs.get(kind, 0)))
    fams.append(rep)

    fams += offloading_families(snap)
    fams += blob_families(snap)
    fams.append(GaugeMetricFamily("jobmesh_metrics_scrape_error", "1 when part of the last scrape could not be read.", value=1 if snap.scrape_error else 0))
    return fams


def blob_families(snap: Snapshot) -> list[Metric]:
    """Pure: the blob store (disk use, quota) and blob transfers -> families."""
    b = snap.blobs
    if b is None:
        return []
    fams: list[Metric] = [
        GaugeMetricFamily("jobmesh_blob_store_bytes", "Bytes of whole blobs (job payload) in this node's store.",
                          value=_num(b.get("bytes"))),
        GaugeMetricFamily("jobmesh_blob_store_blobs", "Blobs in this node's store.", value=_num(b.get("blobs"))),
        GaugeMetricFamily("jobmesh_blob_store_referenced_blobs", "Blobs some job, copy or outbox entry references.",
                          value=_num(b.get("referenced_blobs"))),
        GaugeMetricFamily("jobmesh_blob_store_partial_bytes", "Bytes of blob transfers not finished yet.",
                          value=_num(b.get("partial_bytes"))),
        GaugeMetricFamily("jobmesh_blob_store_quota_bytes", "The blob store's quota (0: the disk).",
                          value=_num(b.get("quota"))),
    ]
    if b.get("disk_free") is not None:
        fams.append(GaugeMetricFamily("jobmesh_blob_store_disk_free_bytes",
                                      "Free bytes on the disk of the blob store.", value=_num(b.get("disk_free"))))
    fams.append(_counter_by("jobmesh_blob_transfer_bytes", "Blob bytes sent to and received from peers.",
                            "direction", {"out": b.get("bytes_sent"), "in": b.get("bytes_received")}))
    fams.append(GaugeMetricFamily("jobmesh_blob_transfers_active", "Blob transfers this node is receiving.",
                                  value=_num(b.get("transfers_active"))))
    fams.append(CounterMetricFamily("jobmesh_blob_chunks_corrupt", "Chunks that failed their check and were fetched again.",
                                    value=_num(b.get("chunks_corrupt"))))
    fams.append(CounterMetricFamily("jobmesh_blob_deduplicated", "Offered blobs this node had already (not sent again).",
                                    value=_num(b.get("deduplicated"))))
    fams.append(CounterMetricFamily("jobmesh_blob_gc_removed", "Unreferenced blobs removed by the collector.",
                                    value=_num(b.get("removed_total"))))
    return fams


def offloading_families(snap: Snapshot) -> list[Metric]:
    """Pure: the transfer, offloader and discovery counters -> families (only the parts present)."""
    fams: list[Metric] = []
    t = snap.transfer
    if t is not None:
        fams.append(_counter_by(
            "jobmesh_offloaded_jobs",
            "Jobs handed between nodes: out = this node's jobs a peer accepted, "
            "in = other nodes' jobs whose copy this node accepted.",
            "direction", {"out": t.get("offloaded_out"), "in": t.get("offloaded_in")}))
        fams.append(_counter_by(
            "jobmesh_offload_results",
            "Results of offloaded jobs: in = received from a peer and applied to our job, "
            "out = results of copies run here, written to the outbox for their origin.",
            "direction", {"in": t.get("results_in"), "out": t.get("results_out")}))
        fams.append(CounterMetricFamily(
            "jobmesh_offload_stale_results",
            "Results ignored because they were for another attempt, another peer or a job already final.",
            value=_num(t.get("stale_results"))))
        fams.append(CounterMetricFamily(
            "jobmesh_offload_requeued",
            "Jobs taken back from a peer (down, refused, no room) and queued here again.",
            value=_num(t.get("requeued"))))
        in_flight = GaugeMetricFamily(
            "jobmesh_transfer_in_flight",
            "This node's jobs handed to a peer and not final yet, by peer.",
            labels=["peer"],
        )
        by_peer = t.get("in_flight_by_peer")
        counted = 0.0
        if isinstance(by_peer, dict):
            for peer, n in sorted(by_peer.items()):
                in_flight.add_metric([str(peer)], _num(n))
                counted += _num(n)
        rest = _num(t.get("in_flight_out")) - counted
        if rest > 0:  # jobs at a peer the stats could not name: still counted, never lost
            in_flight.add_metric(["unknown"], rest)
        fams.append(in_flight)
        fams.append(GaugeMetricFamily(
            "jobmesh_transfer_foreign_copies",
            "Copies of other nodes' jobs held here (queued, running or with a result not yet acknowledged).",
            value=_num(t.get("copies_in"))))
        fams.append(GaugeMetricFamily(
            "jobmesh_transfer_outbox",
            "Results of copies waiting for their origin's acknowledgement.",
            value=_num(t.get("outbox"))))
        fams.append(GaugeMetricFamily(
            "jobmesh_transfer_queue_depth",
            "Transfer work waiting: the actor's mailbox plus messages queued on the peer links.",
            value=_num(t.get("queue_depth"))))
        fams.append(CounterMetricFamily(
            "jobmesh_transfer_reconcile_rounds",
            "Reconcile rounds this node started as an origin (periodic and on every (re)connection).",
            value=_num(t.get("reconcile_rounds"))))
        fams.append(GaugeMetricFamily(
            "jobmesh_transfer_copies_held",
            "Copies restored after a restart that wait for their origin's confirmation before they run.",
            value=_num(t.get("copies_held"))))
        fams.append(_counter_by(
            "jobmesh_transfer_messages",
            "Transfer protocol messages: sent, received, and dropped (peer not in the topology; resent later).",
            "kind", {kind: t.get(f"messages_{kind}") for kind in ("sent", "received", "dropped")}))

    o = snap.offloader
    if o is not None:
        fams.append(_counter_by(
            "jobmesh_offloader_moves",
            "Jobs moved by the rebalancing policy: out = this node decided to move them to a peer, "
            "in = a peer pushed them here.",
            "direction", {"out": o.get("moves_out"), "in": o.get("moves_in")}))
        fams.append(CounterMetricFamily(
            "jobmesh_offloader_decisions",
            "Offloader rounds that moved at least one job.",
            value=_num(o.get("decisions"))))
        fams.append(CounterMetricFamily(
            "jobmesh_offloader_steal_requests",
            "Requests for work this idle node sent to a busy peer.",
            value=_num(o.get("steal_requests"))))
        fams.append(CounterMetricFamily(
            "jobmesh_offloader_kept_for_payload",
            "Jobs the policy would have moved but kept here: their payload takes longer to send than it saves.",
            value=_num(o.get("kept_for_payload"))))

    d = snap.discovery
    if d is not None:
        if "loop_lag" in d:
            fams.append(GaugeMetricFamily(
                "jobmesh_discovery_loop_lag_seconds",
                "Worst event-loop lag seen by discovery's monitor in its last window.",
                value=_num(d.get("loop_lag"))))
        if "heartbeats_received" in d:
            fams.append(CounterMetricFamily(
                "jobmesh_discovery_heartbeats_received",
                "Heartbeats from peers accepted by discovery.",
                value=_num(d.get("heartbeats_received"))))
        if "seed_probes" in d:
            fams.append(CounterMetricFamily(
                "jobmesh_discovery_probes",
                "Join probes sent to seeds and remembered members that were not live members.",
                value=_num(d.get("seed_probes"))))
        if "merges" in d:
            fams.append(CounterMetricFamily(
                "jobmesh_discovery_merges",
                "Probes that merged another topology's members into this node's view.",
                value=_num(d.get("merges"))))
        if "messages_dropped" in d:
            fams.append(CounterMetricFamily(
                "jobmesh_discovery_messages_dropped",
                "Heartbeat messages rejected (garbage, wrong cluster, invalid member).",
                value=_num(d.get("messages_dropped"))))
    return fams


def _counter_by(name: str, documentation: str, label: str, values: dict[str, Any]) -> CounterMetricFamily:
    """A counter family with one sample per value of ``label`` (in the order given)."""
    fam = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        fam.add_metric([key], _num(value))
    return fam


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


class NodeCollector:
    """A prometheus-client Collector over the latest snapshot and the recorder."""

    def __init__(self, recorder: JobMetricsRecorder) -> None:
        self.recorder = recorder
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        return build_families(self.snapshot, self.recorder)

    def describe(self) -> Iterable[Metric]:
        return []  # families are dynamic; nothing to check at registration


class NodeMetrics:
    """The per-node registry; ``render`` gathers a fresh snapshot, then the text format."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.recorder = JobMetricsRecorder()
        self.collector = NodeCollector(self.recorder)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self._listening = False

    def listen(self) -> None:
        """Subscribe the recorder to the node's notifications (once per node)."""
        if self._listening:
            return
        events = getattr(self.node, "events", None)
        if events is not None and hasattr(events, "add_listener"):
            events.add_listener(self.recorder)
            self._listening = True

    async def snapshot(self) -> Snapshot:
        node = self.node
        snap = Snapshot(node=str(getattr(node, "name", "")), incarnation=float(getattr(node, "started_at", 0.0) or 0.0))
        errors: list[str] = []
        try:
            snap.queues = list(await node.jobs.queues())
        except Exception as e:  # an answer missing from one part must not fail the scrape
            errors.append(f"queues: {e!r}")
        try:
            view = node.topology
            snap.topology_size = len(view.instances)
            snap.topology_current = bool(view.current)
            snap.is_leader = view.leader == view.local
        except Exception as e:
            errors.append(f"topology: {e!r}")
        cap = getattr(node, "capacity_snapshot", None)
        if callable(cap):
            try:
                snap.capacity = dict(cap())
            except Exception as e:
                errors.append(f"capacity: {e!r}")
        snap.mailboxes = mailbox_depths(node, [str(q.get("name")) for q in snap.queues])
        for part in ("transfer", "offloader", "blobs"):
            actor = getattr(node, part, None)
            stats = getattr(actor, "stats", None)
            if callable(stats):
                try:
                    setattr(snap, part, dict(stats()))
                except Exception as e:
                    errors.append(f"{part}: {e!r}")
        repairs = getattr(node, "repairs", None)
        if callable(repairs):
            try:
                snap.repairs = dict(repairs())
            except Exception as e:
                errors.append(f"repairs: {e!r}")
        discovery = getattr(node, "discovery", None)
        if discovery is not None:
            snap.discovery = {k: getattr(discovery, k) for k in DISCOVERY_FIELDS if hasattr(discovery, k)}
        snap.scrape_error = "; ".join(errors) or None
        return snap

    async def render(self) -> bytes:
        self.listen()  # from the first scrape on (see the module docstring)
        self.collector.snapshot = await self.snapshot()
        return generate_latest(self.registry)


def mailbox_depths(node: Any, queue_names: Iterable[str] = ()) -> dict[str, int]:
    """Mailbox sizes of the node's actors, read through the public ``mailbox_size``.

    Uses ``node.actors()`` when the node offers it; otherwise the actors the node
    exposes as public attributes (store, jobs, pool, discovery, ...) and its queue
    actors through ``node.queue_actor(name)``.
    """
    actors: list[Any] = []
    provider = getattr(node, "actors", None)
    try:
        if callable(provider):
            actors = list(provider())
        elif provider is not None:
            actors = list(provider)
        else:
            actors = [v for k, v in vars(node).items() if not k.startswith("_") and isinstance(v, Actor)]
            lookup = getattr(node, "queue_actor", None)
            if callable(lookup):
                actors += [a for a in (lookup(n) for n in queue_names) if isinstance(a, Actor)]
    except Exception:
        return {}
    out: dict[str, int] = {}
    for a in actors:
        size = getattr(a, "mailbox_size", None)
        name = getattr(a, "name", None)
        if isinstance(size, int) and isinstance(name, str):
            out[name] = size
    return out
