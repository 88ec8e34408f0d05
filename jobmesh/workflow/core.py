"""Workflows, pure: definitions, instances and the state machine that drives them.

A workflow is a named sequence of steps; each step is one job of a topic. The
machine takes events (the step job was committed, the step job reached a final
state, abort) and answers with instructions (add the next step's job, stop a
job, the workflow completed or failed). It does no I/O and reads no clock: the
actor passes ``now`` in, performs the instructions and persists the instance.

Every event is checked against the instance's state: an event that cannot
happen (a step finished that was never started, a job of another instance) is
refused with ``InvalidWorkflowEvent``; a repeated notification (execution is
at-least-once, notifications may be seen twice after a restart) is recognised
and changes nothing.

Payload (job payload, ``jobmesh.blobs``) travels like the properties: the instance's
``payload`` (``{name: {"id", "size"}}``) is the start payload with every succeeded step's
output payload merged in by name (a later step's output replaces an earlier one of the same
name); the next step's job gets it as its input payload. Only references move here: the
blobs are in the origin's store (a step's outputs reach it before its result is committed).
"""

from __future__ import annotations

import copy
import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from ..errors import Conflict, ValidationError
from ..job import MAX_PROPERTIES_BYTES, JobState, iso, properties_json
from ..topics import TopicError, validate_topic

WORKFLOW_PROPERTY = "jobmesh:workflow"  # on a step job: {"id": instance id, "step": index, "name": workflow}
LOCAL_PROPERTY = "jobmesh:local"  # on a step job: true = run on the origin only (the offloader honours it)
RESERVED_PREFIX = "jobmesh:"  # property keys the runtime owns; dropped from inputs and outputs
MAX_STEPS = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")


class WorkflowState(str, enum.Enum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def final(self) -> bool:
        return self is not WorkflowState.RUNNING

    def __str__(self) -> str:
        return self.value


class InvalidWorkflowEvent(Conflict):
    """An event that cannot happen to this instance in its current state."""


# -- definitions -------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One step: a job of ``topic``. ``properties`` are defaults the running data overrides.

    ``offloadable=False`` pins the step's job to the workflow's origin node (job
    property ``jobmesh:local: true``), e.g. a step that writes to the origin's disk.
    """

    topic: str
    offloadable: bool = True
    properties: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    def label(self, index: int) -> str:
        return self.name or f"{index + 1}:{self.topic}"

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "offloadable": self.offloadable,
                "properties": dict(self.properties), "name": self.name}

    @classmethod
    def from_json(cls, data: Any) -> "Step":
        if isinstance(data, str):
            return cls(topic=data)
        if not isinstance(data, dict):
            raise ValidationError("a step is a topic or an object with a 'topic'")
        unknown = set(data) - {"topic", "offloadable", "properties", "name"}
        if unknown:
            raise ValidationError(f"unknown step field(s): {', '.join(sorted(unknown))}")
        offloadable = data.get("offloadable", True)
        if not isinstance(offloadable, bool):
            raise ValidationError("step 'offloadable' must be true or false")
        props = data.get("properties") or {}
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise ValidationError("step 'name' must be a string")
        return cls(topic=data.get("topic"), offloadable=offloadable, properties=props, name=name)  # type: ignore[arg-type]


@dataclass(frozen=True, init=False)
class Workflow:
    """A workflow definition. Module-level ``Workflow`` objects in a ``--consumers`` module are registered."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""

    def __init__(self, name: str, steps: Iterable[Step | str | dict[str, Any]], description: str = "") -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "steps", tuple(s if isinstance(s, Step) else Step.from_json(s) for s in steps))
        object.__setattr__(self, "description", description)
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValidationError(
                f"invalid workflow name {self.name!r}: 1-128 of letters, digits, '_', '.', '-', '/'")
        if not self.steps:
            raise ValidationError(f"workflow {self.name}: needs at least one step")
        if len(self.steps) > MAX_STEPS:
            raise ValidationError(f"workflow {self.name}: at most {MAX_STEPS} steps")
        for i, step in enumerate(self.steps):
            if not isinstance(step.topic, str):
                raise ValidationError(f"workflow {self.name}: step {i + 1} needs a topic")
            try:
                validate_topic(step.topic)
            except TopicError as e:
                raise ValidationError(f"workflow {self.name}: step {i + 1}: {e}") from None
            check_properties(step.properties, f"workflow {self.name}: step {i + 1} properties")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: Any) -> "Workflow":
        if not isinstance(data, dict):
            raise ValidationError("a workflow definition is an object with 'name' and 'steps'")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise ValidationError("workflow 'steps' must be a list")
        return cls(data.get("name"), steps, str(data.get("description") or ""))  # type: ignore[arg-type]


