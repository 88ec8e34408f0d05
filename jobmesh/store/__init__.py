"""The embedded durable job store (SQLite, WAL, group commit)."""

from .schema import SCHEMA_VERSION, SchemaError, migrate
from .sqlite import Store, row_to_job

__all__ = ["SCHEMA_VERSION", "SchemaError", "Store", "migrate", "row_to_job"]
