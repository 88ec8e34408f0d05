"""Workflows on jobs (issue 6): a named sequence of steps, each step a job of a topic.

The output properties of one step are merged into the input of the next; a step is
offloadable (its job may run wherever the offloader sends it) or local (pinned to the
origin with the job property ``jobmesh:local``). Instances are durable on their
origin node. ``core`` is the pure state machine, ``actor`` the node's
``node.workflows``, ``store`` its SQLite file. See docs/workflows.md.
"""

from .core import (
    LOCAL_PROPERTY,
    WORKFLOW_PROPERTY,
    InvalidWorkflowEvent,
    Step,
    StepRecord,
    Workflow,
    WorkflowInstance,
    WorkflowState,
)

__all__ = [
    "LOCAL_PROPERTY",
    "WORKFLOW_PROPERTY",
    "InvalidWorkflowEvent",
    "Step",
    "StepRecord",
    "Workflow",
    "WorkflowInstance",
    "WorkflowState",
]
