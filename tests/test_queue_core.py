"""The pure queue logic: matching, retry decisions, and the three window orders. No I/O, no sleeps."""

from __future__ import annotations

import pytest

from jobmesh.config import QueueConfig
from jobmesh.job import Job, JobState
from jobmesh.queues.core import (
    OrderedWindow, Outcome, QueueMatcher, RoundRobinWindow, UnorderedWindow, Window, decide, retry_delay_for,
)


def job(seq: int, topic: str = "t/a", **kw) -> Job:
    return Job(id=f"j{seq}", topic=topic, properties=kw.pop("properties", {}), seq=seq,
               state=JobState.ACTIVE, **kw)


def always(_topic: str) -> bool:
    return True


def test_matcher_ranking_then_specificity_then_main():
    qs = [
        QueueConfig(name="main"),
        QueueConfig(name="any", topics=["a/**"]),
        QueueConfig(name="one", topics=["a/*"]),
        QueueConfig(name="exact", topics=["a/b"]),
        QueueConfig(name="ranked", topics=["x/**"], ranking=5),
        QueueConfig(name="x-exact", topics=["x/y"]),
    ]
    m = QueueMatcher(qs)
    assert m.match("a/b").name == "exact"  # most specific
    assert m.match("a/c").name == "one"
    assert m.match("a/c/d").name == "any"
    assert m.match("x/y").name == "ranked"  # ranking beats specificity
    assert m.match("zzz").name == "main"
    assert QueueMatcher([]).match("q").name == "main"  # main exists even when not configured


def test_decide_ok_cancel_stop_abort():
    q = QueueConfig()
    assert decide(job(1), Outcome("OK", "fine"), q, 10.0).state is JobState.SUCCEEDED
    assert decide(job(1), Outcome("CANCEL"), q, 10.0).state is JobState.ERROR
    assert decide(job(1), Outcome("STOPPED"), q, 10.0).state is JobState.STOPPED
    assert decide(job(1), Outcome("STOPPED", stop_state=JobState.DROPPED), q, 10.0).state is JobState.DROPPED
    d = decide(job(1, retry_count=3), Outcome("ABORTED"), q, 10.0)
    assert (d.state, d.retry_count, d.not_before) == (JobState.QUEUED, 3, 0.0)  # shutdown is no retry


def test_failed_retries_then_gives_up():
    q = QueueConfig(retries=2, retry_delay=1.0)
    j = job(1, max_retries=2)
    d = decide(j, Outcome("FAILED"), q, 100.0)
    assert (d.state, d.retry_count, d.not_before) == (JobState.QUEUED, 1, 101.0)
    j.retry_count = 2
    d = decide(j, Outcome("FAILED"), q, 100.0)
    assert d.state is JobState.GIVEN_UP and d.finished == 100.0


def test_retries_forever():
    q = QueueConfig(retries=-1, retry_delay=0)
    j = job(1, max_retries=-1, retry_count=10_000)
    assert decide(j, Outcome("FAILED"), q, 0.0).state is JobState.QUEUED


def test_backoff_and_cap():
    q = QueueConfig(retry_delay=2.0, retry_backoff=3.0, max_retry_delay=50.0, retry_jitter=False)
    assert [retry_delay_for(job(1, retry_count=n), q, None) for n in range(5)] == [2.0, 6.0, 18.0, 50.0, 50.0]


def test_retry_jitter_spreads_backed_off_delays_and_is_on_by_default_with_backoff():
    q = QueueConfig(retry_delay=2.0, retry_backoff=3.0, max_retry_delay=50.0)
    assert retry_delay_for(job(1, retry_count=2), q, None, rand=lambda: 0.0) == 9.0  # half of 18
    assert retry_delay_for(job(1, retry_count=2), q, None, rand=lambda: 0.999) == pytest.approx(17.99, abs=0.01)
    assert retry_delay_for(job(1, retry_count=9), q, None, rand=lambda: 0.0) == 25.0  # half of the cap
    import random

    from jobmesh import rng
    token = rng.use(random.Random(7))  # the default source is jobmesh.rng's (the simulator seeds it)
    try:
        delays = [retry_delay_for(job(i, retry_count=3), q, None) for i in range(200)]
    finally:
        rng._current.reset(token)
    assert all(25.0 <= d <= 50.0 for d in delays) and len(set(delays)) > 150  # spread, within [d/2, d]
    flat = QueueConfig(retry_delay=2.0)  # backoff 1: no jitter unless asked
    assert retry_delay_for(job(1, retry_count=3), flat, None) == 2.0
    assert retry_delay_for(job(1), QueueConfig(retry_delay=2.0, retry_jitter=True), None, rand=lambda: 0.5) == 1.5
    explicit = job(1, properties={"retry_delay": 4}, retry_count=3)
    assert retry_delay_for(explicit, q, None) == 4.0 and retry_delay_for(job(1), q, 1.5) == 1.5  # as meant


def test_retry_delay_precedence_consumer_then_property_then_queue():
    q = QueueConfig(retry_delay=9.0)
    j = job(1, properties={"retry_delay": 4})
    assert retry_delay_for(j, q, 1.5) == 1.5
    assert retry_delay_for(j, q, None) == 4.0
    assert retry_delay_for(job(2), q, None) == 9.0
    assert retry_delay_for(job(3, properties={"retry_delay": "soon"}), q, None) == 9.0  # ignored, not a number


