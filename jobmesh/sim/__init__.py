"""Deterministic simulation: pure, seeded pieces that run jobmesh's real code without sockets or clocks.

- ``network``: ``SimNetwork``, a discrete-event network with per-link latency, loss,
  duplication, reordering, partitions and clogs (payload-agnostic).
- ``membership``: the membership cores alone (heartbeat or SWIM) on that network, as
  ``benchmarks/membership_sim.py`` and the tests drive them.
"""

from .network import Delivery, LinkSpec, NetTotals, NodeStats, Partition, SimNetwork

__all__ = ["Delivery", "LinkSpec", "NetTotals", "NodeStats", "Partition", "SimNetwork"]
