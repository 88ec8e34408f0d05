"""Day one (issue 13): every start-up mistake is one line on stderr with the fix, exit code 2,
before anything starts (no node left running, no data directory made)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, free_port, free_port_pair

from jobmesh.config import ConfigError, NodeConfig, check_endpoint, normalize_http


def jobmesh(*args: str, cwd: Path, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "jobmesh", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr holding every fragment."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("flags,fragments", [
    (["--bind", "tcp://127.0.0.1"], ["has no port", "tcp://127.0.0.1:5701"]),
    (["--bind", "tcp://127.0.0.1:99999"], ["out of range", "1-65535"]),
    (["--bind", "tcp://127.0.0.1:65535"], ["heartbeats take the next port"]),
    (["--bind", "127.0.0.1:6000"], ["needs the scheme", "tcp://127.0.0.1:6000"]),
    (["--seed", "127.0.0.1:5701"], ["--seed", "write tcp://127.0.0.1:5701"]),
    (["--http", "localhost"], ["--http", "HOST:PORT"]),
    (["--http", "127.0.0.1:70000"], ["out of range"]),
    (["--bind", "auto", "--consumers", "my_consumers.py"], ["not a file", "--consumers my_consumers"]),
])
def test_bad_flags_are_one_line_with_the_fix(tmp_path: Path, flags: list[str], fragments: list[str]) -> None:
    (tmp_path / "my_consumers.py").write_text("import jobmesh\n")
    r = jobmesh("node", "--data", "d", "--http", "off", *flags, cwd=tmp_path)
    one_line_error(r, *fragments)
    assert not (tmp_path / "d").exists()  # nothing started


def test_unknown_config_key_suggests_the_name(tmp_path: Path) -> None:
    (tmp_path / "n.toml").write_text('[node]\nnmae = "a"\n')
    one_line_error(jobmesh("node", "--config", "n.toml", cwd=tmp_path), "unknown field 'nmae'", "did you mean 'name'?")


def test_port_in_use_names_the_heartbeat_port(tmp_path: Path) -> None:
    port = free_port_pair()
    with socket.socket() as s:  # someone holds the port after --bind's: the heartbeat port
        s.bind(("127.0.0.1", port + 1))
        s.listen(1)
        r = jobmesh("node", "--data", "d", "--bind", f"tcp://127.0.0.1:{port}", "--http", "off", cwd=tmp_path)
        one_line_error(r, f"port {port + 1} is in use", "also takes the next port", "--bind auto")
        http = s.getsockname()[1]
        r = jobmesh("node", "--data", "d", "--bind", "auto", "--http", str(http), cwd=tmp_path)
        one_line_error(r, f"port {http} is in use", "--http")


def test_the_default_ports_are_taken_during_the_suite(tmp_path: Path) -> None:
    """conftest holds 5701/5702/8471 (no test may use them); a node on the defaults says so in one line."""
    r = jobmesh("node", "--data", "d", cwd=tmp_path)
    one_line_error(r, "is in use", "--bind auto")


@pytest.mark.parametrize("source,fragments", [
    ("import jobmesh\nimport requestz\n", ["my_consumers.py line 2", "No module named 'requestz'", "pip install requestz"]),
    ("import jobmesh\n\n@jobmesh.consumer('a/b')\nasync def f():\n    pass\n",
     ["my_consumers.py line 3", "cannot take a job", "async def f(job)"]),
    ("def f(:\n", ["my_consumers.py line 1", "SyntaxError"]),
    ("import jobmesh\n\n@jobmesh.consumer('a/b')\nasync def f(job):\n    pass\n\n"
     "@jobmesh.consumer('a/b')\nasync def g(job):\n    pass\n", ["'a/b' has two consumers", "f and g"]),
])
def test_consumer_module_errors_name_file_and_line(tmp_path: Path, source: str, fragments: list[str]) -> None:
    (tmp_path / "my_consumers.py").write_text(source)
    r = jobmesh("node", "--data", "d", "--bind", "auto", "--http", "off", "--consumers", "my_consumers", cwd=tmp_path)
    one_line_error(r, *fragments)


def test_missing_module_suggests_a_close_name(tmp_path: Path) -> None:
    (tmp_path / "my_consumers.py").write_text("import jobmesh\n")
    r = jobmesh("node", "--data", "d", "--bind", "auto", "--http", "off", "--consumers", "my_consumerz", cwd=tmp_path)
    one_line_error(r, "no module named 'my_consumerz'", "did you mean 'my_consumers'?")


def test_auto_ports_are_printed_and_a_module_without_consumers_is_warned(tmp_path: Path) -> None:
    """One real start: --bind auto / --http auto print the picked ports at once; an empty module
    is a warning; SIGTERM stops it cleanly."""
    (tmp_path / "empty.py").write_text("X = 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-m", "jobmesh", "node", "--name", "a", "--data", "d", "--bind", "auto",
                             "--http", "auto", "--consumers", "empty", "--log-format", "json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("jobmesh node a: bind tcp://127.0.0.1:") and "http 127.0.0.1:" in line, line
        url = line.rsplit("JOBMESH_URL=", 1)[1].rstrip(")\n")
        from helpers import wait_until, http_json

        wait_until(lambda: _healthy(url), timeout=20, what="the node's health")
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "declares no consumers" in err and "@jobmesh.consumer" in err


def _healthy(url: str) -> bool:
    from helpers import http_json

    try:
        return http_json("GET", url + "/api/v1/health", timeout=1.0)[0] == 200
    except OSError:
        return False


# -- the pure checks behind them ------------------------------------------------------------------


def test_endpoint_checks() -> None:
    assert check_endpoint("tcp://[::1]:5701", "bind") == "tcp://[::1]:5701"
    assert check_endpoint("tcp://myhost", "advertise", port_optional=True) == "tcp://myhost"
    with pytest.raises(ConfigError, match="port must be a number"):
        check_endpoint("tcp://h:x", "bind")
    with pytest.raises(ConfigError, match="only tcp://"):
        check_endpoint("udp://h:1", "bind")
    assert normalize_http("8472") == "127.0.0.1:8472"
    assert normalize_http(":8472") == "127.0.0.1:8472"
    assert normalize_http("http://localhost:8000/") == "localhost:8000"
    assert normalize_http("127.0.0.1:0") == "127.0.0.1:0"
    assert NodeConfig(http="9000").validate().http == "127.0.0.1:9000"
    with pytest.raises(ConfigError, match="did you mean 'node'"):
        NodeConfig.from_dict({"nodes": {}})
    with pytest.raises(ConfigError, match="did you mean 'retries'"):
        NodeConfig.from_dict({"queue": [{"name": "q", "topics": ["a"], "retires": 3}]})


def test_advertise_endpoints() -> None:
    c = NodeConfig(bind="tcp://0.0.0.0:6001").validate()
    assert (c.advertise_endpoint, c.advertise_pub_endpoint) == ("tcp://0.0.0.0:6001", "tcp://0.0.0.0:6002")
    c = NodeConfig(bind="tcp://0.0.0.0:6001", advertise="tcp://node-a").validate()
    assert (c.advertise_endpoint, c.advertise_pub_endpoint) == ("tcp://node-a:6001", "tcp://node-a:6002")
    c = NodeConfig(bind="tcp://0.0.0.0:6001", advertise="tcp://nat:7001", advertise_pub="tcp://nat:7101").validate()
    assert (c.advertise_endpoint, c.advertise_pub_endpoint) == ("tcp://nat:7001", "tcp://nat:7101")
