"""DAM Update Asset on jobmesh: extract metadata, render thumbnails, write a manifest.

Load it on every node of a mesh:

    jobmesh node --consumers examples.asset_processing.consumers ...

and start ``dam-update-asset`` with the image as the workflow's payload ``image`` (upload it
with ``POST /api/v1/blobs``, then ``{"workflow": "dam-update-asset", "properties": {"name":
"cat.png"}, "payload": {"image": "<blob id>"}}``). The first two steps are offloadable (CPU
work: any node with spare slots may run them); the manifest step is local
(``offloadable=False``: it runs on the workflow's origin node). Each step returns its findings
as output properties, which the workflow merges into the next step's input.

Files travel as job payload, not through a shared folder: every step reads the image with
``ctx.payload("image")`` (a local file in its own node's blob store, whichever node runs
it), the thumbnails step attaches each rendition as output payload ``thumbnail.<size>.png``
and the manifest step attaches ``manifest.json``; the workflow passes each step's output
payload on to the next step, and the origin has all of it once the workflow completed
(``GET /api/v1/workflows/{id}`` lists it, ``GET /api/v1/blobs/{id}`` reads it). So the nodes
can be on machines of their own with no shared storage (AEM needs a shared datastore for this).

All thumbnail sizes are rendered by one step: the workflow's steps run one after the other,
so one job per size would not run the sizes in parallel, it would only add a job round trip
(and, offloaded, a transfer) per size. The image is decoded once and reduced size by size,
largest first, each rendition encoded in memory.

``JOBMESH_EXAMPLE_OPENS=FILE``: every file a consumer opens while it runs is appended to FILE
(one JSON line per run: the node, the step, the paths), so a test can check that a consumer
touched nothing outside its own node's data directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
from typing import Any, Iterator

from PIL import ExifTags, Image

import jobmesh
from jobmesh.workflow import Step, Workflow

SIZES = [48, 140, 319]  # AEM's default thumbnail renditions (cq5dam.thumbnail.48.48 ...)
MAX_EXIF_VALUE = 200
Image.init()  # every image plugin imported now, not while a consumer runs (the opens check below)


# -- the opens check ---------------------------------------------------------------------------

_watch = threading.local()  # .paths: the list of the current run's opens (sync consumers: one thread each)
_write_lock = threading.Lock()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open":
        paths = getattr(_watch, "paths", None)
        if paths is not None and isinstance(args[0], (str, bytes, os.PathLike)):
            paths.append(os.fsdecode(args[0]))


if os.environ.get("JOBMESH_EXAMPLE_OPENS"):
    sys.addaudithook(_audit)


@contextlib.contextmanager
def watched_opens(job: jobmesh.Job, step: str) -> Iterator[None]:
    """Record the files opened in this thread while the block runs (when JOBMESH_EXAMPLE_OPENS is set)."""
    out = os.environ.get("JOBMESH_EXAMPLE_OPENS")
    if not out:
        yield
        return
    _watch.paths = paths = []
    try:
        yield
    finally:
        _watch.paths = None
        line = json.dumps({"node": job.target, "step": step, "job": job.id, "paths": paths})
        with _write_lock, open(out, "a") as f:
            f.write(line + "\n")


# -- the steps ------------------------------------------------------------------------------------

def _name(job: jobmesh.Job) -> str:
    name = job.properties.get("name")
    return name if isinstance(name, str) and name else job.id


def _exif(img: Image.Image) -> dict[str, str]:
    """EXIF tags as short strings (JSON-friendly, bounded)."""
    out: dict[str, str] = {}
    for tag, value in img.getexif().items():
        name = ExifTags.TAGS.get(tag, str(tag))
        if isinstance(value, bytes):
            value = value[:40].hex()
        out[name] = str(value)[:MAX_EXIF_VALUE]
    return out


@jobmesh.consumer("dam/asset/metadata")
def extract_metadata(job: jobmesh.Job, ctx: Any) -> Any:
    """Size, mode, format and EXIF of the image (a sync consumer: Pillow runs in the pool's threads)."""
    with watched_opens(job, "metadata"):
        if "image" not in job.payload:
            return ctx.result().message("the job needs the image as its payload 'image'").cancelled()
        path = ctx.payload("image")
        with Image.open(path) as img:
            meta = {"width": img.width, "height": img.height, "mode": img.mode, "format": img.format,
                    "exif": _exif(img), "bytes": path.stat().st_size}
    ctx.log("metadata of %s: %sx%s %s", _name(job), meta["width"], meta["height"], meta["format"])
    return (ctx.result().message(f"{meta['width']}x{meta['height']} {meta['format']}")
            .output(metadata=meta, metadata_by=job.target).succeeded())


@jobmesh.consumer("dam/asset/thumbnails")
def render_thumbnails(job: jobmesh.Job, ctx: Any) -> Any:
    """Every size in ``sizes`` (fit inside a square of that size, aspect kept), as PNG output payload."""
    sizes = sorted({int(s) for s in job.properties.get("sizes") or SIZES}, reverse=True)
    if not sizes or sizes[-1] < 1 or sizes[0] > 4096:
        return ctx.result().message(f"bad sizes {sizes}").cancelled()
    if "image" not in job.payload:
        return ctx.result().message("the job needs the image as its payload 'image'").cancelled()
    delay = float(job.properties.get("render_delay", 0) or 0)  # for demos and tests: make the step take a while
    ctx.init_progress(steps=len(sizes))
    renditions = []
    with watched_opens(job, "thumbnails"):
        with Image.open(ctx.payload("image")) as img:
            work = img.convert("RGBA") if img.mode not in ("RGB", "RGBA") else img.copy()
        for size in sizes:
            if ctx.is_stopped():
                return ctx.result().cancelled()
            work.thumbnail((size, size))  # in place, largest first: each size starts from the last
            buf = io.BytesIO()
            work.save(buf, format="PNG")
            name = f"thumbnail.{size}.png"
            ctx.output_payload(name, buf.getvalue())  # a re-run replaces it (outputs of the latest run)
            renditions.append({"size": size, "payload": name, "width": work.width, "height": work.height})
            ctx.increment_progress()
            if delay:
                time.sleep(delay / len(sizes))
    renditions.sort(key=lambda r: r["size"])
    return (ctx.result().message(f"{len(renditions)} renditions")
            .output(renditions=renditions, rendered_by=job.target).succeeded())


@jobmesh.consumer("dam/asset/manifest")
def write_manifest(job: jobmesh.Job, ctx: Any) -> Any:
    """The asset's manifest, as output payload ``manifest.json``: metadata, renditions (checked
    present: they are this step's input payload) and which node did what."""
    props = job.properties
    if "metadata" not in props or "renditions" not in props:
        return ctx.result().message("metadata or renditions missing from the input").cancelled()
    marker = props.get("jobmesh:workflow") or {}
    renditions = []
    with watched_opens(job, "manifest"):
        for r in props["renditions"]:
            ref = job.payload.get(r.get("payload", ""))
            if ref is None or ctx.payload(r["payload"]).stat().st_size != ref.size:
                return ctx.result().message(f"rendition {r.get('payload')} missing from the input").failed()
            renditions.append({**r, "id": ref.id, "bytes": ref.size})
        manifest = {
            "asset": _name(job),
            "image": job.payload["image"].id if "image" in job.payload else None,
            "workflow_id": marker.get("id"),
            "metadata": props["metadata"],
            "renditions": renditions,
            "steps": {"metadata": props.get("metadata_by"), "thumbnails": props.get("rendered_by"),
                      "manifest": job.target},
            "written": time.time(),
        }
        ctx.output_payload("manifest.json", json.dumps(manifest, indent=2).encode())
    return ctx.result().message("manifest.json").output(manifest="manifest.json").succeeded()


DAM_UPDATE_ASSET = Workflow(
    "dam-update-asset",
    [
        Step("dam/asset/metadata"),
        Step("dam/asset/thumbnails", properties={"sizes": SIZES}),
        Step("dam/asset/manifest", offloadable=False),
    ],
    description="extract metadata, render thumbnails (offloadable), write the manifest (on the origin); "
                "the image is the payload 'image'",
)

__all__ = ["DAM_UPDATE_ASSET", "SIZES", "extract_metadata", "render_thumbnails", "watched_opens", "write_manifest"]