def check_properties(props: Any, what: str = "properties") -> dict[str, Any]:
    """``props`` if it is a JSON-compatible dict of bounded size; ValidationError otherwise."""
    if props is None:
        return {}
    properties_json(props, what)  # the same rule as a job's properties
    return props


def public(props: dict[str, Any] | None) -> dict[str, Any]:
    """Without the runtime's own ``jobmesh:`` keys (a step cannot smuggle them into the next)."""
    if not props:
        return {}
    return {k: v for k, v in props.items() if not str(k).startswith(RESERVED_PREFIX)}


# -- instances -----------------------------------------------------------------

@dataclass
class StepRecord:
    """What happened to one step: its job and the job's final state, message and output."""

    index: int
    topic: str
    job_id: str | None = None  # None between "decided" and "job committed"
    state: str = "PENDING"  # PENDING (job not committed yet), QUEUED (job committed), or the job's final state
    added: float | None = None
    finished: float | None = None
    result_message: str | None = None
    output: dict[str, Any] | None = None
    output_payload: dict[str, Any] | None = None  # {name: {"id", "size"}} of a succeeded step

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "topic": self.topic, "job_id": self.job_id, "state": self.state,
                "added": iso(self.added), "finished": iso(self.finished),
                "result_message": self.result_message, "output": self.output,
                "output_payload": self.output_payload or {}}

    def to_store(self) -> dict[str, Any]:
        d = {"index": self.index, "topic": self.topic, "job_id": self.job_id, "state": self.state,
             "added": self.added, "finished": self.finished,
             "result_message": self.result_message, "output": self.output}
        if self.output_payload:
            d["output_payload"] = self.output_payload
        return d

    @classmethod
    def from_store(cls, d: dict[str, Any]) -> "StepRecord":
        return cls(index=int(d["index"]), topic=str(d["topic"]), job_id=d.get("job_id"),
                   state=str(d.get("state", "PENDING")), added=d.get("added"), finished=d.get("finished"),
                   result_message=d.get("result_message"), output=d.get("output"),
                   output_payload=d.get("output_payload") or None)


@dataclass
class WorkflowInstance:
    """A running or finished workflow on its origin node.

    ``data`` is the running input: the start properties with every succeeded step's
    output merged in; the next step's job gets it as its properties. ``payload`` is the same
    for job payload: the start payload with every succeeded step's output payload merged in
    by name; the next step's job gets it as its input payload.
    """

    id: str
    workflow: Workflow
    origin: str
    state: WorkflowState = WorkflowState.RUNNING
    current_step: int = 0
    properties: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    history: list[StepRecord] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)  # {name: {"id", "size"}}
    created: float = 0.0
    updated: float = 0.0
    finished: float | None = None
    reason: str | None = None

    @property
    def name(self) -> str:
        return self.workflow.name

    def current(self) -> StepRecord | None:
        """The record of the step in progress (or the last one, once final)."""
        return self.history[-1] if self.history else None

    def to_json(self) -> dict[str, Any]:
        cur = self.current()
        return {
            "id": self.id, "workflow": self.workflow.name, "origin": self.origin, "state": self.state.value,
            "current_step": self.current_step, "steps": len(self.workflow.steps),
            "current_topic": self.workflow.steps[self.current_step].topic if self.current_step < len(self.workflow.steps) else None,
            "current_job": cur.job_id if cur is not None else None,
            "properties": self.properties, "data": self.data, "payload": dict(sorted(self.payload.items())),
            "history": [h.to_json() for h in self.history],
            "created": iso(self.created), "updated": iso(self.updated), "finished": iso(self.finished),
            "reason": self.reason,
        }

    def to_store(self) -> dict[str, Any]:
        return {
            "id": self.id, "workflow": self.workflow.to_json(), "origin": self.origin, "state": self.state.value,
            "current_step": self.current_step, "properties": self.properties, "data": self.data,
            "history": [h.to_store() for h in self.history], "created": self.created, "updated": self.updated,
            "finished": self.finished, "reason": self.reason, "payload": self.payload,
        }

    @classmethod
    def from_store(cls, d: dict[str, Any]) -> "WorkflowInstance":
        """The instance as it was persisted (its definition included: a changed definition
        does not alter a running instance)."""
        return cls(
            id=str(d["id"]), workflow=Workflow.from_json(d["workflow"]), origin=str(d.get("origin", "")),
            state=WorkflowState(d["state"]), current_step=int(d.get("current_step", 0)),
            properties=dict(d.get("properties") or {}), data=dict(d.get("data") or {}),
            history=[StepRecord.from_store(h) for h in d.get("history") or []],
            created=float(d.get("created") or 0.0), updated=float(d.get("updated") or 0.0),
            finished=d.get("finished"), reason=d.get("reason"), payload=dict(d.get("payload") or {}),
        )

    def snapshot(self) -> "WorkflowInstance":
        return copy.deepcopy(self)


