"""Offloading: the rebalancer that moves queued jobs to nodes with spare capacity (DESIGN §2).

``policy`` holds the pure decisions; the actor around it reads the topology and the
local queues and hands the chosen jobs to the transfer actor.
"""
