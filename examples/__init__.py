"""Runnable jobmesh examples (see each folder's README section in docs/workflows.md)."""
