"""The transfer actor's restart: both protocol sides rebuilt from what the store kept.

After a restart the protocol starts empty; what this node had handed off, the copies it held
for other origins and the results still waiting to go home are on disk. Reading them back is
one pass over the store that feeds the protocol and gives the actor its instructions to
carry out; it runs once per process, before any message is handled, so it is kept apart from
the actor's message handling (``actor.py``).
"""

from __future__ import annotations

from typing import Any

from ..blobs.transfer import with_payload
from ..store.transfer import TransferStore, read_outbox_body
from .protocol import JobSpec, ResultItem, TransferProtocol


def stored_results(reader: Any, log: Any) -> list[tuple[str, ResultItem]]:
    """(origin, result) of every copy's result the store holds for its origin (``TransferStore.outbox``);
    an entry that does not read back is logged and left out."""
    out: list[tuple[str, ResultItem]] = []
    for job_id, origin, _, body in TransferStore.outbox(reader):
        try:
            out.append((origin, ResultItem.from_wire(read_outbox_body(body))))
        except Exception as e:
            log.error("unreadable outbox entry dropped", job_id=job_id, error=repr(e))
    return out


def restore_protocol(protocol: TransferProtocol, store: Any, payload_store: Any | None,
                     log: Any) -> tuple[list[Any], set[str], dict[str, str]]:
    """Rebuild both sides from ``store``: jobs handed off, copies held, the outbox. ``payload_store``
    (the blob store, or None without payload) names the handed-off jobs' inputs again. Returns
    the protocol's instructions, the peers jobs were handed to, and the held copies' topics."""
    by_peer: dict[str, list[JobSpec]] = {}
    jobs = store.handed_off()
    specs = [JobSpec.of(job) for job in jobs]
    if specs and payload_store is not None:
        specs = with_payload(payload_store, specs)
    for job, spec in zip(jobs, specs):
        by_peer.setdefault(job.target or "", []).append(spec)
    out: list[Any] = []
    restored_peers = set(by_peer)
    for peer, specs in sorted(by_peer.items()):
        # not "accepted": resending the handoff (idempotent) tells us whether the peer still has them
        out += protocol.origin.restore(peer, specs, accepted=False)
    copies: dict[str, list[JobSpec]] = {}
    topics: dict[str, str] = {}
    for job_id, origin, attempt, topic, props in TransferStore.copies(store.reader, protocol.node):
        copies.setdefault(origin, []).append(JobSpec(job_id, attempt, topic, props, origin=origin))
        topics[job_id] = topic
    outbox: dict[str, list[ResultItem]] = {}
    for origin, item in stored_results(store.reader, log):
        outbox.setdefault(origin, []).append(item)
    for origin in sorted(set(copies) | set(outbox)):
        out += protocol.target.restore(origin, copies.get(origin, []), outbox.get(origin, []))
    # until discovery says they are up, every peer is down (nothing is sent to an unknown endpoint)
    for peer in sorted(set(by_peer) | set(copies) | set(outbox)):
        protocol.target.peer_down(peer)
    n_out = sum(len(v) for v in by_peer.values())
    n_copies = sum(len(v) for v in copies.values())
    n_outbox = sum(len(v) for v in outbox.values())
    if n_out or n_copies or n_outbox:
        log.info("transfer state restored", handed_off=n_out, copies=n_copies, outbox=n_outbox)
    return out, restored_peers, topics


__all__ = ["restore_protocol", "stored_results"]