# -- events and instructions --------------------------------------------------

@dataclass(frozen=True)
class StepCommitted:
    """The actor added the step's job and it committed with ``job_id``."""
    step: int
    job_id: str


@dataclass(frozen=True)
class StepFinal:
    """A step job reached a final state (SUCCEEDED, GIVEN_UP, ERROR, STOPPED, DROPPED)."""
    job_id: str
    state: str
    message: str | None = None
    output: dict[str, Any] | None = None
    output_payload: dict[str, Any] | None = None  # {name: {"id", "size"}}


@dataclass(frozen=True)
class StepLost:
    """The step's job no longer exists (removed after it ended, or purged) and its outcome is unknown."""
    job_id: str


@dataclass(frozen=True)
class StepRefused:
    """The step's job could not be added (the node refused it, e.g. an invalid topic or properties)."""
    step: int
    reason: str


@dataclass(frozen=True)
class Abort:
    reason: str = "aborted"


Event = Union[StepCommitted, StepFinal, StepLost, StepRefused, Abort]


@dataclass(frozen=True)
class AddStepJob:
    """Add the job for step ``step`` (then report ``StepCommitted``); ``payload``: its input
    payload, ``{name: {"id", "size"}}`` of blobs in the origin's store."""
    step: int
    topic: str
    properties: dict[str, Any]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StopJob:
    job_id: str


@dataclass(frozen=True)
class Completed:
    pass


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Aborted:
    reason: str


Instruction = Union[AddStepJob, StopJob, Completed, Failed, Aborted]

_FAILING_STATES = {JobState.GIVEN_UP.value, JobState.ERROR.value, JobState.STOPPED.value, JobState.DROPPED.value}
_FINAL_JOB_STATES = _FAILING_STATES | {JobState.SUCCEEDED.value}


def step_job_properties(inst: WorkflowInstance, index: int) -> dict[str, Any]:
    """The job properties of step ``index``: step defaults, overridden by the running data, plus
    the workflow marker (and ``jobmesh:local`` for a step pinned to the origin)."""
    step = inst.workflow.steps[index]
    props: dict[str, Any] = dict(public(step.properties))
    props.update(public(inst.data))
    props[WORKFLOW_PROPERTY] = {"id": inst.id, "step": index, "name": inst.workflow.name}
    if not step.offloadable:
        props[LOCAL_PROPERTY] = True
    return props


def check_payload(payload: Any, what: str = "workflow payload") -> dict[str, Any]:
    """``{name: {"id", "size"}}`` (references, as the blob store made them)."""
    from ..blobs.store import BlobRef, check_name

    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ValidationError(f"{what} must be a map of names to {{\"id\", \"size\"}}")
    return {check_name(n, f"{what} name"): BlobRef.from_json(r, f"{what} {n!r}").to_json()
            for n, r in sorted(payload.items())}


def new_instance(instance_id: str, workflow: Workflow, origin: str, properties: dict[str, Any] | None,
                 now: float, payload: dict[str, Any] | None = None) -> tuple[WorkflowInstance, list[Instruction]]:
    """A RUNNING instance at step 0 with its PENDING record, and the instruction to add its job.
    ``payload``: the first step's input payload (``{name: {"id", "size"}}``)."""
    props = public(check_properties(properties, "workflow properties"))
    inst = WorkflowInstance(id=instance_id, workflow=workflow, origin=origin, properties=dict(props),
                            data=copy.deepcopy(props), created=now, updated=now, payload=check_payload(payload))
    return inst, [_begin_step(inst, 0, now)]


def _begin_step(inst: WorkflowInstance, index: int, now: float) -> AddStepJob:
    inst.current_step = index
    inst.history.append(StepRecord(index=index, topic=inst.workflow.steps[index].topic))
    inst.updated = now
    return AddStepJob(index, inst.workflow.steps[index].topic, step_job_properties(inst, index), dict(inst.payload))


def pending_add(inst: WorkflowInstance) -> AddStepJob | None:
    """After a restart: the step whose job was decided but not recorded as committed (re-add or look up)."""
    cur = inst.current()
    if inst.state is WorkflowState.RUNNING and cur is not None and cur.job_id is None:
        return AddStepJob(cur.index, cur.topic, step_job_properties(inst, cur.index), dict(inst.payload))
    return None


