"""The transport over real ZeroMQ sockets on loopback: endpoint routing, request/reply,
refusals, ROUTER_MANDATORY, message size, CURVE keys and handshakes."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import zmq
import zmq.auth

from jobmesh import wire
from jobmesh.config import ConfigError, SecurityConfig
from jobmesh.errors import ValidationError
from jobmesh.transport import (
    BindError,
    Dealer,
    Endpoint,
    PeerUnreachable,
    RequestTimeout,
    Transport,
    generate_keypair,
    load_curve_keys,
)


def free_endpoint() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[tuple[Transport, Endpoint, str]]:
    t = Transport("srv")
    ep = Endpoint("srv")
    address = free_endpoint()
    ep.bind(t, address)
    task = asyncio.get_running_loop().create_task(ep.run())
    try:
        yield t, ep, address
    finally:
        task.cancel()
        ep.close()
        t.close()


async def test_request_reply_through_a_registered_handler(server: Any) -> None:
    t, ep, address = server
    seen: list[str] = []

    async def echo(identity: bytes, msg: wire.Message) -> tuple[str, dict[str, Any]]:
        return "test/echo_reply", {"got": msg.body["x"]}

    wire.register_type("test/echo_reply")
    ep.register("test/echo", echo)
    ep.on_activity(lambda sender, inc: seen.append(sender))
    client = Transport("cli")
    try:
        with Dealer(client, address) as d:
            reply = await d.request("test/echo", {"x": 41, "from": "cli"}, timeout=2.0)
            assert reply.type == "test/echo_reply" and reply.body["got"] == 41
            assert seen == ["cli"]  # any message is proof of life
    finally:
        client.close()


async def test_handler_errors_become_error_replies_and_the_endpoint_goes_on(server: Any) -> None:
    t, ep, address = server

    def refuse(identity: bytes, msg: wire.Message) -> None:
        raise ValidationError("not like this")

    def crash(identity: bytes, msg: wire.Message) -> None:
        raise RuntimeError("boom")

    ep.register("test/refuse", refuse)
    ep.register("test/crash", crash)
    client = Transport("cli")
    try:
        with Dealer(client, address) as d:
            r = await d.request("test/refuse", {}, timeout=2.0)
            assert r.type == "error" and r.body["error"] == "not like this"
            r = await d.request("test/crash", {}, timeout=2.0)
            assert r.type == "error" and "RuntimeError" in r.body["error"]
            # garbage, other versions and unknown types are dropped, nothing answers them
            await d._sock.send([b"jm9", b"join", b"\x80"], 1.0)
            await d._sock.send([b"junk"], 1.0)
            await d._sock.send([wire.VERSION_FRAME, b"nobody-handles-this", b"\x80"], 1.0)
            await d._sock.send(wire.encode("join_reply", {}), 1.0)  # known type, no handler
            with pytest.raises(RequestTimeout):
                await d.recv(timeout=0.3)
            r = await d.request("test/refuse", {}, timeout=2.0)  # still serving
            assert r.type == "error"
        assert ep.dropped == 4
    finally:
        client.close()


async def test_router_mandatory_makes_an_unknown_peer_an_error(server: Any) -> None:
    t, ep, address = server
    with pytest.raises(PeerUnreachable):
        await ep.send(b"nobody", "join", {})


async def test_router_can_push_to_a_connected_dealer_by_identity(server: Any) -> None:
    t, ep, address = server
    got: list[bytes] = []

    def hello(identity: bytes, msg: wire.Message) -> None:
        got.append(identity)

    ep.register("test/hello", hello)
    client = Transport("cli")
    try:
        with Dealer(client, address, identity=b"peer-1") as d:
            await d.send("test/hello", {})
            for _ in range(50):
                if got:
                    break
                await asyncio.sleep(0.02)
            assert got == [b"peer-1"]
            await ep.send(b"peer-1", "join_reply", {"members": []})
            msg = await d.recv(timeout=2.0)
            assert msg.type == "join_reply"
    finally:
        client.close()


async def test_oversize_messages_never_reach_the_handler() -> None:
    t = Transport("srv", max_message_size=10_000)
    ep = Endpoint("srv")
    address = free_endpoint()
    ep.bind(t, address)
    task = asyncio.get_running_loop().create_task(ep.run())
    calls: list[int] = []
    ep.register("test/size", lambda i, m: calls.append(len(m.body["pad"])) or ("error", {"error": "ok"}))
    client = Transport("cli")
    try:
        with Dealer(client, address) as d:
            await d.send("test/size", {"pad": "x" * 50_000})
            with pytest.raises(RequestTimeout):
                await d.recv(timeout=0.5)
        with Dealer(client, address) as d:  # the endpoint still serves (a new connection)
            r = await d.request("test/size", {"pad": "y"}, timeout=2.0)
            assert r.body["error"] == "ok"
        assert calls == [1]
    finally:
        task.cancel()
        ep.close()
        t.close()
        client.close()


async def test_binding_a_busy_endpoint_says_which_and_why() -> None:
    t = Transport("a")
    ep = Endpoint("a")
    address = free_endpoint()
    ep.bind(t, address)
    other = Endpoint("b")
    try:
        with pytest.raises(BindError, match="cannot bind the transfer endpoint .* in use"):
            other.bind(t, address)
    finally:
        ep.close()
        t.close()


async def test_request_to_nobody_times_out() -> None:
    client = Transport("cli")
    try:
        with Dealer(client, free_endpoint()) as d:
            with pytest.raises(RequestTimeout):
                await d.request("join", {}, timeout=0.2)
    finally:
        client.close()


# -- CURVE --------------------------------------------------------------------------------


def test_no_keys_means_no_curve_and_partial_keys_are_config_errors(tmp_path: Path) -> None:
    assert load_curve_keys(SecurityConfig()) is None
    pub, sec = generate_keypair()
    with pytest.raises(ConfigError, match="curve_server_public_key and curve_server_secret_key"):
        load_curve_keys(SecurityConfig(curve_server_public_key=pub))
    with pytest.raises(ConfigError, match="does not match"):
        load_curve_keys(SecurityConfig(curve_server_public_key=pub, curve_server_secret_key=generate_keypair()[1]))
    with pytest.raises(ConfigError, match="neither a 40-character"):
        load_curve_keys(SecurityConfig(curve_server_public_key="short", curve_server_secret_key=sec))
    with pytest.raises(ConfigError, match="needs curve_secret_key"):
        load_curve_keys(SecurityConfig(curve_server_public_key=pub, curve_server_secret_key=sec,
                                       curve_public_key=pub))
    with pytest.raises(ConfigError, match="curve_keys_dir"):
        load_curve_keys(SecurityConfig(curve_keys_dir=str(tmp_path)))


def test_keys_from_pyzmq_certificate_files(tmp_path: Path) -> None:
    server_pub, server_sec = zmq.auth.create_certificates(str(tmp_path), "server")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    client_pub, client_sec = zmq.auth.create_certificates(str(allowed), "client")
    keys = load_curve_keys(
        SecurityConfig(curve_server_public_key=server_pub, curve_server_secret_key=server_sec,
                       curve_secret_key=client_sec, curve_keys_dir=str(allowed))
    )
    assert keys is not None
    assert len(keys.server_public) == 40 and len(keys.client_public) == 40
    assert keys.client_public != keys.server_public
    assert keys.client_public in keys.allowed_clients


async def _curve_round_trip(server_keys: Any, client_keys: Any) -> bool:
    srv = Transport("srv", server_keys)
    ep = Endpoint("srv")
    address = free_endpoint()
    ep.bind(srv, address)
    task = asyncio.get_running_loop().create_task(ep.run())
    ep.register("test/ping", lambda i, m: ("error", {"error": "pong"}))
    cli = Transport("cli", client_keys)
    try:
        with Dealer(cli, address) as d:
            try:
                r = await d.request("test/ping", {}, timeout=0.7)
                return r.body["error"] == "pong"
            except RequestTimeout:
                return False
    finally:
        task.cancel()
        ep.close()
        srv.close()
        cli.close()


async def test_curve_lets_the_cluster_in_and_keeps_others_out() -> None:
    pub, sec = generate_keypair()
    cluster = load_curve_keys(SecurityConfig(curve_server_public_key=pub, curve_server_secret_key=sec))
    assert await _curve_round_trip(cluster, cluster)
    assert not await _curve_round_trip(cluster, None)  # a keyless client
    opub, osec = generate_keypair()
    other = load_curve_keys(SecurityConfig(curve_server_public_key=opub, curve_server_secret_key=osec))
    assert not await _curve_round_trip(cluster, other)  # another cluster's keys
    # knowing the server's public key is not enough: the client key must be allowed
    cpub, csec = generate_keypair()
    intruder = load_curve_keys(SecurityConfig(curve_server_public_key=pub, curve_server_secret_key=sec,
                                              curve_public_key=cpub, curve_secret_key=csec))
    assert intruder is not None
    assert not await _curve_round_trip(cluster, intruder)
