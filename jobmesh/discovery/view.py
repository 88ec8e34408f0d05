"""The topology as listeners and the HTTP API see it (Sling's TopologyView), pure data."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InstanceView:
    name: str
    incarnation: float
    endpoint: str | None = None  # transfer (ROUTER) endpoint
    pub_endpoint: str | None = None
    topics: tuple[str, ...] = ()  # consumer topic patterns
    offload_topics: tuple[str, ...] = ()  # consumer topics enabled for offloading
    capacity: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    leader: bool = False
    local: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "leader": self.leader,
            "local": self.local,
            "endpoint": self.endpoint,
            "topics": list(self.topics),
            "offload_topics": list(self.offload_topics),
            "capacity": dict(self.capacity),
            "properties": dict(self.properties),
        }


@dataclass(frozen=True)
class TopologyView:
    local: str
    leader: str
    instances: tuple[InstanceView, ...]
    current: bool = True  # False while a change is under way (after CHANGING, before CHANGED)

    def instance(self, name: str) -> InstanceView | None:
        for i in self.instances:
            if i.name == name:
                return i
        return None

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.instances]

    def to_json(self) -> dict[str, Any]:
        return {
            "local": self.local,
            "leader": self.leader,
            "current": self.current,
            "instances": [i.to_json() for i in self.instances],
        }


class TopologyEventType(str, enum.Enum):
    TOPOLOGY_INIT = "TOPOLOGY_INIT"
    TOPOLOGY_CHANGING = "TOPOLOGY_CHANGING"
    TOPOLOGY_CHANGED = "TOPOLOGY_CHANGED"
    PROPERTIES_CHANGED = "PROPERTIES_CHANGED"


@dataclass(frozen=True)
class TopologyEvent:
    type: TopologyEventType
    old_view: TopologyView | None
    new_view: TopologyView | None