def apply(inst: WorkflowInstance, event: Event, now: float) -> list[Instruction]:
    """Apply ``event`` to ``inst`` in place; the instructions the actor must carry out.

    Raises ``InvalidWorkflowEvent`` for an event that cannot happen; returns [] for a
    repeat of one already applied (and for news about a job of an instance already final,
    which is only recorded in the history).
    """
    if isinstance(event, StepCommitted):
        return _on_committed(inst, event, now)
    if isinstance(event, StepFinal):
        return _on_final(inst, event, now)
    if isinstance(event, StepLost):
        rec = _record_of(inst, event.job_id)
        if rec is None:
            raise InvalidWorkflowEvent(f"workflow {inst.id}: job {event.job_id} is not one of its steps")
        if rec.state in _FINAL_JOB_STATES or inst.state.final:
            return []
        return _on_final(inst, StepFinal(event.job_id, JobState.DROPPED.value,
                                         "the step's job disappeared before its outcome was recorded"), now)
    if isinstance(event, StepRefused):
        cur = inst.current()
        if cur is None or cur.index != event.step or cur.job_id is not None:
            raise InvalidWorkflowEvent(f"workflow {inst.id}: step {event.step} is not waiting for its job")
        if inst.state.final:
            return []
        cur.state = "REFUSED"
        cur.result_message = event.reason
        cur.finished = now
        reason = f"step {cur.index + 1} ({cur.topic}) could not be added: {event.reason}"
        inst.state, inst.reason, inst.finished, inst.updated = WorkflowState.FAILED, reason, now, now
        return [Failed(reason)]
    if isinstance(event, Abort):
        if inst.state.final:
            raise InvalidWorkflowEvent(f"workflow {inst.id} is {inst.state.value}; only a running workflow can be aborted")
        inst.state = WorkflowState.ABORTED
        inst.reason = event.reason
        inst.finished = inst.updated = now
        out: list[Instruction] = []
        cur = inst.current()
        if cur is not None and cur.job_id is not None and cur.state not in _FINAL_JOB_STATES:
            out.append(StopJob(cur.job_id))
        out.append(Aborted(event.reason))
        return out
    raise InvalidWorkflowEvent(f"unknown workflow event {event!r}")


def _record_of(inst: WorkflowInstance, job_id: str) -> StepRecord | None:
    for rec in inst.history:
        if rec.job_id == job_id:
            return rec
    return None


def _on_committed(inst: WorkflowInstance, ev: StepCommitted, now: float) -> list[Instruction]:
    cur = inst.current()
    if cur is None or cur.index != ev.step:
        raise InvalidWorkflowEvent(f"workflow {inst.id}: step {ev.step} is not the current step")
    if cur.job_id is not None:
        if cur.job_id == ev.job_id:
            return []  # told twice
        raise InvalidWorkflowEvent(
            f"workflow {inst.id}: step {ev.step} already has job {cur.job_id}, not {ev.job_id}")
    cur.job_id = ev.job_id
    cur.state = JobState.QUEUED.value
    cur.added = now
    inst.updated = now
    if inst.state.final:  # aborted while the job was being added: stop it
        return [StopJob(ev.job_id)]
    return []


def _on_final(inst: WorkflowInstance, ev: StepFinal, now: float) -> list[Instruction]:
    if ev.state not in _FINAL_JOB_STATES:
        raise InvalidWorkflowEvent(f"workflow {inst.id}: {ev.state} is not a final job state")
    rec = _record_of(inst, ev.job_id)
    if rec is None:
        raise InvalidWorkflowEvent(f"workflow {inst.id}: job {ev.job_id} is not one of its steps")
    if rec.state in _FINAL_JOB_STATES:
        return []  # a repeated notification
    rec.state = ev.state
    rec.finished = now
    rec.result_message = ev.message
    inst.updated = now
    if ev.state == JobState.SUCCEEDED.value:
        rec.output = public(ev.output) or None
        rec.output_payload = check_payload(ev.output_payload, "step output payload") or None
    if inst.state.final:
        return []  # e.g. the step job stopping after an abort: recorded, nothing more
    if rec is not inst.current():  # pragma: no cover - only the current step has an open job
        raise InvalidWorkflowEvent(f"workflow {inst.id}: job {ev.job_id} is not the current step's")
    if ev.state != JobState.SUCCEEDED.value:
        reason = f"step {rec.index + 1} ({rec.topic}) {ev.state}"
        if ev.message:
            reason += f": {ev.message}"
        inst.state = WorkflowState.FAILED
        inst.reason = reason
        inst.finished = now
        return [Failed(reason)]
    if rec.output:
        inst.data.update(rec.output)
    if rec.output_payload:
        inst.payload.update(rec.output_payload)  # by name: a later step's output replaces an earlier one
    nxt = rec.index + 1
    if nxt >= len(inst.workflow.steps):
        inst.state = WorkflowState.COMPLETED
        inst.finished = now
        return [Completed()]
    return [_begin_step(inst, nxt, now)]
