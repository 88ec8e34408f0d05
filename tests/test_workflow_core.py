"""The workflow state machine, pure: every event in every state, no I/O, no clock."""

from __future__ import annotations

import json

import pytest

from jobmesh.errors import ValidationError
from jobmesh.workflow import core
from jobmesh.workflow.core import (
    Abort,
    Aborted,
    AddStepJob,
    Completed,
    Failed,
    InvalidWorkflowEvent,
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

WF = Workflow("assets", [
    Step("dam/meta"),
    Step("dam/render", properties={"sizes": [48, 96], "quality": 80}),
    Step("dam/manifest", offloadable=False),
])


def started(props=None, now=1.0):
    inst, ins = core.new_instance("w1", WF, "n1", props if props is not None else {"path": "/a.png"}, now)
    return inst, ins


def commit(inst, step, job_id, now=2.0):
    assert core.apply(inst, StepCommitted(step, job_id), now) == []


def run_to_step(n):
    """An instance whose steps 0..n-1 succeeded and step n's job j{n} is committed."""
    inst, _ = started()
    for i in range(n):
        commit(inst, i, f"j{i}")
        core.apply(inst, StepFinal(f"j{i}", "SUCCEEDED", None, {f"out{i}": i}), 3.0 + i)
    commit(inst, n, f"j{n}")
    return inst


# -- definitions ----------------------------------------------------------------

def test_definition_validation():
    with pytest.raises(ValidationError):
        Workflow("", [Step("a/b")])
    with pytest.raises(ValidationError):
        Workflow("bad name!", [Step("a/b")])
    with pytest.raises(ValidationError):
        Workflow("w", [])
    with pytest.raises(ValidationError):
        Workflow("w", [Step("bad//topic")])
    with pytest.raises(ValidationError):
        Workflow("w", [Step("a/*")])  # a step runs one topic, not a pattern
    with pytest.raises(ValidationError):
        Workflow("w", [Step("a/b", properties={"x": float("nan")})])
    with pytest.raises(ValidationError):
        Workflow("w", [Step("a/b", properties=["not", "a", "dict"])])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Workflow("w", [{"topic": "a/b", "offloadable": "yes"}])
    with pytest.raises(ValidationError):
        Workflow("w", [{"topic": "a/b", "colour": "red"}])
    with pytest.raises(ValidationError):
        Workflow("w", [Step("a/b")] * (core.MAX_STEPS + 1))
    wf = Workflow("w", ["a/b", {"topic": "c/d", "offloadable": False}])
    assert [s.topic for s in wf.steps] == ["a/b", "c/d"]
    assert wf.steps[1].offloadable is False


def test_definition_json_round_trip():
    again = Workflow.from_json(json.loads(json.dumps(WF.to_json())))
    assert again == WF
    with pytest.raises(ValidationError):
        Workflow.from_json({"name": "x", "steps": "a/b"})
    with pytest.raises(ValidationError):
        Workflow.from_json(["x"])


# -- start ------------------------------------------------------------------------

def test_start_adds_the_first_step_with_its_input():
    inst, ins = started({"path": "/a.png", "jobmesh:local": True})
    assert inst.state is WorkflowState.RUNNING and inst.current_step == 0
    assert inst.properties == {"path": "/a.png"}  # runtime keys are not input
    assert ins == [AddStepJob(0, "dam/meta", {
        "path": "/a.png", core.WORKFLOW_PROPERTY: {"id": "w1", "step": 0, "name": "assets"}})]
    assert inst.history[0].state == "PENDING" and inst.history[0].job_id is None
    assert core.pending_add(inst) == ins[0]


def test_start_refuses_bad_properties():
    with pytest.raises(ValidationError):
        core.new_instance("w", WF, "n", ["x"], 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        core.new_instance("w", WF, "n", {"x": object()}, 0.0)


# -- steps -----------------------------------------------------------------------

def test_outputs_merge_into_the_next_steps_input_and_step_defaults_yield():
    inst, _ = started({"path": "/a.png", "quality": 90})
    commit(inst, 0, "j0")
    assert core.pending_add(inst) is None
    ins = core.apply(inst, StepFinal("j0", "SUCCEEDED", "ok", {"width": 10, "jobmesh:local": True}), 3.0)
    assert len(ins) == 1 and isinstance(ins[0], AddStepJob)
    props = ins[0].properties
    assert props["width"] == 10 and props["path"] == "/a.png"
    assert props["sizes"] == [48, 96]  # a step default
    assert props["quality"] == 90  # the running data overrides the default
    assert core.LOCAL_PROPERTY not in props  # offloadable step; an output cannot pin it
    assert inst.history[0].output == {"width": 10}
    assert inst.history[0].result_message == "ok"
    commit(inst, 1, "j1")
    ins = core.apply(inst, StepFinal("j1", "SUCCEEDED", None, {"thumbs": ["a", "b"]}), 4.0)
    assert ins[0].properties[core.LOCAL_PROPERTY] is True  # the manifest step is pinned to the origin
    assert ins[0].properties["thumbs"] == ["a", "b"]
    commit(inst, 2, "j2")
    assert core.apply(inst, StepFinal("j2", "SUCCEEDED", None, None), 5.0) == [Completed()]
    assert inst.state is WorkflowState.COMPLETED and inst.finished == 5.0
    assert inst.data == {"path": "/a.png", "quality": 90, "width": 10, "thumbs": ["a", "b"]}
    assert [h.state for h in inst.history] == ["SUCCEEDED"] * 3


@pytest.mark.parametrize("state", ["GIVEN_UP", "ERROR", "STOPPED", "DROPPED"])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_a_failing_step_fails_the_workflow_with_its_reason(state, at):
    inst = run_to_step(at)
    ins = core.apply(inst, StepFinal(f"j{at}", state, "disk full", None), 9.0)
    reason = f"step {at + 1} ({WF.steps[at].topic}) {state}: disk full"
    assert ins == [Failed(reason)]
    assert inst.state is WorkflowState.FAILED and inst.reason == reason and inst.finished == 9.0
    assert inst.history[-1].state == state and inst.history[-1].result_message == "disk full"
    assert len(inst.history) == at + 1


def test_failure_without_message():
    inst = run_to_step(0)
    assert core.apply(inst, StepFinal("j0", "GIVEN_UP"), 2.0) == [Failed("step 1 (dam/meta) GIVEN_UP")]


def test_repeated_notifications_change_nothing():
    inst = run_to_step(1)
    assert core.apply(inst, StepCommitted(1, "j1"), 5.0) == []
    first = core.apply(inst, StepFinal("j1", "SUCCEEDED", None, {"a": 1}), 6.0)
    assert len(first) == 1
    before = inst.to_store()
    assert core.apply(inst, StepFinal("j1", "SUCCEEDED", None, {"a": 2}), 7.0) == []
    assert core.apply(inst, StepFinal("j0", "SUCCEEDED", None, None), 7.0) == []  # an old step's repeat
    assert inst.to_store() == before


def test_impossible_events_are_refused():
    inst = run_to_step(1)
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepFinal("nope", "SUCCEEDED"), 1.0)  # not a step job of this instance
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepFinal("j1", "QUEUED"), 1.0)  # not a final state
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepCommitted(2, "j2"), 1.0)  # not the current step
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepCommitted(1, "other"), 1.0)  # the step has its job already
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepRefused(1, "x"), 1.0)  # its job was committed
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepLost("nope"), 1.0)
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, "garbage", 1.0)  # type: ignore[arg-type]
    assert inst.state is WorkflowState.RUNNING  # nothing changed


