"""Free loopback ports for local meshes (the demo, examples, benchmarks and tests).

A node binds its transfer endpoint on a port P and, by default, its heartbeat PUB on
P + 1 (DESIGN §5.1), so a local mesh needs pairs of free ports.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_pair(host: str = "127.0.0.1", tries: int = 100) -> int:
    """A port P with P and P + 1 both free: a node's ``--bind`` and its heartbeat endpoint."""
    for _ in range(tries):
        with socket.socket() as a:
            a.bind((host, 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")
