"""Job payload in the handoff protocol: what the transfer actor does with blobs, kept here so
that ``transfer/actor.py`` changes by a few calls.

The rule, both ways: **a message goes only after the blobs it names are at its receiver**.

- Inputs are *pushed before the handoff* (origin -> target). The origin knows the payload and
  its size when it decides a move, the target then admits a copy only when every input is
  in its store (``_admission``), so a copy never waits in a target's queue for its input, no
  queue or pool needs a new state, and a target that dies mid-transfer is just a failed
  handoff (the job comes home, or goes elsewhere, as any other). Pull-before-start would
  hold a slot or a queue position at the target while the bytes move and make the queue
  and pool know about blobs.
- Outputs are pushed by the target *before its result* (target -> origin); the origin
  commits the result (and acknowledges it) only once every output is in its store, so the
  target's durable outbox keeps the output references (and so the blobs) until then. A
  result whose outputs are missing at the origin anyway (say, the origin restarted between
  a push and the result) is not committed: the origin fetches them from the target and
  commits then (``ResultAgain``).

The parked message waits in a task, not in the transfer actor's mailbox, so small jobs'
handoffs and results keep flowing while a large payload moves. Resends of a parked
message by the protocol's timers join the waiting one instead of queueing again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable

from .store import BlobRef, BlobStore


def _refs(payload: dict[str, Any] | None) -> list[BlobRef]:
    return [BlobRef(r["id"], int(r["size"])) for r in (payload or {}).values()]


def payload_specs(store: BlobStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    """``{job id: {name: {"id", "size"}}}`` of the jobs that have payload (for ``JobSpec.payload``)."""
    if not store.has_refs or not ids:
        return {}
    return {owner: {n: r.to_json() for n, r in ins.items()}
            for owner, (ins, _) in store.payloads(ids).items() if ins}


def output_specs(store: BlobStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not store.has_refs or not ids:
        return {}
    return {owner: {n: r.to_json() for n, r in outs.items()}
            for owner, (_, outs) in store.payloads(ids).items() if outs}


def record_copy_payload(store: BlobStore, copies: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """A target's copies reference their inputs (written before the copies are committed):
    ``copies`` are (copy id, its input payload as the wire carries it)."""
    owners = {job_id: {n: BlobRef(r["id"], int(r["size"])) for n, r in payload.items()}
              for job_id, payload in copies if payload}
    if owners:
        store.set_inputs(owners)


def record_outputs(store: BlobStore, job_id: str, attempt: int, output_payload: dict[str, Any]) -> None:
    """At the origin: a result's outputs become the job's (before the result is committed)."""
    refs = {n: BlobRef(r["id"], int(r["size"])) for n, r in output_payload.items()}
    store.set_outputs(job_id, refs, attempt=attempt)


def with_payload(store: BlobStore, specs: list[Any]) -> list[Any]:
    """``specs`` (``JobSpec``) with their input payload (``JobSpec.payload``) from the store."""
    payloads = payload_specs(store, [s.id for s in specs])
    if not payloads:
        return specs
    return [replace(s, payload=payloads[s.id]) if s.id in payloads else s for s in specs]


def blobs_of(message: Any) -> list[BlobRef]:
    """The blobs a handoff's inputs or a result's outputs name (none for other messages)."""
    from ..transfer.messages import Handoff, Result

    if isinstance(message, Handoff):
        return [r for spec in message.items for r in _refs(spec.payload)]
    if isinstance(message, Result):
        return [r for item in message.items for r in _refs(item.output_payload)]
    return []


class PayloadSender:
    """The transfer actor's blob side: messages held back until their blobs are at the peer,
    and results held back until their outputs are here. It never touches the transfer actor:
    messages go out through ``send`` (the peer links); what the protocol must hear goes back
    to the actor's mailbox through ``tell`` (``transfer.requests.HandoffNotDelivered``,
    ``ResultAgain``)."""

    def __init__(self, blobs: Any, send: Callable[[str, Any], None], tell: Callable[[Any], None],
                 spawn: Callable[..., Any], log: Any, stopping: Callable[[], bool]) -> None:
        self.blobs = blobs  # the node's BlobActor (ensure, fetch, store)
        self._send = send
        self._tell = tell
        self._spawn = spawn
        self.log = log
        self._stopping = stopping
        self._parked: set[tuple[str, str, tuple[tuple[str, int], ...]]] = set()
        self._fetching: set[tuple[str, int]] = set()
        self.parked_total = 0

    def send(self, peer: str, message: Any) -> None:
        """``message`` to ``peer`` now, or once the blobs it names are there."""
        refs = blobs_of(message)
        if not refs:
            self._send(peer, message)
            return
        key = (peer, message.TYPE, tuple(sorted((i.id, i.attempt) for i in message.items)))
        if key in self._parked:
            return  # a resend of a message still waiting for its blobs: that one goes when they are there
        self._parked.add(key)
        self.parked_total += 1
        self._spawn(self._send_later(key, peer, message, refs), name=f"transfer:payload->{peer}")

    async def _send_later(self, key: Any, peer: str, message: Any, refs: list[BlobRef]) -> None:
        from ..transfer.messages import AckItem, Handoff, HandoffAck
        from ..transfer.requests import HandoffNotDelivered

        try:
            await self.blobs.ensure(peer, refs)
        except Exception as e:
            self._parked.discard(key)
            self.log.warning("payload not delivered; message held back", peer=peer, type=message.TYPE,
                             jobs=len(message.items), error=str(e))
            if isinstance(message, Handoff) and not self._stopping():
                # as if the target had refused: the jobs come home (and may run here or elsewhere)
                ack = HandoffAck(tuple(AckItem(s.id, s.attempt, False, f"payload not delivered: {e}")
                                       for s in message.items))
                self._tell(HandoffNotDelivered(peer, ack))
            return  # a result: the target's outbox keeps it and its resend timer tries again
        self._parked.discard(key)
        if not self._stopping():
            self._send(peer, message)  # a peer gone meanwhile: the links drop it, the protocol resends

    def missing_outputs(self, peer: str, item: Any) -> bool:
        """True when some output of the result ``item`` is not in this node's store: it is not
        committed now; its outputs are fetched from ``peer`` and it comes back then (``ResultAgain``)."""
        if not item.output_payload:
            return False
        store = self.blobs.store
        missing = [ref for ref in _refs(item.output_payload) if not store.has(ref.id)]
        if not missing:
            return False
        if (item.id, item.attempt) not in self._fetching:
            self._fetching.add((item.id, item.attempt))
            self._spawn(self._fetch_then_commit(peer, item, missing), name=f"transfer:outputs<-{peer}")
        return True

    async def _fetch_then_commit(self, peer: str, item: Any, missing: list[BlobRef]) -> None:
        from ..transfer.requests import ResultAgain

        try:
            await self.blobs.fetch(peer, missing)
        except Exception as e:
            self.log.warning("output payload not fetched; waiting for the target's resend", job_id=item.id,
                             peer=peer, error=str(e))
            return
        finally:
            self._fetching.discard((item.id, item.attempt))
        self._tell(ResultAgain(peer, item))
