"""The command line's HTTP client: ``ApiClient``, a small JSON client for a node's ``/api/v1``
over ``urllib`` (no third-party import, so ``jobmesh`` starts fast), with every failure turned
into a one-line ``CliError``; ``client(args)`` makes one from ``--url``/``--token`` and
``api_path`` builds the paths. Every command module talks to a node through it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class CliError(Exception):
    """A failure the user should read as one line; exit code 1 unless ``code`` says else."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


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


def client(args: argparse.Namespace, timeout: float = 10.0) -> ApiClient:
    return ApiClient(args.url, args.token, timeout=timeout)


def api_path(base: str, item_id: str | None = None, action: str | None = None) -> str:
    """``base[/ID][/ACTION]`` with the id quoted: ids may hold any character (shared by every command group)."""
    p = base
    if item_id is not None:
        p += "/" + urllib.parse.quote(item_id, safe="")
    if action:
        p += "/" + action
    return p
