"""Reading fal's answers: exactly the shapes in ``endpoints.py``, nothing else.

A stored result (``{"payload": <fal's JSON>, "attachments": {...}}``, as the journal keeps
it) is read by the decoder of its endpoint's output shape:

- ``union_rle``: ``rle`` is a list with one string per frame (empty string or None:
  nothing on that frame), or one string for a one-frame video. With
  ``rle_return_mode="url"`` (SAM 3) the RLE comes back as a file instead; which field
  carries it is **unconfirmed**, so a File object or URL in ``rle`` is accepted, downloaded
  with the result (fal keeps results for minutes) and read as JSON (list or string) or
  as text, one line per frame. A per-frame ``metadata[i].score`` is kept as the
  confidence when ``metadata`` has one entry per frame; boxes are computed from the masks
  (fal's ``box`` convention is disputed, see the reference).
- ``objects_rle``: ``frames[{frame_index, objects[{track_id, rle}]}]`` with ``width``,
  ``height``, ``num_frames``.
- ``video``: no labels; the rendered files are kept and :class:`NoLabelsInResponse` says
  that labels need an RLE endpoint.

Structure is checked when a result is opened; masks are decoded one frame at a time
while the frames stream. Every problem raises :class:`UnexpectedResponse` naming the
request id and the frame; the raw payload stays in the journal, so ``sam31-video
redecode`` can read it again after a fix, without paying.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import UnexpectedResponse
from . import rle as rle_format
from .endpoints import Endpoint
from .rle import RleLayout

FILE_KEYS = ("video", "boundingbox_frames_zip")
MAX_TRACK_ID = 2**31 - 1


class NoLabelsInResponse(UnexpectedResponse):
    """The endpoint returned only rendered media, no per-frame masks. ``files`` maps
    output name -> URL (the rendered video, the overlay zip)."""

    def __init__(self, message: str, files: Mapping[str, str] | None = None) -> None:
        self.files = dict(files or {})
        super().__init__(message)


def file_url(value: Any) -> str | None:
    """A URL from a fal File object (``{"url": ...}``) or a bare http(s) string."""
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return value["url"]
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    return None


def output_files(payload: Mapping[str, Any]) -> dict[str, str]:
    return {key: url for key in FILE_KEYS if (url := file_url(payload.get(key)))}


def files_to_download(payload: Any) -> dict[str, str]:
    """Files whose content the decoder needs, fetched right after the result."""
    if isinstance(payload, dict) and (url := file_url(payload.get("rle"))):
        return {"rle": url}
    return {}


def read_attachment(data: bytes) -> Any:
    """A downloaded RLE file: JSON when it parses, else text lines (one per frame)."""
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.splitlines()


@dataclasses.dataclass(frozen=True)
class FrameMask:
    fal_track_id: int | None  # None: a union mask (the request's one track)
    mask: np.ndarray
    score: float | None


class DecodedResult:
    """One request's answer, checked; :meth:`frame` decodes one frame's masks."""

    def __init__(self, kind: str, request_id: str, frame_count: int, height: int, width: int, layout: RleLayout,
                 files: dict[str, str], per_frame: list[list[tuple[int | None, str]]], scores: list[float | None]) -> None:
        self.kind, self.request_id, self.frame_count = kind, request_id, frame_count
        self.height, self.width, self.layout, self.files = height, width, layout, files
        self._per_frame, self._scores = per_frame, scores

    def track_ids(self) -> list[int]:
        return sorted({tid for items in self._per_frame for tid, _ in items if tid is not None})

    def frame(self, index: int) -> list[FrameMask]:
        out = []
        for tid, text in self._per_frame[index]:
            try:
                mask = rle_format.decode(text, self.height, self.width, self.layout)
            except rle_format.RleFormatError as exc:
                what = f"track {tid}" if tid is not None else "the mask"
                raise UnexpectedResponse(f"fal request {self.request_id}, frame {index}, {what}: unreadable RLE: {exc} "
                                         f"(raw payload kept in the journal; see sam31-video redecode)") from None
            out.append(FrameMask(tid, mask, self._scores[index]))
        return out


def _fail(request_id: str, message: str) -> UnexpectedResponse:
    return UnexpectedResponse(f"fal request {request_id}: {message} (raw payload kept in the journal)")


def decode_result(stored: Mapping[str, Any], spec: Endpoint, *, layout: RleLayout, frame_count: int, height: int,
                  width: int, request_id: str) -> DecodedResult:
    """Check ``stored`` against the shape of ``spec`` and the video that was sent."""
    payload = stored.get("payload")
    if not isinstance(payload, dict):
        raise _fail(request_id, f"the result is not a JSON object ({type(payload).__name__})")
    files = output_files(payload)
    if spec.output == "objects_rle":
        return _objects(payload, layout, frame_count, height, width, request_id, files)
    if spec.output == "union_rle" and "rle" in payload:
        return _union(payload, stored.get("attachments") or {}, layout, frame_count, height, width, request_id, files)
    detail = ", ".join(f"{k}: {v}" for k, v in files.items()) or "nothing"
    hint = " (fal-ai/sam-3/video-rle answers RLE only with return_rle=true)" if spec.output == "union_rle" else ""
    raise NoLabelsInResponse(
        f"{spec.id} returned only rendered media ({detail}), no per-frame masks{hint}: labels need an RLE "
        f"endpoint such as fal-ai/sam-3-1/video-rle (request {request_id})", files)


def _union(payload: dict[str, Any], attachments: Mapping[str, Any], layout: RleLayout, frame_count: int, height: int,
           width: int, request_id: str, files: dict[str, str]) -> DecodedResult:
    value = payload["rle"]
    if file_url(value) is not None:
        if "rle" not in attachments:
            raise _fail(request_id, f"the RLE file {file_url(value)} was not downloaded with the result")
        value = attachments["rle"]
        if isinstance(value, dict) and "rle" in value:
            value = value["rle"]
    if isinstance(value, str) and frame_count == 1:
        value = [value]
    if isinstance(value, str):
        raise _fail(request_id, f"'rle' is one string but the video sent has {frame_count} frames; "
                                "expected one string per frame")
    if value is None:
        value = [None] * frame_count
    if not isinstance(value, list):
        raise _fail(request_id, f"'rle' is a {type(value).__name__}, expected a list of strings")
    if len(value) != frame_count:
        raise _fail(request_id, f"'rle' has {len(value)} entries but the video sent has {frame_count} frames")
    per_frame: list[list[tuple[int | None, str]]] = []
    for i, text in enumerate(value):
        if text is not None and not isinstance(text, str):
            raise _fail(request_id, f"frame {i}: 'rle' entry is a {type(text).__name__}, expected a string or null")
        per_frame.append([(None, text)] if text and text.strip() else [])
    return DecodedResult("union", request_id, frame_count, height, width, layout, files, per_frame,
                         _union_scores(payload.get("metadata"), frame_count))


def _union_scores(metadata: Any, frame_count: int) -> list[float | None]:
    """metadata[i].score per frame, when metadata is one entry per frame; else unknown."""
    if isinstance(metadata, list) and len(metadata) == frame_count:
        scores = [m.get("score") if isinstance(m, dict) else None for m in metadata]
        return [float(s) if isinstance(s, (int, float)) and 0 <= s <= 1 else None for s in scores]
    return [None] * frame_count


def _objects(payload: dict[str, Any], layout: RleLayout, frame_count: int, height: int, width: int,
             request_id: str, files: dict[str, str]) -> DecodedResult:
    got = {k: payload.get(k) for k in ("width", "height", "num_frames")}
    want = {"width": width, "height": height, "num_frames": frame_count}
    for key in want:
        if got[key] is not None and got[key] != want[key]:
            raise _fail(request_id, f"{key}={got[key]} but the video sent has {key}={want[key]} "
                                    f"(fal saw {got['width']}x{got['height']}, {got['num_frames']} frames; "
                                    f"the probe says {width}x{height}, {frame_count} frames)")
    frames = payload.get("frames")
    if not isinstance(frames, list):
        raise _fail(request_id, f"'frames' is {type(frames).__name__}, expected a list")
    per_frame: list[list[tuple[int | None, str]]] = [[] for _ in range(frame_count)]
    seen: set[int] = set()
    for entry in frames:
        try:
            index = entry["frame_index"]
            objects = entry.get("objects") or []
        except (TypeError, KeyError, AttributeError):
            raise _fail(request_id, f"a 'frames' entry has no frame_index: {str(entry)[:120]}") from None
        if not isinstance(index, int) or not 0 <= index < frame_count:
            raise _fail(request_id, f"frame_index {index!r} is outside the video sent (0..{frame_count - 1})")
        if index in seen:
            raise _fail(request_id, f"frame {index} appears twice in 'frames'")
        seen.add(index)
        ids: set[int] = set()
        for obj in objects:
            tid, text = (obj.get("track_id"), obj.get("rle")) if isinstance(obj, dict) else (None, None)
            if not isinstance(tid, int) or isinstance(tid, bool) or not 0 <= tid <= MAX_TRACK_ID:
                raise _fail(request_id, f"frame {index}: track_id {tid!r} is not an id in 0..{MAX_TRACK_ID}")
            if tid in ids:
                raise _fail(request_id, f"frame {index}: track {tid} appears twice")
            if text is not None and not isinstance(text, str):
                raise _fail(request_id, f"frame {index}, track {tid}: 'rle' is a {type(text).__name__}, expected a string")
            ids.add(tid)
            if text and text.strip():
                per_frame[index].append((tid, text))
    return DecodedResult("objects", request_id, frame_count, height, width, layout, files, per_frame,
                         [None] * frame_count)
