"""DAM Update Asset on jobmesh: extract metadata, render thumbnails, write a manifest.

Load it on every node of a mesh:

    jobmesh node --consumers examples.asset_processing.consumers ...

and start ``dam-update-asset`` with ``{"path": "/abs/path/to/image.png"}``. The first
two steps are offloadable (CPU work: any node with spare slots may run them); the
manifest step is local (``offloadable=False``: it writes next to the asset on the
workflow's origin node). Each step returns its findings as output properties, which
the workflow merges into the next step's input.

All thumbnail sizes are rendered by one step: the workflow's steps run one after the
other, so one job per size would not run the sizes in parallel, it would only add a
job round trip (and, offloaded, a transfer) per size. The image is decoded once and
reduced size by size, largest first.

Files: the nodes of this example share one disk (one machine). On machines of their
own they need the asset folder on shared storage, as AEM's offloading needs a shared
datastore; the steps only exchange paths and small JSON.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image

import jobmesh
from jobmesh.workflow import Step, Workflow

SIZES = [48, 140, 319]  # AEM's default thumbnail renditions (cq5dam.thumbnail.48.48 ...)
MAX_EXIF_VALUE = 200


def _image_path(job: jobmesh.Job) -> Path:
    path = job.properties.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError("the job needs a 'path' property with the image file")
    return Path(path)


def _renditions_dir(job: jobmesh.Job, image: Path) -> Path:
    out = job.properties.get("renditions_dir")
    return Path(out) if isinstance(out, str) and out else image.parent / f"{image.name}.renditions"


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
    path = _image_path(job)
    if not path.is_file():
        return ctx.result().message(f"no such image: {path}").cancelled()  # a retry cannot fix it
    with Image.open(path) as img:
        meta = {"width": img.width, "height": img.height, "mode": img.mode, "format": img.format,
                "exif": _exif(img), "bytes": path.stat().st_size}
    ctx.log("metadata of %s: %sx%s %s", path.name, meta["width"], meta["height"], meta["format"])
    return (ctx.result().message(f"{meta['width']}x{meta['height']} {meta['format']}")
            .output(metadata=meta, metadata_by=job.target).succeeded())


@jobmesh.consumer("dam/asset/thumbnails")
def render_thumbnails(job: jobmesh.Job, ctx: Any) -> Any:
    """Every size in ``sizes`` (fit inside a square of that size, aspect kept), as PNG."""
    path = _image_path(job)
    sizes = sorted({int(s) for s in job.properties.get("sizes") or SIZES}, reverse=True)
    if not sizes or sizes[-1] < 1 or sizes[0] > 4096:
        return ctx.result().message(f"bad sizes {sizes}").cancelled()
    delay = float(job.properties.get("render_delay", 0) or 0)  # for demos and tests: make the step take a while
    out_dir = _renditions_dir(job, path)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx.init_progress(steps=len(sizes))
    renditions = []
    with Image.open(path) as img:
        work = img.convert("RGBA") if img.mode not in ("RGB", "RGBA") else img.copy()
    for size in sizes:
        if ctx.is_stopped():
            return ctx.result().cancelled()
        work.thumbnail((size, size))  # in place, largest first: each size starts from the last
        target = out_dir / f"thumbnail.{size}.png"
        tmp = target.with_suffix(".png.tmp")
        work.save(tmp, format="PNG")
        os.replace(tmp, target)  # a re-run after a crash overwrites, never leaves half a file
        renditions.append({"size": size, "path": str(target), "width": work.width, "height": work.height})
        ctx.increment_progress()
        if delay:
            time.sleep(delay / len(sizes))
    renditions.sort(key=lambda r: r["size"])
    return (ctx.result().message(f"{len(renditions)} renditions")
            .output(renditions=renditions, rendered_by=job.target).succeeded())


@jobmesh.consumer("dam/asset/manifest")
def write_manifest(job: jobmesh.Job, ctx: Any) -> Any:
    """The asset's manifest next to it: metadata, renditions, and which node did what."""
    path = _image_path(job)
    props = job.properties
    if "metadata" not in props or "renditions" not in props:
        return ctx.result().message("metadata or renditions missing from the input").cancelled()
    marker = props.get("jobmesh:workflow") or {}
    manifest = {
        "asset": str(path),
        "workflow_id": marker.get("id"),
        "metadata": props["metadata"],
        "renditions": props["renditions"],
        "steps": {"metadata": props.get("metadata_by"), "thumbnails": props.get("rendered_by"),
                  "manifest": job.target},
        "written": time.time(),
    }
    target = path.parent / f"{path.name}.manifest.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, target)
    return ctx.result().message(f"manifest {target.name}").output(manifest=str(target)).succeeded()


DAM_UPDATE_ASSET = Workflow(
    "dam-update-asset",
    [
        Step("dam/asset/metadata"),
        Step("dam/asset/thumbnails", properties={"sizes": SIZES}),
        Step("dam/asset/manifest", offloadable=False),
    ],
    description="extract metadata, render thumbnails (offloadable), write the manifest (on the origin)",
)
