"""Topic patterns: exact, one level (*), any depth (**), most specific wins."""

import pytest

from jobmesh.topics import TopicError, best_match, matches, specificity, validate_pattern, validate_topic


@pytest.mark.parametrize(
    "pattern,topic,expected",
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/b/*", "a/b/c", True),
        ("a/b/*", "a/b/c/d", False),
        ("a/b/*", "a/b", False),
        ("a/**", "a/b", True),
        ("a/**", "a/b/c/d", True),
        ("a/**", "a", False),
        ("a/**", "ab/c", False),
        ("a/b/*", "a/bc/d", False),
        ("**", "anything/at/all", True),
        ("*", "top", True),
        ("*", "top/level", False),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


def test_most_specific_wins() -> None:
    patterns = ["**", "a/**", "a/b/*", "a/b/c"]
    assert best_match(patterns, "a/b/c") == "a/b/c"
    assert best_match(patterns, "a/b/d") == "a/b/*"
    assert best_match(patterns, "a/x/y") == "a/**"
    assert best_match(patterns, "z") == "**"
    assert best_match(["a/*"], "b/c") is None
    assert specificity("a/b/c") > specificity("a/b/*") > specificity("a/**")


@pytest.mark.parametrize("bad", ["", "a//b", "/a", "a/", "a/*", "a/**/b", 5])
def test_invalid_topics(bad) -> None:
    with pytest.raises(TopicError):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["", "a//b", "a/**/b", "*/a"])
def test_invalid_patterns(bad: str) -> None:
    with pytest.raises(TopicError):
        validate_pattern(bad)


def test_long_topic_refused() -> None:
    with pytest.raises(TopicError):
        validate_topic("a/" * 300 + "b")
