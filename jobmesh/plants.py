"""Planted bugs (FoundationDB's BUGGIFY, inverted): known faults the simulator must find.

A simulator that never fails proves nothing. Each name below switches one known bug on in
the library's real code path, so ``python -m jobmesh.sim --plant NAME`` can show that the
invariants catch it. Off by default: ``PLANTS.active(name)`` is a set lookup on an empty set
unless ``JOBMESH_SIM_PLANT`` (comma-separated names) is set, or a test calls ``PLANTS.set``.
"""

from __future__ import annotations

import os
from typing import Iterable

KNOWN: dict[str, str] = {
    "forget-before-ack": "the target forgets a copy before the origin acknowledged its result",
    "no-handoff-resend": "an unacknowledged handoff is never sent again",
    "run-superseded-copy": "a restored copy runs although a newer attempt superseded it",
    "leader-not-oldest": "the leader is not the oldest member",
    "no-seed-reprobe": "seeds are not probed again once the node has members",
}


class Plants:
    def __init__(self) -> None:
        self._on: frozenset[str] = frozenset()
        self.set(n for n in os.environ.get("JOBMESH_SIM_PLANT", "").split(",") if n.strip())

    def set(self, names: Iterable[str]) -> None:
        names = frozenset(n.strip() for n in names)
        unknown = names - set(KNOWN)
        if unknown:
            raise ValueError(f"unknown plant(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
        self._on = names

    def active(self, name: str) -> bool:
        return name in self._on

    @property
    def on(self) -> frozenset[str]:
        return self._on


PLANTS = Plants()
