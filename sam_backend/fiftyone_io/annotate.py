"""Get a video dataset ready for "draw on the frame, then Segment" in the FiftyOne App.

FiftyOne 1.22's sample modal has an Annotate tab that draws boxes and polylines on video
frames into frame-level fields, once three things hold: the videos have ``metadata``, the
field has a label schema that is active in the dataset's annotation settings, and the field
is active (checked) in the App's sidebar. :func:`prepare_prompt_fields` makes them hold for
two prompt fields and touches nothing else:

- ``frames.<boxes_field>`` (``Detections``): a box drawn around an object is a box prompt on
  that frame; its class names the object (free text, or one of the object names given).
- ``frames.<clicks_field>`` (``Polylines``): every vertex of a polyline is a click; class
  ``pos`` (on an object), ``neg`` (not on it) or, when object names are given, the name of
  the object the clicks are on.

Both schemas also offer the label's ``index`` (an integer): the object id, for when the
class alone cannot tell objects apart (two "player" boxes, or negative clicks on a frame
with several objects). :mod:`.prompts` turns what was drawn into prompts.

What the App saves (seen in FiftyOne 1.22.1): a drawn label is a keyframe
(``keyframe=True``) with an ``instance`` id, and the App copies it to the next 30 frames with
``keyframe=False`` to start a track; only keyframes are what the user drew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import fiftyone as fo

from ..errors import InvalidRequest

DEFAULT_BOXES_FIELD = "sam_boxes"
DEFAULT_CLICKS_FIELD = "sam_clicks"
CLICK_CLASSES = ("pos", "neg")  # read by prompts.py: "neg" is in its NEGATIVE_CLASSES
# FiftyOne's own choice (CHECKBOXES_OR_RADIO_THRESHOLD): up to 5 classes show as radio
# buttons (one click), more as a dropdown.
_RADIO_MAX_CLASSES = 5
# The object id a user may type in the App's label form; prompts.py reads it as the id.
_INDEX_ATTRIBUTE = {"name": "index", "type": "int", "component": "text"}
_FIELD_TYPES = {"boxes": fo.Detections, "clicks": fo.Polylines}


@dataclasses.dataclass(frozen=True)
class PreparedPromptFields:
    """What :func:`prepare_prompt_fields` did; every tuple is empty when nothing had to change."""

    boxes_field: str  # "frames.<name>"
    clicks_field: str
    metadata_computed: int = 0  # samples whose metadata was missing
    created: tuple[str, ...] = ()  # frame fields added to the dataset
    schemas_written: tuple[str, ...] = ()  # label schemas added or replaced
    schemas_activated: tuple[str, ...] = ()  # label schemas made active for annotation
    made_visible: tuple[str, ...] = ()  # fields added to the dataset's active App fields

    @property
    def changed(self) -> bool:
        return bool(self.metadata_computed or self.created or self.schemas_written
                    or self.schemas_activated or self.made_visible)

    def summary(self) -> str:
        if not self.changed:
            return f"{self.boxes_field} and {self.clicks_field} were already ready for drawing"
        parts = []
        if self.created:
            parts.append("created " + ", ".join(self.created))
        if self.metadata_computed:
            parts.append(f"computed metadata for {self.metadata_computed} sample(s)")
        if self.schemas_written:
            parts.append("wrote label schemas for " + ", ".join(self.schemas_written))
        if self.schemas_activated:
            parts.append("activated " + ", ".join(self.schemas_activated) + " for annotation")
        if self.made_visible:
            parts.append("made " + ", ".join(self.made_visible) + " active in the App")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "changed": self.changed, "summary": self.summary()}


def box_schema(classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Label schema of the boxes field: free-text class, or a choice of the object names."""
    schema: dict[str, Any] = {"type": "detections", "attributes": [dict(_INDEX_ATTRIBUTE)]}
    names = _clean_classes(classes)
    if names:
        schema["component"] = "radio" if len(names) <= _RADIO_MAX_CLASSES else "dropdown"
        schema["classes"] = names
    else:
        schema["component"] = "text"  # the App then shows a text box for the class
    return schema


