"""Scheduled jobs: ``schedule`` (pure rules: forms, ids, fire times) and ``actor`` (timer, persistence, replication)."""
