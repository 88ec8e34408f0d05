"""Run the asset processing example on a local 3-node mesh of ``jobmesh node`` processes.

    python -m examples.asset_processing.run [--images 12] [--keep]

It draws a folder of images with Pillow (PNGs, and JPEGs with EXIF) in a temp dir,
starts three nodes that load ``examples.asset_processing.consumers`` and find each
other through the first one, uploads each image to the first node (the origin, ``POST
/api/v1/blobs``) and starts one ``dam-update-asset`` workflow per image there with the
image as its payload, waits for all of them, downloads each workflow's manifest and
renditions (its output payload) into ``out/<image>/`` and checks them: metadata matching
the image drawn, every thumbnail present and no larger than its size. It prints a JSON
summary with which node ran which step; exit 0 when every check passed. With offloading
active the offloadable steps may run on any node; the example does not assume they did.

No shared folder: each node runs in a directory of its own (``<workdir>/<name>/``, data in
``data/``) and the consumers record every file they open (``JOBMESH_EXAMPLE_OPENS``); a
file opened outside the node's own data directory is a problem in the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image, ImageDraw

from jobmesh.ports import free_port, free_port_pair

REPO = Path(__file__).resolve().parent.parent.parent
WORKFLOW = "dam-update-asset"
CONSUMERS = "examples.asset_processing.consumers"


# -- images ----------------------------------------------------------------------

def draw_images(folder: Path, count: int) -> list[dict[str, Any]]:
    """``count`` images of varied sizes and formats; what was drawn, to check the manifests against."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(count):
        w, h = 160 + 97 * (i % 5), 120 + 61 * (i % 4)
        img = Image.new("RGB", (w, h), (20 * i % 256, 80, 160))
        d = ImageDraw.Draw(img)
        for k in range(6):
            x, y = (k * 37 + i * 13) % w, (k * 23 + i * 7) % h
            d.ellipse([x, y, x + w // 4, y + h // 4], fill=((k * 40) % 256, (i * 30) % 256, 200 - k * 20))
        d.rectangle([5, 5, w - 6, h - 6], outline=(255, 255, 255), width=3)
        if i % 2:
            path = folder / f"asset-{i:03d}.jpg"
            exif = Image.Exif()
            exif[0x010F] = "jobmesh example camera"  # Make
            exif[0x0131] = "Pillow"  # Software
            img.save(path, format="JPEG", quality=85, exif=exif)
            fmt = "JPEG"
        else:
            path = folder / f"asset-{i:03d}.png"
            img.save(path, format="PNG")
            fmt = "PNG"
        made.append({"path": str(path), "width": w, "height": h, "format": fmt})
    return made


# -- a local mesh -------------------------------------------------------------------


class MeshNode:
    """One ``jobmesh node`` process; ``start`` (again, after a kill: same name, data and ports), ``kill``, ``stop``."""

    def __init__(self, workdir: Path, name: str, seeds: list[str], consumers: list[str],
                 extra_pythonpath: list[str] | None = None, extra_args: list[str] | None = None,
                 home: Path | None = None, env: dict[str, str] | None = None) -> None:
        """``home``: the node's own working directory (its data in ``home/data``); without it the node
        runs in the repository with its data in ``workdir/name``."""
        self.workdir, self.name, self.seeds, self.consumers = workdir, name, seeds, consumers
        self.home = home
        self.data_dir = home / "data" if home is not None else workdir / name
        self.extra_env = dict(env or {})
        self.http_port = free_port()
        self.bind_port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.endpoint = f"tcp://127.0.0.1:{self.bind_port}"
        self.log_path = workdir / f"{name}.log"
        self.pythonpath = [*(extra_pythonpath or []), str(REPO)]
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "MeshNode":
        args = [sys.executable, "-m", "jobmesh", "node", "--name", self.name, "--data", str(self.data_dir),
                "--bind", self.endpoint, "--http", f"127.0.0.1:{self.http_port}", "--log-format", "json"]
        for s in self.seeds:
            args += ["--seed", s]
        if self.consumers:
            args += ["--consumers", *self.consumers]
        args += self.extra_args
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env,
               "PYTHONPATH": os.pathsep.join([*self.pythonpath, os.environ.get("PYTHONPATH", "")])}
        cwd = self.home if self.home is not None else REPO
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """kill -9: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def api(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as r:
        try:
            return r.status, await r.json()
        except (aiohttp.ContentTypeError, ValueError):
            return r.status, None


async def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await predicate()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


async def wait_healthy(http: aiohttp.ClientSession, node: MeshNode, timeout: float = 30.0) -> None:
    async def ok() -> bool:
        if not node.alive:
            raise RuntimeError(f"node {node.name} exited; see {node.log_path}")
        status, _ = await api(http, "GET", node.url + "/api/v1/health")
        return status == 200
    await wait_for(ok, timeout, f"node {node.name} healthy")


async def wait_topology(http: aiohttp.ClientSession, node: MeshNode, names: list[str], timeout: float = 30.0) -> None:
    async def all_seen() -> bool:
        status, topo = await api(http, "GET", node.url + "/api/v1/topology")
        return status == 200 and sorted(i["name"] for i in topo["instances"]) == sorted(names)
    await wait_for(all_seen, timeout, f"topology {names} seen by {node.name}")


def start_mesh(workdir: Path, names: list[str], consumers: list[str],
               extra_pythonpath: list[str] | None = None, own_homes: bool = False) -> list[MeshNode]:
    """The first node is the seed of the others. ``own_homes``: each node runs in ``workdir/name``
    (data in ``workdir/name/data``) and records its consumers' opens in ``workdir/name/opens.jsonl``."""
    nodes: list[MeshNode] = []
    for i, name in enumerate(names):
        seeds = [nodes[0].endpoint] if i else []
        home = workdir / name if own_homes else None
        env = {"JOBMESH_EXAMPLE_OPENS": str(workdir / name / "opens.jsonl")} if own_homes else None
        nodes.append(MeshNode(workdir, name, seeds, consumers, extra_pythonpath, home=home, env=env).start())
    return nodes


def foreign_opens(node: MeshNode) -> tuple[int, list[str]]:
    """(files its consumers opened, those outside its own data directory) from the node's opens log."""
    log = node.workdir / node.name / "opens.jsonl"
    if not log.is_file():
        return 0, []
    own = node.data_dir.resolve()
    seen, outside = 0, []
    for line in log.read_text().splitlines():
        for p in json.loads(line)["paths"]:
            seen += 1
            rp = Path(p).resolve()
            if rp != own and own not in rp.parents:
                outside.append(f"{node.name}: {p}")
    return seen, outside


async def upload(http: aiohttp.ClientSession, node: MeshNode, path: Path) -> str:
    """The file into the node's blob store; its blob id."""
    with open(path, "rb") as f:
        async with http.post(node.url + "/api/v1/blobs", data=f,
                             headers={"Content-Type": "application/octet-stream"}) as r:
            body = await r.json()
            if r.status != 201:
                raise RuntimeError(f"uploading {path.name} failed: HTTP {r.status} {body}")
            return str(body["id"])


async def download(http: aiohttp.ClientSession, node: MeshNode, blob_id: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    async with http.get(f"{node.url}/api/v1/blobs/{blob_id}") as r:
        if r.status != 200:
            raise RuntimeError(f"downloading {blob_id} failed: HTTP {r.status}")
        target.write_bytes(await r.read())


def out_dir(workdir: Path, image: dict[str, Any]) -> Path:
    """Where a workflow's output payload (manifest and renditions) is downloaded to."""
    return workdir / "out" / Path(image["path"]).name


# -- the check ------------------------------------------------------------------------

def check_manifest(image: dict[str, Any], sizes: list[int], folder: Path) -> list[str]:
    """What is wrong with the manifest of ``image`` downloaded into ``folder`` (empty: nothing)."""
    path = Path(image["path"])
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        return [f"{path.name}: no manifest"]
    m = json.loads(mpath.read_text())
    problems = []
    meta = m.get("metadata") or {}
    if (meta.get("width"), meta.get("height"), meta.get("format")) != (image["width"], image["height"], image["format"]):
        problems.append(f"{path.name}: metadata {meta.get('width')}x{meta.get('height')} {meta.get('format')}")
    if image["format"] == "JPEG" and meta.get("exif", {}).get("Make") != "jobmesh example camera":
        problems.append(f"{path.name}: EXIF not extracted")
    rends = {r["size"]: r for r in m.get("renditions") or []}
    if sorted(rends) != sorted(sizes):
        problems.append(f"{path.name}: renditions {sorted(rends)} instead of {sorted(sizes)}")
    for size, r in rends.items():
        rp = folder / r["payload"]
        if not rp.is_file():
            problems.append(f"{path.name}: rendition {size} missing")
            continue
        with Image.open(rp) as t:
            if max(t.size) > size or (t.width, t.height) != (r["width"], r["height"]):
                problems.append(f"{path.name}: rendition {size} is {t.width}x{t.height}")
    return problems


async def run(images: int = 12, workdir: Path | None = None, timeout: float = 120.0,
              names: tuple[str, ...] = ("dam-a", "dam-b", "dam-c"), render_delay: float = 0.0) -> dict[str, Any]:
    from .consumers import SIZES

    workdir = Path(workdir or tempfile.mkdtemp(prefix="jobmesh-assets-"))
    drawn = draw_images(workdir / "assets", images)
    started = time.monotonic()
    nodes = start_mesh(workdir, list(names), [CONSUMERS], own_homes=True)
    origin = nodes[0]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for n in nodes:
                await wait_healthy(http, n)
            await wait_topology(http, origin, list(names))
            mesh_up = time.monotonic()
            ids = []
            for img in drawn:
                blob = await upload(http, origin, Path(img["path"]))
                status, inst = await api(http, "POST", origin.url + "/api/v1/workflows",
                                         {"workflow": WORKFLOW, "payload": {"image": blob}, "properties": {
                                             "name": Path(img["path"]).name, "render_delay": render_delay}})
                if status != 201:
                    raise RuntimeError(f"starting a workflow failed: HTTP {status} {inst}")
                ids.append(inst["id"])

            async def all_final() -> list[dict[str, Any]] | None:
                out = []
                for iid in ids:
                    status, inst = await api(http, "GET", f"{origin.url}/api/v1/workflows/{iid}")
                    if status != 200 or inst["state"] == "RUNNING":
                        return None
                    out.append(inst)
                return out

            finals = await wait_for(all_final, timeout, "all workflows final", interval=0.2)
            for img, inst in zip(drawn, finals):  # the output payload, from the origin
                for name, ref in (inst.get("payload") or {}).items():
                    if name != "image":
                        await download(http, origin, ref["id"], out_dir(workdir, img) / name)
        problems = [p for img in drawn for p in check_manifest(img, SIZES, out_dir(workdir, img))]
        opened = 0
        for n in nodes:
            seen, outside = foreign_opens(n)
            opened += seen
            problems += [f"opened outside its node's data directory: {p}" for p in outside]
        states: dict[str, int] = {}
        ran_on: dict[str, dict[str, int]] = {}
        for inst in finals:
            states[inst["state"]] = states.get(inst["state"], 0) + 1
        for img in drawn:
            mpath = out_dir(workdir, img) / "manifest.json"
            if mpath.is_file():
                for step, node_name in json.loads(mpath.read_text()).get("steps", {}).items():
                    ran_on.setdefault(step, {})
                    ran_on[step][str(node_name)] = ran_on[step].get(str(node_name), 0) + 1
        failed = [{"id": i["id"], "reason": i["reason"]} for i in finals if i["state"] != "COMPLETED"]
        return {
            "ok": not problems and states.get("COMPLETED") == images,
            "images": images,
            "workflows": states,
            "steps_ran_on": ran_on,
            "manifest_problems": problems[:20],
            "failed": failed[:10],
            "files_opened_by_consumers": opened,
            "seconds_mesh_up": round(mesh_up - started, 2),
            "seconds_workflows": round(time.monotonic() - mesh_up, 2),
            "workdir": str(workdir),
        }
    finally:
        for n in reversed(nodes):
            n.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jobmesh asset processing example on a local 3-node mesh")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--render-delay", type=float, default=0.0,
                        help="seconds each thumbnail step takes on top of the work (makes queues build up)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (images, renditions, logs)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="jobmesh-assets-"))
    try:
        summary = asyncio.run(run(args.images, workdir, args.timeout, render_delay=args.render_delay))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.keep:
        summary["workdir"] = None
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
