"""Transfer: moving jobs, results, progress and stops between nodes (DESIGN §2, §3).

``protocol`` is the pure state machine of both sides; the actor around it does the I/O.
"""
