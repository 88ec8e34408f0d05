"""``node.workflows``: the actor that runs workflow instances on their origin node.

It is the thin shell around ``core``: it adds each step's job through
``node.jobs``, learns of the step jobs' ends from ``node.events`` (and, in case a
notification was lost or the node restarted, by re-reading the step jobs from
the store: on start and every ``sweep_interval`` seconds), feeds those events to
the state machine and persists every instance it changes in
``workflows.sqlite`` before acting on the next step.

Crash safety: an instance is saved with its next step PENDING *before* the step's
job is added, and again with the job id once the job committed. A node killed in
between finds the PENDING step on restart and looks the job up by its
``jobmesh:workflow`` property before adding it again, so a committed step job is
never added twice.

Payload: ``start(..., payload={name: Path | bytes | blob id})`` stores the blobs first (the
first step's job then references them); each step job is added with the instance's running
payload (``core``: the start payload plus every succeeded step's output payload, by name)
as its input payload, and its output payload is read back from the job with its outcome.
"""

from __future__ import annotations

import asyncio
import sys
from .. import clock as _clock
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from ..actor import Actor
from ..errors import Conflict, JobmeshError, NotFound, ValidationError
from ..job import FINAL_STATES, JobIdGenerator
from . import core
from .core import (
    WORKFLOW_PROPERTY,
    Abort,
    AddStepJob,
    Instruction,
    Step,
    StepCommitted,
    StepFinal,
    StepLost,
    StepRefused,
    StopJob,
    Workflow,
    WorkflowInstance,
    WorkflowState,
)
from .store import WorkflowStore

FINAL_TOPICS = ["job/finished", "job/cancelled", "job/stopped", "job/removed"]
LOOKUP_LIMIT = 10_000  # newest jobs of a topic searched for a PENDING step's job after a crash
MAX_LIST = 10_000


def workflows_in_module(module: ModuleType | str) -> list[Workflow]:
    """Every module-level ``Workflow`` object in ``module`` (how ``--consumers`` modules declare them)."""
    if isinstance(module, str):
        module = sys.modules.get(module) or __import__(module, fromlist=["_"])
    return [v for v in vars(module).values() if isinstance(v, Workflow)]


