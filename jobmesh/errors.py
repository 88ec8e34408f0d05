"""Errors jobmesh raises on purpose. A ``JobmeshError`` is an answer, not a crash."""

from __future__ import annotations


class JobmeshError(Exception):
    """Base of every error that is an expected answer (bad input, unknown id, ...)."""

    http_status = 400


class ValidationError(JobmeshError):
    """Input that jobmesh cannot accept; the message says what and why."""

    http_status = 400


class NotFound(JobmeshError):
    http_status = 404


class Conflict(JobmeshError):
    """The request is valid but not in the object's current state (e.g. retry a running job)."""

    http_status = 409


class ActorStopped(JobmeshError):
    http_status = 503


class ActorCrashed(JobmeshError):
    http_status = 500


class Unauthorized(JobmeshError):
    http_status = 401
