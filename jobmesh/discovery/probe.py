"""Level-triggered membership repair: which endpoints to probe, and which to remember.

Reacting to events is not enough for a topology to heal (DESIGN §3): a seed that was
down when a node started, a seedless first node restarted after its peers had formed a
topology without it, two halves of a partition — none of these produce an event on
the side that must act. So a node keeps comparing what it believes (its live members)
with what it knows could be there (its configured seeds, and the endpoints of every
member it has seen, remembered on disk) and probes the difference with a join request
for its whole life. A probe that reaches another topology merges the two views.

Both classes are pure: the clock is a parameter, jitter comes from a seeded random
source, and the peer book's file I/O is two small functions beside it.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

PEERS_FILE = "peers.json"
PEER_TTL = 24 * 3600.0  # a remembered endpoint not seen for this long is forgotten
MAX_PEERS = 1024


@dataclass
class _ProbeState:
    delay: float
    due: float


class Prober:
    """Per endpoint: probe now, or back off (doubling, capped) after each unanswered probe.

    An endpoint leaves the prober as soon as it is a live member's endpoint (or a probe
    of it was answered by a node that is a live member under another address), and starts
    again from ``initial`` if it stops being one.
    """

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        if not 0 < initial <= cap:
            raise ValueError("need 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.rng = rng or random.Random(0)
        self._state: dict[str, _ProbeState] = {}
        self._alias: dict[str, str] = {}  # endpoint -> name of the node that answered there
        self._in_flight: set[str] = set()

    def due(self, candidates: Iterable[str], live_endpoints: set[str], live_names: set[str],
            now: float) -> list[str]:
        """The endpoints to probe now, in a stable order; each is marked in flight."""
        out: list[str] = []
        wanted = set()
        for ep in candidates:
            if not ep or ep in live_endpoints or self._alias.get(ep) in live_names:
                continue
            wanted.add(ep)
            st = self._state.get(ep)
            if st is None:
                st = self._state[ep] = _ProbeState(self.initial, now)
            if ep not in self._in_flight and st.due <= now:
                out.append(ep)
        for ep in [e for e in self._state if e not in wanted and e not in self._in_flight]:
            del self._state[ep]  # a live member now: probe afresh if it goes missing again
        out.sort()
        self._in_flight.update(out)
        return out

    def answered(self, endpoint: str, responder: str | None, now: float) -> None:
        """A probe was answered (by ``responder``): try again soon if still not a member."""
        self._in_flight.discard(endpoint)
        if responder:
            self._alias[endpoint] = responder
        st = self._state.get(endpoint)
        if st is not None:
            st.delay = self.initial
            st.due = now + self.cap  # joined: the member appears within an interval or two
        if len(self._alias) > 4 * MAX_PEERS:
            self._alias.clear()

    def unanswered(self, endpoint: str, now: float) -> None:
        """No answer (timeout, refused): back off, with jitter so nodes do not probe in step."""
        self._in_flight.discard(endpoint)
        st = self._state.get(endpoint)
        if st is None:
            st = self._state[endpoint] = _ProbeState(self.initial, now)
        st.due = now + st.delay * (0.5 + self.rng.random() / 2)
        st.delay = min(self.cap, st.delay * 2)

    def pending(self) -> list[str]:
        """Endpoints currently being probed or waiting for their next probe (for tests and logs)."""
        return sorted(self._state)


class PeerBook:
    """Endpoints of members seen, with when they were last seen (wall clock), bounded and expiring."""

    def __init__(self, ttl: float = PEER_TTL, limit: int = MAX_PEERS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._peers: dict[str, tuple[str, float]] = {}  # endpoint -> (name, last seen)
        self.dirty = False

    def __len__(self) -> int:
        return len(self._peers)

    def seen(self, members: Iterable[tuple[str, str | None]], now: float) -> None:
        """These (name, endpoint) pairs are live members now."""
        for name, ep in members:
            if not ep:
                continue
            old = self._peers.get(ep)
            if old is None or old[0] != name:
                self.dirty = True
            self._peers[ep] = (name, now)
        if len(self._peers) > self.limit:
            for ep in sorted(self._peers, key=lambda e: self._peers[e][1])[: len(self._peers) - self.limit]:
                del self._peers[ep]
            self.dirty = True

    def expire(self, now: float) -> None:
        for ep in [e for e, (_, t) in self._peers.items() if now - t > self.ttl]:
            del self._peers[ep]
            self.dirty = True

    def endpoints(self, now: float) -> list[str]:
        """Endpoints worth probing (not expired), oldest name first is not needed: sorted."""
        return sorted(e for e, (_, t) in self._peers.items() if now - t <= self.ttl)

    def name_at(self, endpoint: str) -> str | None:
        entry = self._peers.get(endpoint)
        return entry[0] if entry else None

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "peers": {ep: {"name": n, "seen": t} for ep, (n, t) in sorted(self._peers.items())}}

    @classmethod
    def from_json(cls, data: Any, ttl: float = PEER_TTL, limit: int = MAX_PEERS) -> "PeerBook":
        """Whatever the file holds; anything malformed is skipped, never fatal."""
        book = cls(ttl, limit)
        peers = data.get("peers") if isinstance(data, dict) else None
        if isinstance(peers, dict):
            for ep, entry in peers.items():
                if not isinstance(ep, str) or not isinstance(entry, dict):
                    continue
                name, seen = entry.get("name"), entry.get("seen")
                if isinstance(name, str) and isinstance(seen, (int, float)) and not isinstance(seen, bool):
                    book._peers[ep] = (name, float(seen))
        return book


def load_peer_book(data_dir: str | os.PathLike[str], ttl: float = PEER_TTL) -> PeerBook:
    path = Path(data_dir) / PEERS_FILE
    try:
        return PeerBook.from_json(json.loads(path.read_text()), ttl)
    except (OSError, ValueError):
        return PeerBook(ttl)


def save_peer_book(data_dir: str | os.PathLike[str], book: PeerBook) -> None:
    """Written to a temp file and renamed: a crash mid-write leaves the old file whole."""
    path = Path(data_dir) / PEERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book.to_json(), indent=1))
    os.replace(tmp, path)
    book.dirty = False
