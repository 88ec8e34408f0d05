"""The ``jobmesh`` command (DESIGN §5.1): run a node, run the demo, talk to a node's HTTP API.

Kept fast to start: only the stdlib at import time (the HTTP client is ``urllib``);
aiohttp, zmq and the engine are imported by ``jobmesh node`` alone.

Conventions shared with other command modules (``jobmesh/cli_schedule.py``):
every sub-command sets ``func(args) -> int`` with ``set_defaults``; client commands
call ``add_client_options(parser)`` (``--url``, ``--token``, ``--json``) and use
``client(args)``; ``emit(args, data, render)`` prints JSON with ``--json`` or the
human rendering otherwise; raising ``CliError`` prints one line on stderr and
exits 1. Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

DEFAULT_URL = "http://127.0.0.1:8471"
FINAL_STATES = ("SUCCEEDED", "STOPPED", "GIVEN_UP", "ERROR", "DROPPED")


class CliError(Exception):
    """A failure the user should read as one line; exit code 1 unless ``code`` says else."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- HTTP client -------------------------------------------------------------------


class ApiClient:
    """A tiny JSON client for a node's /api/v1 over urllib (no third-party import)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        url = url.strip()
        if url.isdigit() or (url.startswith(":") and url[1:].isdigit()):  # a bare port, as --http takes
            url = "127.0.0.1:" + url.lstrip(":")
        if "://" not in url:  # "127.0.0.1:8471" is what people type
            url = "http://" + url
        self.url = url.rstrip("/")
        self.token = token or None
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = self.url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
        except ValueError as e:
            raise CliError(f"invalid node URL {self.url!r}: {e}", code=2) from None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise CliError(_http_error_message(e)) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (TimeoutError,)) or "timed out" in str(reason):
                raise CliError(f"node at {self.url} did not answer within {self.timeout:g} s") from None
            raise CliError(f"cannot reach node at {self.url} ({_reason_text(reason)})") from None
        except (ValueError, http.client.InvalidURL) as e:  # e.g. a port that is not a number
            raise CliError(f"invalid node URL {self.url!r}: {e}", code=2) from None
        except http.client.HTTPException as e:  # the connection broke mid-answer
            raise CliError(f"node at {self.url} broke off the answer ({type(e).__name__})") from None
        except (TimeoutError, OSError) as e:
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                raise CliError(f"node at {self.url} did not answer within {self.timeout:g} s") from None
            raise CliError(f"cannot reach node at {self.url} ({e})") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(f"node at {self.url} answered something that is not JSON") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _reason_text(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def _http_error_message(e: urllib.error.HTTPError) -> str:
    message = e.reason
    try:
        body = json.loads(e.read() or b"null")
        if isinstance(body, dict) and body.get("error"):
            message = body["error"]
    except (ValueError, OSError):
        pass
    return f"{message} (HTTP {e.code})"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--token``, ``--json`` for a command that talks to a node."""
    parser.add_argument(
        "--url",
        default=os.environ.get("JOBMESH_URL") or DEFAULT_URL,
        help="the node's HTTP address (env JOBMESH_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("JOBMESH_TOKEN"), help="API token (env JOBMESH_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def client(args: argparse.Namespace, timeout: float = 10.0) -> ApiClient:
    return ApiClient(args.url, args.token, timeout=timeout)


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        text = render(data)
        if text:
            print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table; ``-`` for missing values."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def parse_property(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE as JSON when it parses (1, true, [1,2], {"a":1}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key, parsed


# -- renderers ----------------------------------------------------------------------


def add_property_option(parser: argparse.ArgumentParser, what: str = "a job property") -> None:
    """``-p/--property KEY=VALUE`` (repeatable, parsed by :func:`parse_property`): one convention
    for every command that sends properties."""
    parser.add_argument("-p", "--property", action="append", type=parse_property, metavar="KEY=VALUE",
                        help=f"{what}; VALUE is JSON when it parses, else a string (repeatable)")


def _short_time(iso: str | None) -> str | None:
    """``2026-01-02T03:04:05.678Z`` -> ``2026-01-02 03:04:05Z``: seconds, and still saying UTC."""
    if not iso:
        return None
    return iso.replace("T", " ")[:19] + ("Z" if iso.endswith("Z") else "")


def duration(seconds: float | None) -> str:
    """Seconds for people: ``0.9998`` -> ``1.0 s``, ``75.2`` -> ``1 min 15 s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def render_job(job: dict[str, Any]) -> str:
    prog = job.get("progress") or {}
    lines = [
        f"id:          {job['id']}",
        f"topic:       {job['topic']}",
        f"state:       {job['state']}",
        f"queue:       {job.get('queue')}",
        f"origin:      {job.get('origin') or '-'}",
        f"target:      {job.get('target') or '-'}",
        f"created:     {job.get('created') or '-'}",
        f"started:     {job.get('started') or '-'}",
        f"finished:    {job.get('finished') or '-'}",
        f"retries:     {job.get('retry_count', 0)}/{job.get('max_retries', '-')}",
        f"properties:  {json.dumps(job.get('properties') or {}, sort_keys=True)}",
    ]
    if prog.get("steps"):
        lines.append(f"progress:    {prog.get('step', 0)}/{prog['steps']}" + (f" eta {prog['eta']}" if prog.get("eta") else ""))
    for label, field in (("not before", "not_before"), ("key", "key"), ("timeout", "timeout")):
        if job.get(field) is not None:
            value = f"{job[field]:g} s" if field == "timeout" else job[field]
            lines.append(f"{label + ':':<13}{value}")
    if job.get("priority"):
        lines.append(f"priority:    {job['priority']}")
    if job.get("result_message"):
        lines.append(f"message:     {job['result_message']}")
    if job.get("result") is not None:
        lines.append(f"result:      {json.dumps(job['result'], sort_keys=True)}")
    for label, key in (("payload:    ", "payload"), ("output:     ", "output_payload")):
        items = job.get(key) or {}
        if items:
            lines.append(f"{label} " + ", ".join(f"{n} ({items[n].get('size')} bytes)" for n in sorted(items)))
    log_lines = prog.get("log") or []
    if log_lines:
        lines.append("log:")
        lines.extend(f"  {line}" for line in log_lines)
    return "\n".join(lines)


def render_jobs(data: dict[str, Any]) -> str:
    jobs = data.get("jobs", [])
    if not jobs:
        return "no jobs"
    text = table(
        ["ID", "STATE", "TOPIC", "QUEUE", "RETRIES", "CREATED", "TARGET"],
        [
            [j["id"], j["state"], j["topic"], j.get("queue"), j.get("retry_count"), _short_time(j.get("created")),
             _target_of(j)]
            for j in jobs
        ],
    )
    total = data.get("total")
    if isinstance(total, int) and total > len(jobs):
        text += (f"\nshowing the newest {len(jobs)} of {total} jobs; --limit N shows more, "
                 f"--state/--topic/--queue narrow it down")
    return text


def _target_of(job: dict[str, Any]) -> str | None:
    """Where the job runs or ran; a copy of another node's job is running here, at the node asked."""
    return job.get("target")


def render_job_line(job: dict[str, Any]) -> str:
    if job.get("deleted"):
        return f"{job['id']}  deleted"
    msg = f"  {job['result_message']}" if job.get("result_message") else ""
    return f"{job['id']}  {job['state']}  {job['topic']}{msg}"


TOPOLOGY_WIDTH = 100  # columns the topology table keeps to (a terminal and a half is unreadable)


def render_topology(data: dict[str, Any]) -> str:
    """One row per node, within ``TOPOLOGY_WIDTH`` columns: the topic list is cut to fit (with
    "+N more"); ``--json`` has everything."""
    rows = []
    for i in data.get("instances", []):
        cap = i.get("capacity") or {}
        name = i["name"] + (" *" if i.get("leader") else "") + (" (here)" if i.get("local") else "")
        load = f"{cap.get('active', 0)}/{cap.get('slots', '?')}" if cap else None
        topics = list(i.get("topics") or [])
        enabled = set(i.get("offload_topics") or [])
        on = sum(1 for t in topics if t in enabled)
        offload = "all" if topics and on == len(topics) else "none" if topics and not on else f"{on}/{len(topics)}"
        rows.append([name, i.get("endpoint"), load, cap.get("queued") if cap else None,
                     offload if topics else None, topics])
    head = f"local: {data.get('local')}   leader: {data.get('leader')} (*)"
    if data.get("current") is False:
        head += "   (changing)"
    headers = ["NAME", "ENDPOINT", "ACTIVE", "QUEUED", "OFFLOAD", "TOPICS"]
    fixed = [[_cell(v) for v in r[:-1]] for r in rows]
    widths = [max([len(h)] + [len(r[k]) for r in fixed]) for k, h in enumerate(headers[:-1])]
    room = max(20, TOPOLOGY_WIDTH - sum(w + 2 for w in widths))
    cells = [[*r[:-1], _fit(t, room)] for r, t in zip(rows, [r[-1] for r in rows])]
    return head + "\n" + table(headers, cells)


def _fit(items: list[str], width: int) -> str:
    """``a,b,c`` cut to ``width`` characters with ``+N more`` for what did not fit."""
    out: list[str] = []
    for k, item in enumerate(items):
        rest = len(items) - k - 1
        candidate = ",".join([*out, item])
        tail = f" +{rest} more" if rest else ""
        if len(candidate) + len(tail) > width and out:
            return ",".join(out) + f" +{len(items) - k} more"
        out.append(item)
    return ",".join(out) or "-"


def render_queues(data: dict[str, Any]) -> str:
    rows = []
    for q in data.get("queues", []):
        s = q.get("statistics") or {}
        rows.append(
            [
                q.get("name"), q.get("type"), q.get("topics"), q.get("max_parallel"), q.get("suspended"),
                s.get("queued"), s.get("active"), s.get("finished"), s.get("failed"), s.get("cancelled"),
                _ms(s.get("average_waiting_time")), _ms(s.get("average_processing_time")),
            ]
        )
    return table(
        ["NAME", "TYPE", "TOPICS", "PARALLEL", "SUSPENDED", "QUEUED", "ACTIVE", "FINISHED", "FAILED RUNS",
         "CANCELLED", "AVG WAIT", "AVG RUN"],
        rows,
    ) + "\n" + STATS_NOTE


def render_queue_line(q: dict[str, Any]) -> str:
    return f"queue {q.get('name')}: {'suspended' if q.get('suspended') else 'running'}"


STAT_FIELDS = ("queued", "active", "finished", "failed", "cancelled", "processed", "average_waiting_time", "average_processing_time")


STATS_NOTE = ("FINISHED: jobs that succeeded.  FAILED RUNS: attempts that failed and were retried (one job\n"
              "may count many).  CANCELLED: jobs given up, stopped or dropped.")


def _ms(value: Any) -> str | None:
    """Milliseconds as a rounded duration (``0.8 ms``, ``1.2 s``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if value < 1000:
        return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"
    return duration(value / 1000.0)


def _stat_row(s: dict[str, Any]) -> list[Any]:
    return [*(s.get(f) for f in STAT_FIELDS[:6]), _ms(s.get("average_waiting_time")), _ms(s.get("average_processing_time"))]


def render_stats(data: dict[str, Any]) -> str:
    def rows(section: dict[str, Any]) -> list[list[Any]]:
        return [[name, *_stat_row(s)] for name, s in sorted(section.items())]

    headers = ["QUEUED", "ACTIVE", "FINISHED", "FAILED RUNS", "CANCELLED", "PROCESSED", "AVG WAIT", "AVG RUN"]
    out = [table(["", *headers], [["overall", *_stat_row(data.get("overall") or {})]])]
    if data.get("queues"):
        out += ["", table(["QUEUE", *headers], rows(data["queues"]))]
    if data.get("topics"):
        out += ["", table(["TOPIC", *headers], rows(data["topics"]))]
    return "\n".join([*out, "", STATS_NOTE])


# -- client commands ------------------------------------------------------------------


def api_path(base: str, item_id: str | None = None, action: str | None = None) -> str:
    """``base[/ID][/ACTION]`` with the id quoted: ids may hold any character (shared by every command group)."""
    p = base
    if item_id is not None:
        p += "/" + urllib.parse.quote(item_id, safe="")
    if action:
        p += "/" + action
    return p


def _job_path(job_id: str, action: str | None = None) -> str:
    return api_path("/api/v1/jobs", job_id, action)


def emit_created(args: argparse.Namespace, c: ApiClient, item: dict[str, Any], final: Sequence[str], success: str,
                 path: Callable[[str], str], what: str, render: Callable[[Any], str],
                 status: Callable[[dict[str, Any]], str] | None = None) -> int:
    """Show what ``submit``/``workflow start`` made; with ``--wait`` first poll ``path(id)`` (backing
    off to 0.5 s) until its state is in ``final``: exit 0 if that is ``success``, else 1. After
    ``args.wait_timeout`` (else ``args.timeout``) s the item is shown and a CliError raised. With ``status``, the id is said at
    once and every change of ``status(item)`` while waiting, on stderr (stdout keeps the result)."""
    if args.wait:
        limit = getattr(args, "wait_timeout", None) or args.timeout
        deadline = time.monotonic() + limit
        delay = 0.05
        said = None
        if status is not None:
            print(f"{what} {item['id']} added; waiting up to {duration(limit)} for it to finish "
                  f"(Ctrl-C stops waiting, not the {what})", file=sys.stderr, flush=True)
        try:
            while item["state"] not in final:
                if status is not None:
                    now = status(item)
                    if now != said:
                        print(f"  {now}", file=sys.stderr, flush=True)
                        said = now
                if time.monotonic() >= deadline:
                    emit(args, item, render)
                    raise CliError(f"{what} {item['id']} not finished after {limit:g} s (state {item['state']})")
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 0.5)
                item = c.get(path(item["id"]))
        except KeyboardInterrupt:
            print(f"jobmesh: stopped waiting; {what} {item['id']} goes on ({item['state']})", file=sys.stderr)
            return 130
    emit(args, item, render)
    return 0 if not args.wait or item["state"] == success else 1


def job_status(job: dict[str, Any]) -> str:
    """Where a job is, in a few words: ``ACTIVE on b, step 2/3`` / ``QUEUED, retry 1/10 after KeyError``."""
    parts = [job.get("state", "?")]
    if job.get("target") and job.get("target") != job.get("origin"):
        parts.append(f"on {job['target']}")
    prog = job.get("progress") or {}
    if prog.get("steps"):
        parts.append(f"step {prog.get('step', 0)}/{prog['steps']}")
    text = ", ".join(parts)
    if job.get("retry_count"):
        mx = job.get("max_retries")
        text += f", retry {job['retry_count']}/{'forever' if mx == -1 else mx}"
        if job.get("result_message") and job.get("state") == "QUEUED":
            text += f" after {job['result_message']}"
    return text


def warn_if_no_consumer(c: ApiClient, topic: str) -> None:
    """A job no member can run waits QUEUED until one can: say so now, with close topics, rather
    than let ``--wait`` sit in silence. Silent when the topology cannot be read."""
    import difflib

    from .topics import matches

    try:
        topo = c.get("/api/v1/topology")
        patterns = sorted({p for inst in topo.get("instances", []) for p in inst.get("topics") or []})
    except (CliError, AttributeError, TypeError):
        return
    if any(matches(p, topic) for p in patterns):
        return
    close = difflib.get_close_matches(topic, patterns, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else \
        (f"; consumers here take: {', '.join(patterns[:8])}" if patterns else "; no node has any consumer")
    print(f"jobmesh: warning: no node in the topology has a consumer for {topic}{hint}; the job stays "
          f"QUEUED until a node with one joins", file=sys.stderr, flush=True)


def add_id_commands(sub: Any, commands: Sequence[tuple[str, Callable[[argparse.Namespace], int], str]]) -> None:
    """Sub-commands that take one ID and the client options: ``(name, func, help)`` each."""
    for name, func, text in commands:
        p = sub.add_parser(name, help=text)
        p.add_argument("id", metavar="ID")
        add_client_options(p)
        p.set_defaults(func=func)


SUBMIT_BATCH = 1000  # lines of ``submit --file`` sent in one POST (one transaction at the node)


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--delay/--at/--key/--timeout/--priority`` as body fields (only the ones given)."""
    opts = {"delay": args.delay, "at": args.at, "key": args.key, "timeout": args.timeout, "priority": args.priority}
    return {k: v for k, v in opts.items() if v is not None}


def cmd_submit(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _submit_file(args)
    if not args.topic:
        raise CliError("submit needs a TOPIC (or --file FILE with one JSON job a line)", code=2)
    c = client(args)
    props = dict(args.property or [])
    body: dict[str, Any] = {"topic": args.topic, "properties": props, **_job_options(args)}
    if getattr(args, "payload", None):
        from .cli_payload import upload_all
        body["payload"] = upload_all(c, args.payload)
    job = c.post("/api/v1/jobs", body)
    warn_if_no_consumer(c, args.topic)
    return emit_created(args, c, job, FINAL_STATES, "SUCCEEDED", _job_path, "job", render_job_line, job_status)


def read_job_lines(path: str) -> list[dict[str, Any]]:
    """``submit --file``: one JSON job body a line (``-`` is stdin); blank lines and ``#`` comments are
    skipped. Every line is read before anything is sent: a mistake sends nothing (exit 2)."""
    name = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror or e}", code=2) from None
    except UnicodeDecodeError:
        raise CliError(f"{name} is not UTF-8 text", code=2) from None
    bodies = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            body = json.loads(line)
        except ValueError as e:
            raise CliError(f"{name} line {n}: invalid JSON ({e})", code=2) from None
        if not isinstance(body, dict) or not isinstance(body.get("topic"), str):
            raise CliError(f"{name} line {n}: expected a JSON object with a topic, like "
                           '{"topic": "mail/send", "properties": {"to": "a@b.c"}}', code=2)
        bodies.append(body)
    return bodies


def _submit_file(args: argparse.Namespace) -> int:
    if args.topic or args.property or args.key:
        raise CliError("with --file each line is a job (its topic, properties and key): drop TOPIC, -p and --key",
                       code=2)
    bodies = read_job_lines(args.file)
    shared = _job_options(args)
    if shared:
        has_when = ("delay", "at")
        for b in bodies:
            for k, v in shared.items():
                if k in b or (k in has_when and any(w in b for w in has_when)):
                    continue
                b[k] = v
    c = client(args, timeout=60.0)
    jobs: list[dict[str, Any]] = []
    for i in range(0, len(bodies), SUBMIT_BATCH):
        try:
            jobs.extend(c.post("/api/v1/jobs", bodies[i:i + SUBMIT_BATCH]))
        except CliError as e:
            if jobs:
                raise CliError(f"{e}; the first {len(jobs)} jobs (lines before that batch) were added") from None
            raise
    if args.wait:
        deadline = time.monotonic() + args.wait_timeout
        for k, job in enumerate(jobs):
            while job["state"] not in FINAL_STATES and time.monotonic() < deadline:
                job = c.get(_job_path(job["id"]), wait=round(min(20.0, max(0.0, deadline - time.monotonic())), 3))
            jobs[k] = job
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        for job in jobs:
            print(render_job_line(job))
    print(f"jobmesh: {len(jobs)} jobs from {'stdin' if args.file == '-' else args.file}", file=sys.stderr)
    if args.wait:
        open_jobs = sum(1 for j in jobs if j["state"] not in FINAL_STATES)
        if open_jobs:
            raise CliError(f"{open_jobs} of {len(jobs)} jobs not finished after {args.wait_timeout:g} s")
        return 0 if all(j["state"] == "SUCCEEDED" for j in jobs) else 1
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    data = client(args).get("/api/v1/jobs", state=args.state, topic=args.topic, queue=args.queue, limit=args.limit)
    emit(args, data, render_jobs)
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    c = client(args)
    job = c.get(_job_path(args.id))
    emit(args, job, render_job)
    if getattr(args, "save_payload", None):
        from .cli_payload import save_payload
        for path in save_payload(c, job, args.save_payload):
            if not getattr(args, "json", False):
                print(f"saved {path}")
    return 0


def _wait_final(c: ApiClient, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while job.get("state") not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.1)
        job = c.get(_job_path(job["id"]))
    return job


def render_stop(job: dict[str, Any]) -> str:
    """What ``stop`` did: a final job says its state; a running one, what happens next."""
    if job.get("state") in FINAL_STATES:
        return render_job_line(job)
    grace = job.get("stop_grace")
    if job.get("state") == "ACTIVE":
        within = f"it has {grace:g} s to return, then an async consumer is cancelled" if isinstance(grace, (int, float)) \
            else "an async consumer is cancelled after the node's stop_grace"
        return (f"{job['id']}  stopping: the consumer was asked to stop (ctx.is_stopped() is true); {within}; "
                f"then the job is STOPPED (jobmesh stop {job['id']} --wait waits for it)")
    return f"{job['id']}  stopping ({job_status(job)}); it is STOPPED once its node confirms"


def render_remove(job: dict[str, Any]) -> str:
    """What ``remove`` did: deleted (a final job), dropped (its record stays), or dropping."""
    if job.get("deleted"):
        return f"{job['id']}  deleted"
    if job.get("state") == "DROPPED":
        return (f"{job['id']}  DROPPED: it will not run; its record stays until its history expires "
                f"(jobmesh remove {job['id']} again deletes it now)")
    if job.get("state") in FINAL_STATES:
        return render_job_line(job)
    return (f"{job['id']}  dropping: the consumer was asked to stop; once it returns the job is DROPPED "
            f"(its record stays; jobmesh remove {job['id']} again then deletes it)")


def cmd_stop(args: argparse.Namespace) -> int:
    c = client(args)
    job = c.post(_job_path(args.id, "stop"))
    if args.wait and job.get("state") not in FINAL_STATES:
        job = _wait_final(c, job, args.timeout)
        if job.get("state") not in FINAL_STATES:
            emit(args, job, render_stop)
            raise CliError(f"job {job['id']} still {job['state']} after {args.timeout:g} s")
    emit(args, job, render_stop)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    emit(args, client(args).post(_job_path(args.id, "retry")), render_job_line)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    emit(args, client(args).delete(_job_path(args.id)), render_remove)
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/v1/topology"), render_topology)
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    c = client(args)
    if args.action:
        if not args.name:
            raise CliError(f"queues {args.action} needs a queue NAME", code=2)
        path = f"/api/v1/queues/{urllib.parse.quote(args.name, safe='')}/{args.action}"
        emit(args, c.post(path), render_queue_line)
    else:
        emit(args, c.get("/api/v1/queues"), render_queues)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/v1/stats"), render_stats)
    return 0


def cmd_offload(args: argparse.Namespace) -> int:
    c = client(args)
    node = args.node
    if not node:
        node = c.get("/api/v1/topology")["local"]
    body = {"exclusive": True} if args.mode == "exclusive" else {"enabled": args.mode == "enable"}
    path = f"/api/v1/offloading/{urllib.parse.quote(node, safe='')}/{urllib.parse.quote(args.topic, safe='/*')}"
    result = c.put(path, body)
    emit(args, result, lambda r: f"offloading of {args.topic} on {node}: {r.get('mode', args.mode) if isinstance(r, dict) else args.mode}")
    return 0


# -- node and demo ------------------------------------------------------------------------


def _is_auto(value: str | None) -> bool:
    return isinstance(value, str) and (value == "auto" or value.endswith(":auto"))


def node_config(args: argparse.Namespace, picked: list[str] | None = None) -> Any:
    """The config file (or defaults) with the command-line flags applied, validated, ``auto`` ports
    picked (said in ``picked``, when given). Every mistake is a CliError (exit 2) that names the
    flag and the fix, raised before anything starts."""
    from .config import ConfigError, check_endpoint, load_config, normalize_http
    from .startup import resolve_auto

    try:
        config = load_config(args.config)
        if args.name:
            config.name = args.name
        if args.data:
            config.data = args.data
        if args.pub:
            config.pub = check_endpoint(args.pub, "--pub", example_port=5702)
        if args.bind:
            config.bind = args.bind if _is_auto(args.bind) else check_endpoint(
                args.bind, "--bind", need_next=not config.pub)
        if args.seed:
            config.seeds = [check_endpoint(s, "--seed") for s in args.seed]
        if args.advertise:
            config.advertise = check_endpoint(args.advertise, "--advertise", port_optional=True)
        if args.http is not None:
            off = args.http.lower() in ("off", "none", "")
            config.http = None if off else args.http if _is_auto(args.http) else normalize_http(args.http, "--http")
        if args.capacity is not None:
            config.capacity = args.capacity
        if args.log_format:
            config.log_format = args.log_format
        chosen = resolve_auto(config)
        if picked is not None:
            picked.extend(chosen)
        return config.validate()
    except ConfigError as e:
        raise CliError(f"configuration: {e}", code=2) from None
    except (OSError, RuntimeError) as e:  # auto: no free port on that host
        raise CliError(f"configuration: cannot pick a free port ({e})", code=2) from None


def cmd_node(args: argparse.Namespace) -> int:
    from .startup import StartupError, check_consumers, check_ports, import_consumer_modules

    picked: list[str] = []
    config = node_config(args, picked)
    try:
        check_ports(config)  # a port in use is one sentence now, not a traceback after half a start
    except StartupError as e:
        raise CliError(str(e), code=2) from None

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # so --consumers finds modules in the working directory

    from .log import configure_logging

    configure_logging(config.log_format, level=args.log_level)
    modules = list(args.consumers or [])
    try:
        warnings = check_consumers(import_consumer_modules(modules, cwd))
    except StartupError as e:
        raise CliError(str(e), code=2) from None
    for line in warnings:
        print(f"jobmesh: warning: {line}", file=sys.stderr)
    if picked:  # --bind auto / --http auto: say what was picked, where a script can read it
        print(f"jobmesh node {config.name}: " + ", ".join(picked), flush=True)

    import asyncio

    from .errors import DataDirInUse, NameInUse
    from .runner import run_node

    try:
        return int(asyncio.run(run_node(config, modules)) or 0)
    except (DataDirInUse, NameInUse) as e:  # --data or --name belongs to another live node: one line
        raise CliError(str(e), code=2) from None
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130


def run_demo(argv: list[str]) -> int:
    import importlib

    try:
        demo = importlib.import_module("jobmesh.demo")
    except ModuleNotFoundError as e:
        if e.name != "jobmesh.demo":
            raise
        print("jobmesh: the demo is not part of this installation", file=sys.stderr)
        return 1
    try:
        return int(demo.main(argv) or 0)
    except KeyboardInterrupt:
        return 130


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobmesh",
        description="jobmesh: a distributed job runtime for asyncio. Run a node, or talk to one over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"jobmesh {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("node", help="run a node in the foreground until SIGINT/SIGTERM")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--data", help="data directory (the job store)")
    p.add_argument("--bind", help="transfer endpoint tcp://HOST:PORT (heartbeats take the next port too); "
                                  "'auto' picks free ports and prints them")
    p.add_argument("--pub", help="heartbeat endpoint tcp://HOST:PORT (default: the port after --bind)")
    p.add_argument("--seed", nargs="+", action="extend", metavar="ENDPOINT",
                   help="live members' --bind endpoints (--seed A B or --seed A --seed B)")
    p.add_argument("--http", help="HTTP API address HOST:PORT or a port (loopback), 'auto' (a free port, "
                                  "printed), or 'off'")
    p.add_argument("--advertise", metavar="ENDPOINT",
                   help="the endpoint peers connect to, tcp://HOST[:PORT] (a 0.0.0.0 bind, containers, NAT)")
    p.add_argument("--consumers", nargs="+", action="extend", metavar="MODULE", help="modules whose consumers to register")
    p.add_argument("--capacity", type=_positive_int, help="consumer slots")
    p.add_argument("--log-format", choices=("console", "json"), help="log output format")
    p.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   default=(os.environ.get("JOBMESH_LOG_LEVEL") or "INFO").upper(), help="log level (default INFO)")
    p.set_defaults(func=cmd_node)

    sub.add_parser("demo", help="run a small local mesh with sample consumers and a workload", add_help=False)

    p = sub.add_parser("submit", help="add a job (or, with --file, one a line)")
    p.add_argument("topic", nargs="?")
    add_property_option(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_seconds, metavar="S", help="start no earlier than S seconds from now")
    when.add_argument("--at", metavar="ISO", help="start no earlier than this time (ISO 8601, e.g. 2031-12-01T09:00:00Z)")
    p.add_argument("--key", help="a unique key: while a job with it is open on the node, that job is returned")
    p.add_argument("--timeout", type=_seconds, metavar="S", help="the job's time limit in seconds")
    p.add_argument("--priority", type=int, metavar="N", help="higher starts first within its queue (default 0)")
    p.add_argument("--file", metavar="FILE", help="one JSON job body a line ('-': stdin), sent in batches of "
                                                  f"{SUBMIT_BATCH}; --delay/--at/--timeout/--priority fill in "
                                                  "what a line does not set")
    p.add_argument("--wait", action="store_true", help="wait until the job is final; exit 1 unless it SUCCEEDED")
    p.add_argument("--wait-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait with --wait (default 300)")
    from .cli_payload import parse_payload_option
    p.add_argument("--payload", action="append", type=parse_payload_option, metavar="NAME=FILE",
                   help="a file that goes with the job as its payload NAME (uploaded first; repeatable)")
    add_client_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs (newest first)")
    p.add_argument("--state", help="QUEUED, ACTIVE, SUCCEEDED, STOPPED, GIVEN_UP, ERROR or DROPPED")
    p.add_argument("--topic", help="a topic or a pattern: 'demo/*' (one level), 'demo/**' (any depth)")
    p.add_argument("--queue")
    p.add_argument("--limit", type=_positive_int, default=None)
    add_client_options(p)
    p.set_defaults(func=cmd_jobs)

    add_id_commands(sub, (
        ("job", cmd_job, "show one job (ID or an unambiguous prefix of it)"),
        ("stop", cmd_stop, "stop a job; a running one is asked to stop (--wait: until it has)"),
        ("retry", cmd_retry, "retry a job that ended without success"),
        ("remove", cmd_remove, "remove a job (a queued or active one is dropped and kept; a final one deleted)"),
    ))
    sub.choices["job"].add_argument("--save-payload", metavar="DIR",
                                    help="also download the job's payload and output payload into DIR")
    stop = sub.choices["stop"]
    stop.add_argument("--wait", action="store_true", help="wait until the job is STOPPED (or otherwise final)")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait with --wait (default 30)")

    p = sub.add_parser("topology", help="show the nodes that see each other")
    add_client_options(p)
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("queues", help="list queues, or suspend/resume one")
    p.add_argument("action", nargs="?", choices=("suspend", "resume"))
    p.add_argument("name", nargs="?", metavar="NAME")
    add_client_options(p)
    p.set_defaults(func=cmd_queues)

    p = sub.add_parser("stats", help="job statistics, overall and per queue and topic")
    add_client_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("offload", help="enable, disable or make exclusive a topic for offloading")
    p.add_argument("mode", choices=("enable", "disable", "exclusive"))
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--node", help="the node to change (default: the node at --url)")
    add_client_options(p)
    p.set_defaults(func=cmd_offload)

    _add_optional_commands(sub, "jobmesh.cli_schedule")
    _add_optional_commands(sub, "jobmesh.cli_workflow")
    return parser


def _add_optional_commands(sub: Any, module_name: str) -> None:
    """Let a part's own module add its commands; a broken one costs only its commands."""
    import importlib

    try:
        module = importlib.import_module(module_name)
        add = getattr(module, "add_parser", None)
        if add is not None:
            add(sub)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            print(f"jobmesh: warning: {module_name} unavailable: {e}", file=sys.stderr)
    except Exception as e:  # a bug there must not take `jobmesh node` down with it
        print(f"jobmesh: warning: {module_name} unavailable: {e!r}", file=sys.stderr)


def _version() -> str:
    from . import __version__

    return __version__


def number_arg(cast: Callable[[str], Any], ok: Callable[[Any], bool], must: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a number: ``cast`` (float: seconds, int: a whole number) that must
    satisfy ``ok``; bad input is a one-line usage error ("must be {must}, got ...")."""
    expected = "a number of seconds" if cast is float else "a whole number"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text if cast is float else value}")
        return value

    return parse


_seconds = number_arg(float, lambda v: v >= 0, "0 or more")
_positive_int = number_arg(int, lambda v: v >= 1, "at least 1")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":  # the demo parses its own arguments
        return run_demo(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if isinstance(e.code, int) else 2
    if args.command is None:  # `jobmesh` alone: what it can do
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"jobmesh: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jobmesh jobs | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
