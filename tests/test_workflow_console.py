"""The console's Workflows page in a real browser (Playwright + Debian's chromium) against a
real ``jobmesh node`` process: definitions listed, a workflow started from the page, its
step history shown, a running one aborted. Skipped where no browser is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import NodeProcess, browser_tab, chromium

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
UI_TIMEOUT_MS = 8000
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

MODULE = '''
import asyncio
import jobmesh
from jobmesh.workflow import Step, Workflow


@jobmesh.consumer("ui/greet")
async def greet(job, ctx):
    return ctx.result().message("greeted").output(greeting="hello " + str(job.properties.get("who", "?"))).succeeded()


@jobmesh.consumer("ui/hold")
async def hold(job, ctx):
    for _ in range(600):
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.05)
    return None


GREETING = Workflow("greeting", [Step("ui/greet"), Step("ui/greet", offloadable=False)], "greets twice")
HOLDING = Workflow("holding", [Step("ui/hold")], "waits until aborted")
'''


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    work = tmp_path_factory.mktemp("wfui")
    (work / "ui_flows.py").write_text(MODULE)
    with NodeProcess(work, "ui", consumers=["ui_flows"]) as n:
        yield n


@pytest.fixture
def page(node: NodeProcess) -> Iterator[Any]:
    with chromium(CHROMIUM_ARGS) as browser, browser_tab(browser, UI_TIMEOUT_MS) as tab:
        yield tab


def test_start_follow_and_abort_workflows_from_the_console(page: Any, node: NodeProcess) -> None:
    page.goto(f"{node.url}/#/workflows")
    page.wait_for_selector('tr[data-definition="greeting"]')
    assert "ui/greet → ui/greet (local)" in page.inner_text('tr[data-definition="greeting"]')
    # bad JSON: a clear message, nothing started
    page.fill('tr[data-definition="greeting"] input', "{not json")
    page.click('tr[data-definition="greeting"] button[data-action="start"]')
    page.wait_for_selector(".toast-error")
    assert node.api("GET", "/api/v1/workflows")[1]["workflows"] == []
    # start: the page opens the instance, which completes with both outputs merged
    page.fill('tr[data-definition="greeting"] input', '{"who": "console"}')
    page.click('tr[data-definition="greeting"] button[data-action="start"]')
    page.wait_for_selector('[data-workflow-detail] [data-wf-state="COMPLETED"]')
    detail = page.inner_text("[data-workflow-detail]")
    assert "hello console" in detail and "greeted" in detail
    assert page.locator('[data-workflow-detail] tr[data-step]').count() == 2
    # a running one is aborted from the list
    page.click('tr[data-definition="holding"] button[data-action="start"]')
    page.wait_for_selector('[data-workflow-detail] [data-wf-state="RUNNING"]')
    page.click('#workflows-table button[data-action="abort"]')
    page.wait_for_selector('[data-workflow-detail] [data-wf-state="ABORTED"]')
    states = sorted(w["state"] for w in node.api("GET", "/api/v1/workflows")[1]["workflows"])
    assert states == ["ABORTED", "COMPLETED"]
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "workflows.png"), full_page=True)
