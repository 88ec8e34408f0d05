"""Job payload from the command line: ``jobmesh submit TOPIC --payload NAME=FILE`` uploads each
file (``POST /api/v1/blobs``, streamed from disk) and names the blobs in the job;
``jobmesh job ID --save-payload DIR`` downloads the job's inputs and outputs into DIR."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .blobs.store import check_name
from .errors import ValidationError


def parse_payload_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    try:
        check_name(name)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, Path(path)


def _open(c: Any, method: str, path: str, data: Any = None, headers: dict[str, str] | None = None) -> Any:
    from .cli import CliError, _http_error_message

    h = dict(headers or {})
    if c.token:
        h["Authorization"] = f"Bearer {c.token}"
    req = urllib.request.Request(c.url.rstrip("/") + path, data=data, method=method, headers=h)
    try:
        return urllib.request.urlopen(req, timeout=max(c.timeout, 600.0))
    except urllib.error.HTTPError as e:
        raise CliError(_http_error_message(e)) from None
    except (urllib.error.URLError, OSError) as e:
        raise CliError(f"cannot reach node at {c.url} ({e})") from None


def upload(c: Any, file: Path) -> dict[str, Any]:
    """Stream ``file`` to the node's blob store; ``{"id", "size"}``."""
    from .cli import CliError

    try:
        size = file.stat().st_size
        f = open(file, "rb")
    except OSError as e:
        raise CliError(f"cannot read payload file {file}: {e.strerror}", code=2) from None
    with f, _open(c, "POST", "/api/v1/blobs", data=f,
                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}) as resp:
        return json.loads(resp.read())


def upload_all(c: Any, items: list[tuple[str, Path]]) -> dict[str, str]:
    return {name: upload(c, path)["id"] for name, path in items}


def save_payload(c: Any, job: dict[str, Any], directory: str) -> list[str]:
    """Every input and output of ``job`` into ``directory`` (an output wins over an input of the
    same name, which is then saved as ``NAME.input``); returns the files written."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    outputs = job.get("output_payload") or {}
    for role, items in (("input", job.get("payload") or {}), ("output", outputs)):
        for name in sorted(items):
            check_name(name)  # a name from the node is still a file name here, nothing else
            target = d / (f"{name}.input" if role == "input" and name in outputs else name)
            tmp = target.with_name(target.name + ".part")
            with _open(c, "GET", f"/api/v1/blobs/{items[name]['id']}") as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
            os.replace(tmp, target)
            written.append(str(target))
    return written
