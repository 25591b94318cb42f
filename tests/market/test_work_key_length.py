"""An inference stage's work key (`run_id/stage/worker`, ~82 characters) fits the migrated columns on every database."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, inspect


def test_inference_work_key_fits_the_migrated_columns(db_engine: Engine) -> None:
    key = f"{uuid.uuid4()}/12/0x{'ab' * 20}"  # the shape InferenceWorkSource._key builds
    insp = inspect(db_engine)
    for table in ("work_parts", "verification_checks"):
        (col,) = [c for c in insp.get_columns(table) if c["name"] == "work_key"]
        assert col["type"].length >= len(key), (table, col["type"])
