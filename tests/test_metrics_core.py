"""The metrics recorder and the families it exports, without a node."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobmesh.actor import Actor
from jobmesh.http.metrics import (
    Histogram,
    JobMetricsRecorder,
    NodeCollector,
    Snapshot,
    build_families,
    mailbox_depths,
)


@dataclass
class N:
    topic: str
    queue: str | None = "main"
    waiting_time: float | None = None
    processing_time: float | None = None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_are_cumulative_and_sum() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert h.count == 4 and abs(h.sum - 2.65) < 1e-9


def test_recorder_counts_per_queue_and_times() -> None:
    rec = JobMetricsRecorder()
    rec(N("job/added"))
    rec(N("job/added", queue="q1"))
    rec(N("job/started", waiting_time=20.0))
    rec(N("job/finished", processing_time=3.0))
    rec(N("job/failed", queue="q1", processing_time=1500.0))
    rec(N("job/cancelled", queue="q1", processing_time=None))
    rec(N("topology/changed"))  # not a job counter: ignored
    rec(object())  # garbage must not raise
    assert rec.counts["added"] == {"main": 1, "q1": 1}
    assert rec.counts["finished"] == {"main": 1}
    assert rec.counts["failed"] == {"q1": 1}
    assert rec.counts["cancelled"] == {"q1": 1}
    assert rec.waiting["main"].count == 1 and rec.waiting["main"].sum == 0.02
    assert rec.processing["main"].sum == 0.003
    assert rec.processing["q1"].sum == 1.5


def test_families_render_in_prometheus_text_format() -> None:
    rec = JobMetricsRecorder()
    rec(N("job/added"))
    rec(N("job/started", waiting_time=4.0))
    rec(N("job/finished", processing_time=7.0))
    snap = Snapshot(
        node="a",
        incarnation=1700000000.0,
        queues=[
            {"name": "main", "suspended": False, "statistics": {"queued": 3, "active": 1, "processed": 9,
                                                                 "average_waiting_time": 250, "average_processing_time": 1000}},
            {"name": "slow", "suspended": True, "statistics": {"queued": 0, "active": 0}},
        ],
        topology_size=3,
        is_leader=False,
        capacity={"slots": 16, "active": 1, "queued": 3, "throughput": 2.5, "note": "x"},
        mailboxes={"http": 0, "queue:main": 4},
    )
    collector = NodeCollector(rec)
    collector.snapshot = snap
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)  # type: ignore[arg-type]
    s = samples(generate_latest(reg).decode())
    assert s[("jobmesh_node_info", (("node", "a"),))] == 1
    assert s[("jobmesh_jobs", (("queue", "main"), ("state", "QUEUED")))] == 3
    assert s[("jobmesh_jobs", (("queue", "main"), ("state", "ACTIVE")))] == 1
    assert s[("jobmesh_queue_suspended", (("queue", "slow"),))] == 1
    assert s[("jobmesh_queue_average_waiting_seconds", (("queue", "main"),))] == 0.25
    assert s[("jobmesh_jobs_added_total", (("queue", "main"),))] == 1
    assert s[("jobmesh_jobs_finished_total", (("queue", "main"),))] == 1
    assert s[("jobmesh_job_waiting_seconds_count", (("queue", "main"),))] == 1
    assert s[("jobmesh_job_waiting_seconds_bucket", (("le", "0.005"), ("queue", "main")))] == 1
    assert s[("jobmesh_job_waiting_seconds_bucket", (("le", "0.0025"), ("queue", "main")))] == 0
    assert s[("jobmesh_job_processing_seconds_sum", (("queue", "main"),))] == 0.007
    assert s[("jobmesh_topology_instances", ())] == 3
    assert s[("jobmesh_topology_leader", ())] == 0
    assert s[("jobmesh_capacity", (("kind", "throughput"),))] == 2.5
    assert ("jobmesh_capacity", (("kind", "note"),)) not in s  # non-numbers are skipped
    assert s[("jobmesh_actor_mailbox_depth", (("actor", "queue:main"),))] == 4


def test_families_from_an_empty_snapshot_are_valid() -> None:
    fams = build_families(Snapshot(), JobMetricsRecorder())
    names = {f.name for f in fams}
    assert {"jobmesh_jobs", "jobmesh_topology_instances", "jobmesh_job_waiting_seconds"} <= names


class FakeActor:
    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.mailbox_size = size


def test_mailbox_depths_reads_the_nodes_actors() -> None:
    class NodeWithActors:
        def actors(self) -> list[FakeActor]:
            return [FakeActor("q", 5)]

    class NodeWithAttributes:
        def __init__(self) -> None:
            self.store = Actor("store")
            self.store.tell("x")
            self.store.tell("y")
            self.http = Actor("http")
            self.name = "n1"  # not an actor: ignored
            self._hidden = Actor("private")  # private attributes are not read
            self._queues = {"main": Actor("queue:main")}

        def queue_actor(self, name: str) -> Actor | None:
            return self._queues.get(name)

    assert mailbox_depths(NodeWithActors()) == {"q": 5}
    assert mailbox_depths(NodeWithAttributes(), ["main", "gone"]) == {"store": 2, "http": 0, "queue:main": 0}
    assert mailbox_depths(object()) == {}
