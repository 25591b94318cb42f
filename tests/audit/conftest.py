"""The audit tests use the settlement tests' fixtures (a migrated SQLite market DB, a funder, the operator)."""

from tests.settlement.conftest import db, engine, funder, operator  # noqa: F401
