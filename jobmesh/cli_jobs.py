"""The job commands of ``jobmesh``: ``submit`` (one job, or ``--file`` with one a line), ``jobs``,
``job``, ``stop``, ``retry`` and ``remove``, their parsers (``add_parser``) and what they
share with other commands that create something and may wait for it (``emit_created``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

from .cli_http import ApiClient, CliError, api_path, client
from .cli_options import _positive_int, _seconds, add_client_options, add_id_commands, add_property_option
from .cli_render import duration, emit, job_status, render_job, render_job_line, render_jobs

FINAL_STATES = ("SUCCEEDED", "STOPPED", "GIVEN_UP", "ERROR", "DROPPED")


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


def add_parser(sub: Any) -> None:
    """``submit``, ``jobs``, ``job``, ``stop``, ``retry`` and ``remove``."""
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