def test_refused_step_job_fails_the_workflow():
    inst, _ = started()
    assert core.apply(inst, StepRefused(0, "properties too large"), 2.0) == [
        Failed("step 1 (dam/meta) could not be added: properties too large")]
    assert inst.state is WorkflowState.FAILED and inst.history[0].state == "REFUSED"


def test_lost_step_job_fails_once():
    inst = run_to_step(1)
    ins = core.apply(inst, StepLost("j1"), 3.0)
    assert len(ins) == 1 and isinstance(ins[0], Failed) and "disappeared" in ins[0].reason
    assert core.apply(inst, StepLost("j1"), 4.0) == []
    done = run_to_step(0)
    core.apply(done, StepFinal("j0", "SUCCEEDED"), 3.0)
    assert core.apply(done, StepLost("j0"), 4.0) == []  # it had ended: its outcome is known


# -- abort --------------------------------------------------------------------------

def test_abort_stops_the_running_step_job():
    inst = run_to_step(1)
    assert core.apply(inst, Abort("operator"), 5.0) == [StopJob("j1"), Aborted("operator")]
    assert inst.state is WorkflowState.ABORTED and inst.reason == "operator" and inst.finished == 5.0
    # the stopped job's notification is recorded, and starts nothing
    assert core.apply(inst, StepFinal("j1", "STOPPED"), 6.0) == []
    assert inst.history[-1].state == "STOPPED"
    assert inst.state is WorkflowState.ABORTED


def test_abort_before_the_step_job_committed_stops_it_when_it_does():
    inst, _ = started()
    assert core.apply(inst, Abort(), 2.0) == [Aborted("aborted")]
    assert core.apply(inst, StepCommitted(0, "j0"), 3.0) == [StopJob("j0")]
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, StepRefused(0, "x"), 3.0)


