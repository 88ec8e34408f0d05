"""Per-node offloading settings (pure, plus their small JSON file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobmesh.errors import ValidationError
from jobmesh.offloading import OffloadSettings


def test_enabled_disabled_and_exclusive_decide_what_runs_here() -> None:
    s = OffloadSettings(["**"], [])
    assert s.allows("a/b") and s.offload_topics(["a/**", "c"]) == ["a/**", "c"]
    s.apply("a/b", "disabled")
    assert not s.allows("a/b") and s.allows("a/c") and s.disabled_patterns() == ["a/b"]
    assert s.mode_of("a/b") == "disabled"
    s.apply("a/b", "enabled")
    assert s.allows("a/b") and s.disabled_patterns() == []
    s.apply("c", "exclusive")
    assert s.allows("c") and not s.allows("a/b")
    assert s.offload_topics(["a/**", "c"]) == ["c"] and s.enabled_patterns() == ["c"]
    assert s.mode_of("c") == "exclusive" and s.mode_of("a/b") == "disabled"
    s.apply("c", "enabled")  # leaving exclusive mode: everything enabled before is again
    assert s.allows("a/b") and s.allows("c") and s.exclusive is None


def test_narrow_enabled_patterns_are_advertised_with_the_consumer_patterns_they_fall_under() -> None:
    s = OffloadSettings(["media/render"], [])
    assert s.offload_topics(["media/**", "other"]) == ["media/render"]
    assert s.allows("media/render") and not s.allows("media/thumb") and not s.allows("other")


def test_bad_input_is_a_validation_error() -> None:
    s = OffloadSettings()
    with pytest.raises(ValidationError):
        s.apply("a/b", "sometimes")
    with pytest.raises(ValidationError):
        s.apply("", "enabled")
    with pytest.raises(ValidationError):
        OffloadSettings.from_json({"enabled": "everything"})


def test_saved_settings_win_over_the_configuration_and_a_broken_file_does_not(tmp_path: Path) -> None:
    s = OffloadSettings.load(tmp_path, ["**"], [])
    s.apply("x/y", "disabled")
    s.save(tmp_path)
    again = OffloadSettings.load(tmp_path, ["**"], ["other"])
    assert again.to_json() == {"enabled": ["**"], "disabled": ["x/y"], "exclusive": None}
    (tmp_path / "offloading.json").write_text("{not json")
    fallback = OffloadSettings.load(tmp_path, ["**"], ["other"])
    assert fallback.disabled == ["other"]
    assert OffloadSettings.load(None, ["a/*"], []).enabled == ["a/*"]
