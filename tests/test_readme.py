"""Every snippet of README.md runs as written (issue 13: the first example lacked an import).

Each fenced block is matched to a runner below; a block no runner claims fails the suite, so a
new snippet comes with its test. Ports are the one thing changed: the README shows the default
ports, and tests never use them (another node may hold them), so those numbers are replaced by
free ones and client commands get ``JOBMESH_URL``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest

import jobmesh
from helpers import REPO, free_port, free_port_pair, http_json, wait_until
from jobmesh.config import DiscoveryConfig, NodeConfig, OffloadingConfig, QueueConfig, SecurityConfig, load_config

README = REPO / "README.md"


@dataclasses.dataclass
class Block:
    lang: str
    text: str
    line: int  # where it starts in README.md

    @property
    def first(self) -> str:
        return self.text.strip().splitlines()[0] if self.text.strip() else ""


def blocks() -> list[Block]:
    out, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append(Block(m.group(1), "\n".join(lines[i + 1:j]) + "\n", i + 1))
            i = j
        i += 1
    return out


def find(pred: Callable[[Block], bool]) -> Block:
    found = [b for b in blocks() if pred(b)]
    assert len(found) == 1, f"expected one README block, found {len(found)}"
    return found[0]


CONSUMERS = lambda b: b.lang == "python" and b.first == "# my_consumers.py"  # noqa: E731
RUN_NODE = lambda b: b.lang == "bash" and b.first.startswith("jobmesh node ")  # noqa: E731
EMBED = lambda b: b.lang == "python" and "async def main" in b.text and "jobmesh.Node(" in b.text  # noqa: E731
SCHEDULES = lambda b: b.lang == "python" and b.first.startswith("await node.schedules.add")  # noqa: E731
WORKFLOW = lambda b: b.lang == "python" and "from jobmesh.workflow import" in b.text  # noqa: E731
CONFIG = lambda b: b.lang == "toml" and b.first == "[node]"  # noqa: E731
SCRIPTS = lambda b: b.lang == "bash" and b.first.startswith("./scripts/demo")  # noqa: E731
TASKS = lambda b: b.lang == "python" and b.first == "# tasks.py"  # noqa: E731
TASK_RUN = lambda b: b.lang == "bash" and b.first.startswith("# terminal 1: a node that runs the tasks")  # noqa: E731
SEND = lambda b: b.lang == "python" and b.first == "# send.py"  # noqa: E731
WEB = lambda b: b.lang == "python" and b.first.startswith("# web.py")  # noqa: E731
VIEWS = lambda b: b.lang == "python" and b.first.startswith("# views.py")  # noqa: E731
TASK_TESTS = lambda b: b.lang == "python" and b.first.startswith("# test_tasks.py")  # noqa: E731
PAYLOAD = lambda b: b.lang == "python" and b.first == "# payload.py"  # noqa: E731
RUNNERS = [CONSUMERS, RUN_NODE, EMBED, SCHEDULES, WORKFLOW, CONFIG, SCRIPTS, TASKS, TASK_RUN, SEND, WEB, VIEWS,
           TASK_TESTS, PAYLOAD]


def test_every_readme_snippet_has_a_runner() -> None:
    for b in blocks():
        assert sum(1 for r in RUNNERS if r(b)) == 1, f"README.md line {b.line}: no test runs this {b.lang} block"


def env_for(cwd: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO)]), **extra}


def test_writing_consumers_and_running_a_node(tmp_path: Path) -> None:
    """The consumers module, then the three shell lines: node, submit --wait, jobs."""
    (tmp_path / "my_consumers.py").write_text(find(CONSUMERS).text)
    node_cmd, *client_cmds = [line for line in find(RUN_NODE).text.splitlines() if line.strip()]
    http = free_port()
    argv = shlex.split(node_cmd)[1:] + ["--bind", f"tcp://127.0.0.1:{free_port_pair()}", "--http", str(http)]
    env = env_for(tmp_path, JOBMESH_URL=f"http://127.0.0.1:{http}")
    with open(tmp_path / "node.log", "wb") as log:
        node = subprocess.Popen([sys.executable, "-m", "jobmesh", *argv], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _up(http) or node.poll() is not None, timeout=30, what="the README's node")
        assert node.poll() is None, (tmp_path / "node.log").read_text()
        outs = []
        for cmd in client_cmds:
            r = subprocess.run([sys.executable, "-m", "jobmesh", *shlex.split(cmd)[1:]], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, (cmd, r.stdout, r.stderr)
            outs.append(r.stdout)
        job_id = outs[0].split()[0]
        assert outs[0].split()[1] == "SUCCEEDED" and job_id in outs[1]
    finally:
        node.terminate()
        assert node.wait(30) == 0, (tmp_path / "node.log").read_text()
    log = (tmp_path / "node.log").read_text()
    assert "consumers=4" in log and "job failed" not in log and "[error" not in log, log


def _up(port: int) -> bool:
    try:
        return http_json("GET", f"http://127.0.0.1:{port}/api/v1/health", timeout=1)[0] == 200
    except OSError:
        return False


def test_embedding_a_node(tmp_path: Path) -> None:
    (tmp_path / "my_consumers.py").write_text(find(CONSUMERS).text)
    text = find(EMBED).text.replace("5701", str(free_port_pair())).replace("8471", str(free_port()))
    (tmp_path / "embed.py").write_text(text)
    r = subprocess.run([sys.executable, "embed.py"], cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "SUCCEEDED\n"  # what the comment says; and nothing else on stdout


def test_job_payload(tmp_path: Path) -> None:
    text = find(PAYLOAD).text.replace("5711", str(free_port_pair())).replace("8472", str(free_port()))
    (tmp_path / "payload.py").write_text(text)
    (tmp_path / "cat.png").write_bytes(b"\x89PNG fake")
    r = subprocess.run([sys.executable, "payload.py"], cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "b'\\x89PNG '\nb'bytes'\n"


async def test_scheduled_jobs(tmp_path: Path) -> None:
    body = textwrap.indent(find(SCHEDULES).text, "    ")
    scope: dict[str, Any] = {}
    exec(f"async def snippet(node):\n{body}", scope)
    async with jobmesh.Node(name="s", data_dir=tmp_path / "s") as node:
        await scope["snippet"](node)
        topics = sorted(s["topic"] for s in await node.schedules.list())
    assert topics == ["cache/warm", "cleanup/tmp", "mail/digest", "mail/reminder", "reports/daily"]


async def test_workflows(tmp_path: Path) -> None:
    body = textwrap.indent(find(WORKFLOW).text, "    ")
    scope: dict[str, Any] = {}
    exec(f"async def snippet(node):\n{body}\n    return done", scope)

    @jobmesh.consumer("dam/asset/**")
    async def step(job: jobmesh.Job) -> None:
        return None

    async with jobmesh.Node(name="w", data_dir=tmp_path / "w") as node:
        node.add_consumer(step)
        done = await scope["snippet"](node)
    assert getattr(done.state, "value", done.state) == "COMPLETED"


def test_configuration_lists_the_defaults(tmp_path: Path) -> None:
    """The TOML block loads, and every value in it is the default it claims to be."""
    text = find(CONFIG).text.replace('"<hostname>"', '"host"')
    (tmp_path / "n.toml").write_text(text)
    cfg = load_config(tmp_path / "n.toml")
    default = NodeConfig(name="host")
    for f in dataclasses.fields(NodeConfig):
        if f.name != "queues":
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name
    assert cfg.queues == [QueueConfig(name="main")]
    assert (cfg.discovery, cfg.offloading, cfg.security) == (DiscoveryConfig(), OffloadingConfig(), SecurityConfig())


def test_the_two_commands_exist() -> None:
    """``./scripts/demo`` and ``./scripts/test``: the demo is run by test_node_runner, the suite by itself."""
    for line in find(SCRIPTS).text.splitlines():
        script = REPO / line.split()[0]
        assert script.is_file() and os.access(script, os.X_OK), script


# -- the first task, its web app and its tests (issue 12) --------------------------------------


@pytest.fixture(scope="module")
def task_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The README's ``jobmesh node ... --consumers tasks`` (free ports), from a folder with tasks.py."""
    tmp = tmp_path_factory.mktemp("first-task")
    (tmp / "tasks.py").write_text(find(TASKS).text)
    node_line = next(line for line in find(TASK_RUN).text.splitlines() if line.startswith("jobmesh node "))
    http = free_port()
    argv = shlex.split(node_line)[1:] + ["--bind", f"tcp://127.0.0.1:{free_port_pair()}", "--http", str(http)]
    env = env_for(tmp)
    log = open(tmp / "node.log", "wb")
    node = subprocess.Popen([sys.executable, "-m", "jobmesh", *argv], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _up(http) or node.poll() is not None, timeout=30, what="the README's task node")
        assert node.poll() is None, (tmp / "node.log").read_text()
        yield tmp, f"http://127.0.0.1:{http}"
    finally:
        node.terminate()
        node.wait(30)
        log.close()