def test_refusal_after_abort_changes_nothing():
    inst, _ = started()
    core.apply(inst, Abort(), 2.0)
    assert core.apply(inst, StepRefused(0, "x"), 3.0) == []
    assert inst.state is WorkflowState.ABORTED


def test_abort_after_the_step_ended_does_not_stop_it_again():
    inst, _ = started()
    commit(inst, 0, "j0")
    inst.history[0].state = "SUCCEEDED"  # recorded, next step not begun (e.g. mid-persist)
    assert core.apply(inst, Abort(), 3.0) == [Aborted("aborted")]


@pytest.mark.parametrize("final", ["COMPLETED", "FAILED", "ABORTED"])
def test_final_instances_refuse_abort_and_ignore_news(final):
    inst = run_to_step(0)
    if final == "COMPLETED":
        for i in range(3):
            if i:
                commit(inst, i, f"j{i}")
            core.apply(inst, StepFinal(f"j{i}", "SUCCEEDED"), 5.0)
    elif final == "FAILED":
        core.apply(inst, StepFinal("j0", "ERROR"), 5.0)
    else:
        core.apply(inst, Abort(), 5.0)
    assert inst.state.value == final
    with pytest.raises(InvalidWorkflowEvent):
        core.apply(inst, Abort(), 6.0)
    assert core.pending_add(inst) is None


# -- persistence shape ------------------------------------------------------------

def test_instance_store_round_trip_and_json():
    inst = run_to_step(2)
    again = WorkflowInstance.from_store(json.loads(json.dumps(inst.to_store())))
    assert again.to_store() == inst.to_store()
    j = inst.to_json()
    assert j["state"] == "RUNNING" and j["current_step"] == 2 and j["steps"] == 3
    assert j["current_topic"] == "dam/manifest" and j["current_job"] == "j2"
    assert [h["job_id"] for h in j["history"]] == ["j0", "j1", "j2"]
    assert j["history"][0]["output"] == {"out0": 0}
    assert j["data"]["out1"] == 1
    snap = inst.snapshot()
    snap.data["x"] = 1
    assert "x" not in inst.data  # a snapshot is a copy


def test_a_step_output_travels_with_an_offloaded_result():
    """The transfer result carries the output (absent from the body when there is none)."""
    from jobmesh.job import ResultKind
    from jobmesh.transfer.protocol import ResultItem

    # the output is the job's result (issue 12: one value), carried as "result"
    item = ResultItem("j1", 2, ResultKind.OK, "ok", result={"width": 10, "tags": ["a"]})
    assert ResultItem.from_wire(json.loads(json.dumps(item.to_wire()))).result == {"width": 10, "tags": ["a"]}
    bare = ResultItem("j1", 2, ResultKind.FAILED, "no")
    assert "result" not in bare.to_wire() and ResultItem.from_wire(bare.to_wire()).result is None


# -- payload --------------------------------------------------------------------

A = {"id": "sha256:" + "a" * 64, "size": 3}
B = {"id": "sha256:" + "b" * 64, "size": 5}
C = {"id": "sha256:" + "c" * 64, "size": 7}


def test_payload_travels_from_step_to_step_and_outputs_replace_by_name():
    inst, ins = core.new_instance("w1", WF, "n1", {"path": "a.png"}, 1.0, payload={"image": A})
    assert ins[0].payload == {"image": A}
    commit(inst, 0, "j0")
    out = core.apply(inst, StepFinal("j0", "SUCCEEDED", None, {"m": 1}, {"meta": B}), 3.0)
    assert out[0].payload == {"image": A, "meta": B}
    commit(inst, 1, "j1")
    out = core.apply(inst, StepFinal("j1", "SUCCEEDED", None, None, {"meta": C}), 4.0)
    assert out[0].payload == {"image": A, "meta": C}  # a later output replaces an earlier one
    assert inst.history[0].output_payload == {"meta": B}
    back = WorkflowInstance.from_store(json.loads(json.dumps(inst.to_store())))
    assert back.payload == inst.payload and back.history[1].output_payload == {"meta": C}
    assert core.pending_add(back).payload == {"image": A, "meta": C}  # after a restart: the same input
    assert inst.to_json()["history"][0]["output_payload"] == {"meta": B}


def test_a_failed_step_output_payload_is_not_merged():
    inst, _ = core.new_instance("w1", WF, "n1", {}, 1.0)
    commit(inst, 0, "j0")
    core.apply(inst, StepFinal("j0", "GIVEN_UP", "boom", None, {"meta": B}), 3.0)
    assert inst.payload == {} and inst.history[0].output_payload is None


def test_bad_workflow_payload_is_refused():
    for bad in ("x", {"image": "sha256:zz"}, {"../x": A}, {"image": {"id": "sha256:../..", "size": 1}}):
        with pytest.raises(ValidationError):
            core.new_instance("w1", WF, "n1", {}, 1.0, payload=bad)
