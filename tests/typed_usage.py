"""How a user's code uses jobmesh, checked by mypy (tests/test_typing.py), never run.

Lines marked ``# type: ignore[...]`` must be errors: mypy runs with --warn-unused-ignores,
so if one stops being an error (the types went loose, e.g. to Any) the check fails.
"""

from __future__ import annotations

import jobmesh
from jobmesh import ExecutionContext, Job, JobHandle, JobResult, JobState, Node, SyncJobHandle, Task


@jobmesh.task("mail/send", retries=3, timeout=30, throws=(ValueError,), priority=0, queue=None)
async def send_mail(to: str, subject: str, body: str = "") -> dict[str, str]:
    return {"message_id": "m-1"}


@jobmesh.task("math/add")
def add(a: int, b: int = 1) -> int:
    return a + b


@jobmesh.consumer("demo/sleep")
async def sleep(job: jobmesh.Job) -> jobmesh.JobResult | None:
    return None


@jobmesh.consumer("media/**", timeout=10)
async def render(job: Job, ctx: ExecutionContext) -> JobResult:
    ctx.init_progress(steps=3)
    ctx.log("rendered %s", job.properties["path"])
    return ctx.result().message("ok").succeeded()


class Thumbnailer(jobmesh.ConsumerActor):
    topics = ["image/thumbnail"]

    async def process(self, job: Job, ctx: ExecutionContext) -> None:
        return None


async def produce() -> None:
    t: Task[[str, str, str], dict[str, str]] = send_mail
    h: JobHandle[dict[str, str]] = await send_mail.send("a@b.c", "hi")
    result: dict[str, str] = await h.result(timeout=5)
    job: Job = await h.job()
    state: JobState = job.state
    h2 = await send_mail.send_with_options(args=("a@b.c", "hi"), kwargs={"body": "x"}, delay=5, key="k")
    n: int = await (await add.send(1, b=2)).result()

    async with jobmesh.Client(url="http://127.0.0.1:8471", token=None) as client:
        h3: JobHandle[dict[str, str]] = await client.enqueue(send_mail, "a@b.c", "hi", _delay=5, _key="k")
        h4 = await client.add("reports/pdf", {"id": 7}, delay=1.5, at=None, key="r-7", timeout=60, priority=2)
        jobs: list[Job] = await client.find(state="QUEUED", topic="reports/*", limit=10)
        many: list[JobHandle[object]] = await client.add_many([("a/b", {"x": 1}), {"topic": "a/c", "delay": 3}])
        one: Job = await client.get(h4.id)
        await client.stop(h4.id)
        await client.retry(h4.id)
        gone: Job | None = await client.remove(h4.id)

    with jobmesh.SyncClient() as sync:
        s: SyncJobHandle[int] = sync.enqueue(add, 1, 2)
        total: int = s.result(timeout=10)
        s2 = sync.add("reports/pdf", {"id": 8}, priority=1)

    async with Node(name="a", data_dir="data/a", bind="tcp://127.0.0.1:5701", http="127.0.0.1:8471") as node:
        node.add_consumer(sleep)
        node.add_consumer(send_mail)
        added: Job = await node.jobs.add("demo/sleep", {"seconds": 1}, delay=2, key="k", timeout=5, priority=1)
        batch: list[Job] = await node.jobs.add_many([("demo/sleep", None)], delay=1)
        done: Job = await node.jobs.wait(added.id, timeout=10)
        await node.jobs.join(timeout=10)
        await node.schedules.add("mail/digest", cron="0 6 * * *", tz="Europe/Amsterdam")

    try:
        await h.result()
    except jobmesh.JobFailed as e:
        failed: Job = e.job
    except jobmesh.TimeLimitExceeded:
        pass

    # wrong calls are type errors, not runtime surprises
    await send_mail.send(42, "hi")  # type: ignore[arg-type]
    await send_mail.send("a@b.c")  # type: ignore[call-arg]
    wrong: str = await (await add.send(1)).result()  # type: ignore[assignment]
    await add.send(1, c=3)  # type: ignore[call-arg]
    jobmesh.Client(url=8471)  # type: ignore[arg-type]
    print(t, result, state, h2, n, h3, jobs, many, one, gone, total, s2, batch, done, failed, wrong)
