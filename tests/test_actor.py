"""The actor core: tell/ask, answers vs crashes, restart with state reload, escalation."""

import asyncio

import pytest

from jobmesh.actor import Actor, ActorSystem
from jobmesh.errors import ActorCrashed, ActorStopped, NotFound


class Counter(Actor):
    restart_backoff = 0.001

    def __init__(self, name: str = "counter") -> None:
        super().__init__(name)
        self.starts = 0
        self.stops = 0
        self.durable = 0  # stands for state on disk
        self.count = 0

    async def on_start(self) -> None:
        self.starts += 1
        self.count = self.durable

    async def on_stop(self) -> None:
        self.stops += 1

    async def receive(self, msg):
        if msg == "crash":
            raise RuntimeError("boom")
        if msg == "missing":
            raise NotFound("no such thing")
        if msg == "crash-later":
            async def later():
                raise RuntimeError("background boom")
            self.spawn(later())
            return "spawned"
        if msg == "slow":
            await asyncio.sleep(1)
            return "slow"
        self.count += msg
        self.durable = self.count
        return self.count


async def test_tell_and_ask_in_order() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    for _ in range(100):
        a.tell(1)
    assert await a.ask(0) == 100
    await system.stop_all()
    assert a.stops == 1


async def test_jobmesh_error_is_an_answer_not_a_crash() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    with pytest.raises(NotFound):
        await a.ask("missing")
    assert a.starts == 1
    assert await a.ask(1) == 1
    await system.stop_all()


async def test_crash_restarts_with_state_reloaded_and_mailbox_kept() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    await a.ask(5)
    with pytest.raises(ActorCrashed):
        await a.ask("crash")
    a.tell(1)  # queued while restarting: not lost
    assert await a.ask(0) == 6
    assert a.starts == 2
    await system.stop_all()


async def test_background_task_crash_restarts_the_actor() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    assert await a.ask("crash-later") == "spawned"
    for _ in range(100):
        if a.starts == 2:
            break
        await asyncio.sleep(0.01)
    assert a.starts == 2
    assert await a.ask(1) == 1
    await system.stop_all()


async def test_repeated_crashes_escalate() -> None:
    escalated = asyncio.Event()
    system = ActorSystem(on_escalate=lambda actor, exc: escalated.set())
    a = await system.start(Counter())
    for _ in range(a.max_restarts + 1):
        with pytest.raises(ActorCrashed):
            await a.ask("crash", timeout=2)
    await asyncio.wait_for(escalated.wait(), 2)
    assert isinstance(system.escalated, RuntimeError)
    await system.stop_all()


async def test_ask_times_out() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    with pytest.raises(asyncio.TimeoutError):
        await a.ask("slow", timeout=0.05)
    await system.stop_all(timeout=0.1)


async def test_stopped_actor_refuses() -> None:
    system = ActorSystem()
    a = await system.start(Counter())
    await system.stop_all()
    with pytest.raises(ActorStopped):
        a.tell(1)
    with pytest.raises(ActorStopped):
        await a.ask(1)


async def test_tell_later_is_cancelled_with_the_actor() -> None:
    """A timer that would fire after the actor stopped is dropped, not raised in the loop."""
    system = ActorSystem()
    a = await system.start(Counter())
    a.tell_later(0.01, 5)
    a.tell_later(0.2, 100)
    await asyncio.sleep(0.05)
    assert await a.ask(0) == 5
    await system.stop_all()
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    await asyncio.sleep(0.25)
    assert errors == []
