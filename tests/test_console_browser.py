"""The web console in a real headless browser against real ``jobmesh node`` processes.

Playwright drives Debian's chromium (``scripts/setup-browser`` installs it; Playwright's
own browser download cannot work here). Three nodes form a topology (a, b, c with
different consumers), a fourth runs alone with an API token. Each test loads the page
the way an operator would and checks the outcome through the HTTP API, not through
the page alone. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers import NodeProcess, browser_tab, chromium, stop_all, wait_until

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
TOKEN = "t0ken-for-the-console"
UI_TIMEOUT_MS = 8000

pytestmark = pytest.mark.slow

CONSUMERS = {
    "console_work.py": '''
        """Consumers for the console tests: a slow stoppable job with progress, a fast one."""
        import asyncio
        import jobmesh

        @jobmesh.consumer("console/slow")
        async def slow(job, ctx):
            steps = int(job.properties.get("steps", 100))
            ctx.init_progress(steps=steps, eta=steps * float(job.properties.get("step_seconds", 0.1)))
            for i in range(steps):
                if ctx.is_stopped():
                    return ctx.result().message(f"stopped at step {i}").cancelled()
                await asyncio.sleep(float(job.properties.get("step_seconds", 0.1)))
                ctx.increment_progress()
                ctx.log("step %d done", i + 1)
            return ctx.result().message("all steps done").succeeded()

        @jobmesh.consumer("console/fast")
        async def fast(job):
            await asyncio.sleep(float(job.properties.get("seconds", 0.02)))
            return None

        @jobmesh.consumer("console/pay")
        async def pay(job, ctx):
            data = ctx.payload("in").read_bytes()
            ctx.output_payload("out", data.upper())
            return {"bytes": len(data)}
    ''',
    "console_media.py": '''
        """Consumers present on some nodes only, so the Offloading Browser has holes."""
        import asyncio
        import jobmesh

        @jobmesh.consumer("media/render")
        async def render(job, ctx):
            ctx.log("rendering %s", job.properties.get("path", "?"))
            await asyncio.sleep(0.05)
            return ctx.result().message("rendered").succeeded()

        @jobmesh.consumer("media/thumbnail/**")
        async def thumbnail(job):
            await asyncio.sleep(0.02)
    ''',
}


# --- processes and HTTP ----------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    return wait_until(predicate, timeout, interval, what=what)


@dataclass
class Mesh:
    nodes: dict[str, NodeProcess] = field(default_factory=dict)
    multi_node: bool = False  # discovery joined the nodes into one topology


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Nodes a, b, c in one topology (a is the seed) and t alone, with an API token."""
    workdir = tmp_path_factory.mktemp("console-mesh")
    for filename, source in CONSUMERS.items():
        (workdir / filename).write_text(textwrap.dedent(source))
    (workdir / "token.toml").write_text(f'[node]\nbind = ""\n[security]\nhttp_token = "{TOKEN}"\n')  # no bind: not 5701
    mesh = Mesh()
    try:
        a = NodeProcess(workdir, "a", ["console_work"], bind=True, data=workdir / "data-a", extra=["--capacity", "4"])
        seed = a.endpoint
        assert seed is not None
        layout = [
            ("b", ["console_work", "console_media"], [seed], True, None, None),
            ("c", ["console_media"], [seed], True, None, None),
            ("t", ["console_work"], [], False, workdir / "token.toml", TOKEN),
        ]
        mesh.nodes["a"] = a
        for name, consumers, seeds, bind, config, token in layout:
            mesh.nodes[name] = NodeProcess(workdir, name, consumers, bind=bind, seeds=seeds, config=config,
                                           token=token, data=workdir / f"data-{name}", extra=["--capacity", "4"])
        for node in mesh.nodes.values():
            node.start(wait=False)  # side by side; then each must answer healthy
        for node in mesh.nodes.values():
            node.wait_healthy(20)
        try:
            import jobmesh.discovery.actor  # noqa: F401
            has_discovery = True
        except ImportError:
            has_discovery = False
        if has_discovery:
            wait_for(lambda: len(mesh.nodes["a"].api("GET", "/api/v1/topology")[1]["instances"]) == 3
                     and len(mesh.nodes["c"].api("GET", "/api/v1/topology")[1]["instances"]) == 3,
                     15, "a, b and c to see each other")
            mesh.multi_node = True
        yield mesh
    finally:
        stop_all(list(mesh.nodes.values()), timeout=5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(CHROMIUM_ARGS) as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab (own sessionStorage) that fails the test on any script error."""
    with browser_tab(browser, UI_TIMEOUT_MS) as tab:
        yield tab


def open_console(page: Any, node: NodeProcess, hash_: str = "") -> None:
    page.goto(f"{node.url}/{hash_}")
    page.wait_for_selector('#live[data-status="live"]')


def screenshot(page: Any, name: str) -> None:
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / name), full_page=True)


# --- tests -----------------------------------------------------------------------------


def test_topology_shows_every_node_with_leader_and_load(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    open_console(page, a)
    status, topology = a.api("GET", "/api/v1/topology")
    assert status == 200
    names = [i["name"] for i in topology["instances"]]
    if mesh.multi_node:
        assert sorted(names) == ["a", "b", "c"]
    for name in names:
        card = page.locator(f'#topology .node-card[data-node="{name}"]')
        card.wait_for()
        assert "slots busy" in card.inner_text()
    leader_cards = page.locator("#topology .node-card:has(.tag-leader)")
    assert leader_cards.count() == 1
    assert leader_cards.get_attribute("data-node") == topology["leader"]
    assert page.locator("#topology .node-card.local").get_attribute("data-node") == "a"
    # consumer topics per node, with the ones open to offloading marked
    b_card = page.locator('#topology .node-card[data-node="b"]')
    if mesh.multi_node:
        assert "media/render" in b_card.inner_text()
    assert page.locator("#node-chip").inner_text().startswith("a")


def test_live_counts_move_when_jobs_are_added(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    open_console(page, a)
    finished = page.locator('#counters [data-stat="finished"] b')
    page.wait_for_function("document.querySelector('#counters [data-stat=\"finished\"] b').textContent !== '–'")
    before = int(finished.inner_text().replace(",", ""))
    page.evaluate("window.__sameDocument = true")  # proves the update came without a reload

    status, jobs = a.api("POST", "/api/v1/jobs", [{"topic": "console/fast", "properties": {"n": i}} for i in range(6)])
    assert status == 201 and len(jobs) == 6

    page.wait_for_function(
        "n => Number(document.querySelector('#counters [data-stat=\"finished\"] b').textContent.replace(/,/g, '')) >= n",
        arg=before + 6)
    assert page.evaluate("window.__sameDocument") is True
    # the activity feed shows the notifications that moved the counters
    page.locator("#activity .ev-finished").first.wait_for()
    assert page.locator("#activity .ev-added").count() >= 1
    status, stats = a.api("GET", "/api/v1/stats")
    assert stats["overall"]["finished"] >= before + 6


def test_stop_a_running_job_from_its_page(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    status, job = a.api("POST", "/api/v1/jobs", {"topic": "console/slow", "properties": {"steps": 200, "step_seconds": 0.05}})
    assert status == 201
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "ACTIVE", 10, "the job to start")

    open_console(page, a, f"#/jobs/{job['id']}")
    panel = page.locator("#job-panel")
    panel.locator(".state-active").wait_for()
    # progress from the consumer shows up while it runs (polled: progress is no notification)
    page.wait_for_function("document.querySelector('#job-log') && document.querySelector('#job-log').textContent.includes('step')")
    assert "console/slow" in panel.locator("h2").inner_text()
    assert '"steps": 200' in panel.locator("#job-properties").inner_text()
    assert page.locator("#job-retry").is_disabled()

    page.click("#job-stop")
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "STOPPED", 10, "the job to be STOPPED")
    panel.locator(".state-stopped").wait_for()
    assert page.locator("#job-stop").is_disabled()
    # the list beside the panel shows it too, selected
    page.locator(f'#jobs-table tr.selected[data-job="{job["id"]}"] .state-stopped').wait_for()
    screenshot(page, "console-job.png")

    # a stopped job can be retried from the same page: back to QUEUED/ACTIVE, same id
    page.click("#job-retry")
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] in ("QUEUED", "ACTIVE"), 10, "the retry")
    # and removed: a running job is dropped
    page.click("#job-remove")
    page.click("#job-remove-confirm")
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "DROPPED", 10, "the job to be DROPPED")


def test_a_click_on_stop_is_not_lost_when_the_panel_refreshes_under_it(page: Any, mesh: Mesh) -> None:
    """A running job's panel is rebuilt on every refresh: a press and release of Stop with a
    refresh between them still stops the job (it did not under load: two different buttons)."""
    a = mesh.nodes["a"]
    status, job = a.api("POST", "/api/v1/jobs", {"topic": "console/slow", "properties": {"steps": 200, "step_seconds": 0.05}})
    assert status == 201
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "ACTIVE", 10, "the job to start")
    open_console(page, a, f"#/jobs/{job['id']}")
    page.locator("#job-panel .state-active").wait_for()
    page.wait_for_function("document.querySelector('#job-log') && document.querySelector('#job-log').textContent.includes('step')")
    box = page.locator("#job-stop").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    before = page.locator("#job-log").inner_text()
    page.wait_for_function("t => document.querySelector('#job-log').textContent !== t", arg=before)  # a refresh
    page.mouse.up()
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "STOPPED", 10, "the job to be STOPPED")


def test_job_list_filters_by_state_and_topic(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    status, jobs = a.api("POST", "/api/v1/jobs", [{"topic": "console/fast"}, {"topic": "console/fast"}])
    assert status == 201
    for j in jobs:
        wait_for(lambda j=j: a.api("GET", f"/api/v1/jobs/{j['id']}")[1]["state"] == "SUCCEEDED", 10, "fast jobs")
    open_console(page, a, "#/jobs")
    page.select_option("#filter-state", "SUCCEEDED")
    page.fill("#filter-topic", "console/fast")
    page.locator(f'#jobs-table tr[data-job="{jobs[0]["id"]}"]').wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs-table tbody tr[data-job]')].every("
        "tr => tr.querySelector('.state-succeeded') && tr.textContent.includes('console/fast'))")
    page.fill("#filter-topic", "no/such/topic")
    page.locator("#jobs-table .empty").wait_for()
    assert page.locator("#jobs-table tbody tr[data-job]").count() == 0


def test_new_job_form_adds_a_job_and_reports_bad_input(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    open_console(page, a, "#/jobs")
    page.click("#new-job-btn")
    form = page.locator("#new-job-form")
    form.locator('input[name="topic"]').fill("console/fast")
    form.locator('textarea[name="properties"]').fill('{"made_by": "the console form"')  # broken JSON
    form.locator('button[type="submit"]').click()
    page.locator(".toast-error", has_text="not valid JSON").wait_for()
    form.locator('textarea[name="properties"]').fill('{"made_by": "the console form"}')
    form.locator('input[name="topic"]').fill("bad//topic")  # the API refuses it: its message is shown
    form.locator('button[type="submit"]').click()
    page.locator(".toast-error", has_text="Could not add the job").wait_for()
    form.locator('input[name="topic"]').fill("console/fast")
    form.locator('button[type="submit"]').click()
    page.locator(".toast-ok", has_text="Added console/fast").wait_for()
    _, found = a.api("GET", "/api/v1/jobs?topic=console/fast&limit=500")
    made = [j for j in found["jobs"] if j["properties"].get("made_by") == "the console form"]
    assert len(made) == 1
    page.locator(f'#jobs-table tr[data-job="{made[0]["id"]}"]').wait_for()


def test_offloading_browser_toggles_a_topic(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    target = "b" if mesh.multi_node else "a"
    open_console(page, a, "#/offloading")
    switch = page.locator(f'#offloading-grid button.switch[data-node="{target}"][data-topic="console/fast"]')
    switch.wait_for()
    if mesh.multi_node:  # c has no consumer for console/fast: no toggle, a dash
        assert page.locator('#offloading-grid tr[data-topic="console/fast"] button.switch[data-node="c"]').count() == 0
    was_on = switch.get_attribute("aria-checked") == "true"
    status, _ = a.api("PUT", f"/api/v1/offloading/{target}/console/fast", {"enabled": was_on})  # probe: same value
    switch.click()
    if status == 501:  # offloading settings not built yet: the console must say so
        page.locator("#offloading-error").wait_for()
        assert "not available" in page.locator("#offloading-error").inner_text()
        assert switch.get_attribute("aria-checked") == str(was_on).lower()
        screenshot(page, "console-offloading.png")
        pytest.xfail("PUT /api/v1/offloading answers 501: offloading settings are not available yet")

    def api_node(name: str) -> dict[str, Any]:
        _, body = a.api("GET", "/api/v1/offloading")
        return next(n for n in body["nodes"] if n["name"] == name)

    def api_state() -> bool | None:
        return next((t["enabled"] for t in api_node(target)["topics"] if t["topic"] == "console/fast"), None)

    def cell_is(topic: str, on: bool) -> None:
        page.wait_for_function(
            "([n, t, on]) => document.querySelector(`#offloading-grid button.switch[data-node='${n}'][data-topic='${t}']`)"
            "?.getAttribute('aria-checked') === on", arg=[target, topic, str(on).lower()])

    wait_for(lambda: api_state() is (not was_on), 10, f"console/fast on {target} to be {'off' if was_on else 'on'}")
    cell_is("console/fast", not was_on)
    # and back, so the other tests see the default
    switch.click()
    wait_for(lambda: api_state() is was_on, 10, f"console/fast on {target} to be restored")
    cell_is("console/fast", was_on)

    # exclusive (AEM's third mode): the node takes only this topic, its other topics go off
    cell = page.locator(f'#offloading-grid tr[data-topic="console/fast"] td:has(button.switch[data-node="{target}"])')
    cell.locator('button[data-action="exclusive"]').click()
    wait_for(lambda: (api_node(target).get("offloading") or {}).get("exclusive") == "console/fast", 10,
             f"{target} to be exclusive for console/fast")
    cell.locator('button[data-action="leave-exclusive"]').wait_for()
    cell_is("console/slow", False)
    screenshot(page, "console-offloading.png")
    cell.locator('button[data-action="leave-exclusive"]').click()
    wait_for(lambda: (api_node(target).get("offloading") or {}).get("exclusive") is None
             and api_state() is True, 10, f"{target} to leave exclusive mode")
    cell_is("console/slow", True)


def test_queue_suspend_and_resume(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    open_console(page, a, "#/queues")
    row = page.locator('#queues-table tr[data-queue="main"]')
    row.locator('button[data-action="suspend"]').click()
    wait_for(lambda: next(q for q in a.api("GET", "/api/v1/queues")[1]["queues"] if q["name"] == "main")["suspended"],
             5, "main to be suspended")
    row.locator(".tag-warn").wait_for()
    row.locator('button[data-action="resume"]').click()
    wait_for(lambda: not next(q for q in a.api("GET", "/api/v1/queues")[1]["queues"] if q["name"] == "main")["suspended"],
             5, "main to be resumed")
    row.locator('button[data-action="suspend"]').wait_for()
    page.locator('#topics-table tr[data-topic="console/fast"]').wait_for()
    screenshot(page, "console-queues.png")


def test_a_click_on_a_queue_button_is_not_lost_when_the_table_refreshes_under_it(page: Any, mesh: Mesh) -> None:
    """Every view rebuilds its rows on each poll and notification: the rows and buttons that stay
    the same are kept (dom.js ``replace``), so a press and release of Suspend with a refresh
    between them (the row's counts changed) is one click on one button."""
    a = mesh.nodes["a"]
    open_console(page, a, "#/queues")
    button = page.locator('#queues-table tr[data-queue="main"] button[data-action="suspend"]')
    button.wait_for()
    page.evaluate("() => { window.pressed = document.querySelector("
                  "'#queues-table tr[data-queue=\"main\"] button[data-action=\"suspend\"]'); }")
    before = page.locator('#queues-table tr[data-queue="main"]').inner_text()
    box = button.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    status, job = a.api("POST", "/api/v1/jobs", {"topic": "console/fast"})
    assert status == 201
    wait_for(lambda: a.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "SUCCEEDED", 10, "the job to run")
    page.wait_for_function("t => document.querySelector('#queues-table tr[data-queue=\"main\"]').innerText !== t",
                           arg=before)  # the row was rebuilt with new counts
    assert page.evaluate("() => document.querySelector("
                         "'#queues-table tr[data-queue=\"main\"] button[data-action=\"suspend\"]') === window.pressed")
    page.mouse.up()
    try:
        wait_for(lambda: next(q for q in a.api("GET", "/api/v1/queues")[1]["queues"]
                              if q["name"] == "main")["suspended"], 5, "main to be suspended by the click")
        page.locator('#queues-table tr[data-queue="main"] button[data-action="resume"]').wait_for()
    finally:
        a.api("POST", "/api/v1/queues/main/resume")


def test_schedules_add_and_remove(page: Any, mesh: Mesh) -> None:
    a = mesh.nodes["a"]
    status, _ = a.api("GET", "/api/v1/schedules")
    open_console(page, a, "#/schedules")
    if status == 404:
        page.locator("#schedules-unavailable").wait_for()
        assert page.locator("#schedule-form").is_hidden()
        return
    form = page.locator("#schedule-form")
    form.locator('input[name="topic"]').fill("console/fast")
    form.locator('input[name="properties"]').fill('{"from": "console"}')
    form.locator('select[name="kind"]').select_option("daily")
    form.locator('input[name="time"]').fill("06:30")
    form.locator('button[type="submit"]').click()

    def created() -> dict | None:
        _, body = a.api("GET", "/api/v1/schedules")
        return next((s for s in body["schedules"] if s["topic"] == "console/fast" and s.get("daily")), None)

    schedule = wait_for(created, 5, "the schedule to exist")
    assert schedule["daily"] == {"hour": 6, "minute": 30}
    assert schedule["properties"] == {"from": "console"}
    row = page.locator(f'#schedules-table tr[data-schedule="{schedule["id"]}"]')
    row.wait_for()
    assert "daily at 06:30 UTC" in row.inner_text()
    screenshot(page, "console-schedules.png")
    row.locator('button[data-action="remove"]').click()
    wait_for(lambda: created() is None, 5, "the schedule to be removed")
    row.wait_for(state="detached")


def test_token_is_asked_once_and_sent_everywhere(page: Any, mesh: Mesh) -> None:
    t = mesh.nodes["t"]
    page.goto(f"{t.url}/")
    dialog = page.locator("#token-dialog")
    dialog.wait_for()
    page.fill("#token-input", "wrong-token")
    page.click("#token-submit")
    page.locator("#token-error").wait_for()  # refused: asked again, saying why
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    page.locator('#topology .node-card[data-node="t"]').wait_for()
    page.wait_for_selector('#live[data-status="live"]')  # the event stream got ?token= too
    assert page.evaluate("sessionStorage.getItem('jobmesh.token')") == TOKEN

    # live counts through the token-protected stream, and no second prompt after a reload
    page.reload()
    page.wait_for_selector('#live[data-status="live"]')
    assert not dialog.is_visible()
    page.wait_for_function("document.querySelector('#counters [data-stat=\"finished\"] b').textContent !== '–'")
    before = int(page.locator('#counters [data-stat="finished"] b').inner_text().replace(",", ""))
    status, _ = t.api("POST", "/api/v1/jobs", {"topic": "console/fast"})
    assert status == 201
    page.wait_for_function(
        "n => Number(document.querySelector('#counters [data-stat=\"finished\"] b').textContent.replace(/,/g, '')) > n",
        arg=before)
    page.locator("#activity .ev-finished").first.wait_for()


def test_screenshot_of_a_busy_mesh(page: Any, mesh: Mesh) -> None:
    """The overview while work flows: written to test-output/console.png."""
    a = mesh.nodes["a"]
    open_console(page, a)
    a.api("POST", "/api/v1/jobs", [{"topic": "console/fast", "properties": {"seconds": 0.2}} for _ in range(12)]
          + [{"topic": "console/slow", "properties": {"steps": 40, "step_seconds": 0.1}} for _ in range(3)])
    if mesh.multi_node:
        mesh.nodes["b"].api("POST", "/api/v1/jobs", [{"topic": "media/render", "properties": {"path": f"/img/{i}.png"}}
                                                     for i in range(8)])
    page.locator("#activity .ev-started").first.wait_for()
    # a load bar moves as slots fill (topology re-read on job events); which node's depends
    # on where the offloader sends the work, so any node card will do
    page.wait_for_function(
        "() => [...document.querySelectorAll('#topology .node-card .bar i')]"
        ".some(i => parseFloat(i.style.width) > 0)")
    screenshot(page, "console.png")
    assert (OUTPUT / "console.png").stat().st_size > 10_000


def test_a_jobs_payload_and_return_value_are_shown_and_downloaded_with_the_token(page: Any, mesh: Mesh) -> None:
    import urllib.request

    t = mesh.nodes["t"]
    req = urllib.request.Request(f"{t.url}/api/v1/blobs", data=b"hello payload", method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        blob = json.loads(resp.read())
    status, job = t.api("POST", "/api/v1/jobs", {"topic": "console/pay", "payload": {"in": blob["id"]}})
    assert status == 201
    wait_for(lambda: t.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "SUCCEEDED", 10, "the job to succeed")

    page.goto(f"{t.url}/#/jobs/{job['id']}")
    page.locator("#token-dialog").wait_for()
    page.fill("#token-input", TOKEN)
    page.click("#token-submit")
    panel = page.locator("#job-panel")
    panel.locator(".state-succeeded").wait_for()
    assert json.loads(panel.locator("#job-return").inner_text()) == {"bytes": 13}
    table = panel.locator("#job-payload")
    assert "13 B" in table.locator('tr[data-payload="input:in"]').inner_text()
    assert "13 B" in table.locator('tr[data-payload="output:out"]').inner_text()
    with page.expect_download() as info:
        table.locator('tr[data-payload="output:out"] button').click()
    download = info.value
    assert download.suggested_filename == "out"
    assert Path(download.path()).read_bytes() == b"HELLO PAYLOAD"


def test_a_node_that_goes_away_is_shown_offline(page: Any, mesh: Mesh) -> None:
    """Runs last on t (only the token test uses it): stop the node under an open console."""
    t = mesh.nodes["t"]
    page.goto(f"{t.url}/")
    page.evaluate(f"sessionStorage.setItem('jobmesh.token', {json.dumps(TOKEN)})")
    page.reload()
    page.wait_for_selector('#live[data-status="live"]')
    stop_all([t], timeout=5)
    page.locator("#banner", has_text="cannot reach the node").wait_for()
    page.wait_for_selector('#live:not([data-status="live"])')
