"""jobmesh.testing: the jobmesh_node fixture, testing.node(), and a user's project that uses them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import jobmesh
from jobmesh.testing import jobmesh_node  # noqa: F401  # the fixture, as a user's conftest would have it

seen: list[str] = []


@jobmesh.task("th/greet")
def greet(name: str) -> str:
    seen.append(name)
    return f"hello {name}"


async def test_the_fixture_is_a_node_without_sockets_and_send_goes_to_it(jobmesh_node) -> None:  # noqa: F811
    assert jobmesh_node.running and jobmesh_node.http_url is None and jobmesh_node.discovery is None
    jobmesh_node.add_consumer(greet)
    h = await greet.send("ada")
    await jobmesh_node.jobs.join(timeout=5)
    assert "ada" in seen and (await h.job()).state is jobmesh.JobState.SUCCEEDED


async def test_testing_node_context_manager(tmp_path: Path) -> None:
    async with jobmesh.testing.node(tmp_path, consumers=[greet]) as node:
        await node.jobs.add("th/greet", {"name": "bob"})
        await node.jobs.join(timeout=5)
    assert not node.running and "bob" in seen


def test_a_users_project_takes_the_plugin(tmp_path: Path) -> None:
    """What the docs say to do, in a project of its own: conftest.py names the plugin."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["jobmesh.testing"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent('''
        import jobmesh

        @jobmesh.task("user/double")
        async def double(x: int) -> int:
            return 2 * x

        async def test_in_isolation():
            assert await double(21) == 42          # the function alone

        async def test_on_a_node(jobmesh_node):
            jobmesh_node.add_consumer(double)
            h = await double.send(4)
            await jobmesh_node.jobs.join(timeout=5)
            assert (await h.job()).state.value == "SUCCEEDED"
    '''))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr
