"""A MongoDB database of its own for one benchmark process, dropped when it ends.

FiftyOne reads its settings when first imported: import this module before fiftyone.
A database name already set in the environment is the user's: it is used and never dropped.
"""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
OWN_DATABASE = "FIFTYONE_DATABASE_NAME" not in os.environ
if OWN_DATABASE:
    os.environ["FIFTYONE_DATABASE_NAME"] = f"sam31_bench_{uuid.uuid4().hex[:8]}"


def drop_own_database() -> None:
    """Drop the database this module named (call after the benchmark's datasets are deleted)."""
    if OWN_DATABASE:
        import fiftyone.core.odm as foo

        foo.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])
