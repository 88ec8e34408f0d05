"""The remote-settings RPC: a node asks another to change its offloading settings for a topic.

This is not part of the transfer protocol (no job moves, no state machine, no fencing): it is
one request and its reply over the node's ROUTER and a short-lived DEALER. It lives beside
the transfer actor because that actor owns the node's links to its peers and registers the
handler when it starts; ``TransferActor.forward_settings`` (what ``Node.set_offloading``
calls for another node) delegates here.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import wire
from ..errors import Conflict, NotFound, ValidationError

SETTINGS_REQUEST = "offload_set"
SETTINGS_REPLY = "offload_set_ack"


class RemoteSettings:
    """Both ends of ``offload_set``: the handler a node answers with, and the call that asks a peer.
    ``host`` is the transfer actor's node (``name``, ``topology``, ``set_offloading``);
    ``transport()`` gives the node's transport, or None before discovery runs."""

    def __init__(self, host: Any, transport: Callable[[], Any]) -> None:
        self.host = host
        self.transport = transport

    def register(self, endpoint: Any) -> None:
        """Answer ``offload_set`` on the node's ROUTER ``endpoint``."""
        endpoint.register(SETTINGS_REQUEST, self.on_request)
        wire.register_type(SETTINGS_REPLY)

    async def on_request(self, identity: bytes, msg: wire.Message) -> tuple[str, dict[str, Any]]:
        body = msg.body
        topic, mode = body.get("topic"), body.get("mode")
        if not isinstance(topic, str) or not isinstance(mode, str):
            raise ValidationError("offload_set needs topic and mode")
        result = await self.host.set_offloading(self.host.name, topic, mode)
        return SETTINGS_REPLY, {"result": result}

    async def forward(self, node_name: str, topic: str, mode: str, timeout: float = 5.0) -> dict[str, Any]:
        """Ask node ``node_name`` to set ``topic``'s offloading ``mode``; its answer."""
        from ..transport import Dealer, PeerUnreachable, RequestTimeout

        inst = self.host.topology.instance(node_name)
        if inst is None or not inst.endpoint:
            raise NotFound(f"node {node_name} is not in the topology")
        transport = self.transport()
        if transport is None:
            raise Conflict("transfer is not running")
        dealer = Dealer(transport, inst.endpoint)
        try:
            reply = await dealer.request(SETTINGS_REQUEST, {"from": self.host.name, "topic": topic, "mode": mode},
                                         timeout)
        except (PeerUnreachable, RequestTimeout) as e:
            raise Conflict(f"node {node_name} did not answer: {e}") from None
        finally:
            dealer.close()
        if reply.type == "error":
            raise ValidationError(str(reply.body.get("error")))
        result = reply.body.get("result")
        return result if isinstance(result, dict) else {"node": node_name, "topic": topic, "mode": mode}


__all__ = ["RemoteSettings", "SETTINGS_REPLY", "SETTINGS_REQUEST"]
