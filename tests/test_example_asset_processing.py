"""The asset processing example on a real 3-node mesh of ``jobmesh node`` processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="the examples need Pillow (pip install -e .[examples])")

from examples.asset_processing.run import check_manifest, draw_images, run  # noqa: E402

pytestmark = pytest.mark.slow


def test_drawn_images_and_the_manifest_check(tmp_path: Path):
    drawn = draw_images(tmp_path, 3)
    assert [d["format"] for d in drawn] == ["PNG", "JPEG", "PNG"]
    assert check_manifest(drawn[0], [48]) == [f"{Path(drawn[0]['path']).name}: no manifest"]
    bad = {"metadata": {"width": 1, "height": 1, "format": "PNG"}, "renditions": []}
    Path(drawn[0]["path"] + ".manifest.json").write_text(json.dumps(bad))
    problems = check_manifest(drawn[0], [48])
    assert any("metadata" in p for p in problems) and any("renditions" in p for p in problems)


async def test_every_image_gets_metadata_thumbnails_and_a_manifest(tmp_path: Path):
    summary = await run(images=5, workdir=tmp_path, timeout=60.0)
    assert summary["ok"], summary
    assert summary["workflows"] == {"COMPLETED": 5} and summary["manifest_problems"] == []
    assert summary["steps_ran_on"]["manifest"] == {"dam-a": 5}  # the local step stays on the origin
    for step in ("metadata", "thumbnails"):  # offloadable: wherever, but every one ran on a mesh node
        assert sum(summary["steps_ran_on"][step].values()) == 5
        assert set(summary["steps_ran_on"][step]) <= {"dam-a", "dam-b", "dam-c"}
    manifest = json.loads(next((tmp_path / "assets").glob("asset-001.jpg.manifest.json")).read_text())
    assert manifest["metadata"]["exif"]["Make"] == "jobmesh example camera"
    assert [r["size"] for r in manifest["renditions"]] == [48, 140, 319]
    assert manifest["workflow_id"]
