"""Configuration: TOML, every field optional, clear errors."""

import pytest

from jobmesh.config import ConfigError, NodeConfig, QueueConfig, load_config, next_port_endpoint


def test_defaults_follow_sling() -> None:
    cfg = NodeConfig()
    main = cfg.main_queue()
    assert main.name == "main" and main.type == "unordered"
    assert main.retries == 10 and main.retry_delay == 2.0 and main.keep_jobs is False
    assert cfg.discovery.heartbeat_interval == 0.5 and cfg.discovery.heartbeat_timeout == 2.5
    assert cfg.http == "127.0.0.1:8471"
    assert cfg.pub_endpoint == "tcp://127.0.0.1:5702"


def test_load_full_file(tmp_path) -> None:
    p = tmp_path / "node.toml"
    p.write_text(
        """
[node]
name = "a"
capacity = 4
seeds = ["tcp://127.0.0.1:6001"]
[discovery]
heartbeat_interval = 0.1
heartbeat_timeout = 0.5
[[queue]]
name = "ordered"
topics = ["replicate/**"]
type = "ordered"
retries = -1
retry_backoff = 2.0
[[queue]]
name = "main"
max_parallel = 4
[offloading]
disabled_topics = ["local/*"]
[security]
http_token = "s3cret"
"""
    )
    cfg = load_config(p)
    assert cfg.name == "a" and cfg.capacity == 4
    assert cfg.main_queue().max_parallel == 4
    assert [q.name for q in cfg.all_queues()] == ["main", "ordered"]
    q = cfg.all_queues()[1]
    assert q.type == "ordered" and q.retries == -1 and q.parallelism() == 1
    assert cfg.offloading.disabled_topics == ["local/*"]
    assert cfg.security.http_token == "s3cret"


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"nodes": {}}, "unknown section"),
        ({"node": {"nme": "x"}}, "unknown field"),
        ({"node": {"capacity": "lots"}}, "expected a number"),
        ({"node": {"capacity": 0}}, "capacity"),
        ({"queue": [{"name": "q", "topics": ["a/**"], "type": "fifo"}]}, "type must be"),
        ({"queue": [{"name": "q"}]}, "at least one pattern"),
        ({"queue": [{"name": "q", "topics": ["a/**/b"]}]}, "wildcard"),
        ({"queue": [{"name": "q", "topics": ["a"], "retries": -2}]}, "retries"),
        ({"queue": [{"name": "q", "topics": ["a"]}, {"name": "q", "topics": ["b"]}]}, "twice"),
        ({"discovery": {"heartbeat_interval": 3, "heartbeat_timeout": 2}}, "heartbeat"),
        ({"discovery": {"protocol": "gossip"}}, "protocol must be one of heartbeat, swim"),
        ({"discovery": {"protocol": 1}}, "protocol must be one of"),
        ({"queue": {"name": "q"}}, "array of tables"),
        ({"queue": [{"name": "q", "topics": ["a"], "keep_jobs": 1}]}, "true or false"),
    ],
)
def test_bad_config_is_explained(raw, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        NodeConfig.from_dict(raw)


def test_bad_toml_and_missing_file(tmp_path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[node\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_parallelism() -> None:
    assert QueueConfig(max_parallel=-1).parallelism(cores=8) == 8
    assert QueueConfig(max_parallel=0.5).parallelism(cores=8) == 4
    assert QueueConfig(max_parallel=0.1).parallelism(cores=2) == 1
    assert QueueConfig(max_parallel=3).parallelism(cores=8) == 3
    assert QueueConfig(type="ordered", max_parallel=8, topics=["a"]).parallelism() == 1


def test_next_port() -> None:
    assert next_port_endpoint("tcp://127.0.0.1:5701") == "tcp://127.0.0.1:5702"
    with pytest.raises(ConfigError):
        next_port_endpoint("tcp://nohost")


def test_discovery_protocol_defaults_to_heartbeat_and_accepts_swim() -> None:
    assert NodeConfig.from_dict({}).discovery.protocol == "heartbeat"
    assert NodeConfig.from_dict({"discovery": {"protocol": "swim"}}).discovery.protocol == "swim"


def test_queue_timeout_is_a_positive_number_of_seconds() -> None:
    cfg = NodeConfig.from_dict({"queue": [{"name": "main", "timeout": 30}]})
    assert cfg.main_queue().timeout == 30 and QueueConfig().timeout is None
    with pytest.raises(ConfigError, match="timeout must be a number of seconds above 0"):
        NodeConfig.from_dict({"queue": [{"name": "main", "timeout": 0}]}).validate()
    with pytest.raises(ConfigError, match="timeout must be a number of seconds above 0"):
        NodeConfig.from_dict({"queue": [{"name": "main", "timeout": "30"}]}).validate()


def test_retry_jitter_is_a_boolean_or_unset() -> None:
    assert QueueConfig().retry_jitter is None
    assert NodeConfig.from_dict({"queue": [{"name": "main", "retry_jitter": False}]}).main_queue().retry_jitter is False
    with pytest.raises(ConfigError, match="retry_jitter: expected true or false|retry_jitter must be true or false"):
        NodeConfig.from_dict({"queue": [{"name": "main", "retry_jitter": "yes"}]}).validate()
