"""The engine of a node: a pure core (``core.py``: events in, instructions out) and the actor
that does its I/O (``actor.py``). See ``docs/INTERNALS.md`` for a job's path through it."""
