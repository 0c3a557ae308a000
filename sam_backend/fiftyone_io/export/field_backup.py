"""Undo for a write that spans several videos (an import): the frame field's values on
those videos are copied aside server-side before the first write, and put back if the
whole operation does not finish.

The writer is all or nothing per video; this makes an import all or nothing across
videos too, also when the failure is not in the file (a cancel from the progress
callback, a database error in the fourth video). Only the named field (and the frames'
``last_modified_at``) is restored; frame documents the import created are removed, as
they hold nothing else. The copy lives in its own collection, dropped at the end.

Each copy is registered with its owner process: if that process is killed midway, the
next import (:func:`recover_killed`) finds the copy, puts the field back as it was before
the killed import, and drops it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from bson import ObjectId

import fiftyone as fo
import fiftyone.core.frame as fofr
import fiftyone.core.odm as foo
import fiftyone.core.sample as fos

from ...owners import current_owner, owner_alive

BACKUP_PREFIX = "sam31_field_backup_"
REGISTRY = "sam31_field_backups"  # one document per live copy: whose, of what


class FieldBackup:
    """``with FieldBackup(dataset, field, sample_ids) as backup: ...; backup.commit()``:
    leaving the block without ``commit()`` restores the field on every sample that was
    passed, as it was on entry."""

    def __init__(self, dataset: fo.Dataset, field: str, sample_ids: Iterable[str], *, _name: str | None = None,
                 _field_existed: bool | None = None) -> None:
        self.dataset, self.field = dataset, field
        self.sample_ids = [ObjectId(s) for s in sample_ids]
        db = foo.get_db_conn()
        self._frames = db[dataset._frame_collection_name]
        self._backup = db[_name or f"{BACKUP_PREFIX}{uuid.uuid4().hex}"]
        self._registry = db[REGISTRY]
        existed = dataset.get_frame_field_schema().get(field) is not None
        self._field_existed = existed if _field_existed is None else _field_existed
        self._committed = False

    def __enter__(self) -> FieldBackup:
        field = self.field
        self._registry.insert_one({
            "_id": self._backup.name, "owner": current_owner(), "dataset": self.dataset.name, "field": field,
            "field_existed": self._field_existed, "sample_ids": self.sample_ids,
        })
        # A new field is removed from the schema on restore, which FiftyOne does by touching
        # every frame of the dataset: then every frame's modification time is kept.
        scope = {"_sample_id": {"$in": self.sample_ids}} if self._field_existed else {}
        self._frames.aggregate([
            {"$match": scope},
            {"$project": {
                "_id": 1, "_sample_id": 1, "last_modified_at": 1,
                "had": {"$ne": [{"$type": f"${field}"}, "missing"]}, "value": f"${field}",
            }},
            {"$out": self._backup.name},
        ])
        return self

    def commit(self) -> None:
        self._committed = True

    def __exit__(self, *exc: object) -> None:
        try:
            if not self._committed:
                self._restore()
        finally:
            self._drop()

    def _drop(self) -> None:
        self._backup.drop()
        self._registry.delete_one({"_id": self._backup.name})

    def _restore(self) -> None:
        field, frames = self.field, self._frames.name
        if not self._field_existed and self.dataset.get_frame_field_schema().get(field) is not None:
            self.dataset.delete_frame_field(field)  # no frame held it before: drop it everywhere
        # Frames that held the field: their old value and modification time back.
        self._backup.aggregate([
            {"$match": {"had": True}},
            {"$project": {"_id": 1, field: "$value", "last_modified_at": 1}},
            {"$merge": {"into": frames, "on": "_id", "whenMatched": "merge", "whenNotMatched": "discard"}},
        ])
        # Frames that existed without it: remove what the import set.
        self._backup.aggregate([
            {"$match": {"had": False}},
            {"$project": {"_id": 1, "last_modified_at": 1}},
            {"$merge": {"into": frames, "on": "_id", "whenNotMatched": "discard", "whenMatched": [
                {"$unset": field}, {"$set": {"last_modified_at": "$$new.last_modified_at"}}]}},
        ])
        # Frames the import created: they hold nothing but the imported field.
        created = [d["_id"] for d in self._frames.aggregate([
            {"$match": {"_sample_id": {"$in": self.sample_ids}}},
            {"$lookup": {"from": self._backup.name, "localField": "_id", "foreignField": "_id", "as": "old"}},
            {"$match": {"old": {"$size": 0}}},
            {"$project": {"_id": 1}},
        ])]
        if created:
            self._frames.delete_many({"_id": {"$in": created}})
        ids = [str(s) for s in self.sample_ids]
        fos.Sample._reload_docs(self.dataset._sample_collection_name, sample_ids=ids, hard=True)
        fofr.Frame._reload_docs(self.dataset._frame_collection_name, sample_ids=ids, hard=True)


def recover_killed() -> list[str]:
    """Undo imports whose process was killed midway (their copy is still registered and
    their owner is gone): each field goes back to how it was before. Returns what was
    restored, as ``dataset/field``."""
    registry = foo.get_db_conn()[REGISTRY]
    restored = []
    for doc in list(registry.find()):
        if owner_alive(doc.get("owner")) is not False:
            continue  # running, or on another host
        if fo.dataset_exists(doc["dataset"]):
            backup = FieldBackup(fo.load_dataset(doc["dataset"]), doc["field"], [str(s) for s in doc["sample_ids"]],
                                 _name=doc["_id"], _field_existed=doc["field_existed"])
            backup._restore()
            backup._drop()
            restored.append(f"{doc['dataset']}/{doc['field']}")
        else:
            foo.get_db_conn()[doc["_id"]].drop()
            registry.delete_one({"_id": doc["_id"]})
    return restored