def click_schema(classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Label schema of the clicks field: "pos" (the default) / "neg", plus the object names."""
    names = list(CLICK_CLASSES) + [c for c in _clean_classes(classes) if c.lower() not in CLICK_CLASSES]
    return {
        "type": "polylines",
        "component": "radio" if len(names) <= _RADIO_MAX_CLASSES else "dropdown",
        "classes": names,
        "default": CLICK_CLASSES[0],
        "attributes": [dict(_INDEX_ATTRIBUTE)],
    }


def check_prompt_fields(dataset: fo.Dataset, *, boxes_field: str = DEFAULT_BOXES_FIELD,
                        clicks_field: str = DEFAULT_CLICKS_FIELD) -> dict[str, str]:
    """What stops :func:`prepare_prompt_fields`, keyed by the argument to fix ("dataset",
    "boxes_field", "clicks_field"); empty = it can run. Reads only."""
    if dataset.media_type != "video":
        return {"dataset": f"dataset {dataset.name!r} holds {dataset.media_type} samples; prompt fields are for videos"}
    problems: dict[str, str] = {}
    sample_fields = dataset.get_field_schema()
    frame_fields = dataset.get_frame_field_schema()
    for role, field in (("boxes", boxes_field), ("clicks", clicks_field)):
        key, name, wanted = f"{role}_field", _plain_name(field), _FIELD_TYPES[role]
        existing = frame_fields.get(name)
        doc_type = getattr(existing, "document_type", None)
        if not name or "." in name or name.startswith("_"):
            problems[key] = f"{key} {field!r} must be a plain frame field name like 'sam_{role}'"
        elif name in sample_fields:
            problems[key] = f"{name!r} is a sample-level field of {dataset.name!r}; pick another {key}"
        elif existing is not None and doc_type is not wanted:
            problems[key] = (
                f"frames.{name} already exists as {type(existing).__name__}({getattr(doc_type, '__name__', '')}), "
                f"not {wanted.__name__}; pick another {key} or delete that field"
            )
    if not problems and _plain_name(boxes_field) == _plain_name(clicks_field):
        problems["clicks_field"] = f"boxes and clicks need two different fields (both are {_plain_name(boxes_field)!r})"
    return problems


def prepare_prompt_fields(samples: fo.core.collections.SampleCollection, *,
                          boxes_field: str = DEFAULT_BOXES_FIELD, clicks_field: str = DEFAULT_CLICKS_FIELD,
                          classes: Sequence[str] | None = None) -> PreparedPromptFields:
    """Make ``frames.<boxes_field>`` and ``frames.<clicks_field>`` drawable in the App's Annotate tab.

    ``samples`` is a video dataset or a view of one: metadata is computed for its samples
    that lack it; fields and schemas belong to the dataset (the source dataset of a clips or
    frames view, whose metadata is then filled for all its videos). ``classes`` (object names, e.g.
    ``["player", "ball"]``) become the choices for a box's class and extra choices for clicks;
    without them a box's class is free text. Idempotent: a second call changes nothing.
    Raises :class:`InvalidRequest` (nothing changed) when a field exists with another type.
    """
    dataset = samples._root_dataset
    if samples._is_generated:  # clips/frames/patches: the videos are the source dataset's samples
        samples = dataset
    problems = check_prompt_fields(dataset, boxes_field=boxes_field, clicks_field=clicks_field)
    if problems:
        raise InvalidRequest(list(problems.values()))
    fields = {"boxes": _plain_name(boxes_field), "clicks": _plain_name(clicks_field)}
    paths = {role: f"frames.{name}" for role, name in fields.items()}

    missing = samples.exists("metadata", False)
    metadata_computed = len(missing)
    if metadata_computed:
        missing.compute_metadata()  # the Annotate tab needs frame size and rate

    created = []
    for role, name in fields.items():
        if not dataset.has_frame_field(name):
            dataset.add_frame_field(name, fo.EmbeddedDocumentField, embedded_doc_type=_FIELD_TYPES[role])
            created.append(paths[role])
    if created:
        # The in-memory field objects of just-added fields lack their label subfields (e.g.
        # ``index``) until the dataset is reloaded, and schema validation reads them.
        dataset.reload()

    wanted = {paths["boxes"]: box_schema(classes), paths["clicks"]: click_schema(classes)}
    stored = dataset.label_schemas
    written = []
    for path, schema in wanted.items():
        if stored.get(path) != schema:
            dataset.update_label_schema(path, schema)  # validates; other fields' schemas untouched
            written.append(path)

    active = dataset.active_label_schemas
    activate = [p for p in wanted if p not in active]
    if activate:
        dataset.activate_label_schemas(activate)

    made_visible = _make_active_in_app(dataset, list(wanted))
    return PreparedPromptFields(
        boxes_field=paths["boxes"], clicks_field=paths["clicks"], metadata_computed=metadata_computed,
        created=tuple(created), schemas_written=tuple(written), schemas_activated=tuple(activate),
        made_visible=tuple(made_visible),
    )


def _make_active_in_app(dataset: fo.Dataset, paths: list[str]) -> list[str]:
    """Add ``paths`` to the dataset's default active App fields, leaving every other path as it was.

    No setting (None) means the App's default, every non-dense label field, ours included:
    nothing to do. An exclusion list must not exclude ours; an inclusion list must hold ours.
    """
    config = dataset.app_config.active_fields
    if config is None:
        return []
    current = list(config.paths or [])
    if config.exclude:
        changed = [p for p in paths if p in current]
        config.paths = [p for p in current if p not in paths]
    else:
        changed = [p for p in paths if p not in current]
        config.paths = current + changed
    if changed:
        dataset.save()
    return changed


def _plain_name(field: str) -> str:
    return (field or "").strip().removeprefix("frames.")


def _clean_classes(classes: Sequence[str] | None) -> list[str]:
    if isinstance(classes, str):
        classes = classes.split(",")
    seen: dict[str, None] = {}
    for c in classes or ():
        name = str(c).strip()
        if name:
            seen.setdefault(name, None)
    return list(seen)
