"""The console's server side: what ``GET /`` and ``/console/*`` serve on a real node.

No browser here (that is test_console_browser.py): these check the page is served
with the node's name, its assets resolve with the right types, it stays reachable
when the API needs a token, and it cannot be tricked into serving other files.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from jobmesh.config import NodeConfig
from jobmesh.console import STATIC_DIR, render_index

TOKEN = "console-test-token"


def test_index_escapes_the_node_name() -> None:
    page = render_index('<script>alert("x")</script>')
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "{{node}}" not in page


def test_every_module_import_and_asset_exists() -> None:
    """A typo in an import path would leave a blank page: every reference must resolve."""
    index = (STATIC_DIR / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="/console/([^"]+)"', index))
    assert {"app.js", "style.css", "favicon.svg"} <= referenced
    for js in STATIC_DIR.glob("*.js"):
        for target in re.findall(r"""from\s+'\./([^']+)'""", js.read_text()):
            referenced.add(target)
    missing = sorted(name for name in referenced if not (STATIC_DIR / name).is_file())
    assert missing == []


def test_scripts_never_insert_markup_from_data() -> None:
    """Job properties and topics are user data: the console builds DOM nodes, never HTML strings."""
    for js in STATIC_DIR.glob("*.js"):
        text = js.read_text()
        for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML(", "document.write", "eval("):
            assert sink not in text, f"{js.name} uses {sink}"


@pytest.fixture
async def node(tmp_path: Path):
    import jobmesh

    config = NodeConfig()
    config.security.http_token = TOKEN
    async with jobmesh.Node(name="console-<node>", data_dir=str(tmp_path / "n"), bind=None, http="127.0.0.1:0",
                            config=config) as n:  # bind=None: a full config keeps the default port 5701
        yield n


async def test_console_is_served_without_the_token_and_the_api_still_needs_it(node) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{node.http_url}/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            page = await resp.text()
        assert '<script type="module" src="/console/app.js">' in page
        assert "console-&lt;node&gt;" in page  # the node's name, escaped

        async with session.get(f"{node.http_url}/console/app.js") as resp:
            assert resp.status == 200
            assert "javascript" in resp.content_type
            assert resp.headers.get("Cache-Control") == "no-cache"
            assert "EventStream" in await resp.text()
        async with session.get(f"{node.http_url}/console/style.css") as resp:
            assert resp.status == 200 and resp.content_type == "text/css"

        async with session.get(f"{node.http_url}/api/v1/topology") as resp:
            assert resp.status == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{node.http_url}/api/v1/topology", headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["local"] == "console-<node>"


async def test_assets_cannot_escape_the_static_folder(node) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/console/../__init__.py", "/console/%2e%2e/__init__.py", "/console/nope.js"):
            async with session.get(f"{node.http_url}{path}") as resp:
                assert resp.status in (403, 404), path
                assert "add_routes" not in await resp.text()