def test_the_first_task_is_sent_and_its_result_read(task_node: Any) -> None:
    tmp, url = task_node
    send = find(SEND).text
    (tmp / "send.py").write_text(send)
    command = next(line for line in find(TASK_RUN).text.splitlines() if "python send.py" in line)
    assert command.startswith("JOBMESH_URL=http://127.0.0.1:8471 ")
    r = subprocess.run([sys.executable, "send.py"], cwd=tmp, env=env_for(tmp, JOBMESH_URL=url), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    promised = re.search(r"print\(await handle\.result\(timeout=30\)\)\s+# (.*)$", send, re.M).group(1)
    assert r.stdout == promised + "\n"  # what the comment says


WEB_STUBS = {
    # the smallest FastAPI and Django the snippets need: decorators that keep the handlers
    "fastapi/__init__.py": "class FastAPI:\n    def __init__(self, lifespan=None):\n        self.lifespan = lifespan\n"
                           "        self.routes = {}\n    def post(self, path):\n"
                           "        def keep(fn):\n            self.routes[path] = fn\n            return fn\n"
                           "        return keep\n",
    "django/__init__.py": "",
    "django/http.py": "def JsonResponse(data):\n    return data\n",
}

WEB_DRIVER = """
import asyncio, json
import web, views

class Request:
    POST = {"email": "grace@example.org"}

async def main():
    async with web.app.lifespan(web.app):
        first = await web.app.routes["/signup"](email="ada@example.org")
        job = await web.client.get(first["job"])
        result = await web.client.handle(first["job"]).result(timeout=30)
    assert web.client._session is None  # the lifespan closed it
    blocking = await asyncio.to_thread(views.signup, Request())
    later = views.jobs.get(blocking["job"])
    views.jobs.stop(later.id)
    print(json.dumps({"key": job.key, "result": result,
                      "later": later.state.value, "not_before": later.not_before > job.created}))
"""


def test_the_web_app_snippets(task_node: Any) -> None:
    tmp, url = task_node
    (tmp / "web.py").write_text(find(WEB).text)
    (tmp / "views.py").write_text(find(VIEWS).text)
    for name, text in WEB_STUBS.items():
        (tmp / name).parent.mkdir(exist_ok=True)
        (tmp / name).write_text(text)
    (tmp / "drive.py").write_text(WEB_DRIVER + "\nasyncio.run(main())\n")
    r = subprocess.run([sys.executable, "drive.py"], cwd=tmp, env=env_for(tmp, JOBMESH_URL=url), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    assert out == {"key": "welcome:ada@example.org",
                   "result": {"message_id": "<welcome@example.org>"}, "later": "QUEUED", "not_before": True}


def test_the_testing_snippet_passes(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(find(TASKS).text)
    text = find(TASK_TESTS).text
    plugin = re.search(r"conftest\.py says: (pytest_plugins = \[.*\])", text).group(1)
    (tmp_path / "conftest.py").write_text(plugin + "\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    (tmp_path / "test_tasks.py").write_text(text)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tasks.py"],
                       cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout + r.stderr
