"""Replication as AEM does it: an ordered, retry-forever queue pushing content to a receiver."""
