"""One clock per node (DESIGN §4 simulation seams): wall time and monotonic time.

Library code asks this module for the time instead of calling ``time.time()`` or
``time.monotonic()``, so that the simulator can run whole nodes on a virtual clock
(and jump one node's clock while the others' stay put). The clock in force is a
context variable: a node's tasks inherit the context they were created in, so the
simulator starts each node inside a context whose clock is that node's. Production
never sets it and gets the system clock; threads (which do not inherit asyncio
contexts) get the system clock too, which is what they should get there.
"""

from __future__ import annotations

import contextvars
import time
from typing import Protocol


class Clock(Protocol):
    """What a node needs of a clock: seconds since the epoch, and seconds that never go back."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
_current: contextvars.ContextVar[Clock] = contextvars.ContextVar("jobmesh_clock", default=SYSTEM)


def current() -> Clock:
    """The clock of the node whose code is running (the system clock outside a simulation)."""
    return _current.get()


def use(clock: Clock) -> contextvars.Token[Clock]:
    """Make ``clock`` the clock of the current context (and of tasks created from it)."""
    return _current.set(clock)


def wall() -> float:
    """Seconds since the epoch, by the current node's clock."""
    return _current.get().time()


def monotonic() -> float:
    """Monotonic seconds, by the current node's clock."""
    return _current.get().monotonic()
