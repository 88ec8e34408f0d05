"""The asset processing example on a real 3-node mesh of ``jobmesh node`` processes: each node in
a working directory of its own, the image and its renditions carried as job payload (no shared
folder; every file a consumer opened is checked to be in its own node's data directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="the examples need Pillow (pip install -e .[examples])")

from examples.asset_processing.run import check_manifest, draw_images, out_dir, run  # noqa: E402

pytestmark = pytest.mark.slow


def test_drawn_images_and_the_manifest_check(tmp_path: Path):
    drawn = draw_images(tmp_path, 3)
    assert [d["format"] for d in drawn] == ["PNG", "JPEG", "PNG"]
    assert check_manifest(drawn[0], [48], tmp_path) == [f"{Path(drawn[0]['path']).name}: no manifest"]
    bad = {"metadata": {"width": 1, "height": 1, "format": "PNG"}, "renditions": []}
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    problems = check_manifest(drawn[0], [48], tmp_path)
    assert any("metadata" in p for p in problems) and any("renditions" in p for p in problems)


async def test_every_image_gets_metadata_thumbnails_and_a_manifest(tmp_path: Path):
    summary = await run(images=5, workdir=tmp_path, timeout=60.0)
    assert summary["ok"], summary
    assert summary["workflows"] == {"COMPLETED": 5} and summary["manifest_problems"] == []
    # the check of the opens was on (every step opened the image or a rendition) and found nothing
    assert summary["files_opened_by_consumers"] >= 5 * 3
    assert summary["steps_ran_on"]["manifest"] == {"dam-a": 5}  # the local step stays on the origin
    for step in ("metadata", "thumbnails"):  # offloadable: wherever, but every one ran on a mesh node
        assert sum(summary["steps_ran_on"][step].values()) == 5
        assert set(summary["steps_ran_on"][step]) <= {"dam-a", "dam-b", "dam-c"}
    drawn = draw_images(tmp_path / "again", 2)  # the same images again: where the run put the outputs
    manifest = json.loads((out_dir(tmp_path, drawn[1]) / "manifest.json").read_text())
    assert manifest["metadata"]["exif"]["Make"] == "jobmesh example camera"
    assert [r["size"] for r in manifest["renditions"]] == [48, 140, 319]
    assert manifest["workflow_id"] and manifest["image"].startswith("sha256:")
    assert not list((tmp_path / "assets").glob("*.manifest.json"))  # nothing written next to the assets
    for name in ("dam-a", "dam-b", "dam-c"):  # each node in its own directory, its data inside it
        assert (tmp_path / name / "data").is_dir()


def test_the_opens_check_names_a_file_outside_the_nodes_data(tmp_path: Path):
    from examples.asset_processing.run import MeshNode, foreign_opens

    node = MeshNode(tmp_path, "dam-x", [], [], home=tmp_path / "dam-x")
    (tmp_path / "dam-x").mkdir()
    inside = node.data_dir / "blobs" / "sha256" / "ab" / "x"
    lines = [{"node": "dam-x", "step": "metadata", "job": "j1", "paths": [str(inside)]},
             {"node": "dam-x", "step": "thumbnails", "job": "j2", "paths": [str(tmp_path / "assets" / "a.png"),
                                                                            str(node.data_dir / ".." / "x")]}]
    (tmp_path / "dam-x" / "opens.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    seen, outside = foreign_opens(node)
    assert seen == 3 and outside == [f"dam-x: {tmp_path / 'assets' / 'a.png'}", f"dam-x: {node.data_dir / '..' / 'x'}"]