def test_unordered_fifo_delayed_and_parked():
    w = UnorderedWindow()
    for s in (1, 2, 3):
        w.add(job(s), now=0.0)
    late = job(4)
    late.not_before = 50.0
    w.add(late, now=0.0)
    assert [w.take(0.0, always).seq for _ in range(3)] == [1, 2, 3]
    assert w.take(0.0, always) is None
    assert w.next_wakeup() == 50.0
    assert w.take(50.0, always).seq == 4
    # no consumer: parked, not spun over; back once a consumer appears
    w.add(job(5, topic="nobody"), 0.0)
    w.add(job(6), 0.0)
    has = {"t/a"}
    assert w.take(0.0, lambda t: t in has).seq == 6
    assert w.take(0.0, lambda t: t in has) is None and len(w) == 1
    has.add("nobody")
    w.unpark(lambda t: t in has)
    assert w.take(0.0, lambda t: t in has).seq == 5


def test_unordered_remove_is_skipped():
    w = UnorderedWindow()
    w.add(job(1), 0.0)
    w.add(job(2), 0.0)
    assert w.remove("j1").seq == 1
    assert w.take(0.0, always).seq == 2
    assert w.take(0.0, always) is None


def test_ordered_head_of_line_blocks_on_delay_and_missing_consumer():
    w = OrderedWindow()
    for s in (1, 2, 3):
        w.add(job(s), 0.0)
    head = w.take(0.0, always)
    assert head.seq == 1
    head.not_before = 10.0  # it failed: back with a retry delay
    w.add(head, 0.0)
    assert w.take(5.0, always) is None  # job 2 must not overtake
    assert w.next_wakeup() == 10.0
    assert w.take(10.0, always).seq == 1
    assert w.take(10.0, lambda t: False) is None  # no consumer for the head: wait
    assert w.take(10.0, always).seq == 2


def test_round_robin_alternates_topics():
    w = RoundRobinWindow()
    for s, t in enumerate(["a", "a", "a", "b", "b", "c"], start=1):
        w.add(job(s, topic=t), 0.0)
    order = []
    while (j := w.take(0.0, always)) is not None:
        order.append(j.topic)
    assert order == ["a", "b", "c", "a", "b", "a"]


def test_unordered_higher_priority_first_fifo_within_a_priority():
    w = UnorderedWindow()
    for s, p in ((1, 0), (2, -1), (3, 5), (4, 0), (5, 5), (6, 2), (7, -1)):
        w.add(job(s, priority=p), 0.0)
    late = job(8, priority=9)
    late.not_before = 10.0  # a delayed high-priority job goes first once it is due
    w.add(late, 0.0)
    assert [w.take(0.0, always).seq for _ in range(3)] == [3, 5, 6]
    assert w.take(10.0, always).seq == 8
    assert [w.take(10.0, always).seq for _ in range(4)] == [1, 4, 2, 7]
    assert w.take(10.0, always) is None
    # parked jobs keep their priority when a consumer appears; removed ones are skipped
    w.add(job(9, topic="x", priority=1), 0.0)
    w.add(job(10, priority=0), 0.0)
    w.add(job(11, priority=3), 0.0)
    w.remove("j11")
    assert w.take(0.0, lambda t: t != "x").seq == 10
    w.unpark(always)
    assert w.take(0.0, always).seq == 9 and w.take(0.0, always) is None


def test_round_robin_priority_within_a_topic_and_ordered_ignores_it():
    w = RoundRobinWindow()
    for s, t, p in ((1, "a", 0), (2, "a", 0), (3, "a", 4), (4, "b", 0), (5, "a", 4)):
        w.add(job(s, topic=t, priority=p), 0.0)
    order = []
    while (j := w.take(0.0, always)) is not None:
        order.append(j.seq)
    assert order == [3, 4, 5, 1, 2]
    o = OrderedWindow()
    for s, p in ((1, 0), (2, 9)):
        o.add(job(s, priority=p), 0.0)
    assert [o.take(0.0, always).seq, o.take(0.0, always).seq] == [1, 2]  # an ordered queue keeps its order


@pytest.mark.parametrize("kind", [UnorderedWindow, OrderedWindow, RoundRobinWindow])
@pytest.mark.parametrize("seed", range(20))
def test_take_many_gives_what_as_many_takes_give(kind, seed):
    """``take_many(n)`` (the engine's one call per pump) is ``take`` n times, whatever the window
    holds: removed jobs, topics without a consumer, retry delays, priorities."""
    import random

    rng = random.Random(seed)

    def filled() -> Window:
        w = kind()
        r = random.Random(seed)
        for s in range(1, 40):
            j = job(s, topic=r.choice(["t/a", "t/b", "nobody"]))
            if seed % 2:  # else the usual window: priority 0 and nothing delayed (its fast path)
                j.priority = r.choice([0, 0, 0, 2, -1])
                j.not_before = r.choice([0.0, 0.0, 5.0])
            w.add(j, now=0.0)
        for s in r.sample(range(1, 40), 6):
            w.remove(f"j{s}")
        return w

    has = {"t/a", "t/b"}
    runnable = lambda t: t in has  # noqa: E731
    one, many = filled(), filled()
    for now in (0.0, 0.0, 6.0, 6.0, 6.0):
        n = rng.randint(1, 9)
        singles = []
        for _ in range(n):
            j = one.take(now, runnable)
            if j is None:
                break
            singles.append(j.seq)
        assert [j.seq for j in many.take_many(now, runnable, n)] == singles
        assert len(one) == len(many)