class WorkflowActor(Actor):
    """``node.workflows``: define workflows, start instances, follow them to their end."""

    def __init__(self, node: Any, *, sweep_interval: float = 5.0, retention: float = 7 * 86400.0,
                 path: str | Path | None = None) -> None:
        super().__init__("workflows")
        self.node = node
        self.clock = getattr(node, "clock", _clock.wall)
        self.path = Path(path) if path is not None else Path(node.config.data) / "workflows.sqlite"
        self.sweep_interval = sweep_interval
        self.retention = retention
        self.ids = JobIdGenerator(self.clock)
        self.log = self.log.bind(node=node.name)
        self._definitions: dict[str, Workflow] = {}
        self._scanned_modules: set[str] = set()
        self._instances: dict[str, WorkflowInstance] = {}
        self._by_job: dict[str, str] = {}  # step job id -> instance id (running instances only)
        self._waiters: dict[str, list[asyncio.Future[WorkflowInstance]]] = {}
        self._store: WorkflowStore | None = None
        self._sub: Any = None

    # -- definitions (plain state; no await, so callable before and after start) --
    def define(self, workflow: Workflow | str, steps: Iterable[Step | str | dict[str, Any]] | None = None,
               description: str = "") -> Workflow:
        """Register a definition (a ``Workflow`` or a name and steps); a new one replaces an old
        one of the same name. Instances already running keep the definition they started with."""
        if isinstance(workflow, Workflow):
            if steps is not None:
                raise ValidationError("give either a Workflow or a name and steps, not both")
            wf = workflow
        elif isinstance(workflow, str):
            if steps is None:
                raise ValidationError(f"workflow {workflow}: give its steps")
            wf = Workflow(workflow, steps, description)
        else:
            raise ValidationError("define() takes a Workflow or a name and steps")
        self._definitions[wf.name] = wf
        return wf

    def add_from_module(self, module: ModuleType | str) -> list[Workflow]:
        return [self.define(wf) for wf in workflows_in_module(module)]

    def definitions(self) -> list[Workflow]:
        self._scan_consumer_modules()
        return sorted(self._definitions.values(), key=lambda w: w.name)

    def definition(self, name: Any) -> Workflow:
        if not isinstance(name, str) or not name:
            raise ValidationError("'workflow' must be the name of a defined workflow")
        wf = self._definitions.get(name)
        if wf is None:
            self._scan_consumer_modules()
            wf = self._definitions.get(name)
        if wf is None:
            raise NotFound(f"no workflow named {name!r} is defined on node {self.node.name}")
        return wf

    def _scan_consumer_modules(self) -> None:
        """Workflows declared next to the node's consumers (``--consumers MODULE``) are defined too."""
        index = getattr(self.node, "consumers", None)
        for spec in list(getattr(index, "specs", ())):
            owner = spec.fn if spec.fn is not None else type(spec.actor)
            modname = getattr(owner, "__module__", None)
            if not modname or modname in self._scanned_modules:
                continue
            self._scanned_modules.add(modname)
            module = sys.modules.get(modname)
            if module is None:
                continue
            for wf in workflows_in_module(module):
                self._definitions.setdefault(wf.name, wf)

    # -- the API (asks to the actor) ------------------------------------------
    async def start(self, name: str | Workflow, properties: dict[str, Any] | None = None, *,
                    payload: dict[str, Any] | None = None) -> WorkflowInstance:
        """Start an instance (its first step's job is committed when this returns). ``payload``
        (``{name: Path | bytes | blob id}``) is the first step's input payload."""
        wf = name if isinstance(name, Workflow) else self.definition(name)
        refs: dict[str, Any] = {}
        if payload is not None:
            from ..blobs.payload import resolve_payload

            store = getattr(self.node.jobs, "blobs", None)
            if store is None:
                raise ValidationError("this node has no blob store")
            refs = {n: r.to_json() for n, r in (await resolve_payload(store, payload, "workflow ")).items()}
        return await self.ask(("start", wf, properties, refs), timeout=30.0)

    async def get(self, instance_id: str) -> WorkflowInstance:
        return await self.ask(("get", instance_id))

    async def list(self, state: str | None = None, workflow: str | None = None,
                   limit: int = 100) -> list[WorkflowInstance]:
        """Newest first."""
        if state is not None:
            state = str(state).upper()
            if state not in WorkflowState.__members__:
                raise ValidationError(f"unknown workflow state {state!r}; one of {', '.join(WorkflowState.__members__)}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
            raise ValidationError(f"limit must be between 1 and {MAX_LIST}")
        return await self.ask(("list", state, workflow, limit))

    async def abort(self, instance_id: str, reason: str = "aborted on request") -> WorkflowInstance:
        return await self.ask(("abort", instance_id, reason))

    async def wait(self, instance_id: str, timeout: float | None = None) -> WorkflowInstance:
        """Until the instance is final; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        fut: asyncio.Future[WorkflowInstance] = await self.ask(("waiter", instance_id))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            self.tell(("unwait", instance_id, fut))
            raise

    # -- lifecycle --------------------------------------------------------------
    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(WorkflowStore, self.path)
        self._instances.clear()
        self._by_job.clear()
        self._sub = None
        self._scan_consumer_modules()
        for inst in await asyncio.to_thread(self._store.running):
            self._track(inst)
        if self._instances:
            self.log.info("resuming workflows", running=len(self._instances))
        for inst in list(self._instances.values()):
            await self._recover(inst)
        self.spawn(self._sweeper(), name="workflows:sweep")

    async def on_stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        store, self._store = self._store, None
        if store is not None:
            await asyncio.to_thread(store.close)

    def _follow_on(self) -> None:
        """Subscribe to final notifications while step jobs are open (and only then: a
        subscription makes the engine build a notification for every job that ends)."""
        if self._sub is None:
            self._sub = self.node.events.subscribe(topics=FINAL_TOPICS)
            self.spawn(self._follow(self._sub), name="workflows:events")

    def _follow_off(self) -> None:
        if self._sub is not None and not self._by_job:
            self._sub.close()
            self._sub = None

    async def _follow(self, sub: Any) -> None:
        """Step jobs' final notifications become messages (others are skipped here, cheaply)."""
        async for n in sub:
            if n.job_id in self._by_job:
                self.tell(("job_final", n.job_id))

    async def _sweeper(self) -> None:
        """A bounded safety net: re-read the running steps' jobs now and then (a slow subscriber
        loses old notifications), and forget old finished instances."""
        last_purge = 0.0
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.ask(("sweep",), timeout=60.0)
                now = self.clock()
                if now - last_purge > 3600.0:
                    last_purge = now
                    await self.ask(("purge",), timeout=60.0)
            except asyncio.TimeoutError:
                self.log.warning("workflow sweep timed out")

    # -- messages ---------------------------------------------------------------
    async def receive(self, msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        if kind == "job_final":
            await self._check_job(msg[1])
            return None
        if kind == "start":
            return await self._start_instance(msg[1], msg[2], msg[3] if len(msg) > 3 else None)
        if kind == "get":
            return (await self._load(msg[1])).snapshot()
        if kind == "list":
            return await self._list(msg[1], msg[2], msg[3])
        if kind == "abort":
            return await self._abort(msg[1], msg[2])
        if kind == "waiter":
            inst = await self._load(msg[1])
            fut: asyncio.Future[WorkflowInstance] = asyncio.get_running_loop().create_future()
            if inst.state.final:
                fut.set_result(inst.snapshot())
            else:
                self._waiters.setdefault(inst.id, []).append(fut)
            return fut
        if kind == "unwait":
            lst = self._waiters.get(msg[1])
            if lst is not None and msg[2] in lst:
                lst.remove(msg[2])
                if not lst:
                    del self._waiters[msg[1]]
            return None
        if kind == "record_final":  # a final instance's step job ended: history only
            inst = await self._load(msg[1])
            job = await self.node.jobs.get(msg[2])
            if job is not None and job.state in FINAL_STATES:
                try:
                    core.apply(inst, _step_final(job), self.clock())
                except core.InvalidWorkflowEvent as e:
                    self.log.warning("workflow event refused", workflow_id=inst.id, error=str(e))
                    return None
                assert self._store is not None
                await asyncio.to_thread(self._store.save, inst)
            return None
        if kind == "sweep":
            for job_id in list(self._by_job):
                await self._check_job(job_id)
            return None
        if kind == "purge":
            assert self._store is not None
            n = await asyncio.to_thread(self._store.purge, self.clock() - self.retention)
            if n:
                self.log.info("old workflow instances forgotten", instances=n)
            return n
        raise ValueError(f"workflows: unknown message {kind!r}")

    # -- handlers -----------------------------------------------------------------
    async def _start_instance(self, wf: Workflow, properties: Any, payload: Any = None) -> WorkflowInstance:
        if not getattr(self.node.jobs, "accepting", True):
            raise Conflict(f"node {self.node.name} is shutting down")
        inst, instructions = core.new_instance(self.ids.next(), wf, self.node.name, properties, self.clock(),
                                               payload=payload)
        self._track(inst)
        self.log.info("workflow started", workflow=wf.name, workflow_id=inst.id)
        await self._perform(inst, instructions)
        return inst.snapshot()

    async def _load(self, instance_id: Any) -> WorkflowInstance:
        if not isinstance(instance_id, str) or not instance_id or len(instance_id) > 200:
            raise ValidationError("invalid workflow instance id")
        inst = self._instances.get(instance_id)
        if inst is not None:
            return inst
        assert self._store is not None
        found = await asyncio.to_thread(self._store.get, instance_id)
        if found is None:
            raise NotFound(f"workflow instance {instance_id} not found")
        return found

    async def _list(self, state: str | None, workflow: str | None, limit: int) -> list[WorkflowInstance]:
        assert self._store is not None
        stored = await asyncio.to_thread(self._store.find, state, workflow, limit)
        # running instances: memory is the truth (the store has it too, written before each step)
        return [self._instances[i.id].snapshot() if i.id in self._instances else i for i in stored]

    async def _abort(self, instance_id: str, reason: Any) -> WorkflowInstance:
        inst = await self._load(instance_id)
        text = str(reason)[:1000] if reason else "aborted on request"
        instructions = core.apply(inst, Abort(text), self.clock())
        self.log.info("workflow aborted", workflow=inst.name, workflow_id=inst.id, reason=text)
        await self._perform(inst, instructions)
        return inst.snapshot()

    async def _check_job(self, job_id: str) -> None:
        """A step job may have ended: read it and feed the machine (a repeat changes nothing)."""
        iid = self._by_job.get(job_id)
        inst = self._instances.get(iid) if iid is not None else None
        if inst is None:
            return
        job = await self.node.jobs.get(job_id)
        if job is None:
            event: Any = StepLost(job_id)
        elif job.state in FINAL_STATES:
            event = _step_final(job)
        else:
            return  # e.g. retried by hand: still running
        await self._apply(inst, event)

    async def _apply(self, inst: WorkflowInstance, event: Any) -> None:
        try:
            instructions = core.apply(inst, event, self.clock())
        except core.InvalidWorkflowEvent as e:
            self.log.warning("workflow event refused", workflow_id=inst.id, error=str(e))
            return
        await self._perform(inst, instructions)

    async def _recover(self, inst: WorkflowInstance) -> None:
        """After a restart: find or add a PENDING step's job; re-check a step job that may have ended."""
        pending = core.pending_add(inst)
        if pending is not None:
            job_id = await self._find_step_job(inst.id, pending)
            if job_id is not None:
                self.log.info("step job found after restart", workflow_id=inst.id, step=pending.step, job_id=job_id)
                await self._perform(inst, [], committed=(pending.step, job_id))
                await self._check_job(job_id)  # it may have ended already: no notification will come
            else:
                await self._perform(inst, [pending])
            return
        cur = inst.current()
        if cur is not None and cur.job_id is not None:
            await self._check_job(cur.job_id)

    async def _find_step_job(self, instance_id: str, step: AddStepJob) -> str | None:
        """The job of a PENDING step if it committed before the crash (newest jobs of its topic)."""
        for job in await self.node.jobs.find(topic=step.topic, limit=LOOKUP_LIMIT):
            marker = job.properties.get(WORKFLOW_PROPERTY) if isinstance(job.properties, dict) else None
            if isinstance(marker, dict) and marker.get("id") == instance_id and marker.get("step") == step.step:
                return job.id
        return None

    # -- carrying out instructions ----------------------------------------------
    async def _perform(self, inst: WorkflowInstance, instructions: list[Instruction],
                   committed: tuple[int, str] | None = None) -> None:
        """Perform the machine's instructions in order, persisting before each job is added."""
        assert self._store is not None
        todo = list(instructions)
        if committed is not None:
            todo = core.apply(inst, StepCommitted(*committed), self.clock()) + todo
            self._by_job[committed[1]] = inst.id
            self._follow_on()
        while todo:
            ins = todo.pop(0)
            if isinstance(ins, AddStepJob):
                await asyncio.to_thread(self._store.save, inst)  # PENDING is durable before the job exists
                try:
                    if ins.payload:  # the running payload, by blob id (in this node's store)
                        job = await self.node.jobs.add(ins.topic, ins.properties,
                                                       payload={n: r["id"] for n, r in ins.payload.items()})
                    else:
                        job = await self.node.jobs.add(ins.topic, ins.properties)
                except Conflict as e:  # shutting down: the PENDING step is added after the restart
                    self.log.warning("step job not added; will be after restart", workflow_id=inst.id, error=str(e))
                    return
                except JobmeshError as e:
                    todo = core.apply(inst, StepRefused(ins.step, str(e)), self.clock()) + todo
                    continue
                self._by_job[job.id] = inst.id
                self._follow_on()  # before any await: the job cannot have ended yet
                self.log.info("workflow step added", workflow=inst.name, workflow_id=inst.id, step=ins.step,
                              topic=ins.topic, job_id=job.id)
                todo = core.apply(inst, StepCommitted(ins.step, job.id), self.clock()) + todo
            elif isinstance(ins, StopJob):
                self.spawn(self._stop_job(inst.id, ins.job_id), name="workflows:stop")
            elif isinstance(ins, (core.Completed, core.Failed, core.Aborted)):
                if isinstance(ins, core.Failed):
                    self.log.warning("workflow failed", workflow=inst.name, workflow_id=inst.id, reason=ins.reason)
                elif isinstance(ins, core.Completed):
                    self.log.info("workflow completed", workflow=inst.name, workflow_id=inst.id)
        await asyncio.to_thread(self._store.save, inst)
        if inst.state.final:
            self._untrack(inst)

    async def _stop_job(self, instance_id: str, job_id: str) -> None:
        """Stop an aborted instance's step job, then record how it ended in the history."""
        try:
            await asyncio.wait_for(self.node.jobs.stop(job_id), 30.0)
        except (NotFound, Conflict):
            pass  # already over
        except Exception as e:  # the abort stands; the job may still finish (recorded, ignored)
            self.log.warning("could not stop an aborted workflow's step job", job_id=job_id, error=repr(e))
        try:
            await self.node.jobs.wait(job_id, timeout=60.0)
        except (NotFound, asyncio.TimeoutError):
            return
        self.tell(("record_final", instance_id, job_id))

    def _track(self, inst: WorkflowInstance) -> None:
        self._instances[inst.id] = inst
        for rec in inst.history:
            if rec.job_id is not None:
                self._by_job[rec.job_id] = inst.id
                self._follow_on()

    def _untrack(self, inst: WorkflowInstance) -> None:
        self._instances.pop(inst.id, None)
        for rec in inst.history:
            if rec.job_id is not None:
                self._by_job.pop(rec.job_id, None)
        self._follow_off()
        snap = inst.snapshot()
        for fut in self._waiters.pop(inst.id, []):
            if not fut.done():
                fut.set_result(snap)


def _step_final(job: Any) -> StepFinal:
    """A final step job as the machine's event (its output payload as references)."""
    outs = getattr(job, "output_payload", None) or {}
    return StepFinal(job.id, job.state.value, job.result_message, job.output,
                     {n: r.to_json() for n, r in outs.items()} or None)


__all__ = ["WorkflowActor", "workflows_in_module"]
