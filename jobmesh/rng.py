"""Every random choice of a node from one source (DESIGN §4 simulation seams).

Job id prefixes, request ids, probe jitter: production draws them from a generator seeded
by the OS; the simulator gives each node a generator seeded from the run's seed, so a seed
replays bit for bit. Like the clock, the source in force is a context variable that a
node's tasks inherit.
"""

from __future__ import annotations

import contextvars
import os
import random

_default = random.Random(int.from_bytes(os.urandom(16), "big"))
_current: contextvars.ContextVar[random.Random] = contextvars.ContextVar("jobmesh_rng", default=_default)


def current() -> random.Random:
    """The random source of the node whose code is running."""
    return _current.get()


def use(source: random.Random) -> contextvars.Token[random.Random]:
    """Make ``source`` the random source of the current context (and of tasks created from it)."""
    return _current.set(source)


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as hex, from the current source (not for secrets)."""
    return _current.get().getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()
