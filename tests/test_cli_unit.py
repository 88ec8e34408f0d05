"""CLI pieces that need no node: argument rules, rendering, exit codes for usage errors."""

from __future__ import annotations

import argparse
import socket

import pytest

import jobmesh
from jobmesh import cli


def test_parse_property_json_or_string() -> None:
    assert cli.parse_property("n=3") == ("n", 3)
    assert cli.parse_property("ok=true") == ("ok", True)
    assert cli.parse_property("xs=[1,2]") == ("xs", [1, 2])
    assert cli.parse_property('o={"a":1}') == ("o", {"a": 1})
    assert cli.parse_property("path=/a/b.png") == ("path", "/a/b.png")
    assert cli.parse_property("eq=a=b") == ("eq", "a=b")
    assert cli.parse_property("empty=") == ("empty", "")
    for bad in ("novalue", "=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.parse_property(bad)


def test_table_aligns_and_marks_missing() -> None:
    text = cli.table(["A", "LONGER"], [["x", None], ["yyyy", True], ["z", ["p", "q"]]])
    lines = text.splitlines()
    assert lines[0] == "A     LONGER"
    assert lines[1] == "x     -"
    assert lines[2] == "yyyy  yes"
    assert lines[3] == "z     p,q"


def test_render_job_shows_progress_log_and_result() -> None:
    job = {
        "id": "j1", "topic": "a/b", "state": "SUCCEEDED", "queue": "main", "origin": "n1", "target": "n1",
        "created": "2026-11-25T10:00:00.000Z", "started": None, "finished": None, "retry_count": 1,
        "max_retries": 10, "properties": {"k": 1},
        "progress": {"steps": 3, "step": 2, "eta": None, "log": ["step one"]}, "result_message": "fine",
    }
    text = cli.render_job(job)
    assert "state:       SUCCEEDED" in text
    assert "progress:    2/3" in text
    assert "message:     fine" in text
    assert "  step one" in text
    assert cli.render_job_line({"id": "j1", "deleted": True}) == "j1  deleted"


def test_bare_jobmesh_prints_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jobmesh") and "submit" in out and "node" in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jobmesh {jobmesh.__version__}"


def test_render_job_shows_the_new_fields() -> None:
    job = {"id": "j1", "topic": "a/b", "state": "SUCCEEDED", "progress": {}, "result": {"n": 1}, "key": "k",
           "timeout": 30.0, "priority": 2, "not_before": "2031-12-01T09:00:00.000Z"}
    text = cli.render_job(job)
    for line in ('result:      {"n": 1}', "key:         k", "timeout:     30 s", "priority:    2",
                 "not before:  2031-12-01T09:00:00.000Z"):
        assert line in text


def test_job_lines_of_a_file(tmp_path) -> None:
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"topic": "a/b"}\n\n# a comment\n{"topic": "a/c", "properties": {"x": 1}, "delay": 5}\n')
    assert cli.read_job_lines(str(f)) == [{"topic": "a/b"}, {"topic": "a/c", "properties": {"x": 1}, "delay": 5}]
    f.write_text('{"topic": "a/b"}\n{"topic": \n')
    with pytest.raises(cli.CliError, match="jobs.jsonl line 2: invalid JSON"):
        cli.read_job_lines(str(f))
    f.write_text('["a/b"]\n')
    with pytest.raises(cli.CliError, match="line 1: expected a JSON object with a topic"):
        cli.read_job_lines(str(f))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "a/b", "--delay", "1", "--at", "2031-01-01T00:00:00Z"]) == 2  # one or the other
    assert cli.main(["submit", "a/b", "--timeout", "soon"]) == 2
    assert cli.main(["submit"]) == 2  # missing topic
    assert cli.main(["submit", "a/b", "-p", "novalue"]) == 2
    assert cli.main(["jobs", "--limit", "0"]) == 2
    assert cli.main(["offload", "maybe", "a/b"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["--help"]) == 0
    err = capsys.readouterr().err
    assert "KEY=VALUE" in err


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_node_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert cli.main(["jobs", "--url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"jobmesh: cannot reach node at {url}")
    assert "\n" not in err


def test_env_url_is_the_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("JOBMESH_URL", url)
    assert cli.main(["stats"]) == 1
    assert url in capsys.readouterr().err


def test_queues_action_without_name_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert cli.main(["queues", "suspend", "--url", url]) == 2
    assert "needs a queue NAME" in capsys.readouterr().err


def test_node_with_bad_config_file_is_usage(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\ncapacity = 'lots'\n")
    assert cli.main(["node", "--config", str(bad)]) == 2
    assert "capacity" in capsys.readouterr().err
    assert cli.main(["node", "--config", str(tmp_path / "missing.toml")]) == 2


def test_url_without_scheme_and_invalid_urls(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.ApiClient("127.0.0.1:8471/").url == "http://127.0.0.1:8471"
    url = f"127.0.0.1:{_closed_port()}"
    assert cli.main(["stats", "--url", url]) == 1
    assert f"cannot reach node at http://{url}" in capsys.readouterr().err
    assert cli.main(["stats", "--url", "http://127.0.0.1:notaport"]) == 2
    assert "invalid node URL" in capsys.readouterr().err


def test_demo_is_dispatched_with_its_own_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys
    import types

    seen: list[list[str]] = []
    real_import = importlib.import_module
    if "jobmesh.demo" in sys.modules:
        monkeypatch.setattr(sys.modules["jobmesh.demo"], "main", lambda argv: seen.append(argv) or 0)
    else:
        fake = types.ModuleType("jobmesh.demo")
        fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
        monkeypatch.setattr(importlib, "import_module", lambda name: fake if name == "jobmesh.demo" else real_import(name))
    assert cli.main(["demo", "--seconds", "5", "--help"]) == 0
    assert seen == [["--seconds", "5", "--help"]]


def test_node_flags_override_the_config_file(tmp_path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\nname = "file"\ncapacity = 3\nhttp = "127.0.0.1:9000"\nseeds = ["tcp://x:1"]\n')
    parser = cli.build_parser()
    args = parser.parse_args(["node", "--config", str(cfg), "--name", "flag", "--seed", "tcp://a:1", "tcp://b:2",
                              "--capacity", "7", "--log-format", "json", "--data", str(tmp_path / "d")])
    c = cli.node_config(args)
    assert (c.name, c.capacity, c.log_format, c.http) == ("flag", 7, "json", "127.0.0.1:9000")
    assert c.seeds == ["tcp://a:1", "tcp://b:2"] and c.data == str(tmp_path / "d")
    assert cli.node_config(parser.parse_args(["node", "--http", "off"])).http is None
    args = parser.parse_args(["node", "--bind", "tcp://127.0.0.1:6000"])
    assert cli.node_config(args).pub_endpoint == "tcp://127.0.0.1:6001"
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\ndurability = 'sometimes'\n")
    with pytest.raises(cli.CliError) as e:
        cli.node_config(parser.parse_args(["node", "--config", str(bad)]))
    assert e.value.code == 2 and "durability" in str(e.value)
    assert cli.main(["node", "--log-level", "chatty"]) == 2


def test_workflow_show_prints_json_not_python_repr() -> None:
    from jobmesh.cli_workflow import render_instance

    text = render_instance({"id": "w1", "workflow": "dam", "state": "RUNNING", "steps": 2, "current_step": 0,
                            "created": "2026-01-02T03:04:05.000Z", "properties": {"path": "/a.png", "ok": True},
                            "data": {}})
    assert 'properties:  {"ok": true, "path": "/a.png"}' in text and "data:        -" in text
    assert "created:     2026-01-02 03:04:05Z" in text


def test_durations_are_rounded() -> None:
    assert cli.duration(0.9998130919998403) == "1.0 s" and cli.duration(75.2) == "1 min 15 s"
    assert cli._ms(0.4567) == "0.5 ms" and cli._ms(1999.87) == "2.0 s"
