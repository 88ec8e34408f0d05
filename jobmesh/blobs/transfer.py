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
  commits then (``result_again``).

The parked message waits in a task, not in the transfer actor's mailbox, so small jobs'
handoffs and results keep flowing while a large payload moves. Resends of a parked
message by the protocol's timers join the waiting one instead of queueing again.
"""

from __future__ import annotations

from typing import Any, Iterable

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


def record_copy_payload(store: BlobStore, specs: Iterable[Any]) -> None:
    """A target's copies reference their inputs (written before the copies are committed)."""
    owners = {s.id: {n: BlobRef(r["id"], int(r["size"])) for n, r in s.payload.items()} for s in specs if s.payload}
    if owners:
        store.set_inputs(owners)


def record_outputs(store: BlobStore, job: Any, output_payload: dict[str, Any]) -> None:
    """At the origin: a result's outputs become the job's (before the result is committed)."""
    refs = {n: BlobRef(r["id"], int(r["size"])) for n, r in output_payload.items()}
    store.set_outputs(job.id, refs, attempt=job.attempt)
    job.output_payload = refs


class PayloadSender:
    """The transfer actor's blob side: messages held back until their blobs are there."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._parked: set[tuple[str, str, tuple[tuple[str, int], ...]]] = set()
        self._fetching: set[tuple[str, int]] = set()
        self.parked_total = 0

    @staticmethod
    def _blobs_of(message: Any) -> list[BlobRef]:
        from ..transfer.protocol import Handoff, Result

        if isinstance(message, Handoff):
            return [r for spec in message.items for r in _refs(spec.payload)]
        if isinstance(message, Result):
            return [r for item in message.items for r in _refs(item.output_payload)]
        return []

    def needs(self, message: Any) -> bool:
        from ..transfer.protocol import Handoff, Result

        if isinstance(message, Handoff):
            return any(spec.payload for spec in message.items)
        if isinstance(message, Result):
            return any(item.output_payload for item in message.items)
        return False

    def send_after_blobs(self, peer: str, message: Any) -> None:
        key = (peer, message.TYPE, tuple(sorted((i.id, i.attempt) for i in message.items)))
        if key in self._parked:
            return  # a resend of a message still waiting for its blobs: that one goes when they are there
        self._parked.add(key)
        self.parked_total += 1
        refs = self._blobs_of(message)
        self.actor.spawn(self._send_later(key, peer, message, refs), name=f"transfer:payload->{peer}")

    async def _send_later(self, key: Any, peer: str, message: Any, refs: list[BlobRef]) -> None:
        from ..transfer.protocol import AckItem, Handoff, HandoffAck

        a = self.actor
        try:
            await a.node.blobs.ensure(peer, refs)
        except Exception as e:
            self._parked.discard(key)
            a.log.warning("payload not delivered; message held back", peer=peer, type=message.TYPE,
                          jobs=len(message.items), error=str(e))
            if isinstance(message, Handoff) and not a.stopping:
                # as if the target had refused: the jobs come home (and may run here or elsewhere)
                ack = HandoffAck(tuple(AckItem(s.id, s.attempt, False, f"payload not delivered: {e}")
                                       for s in message.items))
                await a._exec(a.protocol.origin.receive(peer, ack))
            return  # a result: the target's outbox keeps it and its resend timer tries again
        self._parked.discard(key)
        link = a._links.get(peer)
        if link is None or a.stopping:
            return  # the peer left meanwhile: the protocol resends or re-assigns
        link.put(message)

    def outputs_here(self, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """The results whose output payload is all in this node's store; the others are not
        committed now: their outputs are fetched from the target and they come back then."""
        a = self.actor
        store = a.node.blobs.store
        kept: list[tuple[str, Any]] = []
        for peer, r in items:
            refs = _refs(r.output_payload)
            missing = [ref for ref in refs if not store.has(ref.id)]
            if not missing:
                kept.append((peer, r))
                continue
            a.protocol.origin.result_commit_failed((r.id, r.attempt), "output payload not here yet")
            if (r.id, r.attempt) not in self._fetching:
                self._fetching.add((r.id, r.attempt))
                a.spawn(self._fetch_then_commit(peer, r, missing), name=f"transfer:outputs<-{peer}")
        return kept

    async def _fetch_then_commit(self, peer: str, r: Any, missing: list[BlobRef]) -> None:
        a = self.actor
        try:
            await a.node.blobs.fetch(peer, missing)
        except Exception as e:
            a.log.warning("output payload not fetched; waiting for the target's resend", job_id=r.id, peer=peer,
                          error=str(e))
            return
        finally:
            self._fetching.discard((r.id, r.attempt))
        a.tell(("result_again", peer, r))
