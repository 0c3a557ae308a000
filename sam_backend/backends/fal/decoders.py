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

Results are read as streams of bytes (``jsonstream.py``), never whole: opening one makes a
first pass that checks the structure and collects what the frames need up front (track
ids, per-frame scores) without decoding a mask; :meth:`DecodedResult.frames` then reads
the bytes again and decodes one frame at a time, each mask straight into its tight box
(``rle.decode_crop``). Memory is one frame, whatever the video's length. Every problem raises :class:`UnexpectedResponse` naming the
request id and the frame; the raw payload stays in the journal, so ``sam31-video
redecode`` can read it again after a fix, without paying.
"""

from __future__ import annotations

import dataclasses
import json
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import UnexpectedResponse
from . import jsonstream
from . import rle as rle_format
from .endpoints import Endpoint
from .rle import RleLayout

FILE_KEYS = ("video", "boundingbox_frames_zip")
MAX_TRACK_ID = 2**31 - 1


class ResultNotJson(UnexpectedResponse):
    """The stored result's bytes are not JSON at all: garbled on the way (fal answers JSON),
    not a shape our decoder misreads, so fetching it again can help where redecode cannot."""


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


@dataclasses.dataclass(frozen=True)
class CropMask:
    """A decoded mask inside its tight pixel box (x0, y0, x1, y1), max exclusive."""

    fal_track_id: int | None
    crop: np.ndarray
    box: tuple[int, int, int, int]
    score: float | None


# A frame's undecoded masks: (fal track id or None, RLE string)
FrameTexts = list[tuple[int | None, str]]
PayloadSource = Callable[[], Iterable[bytes]]  # each call: the raw result's bytes from the start

STREAMED = frozenset({"frames", "rle", "metadata", "boxes"})


class DecodedResult:
    """One request's answer, checked. :meth:`frames` streams its frames' masks (as crops)
    in order; :meth:`frame` decodes one frame's full-frame masks (checks and tools)."""

    def __init__(self, kind: str, request_id: str, frame_count: int, height: int, width: int, layout: RleLayout,
                 files: dict[str, str], texts: Callable[[], Iterator[FrameTexts]], scores: array | None,
                 track_ids: set[int]) -> None:
        self.kind, self.request_id, self.frame_count = kind, request_id, frame_count
        self.height, self.width, self.layout, self.files = height, width, layout, files
        self._texts, self._scores, self._track_ids = texts, scores, track_ids
        self._materialised: list[FrameTexts] | None = None

    def track_ids(self) -> list[int]:
        return sorted(self._track_ids)

    def _unreadable(self, index: int, tid: int | None, exc: Exception) -> UnexpectedResponse:
        what = f"track {tid}" if tid is not None else "the mask"
        return UnexpectedResponse(f"fal request {self.request_id}, frame {index}, {what}: unreadable RLE: {exc} "
                                  f"(raw payload kept in the journal; see sam31-video redecode)")

    def frames(self) -> Iterator[list[CropMask]]:
        """Every frame in order (``frame_count`` of them), each mask decoded into its crop."""
        for masks in frames_together([self], self.frame_count):
            yield masks[0]

    def _score(self, index: int) -> float | None:
        if self._scores is None or math.isnan(self._scores[index]):
            return None
        return self._scores[index]

    def frame(self, index: int) -> list[FrameMask]:
        if self._materialised is None:
            self._materialised = list(self._texts())
        out = []
        for tid, text in self._materialised[index]:
            try:
                mask = rle_format.decode(text, self.height, self.width, self.layout)
            except rle_format.RleFormatError as exc:
                raise self._unreadable(index, tid, exc) from None
            out.append(FrameMask(tid, mask, self._score(index)))
        return out


def frames_together(results: Sequence[DecodedResult], frame_count: int) -> Iterator[list[list[CropMask]]]:
    """The frames of several answers for one video, read side by side: per frame, each
    answer's masks decoded into their crops. The masks of answers laid out alike are
    decoded in one batch per frame: 16 box-prompted objects are 16 union answers with one
    mask per frame each, and a call per mask was most of their cost."""
    groups: dict[tuple[int, int, RleLayout], list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((r.height, r.width, r.layout), []).append(i)
    streams = [r._texts() for r in results]
    for index in range(frame_count):
        texts = [next(stream) for stream in streams]
        out: list[list[CropMask]] = [[] for _ in results]
        for (height, width, layout), members in groups.items():
            flat = [(i, tid, text) for i in members for tid, text in texts[i]]
            try:
                crops = rle_format.decode_crops([text for _, _, text in flat], height, width, layout)
            except rle_format.RleFormatError as exc:
                i, tid, _ = flat[getattr(exc, "index", 0)]
                raise results[i]._unreadable(index, tid, exc) from None
            for (i, tid, _), got in zip(flat, crops):
                if got is not None:
                    out[i].append(CropMask(tid, got[0], got[1], results[i]._score(index)))
        yield out


def _fail(request_id: str, message: str) -> UnexpectedResponse:
    return UnexpectedResponse(f"fal request {request_id}: {message} (raw payload kept in the journal)")


def decode_result(stored: Mapping[str, Any], spec: Endpoint, *, layout: RleLayout, frame_count: int, height: int,
                  width: int, request_id: str) -> DecodedResult:
    """Check ``stored`` (``{"payload": <fal's JSON>, "attachments": {...}}``) against the
    shape of ``spec`` and the video that was sent."""
    payload = stored.get("payload")
    if not isinstance(payload, dict):
        raise _fail(request_id, f"the result is not a JSON object ({type(payload).__name__})")
    raw = json.dumps(payload).encode()
    return decode_stream(lambda: (raw,), stored.get("attachments") or {}, spec, layout=layout, frame_count=frame_count,
                         height=height, width=width, request_id=request_id)


def decode_stream(source: PayloadSource, attachments: Mapping[str, Any], spec: Endpoint, *, layout: RleLayout,
                  frame_count: int, height: int, width: int, request_id: str) -> DecodedResult:
    """Like :func:`decode_result`, for a raw result read as a stream of bytes: ``source()``
    gives the bytes from the start each time it is called (the journal's stored copy)."""
    scan = _scan(source, spec, frame_count, request_id)
    files = output_files(scan.small)
    if spec.output == "objects_rle":
        got = {k: scan.small.get(k) for k in ("width", "height", "num_frames")}
        want = {"width": width, "height": height, "num_frames": frame_count}
        for key in want:
            if got[key] is not None and got[key] != want[key]:
                raise _fail(request_id, f"{key}={got[key]} but the video sent has {key}={want[key]} "
                                        f"(fal saw {got['width']}x{got['height']}, {got['num_frames']} frames; "
                                        f"the probe says {width}x{height}, {frame_count} frames)")
        if "frames" not in scan.seen or "frames" in scan.small:  # a list is streamed, never kept in small
            value = scan.small.get("frames")
            raise _fail(request_id, f"'frames' is {type(value).__name__}, expected a list")
        texts = _objects_texts(source, frame_count, scan.in_order)
        return DecodedResult("objects", request_id, frame_count, height, width, layout, files, texts,
                             None, scan.track_ids)
    if spec.output == "union_rle" and "rle" in scan.seen:
        return _union(source, scan, attachments, layout, frame_count, height, width, request_id, files)
    detail = ", ".join(f"{k}: {v}" for k, v in files.items()) or "nothing"
    hint = " (fal-ai/sam-3/video-rle answers RLE only with return_rle=true)" if spec.output == "union_rle" else ""
    raise NoLabelsInResponse(
        f"{spec.id} returned only rendered media ({detail}), no per-frame masks{hint}: labels need an RLE "
        f"endpoint such as fal-ai/sam-3-1/video-rle (request {request_id})", files)


@dataclasses.dataclass
class _Scan:
    """What the first pass over a result found (no mask decoded, no RLE string kept)."""

    seen: set[str] = dataclasses.field(default_factory=set)
    small: dict[str, Any] = dataclasses.field(default_factory=dict)  # members that are not long arrays
    rle_count: int = 0
    metadata: array | None = None  # per-frame score (NaN: none) when metadata is a list
    track_ids: set[int] = dataclasses.field(default_factory=set)
    in_order: bool = True


def _members(source: PayloadSource, request_id: str) -> Iterator[tuple[str, Any]]:
    try:
        yield from jsonstream.members(source(), STREAMED)
    except jsonstream.JsonStreamError as exc:
        raise ResultNotJson(f"fal request {request_id}: the result is not the JSON object expected: {exc}") from None


def _scan(source: PayloadSource, spec: Endpoint, frame_count: int, request_id: str) -> _Scan:
    scan = _Scan()
    for key, value in _members(source, request_id):
        scan.seen.add(key)
        if not isinstance(value, Iterator):
            scan.small[key] = value
        elif key == "frames" and spec.output == "objects_rle":
            _scan_frames(value, frame_count, request_id, scan)
        elif key == "rle" and spec.output == "union_rle":
            for i, text in enumerate(value):
                if text is not None and not isinstance(text, str):
                    raise _fail(request_id, f"frame {i}: 'rle' entry is a {type(text).__name__}, expected a string or null")
                scan.rle_count = i + 1
        elif key == "metadata":
            scan.metadata = array("d", (_score(m.get("score") if isinstance(m, dict) else None) for m in value))
        # other long arrays (boxes) are not read: fal's box convention is disputed
    return scan


def _scan_frames(entries: Iterator[Any], frame_count: int, request_id: str, scan: _Scan) -> None:
    seen: set[int] = set()
    last = -1
    for entry in entries:
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
        scan.in_order = scan.in_order and index > last
        last = index
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
            if text and not text.isspace():
                scan.track_ids.add(tid)


def _frame_texts(entry: dict[str, Any]) -> FrameTexts:
    return [(o["track_id"], o["rle"]) for o in entry.get("objects") or [] if o.get("rle") and not o["rle"].isspace()]


def _objects_texts(source: PayloadSource, frame_count: int, in_order: bool) -> Callable[[], Iterator[FrameTexts]]:
    """Per frame, in order, its (track id, RLE) pairs: read again from the bytes. A payload
    whose frames are out of order (never seen from fal) is gathered in memory instead."""

    def entries() -> Iterator[dict[str, Any]]:
        for key, value in jsonstream.members(source(), STREAMED):
            if key == "frames" and isinstance(value, Iterator):
                yield from value

    def stream() -> Iterator[FrameTexts]:
        if not in_order:
            per_frame: list[FrameTexts] = [[] for _ in range(frame_count)]
            for entry in entries():
                per_frame[entry["frame_index"]] = _frame_texts(entry)
            yield from per_frame
            return
        nxt = 0
        for entry in entries():
            for _ in range(nxt, entry["frame_index"]):
                yield []
            yield _frame_texts(entry)
            nxt = entry["frame_index"] + 1
        for _ in range(nxt, frame_count):
            yield []

    return stream


def _union(source: PayloadSource, scan: _Scan, attachments: Mapping[str, Any], layout: RleLayout, frame_count: int,
           height: int, width: int, request_id: str, files: dict[str, str]) -> DecodedResult:
    value = scan.small.get("rle", ...)  # ... : a list, streamed
    texts: Callable[[], Iterator[FrameTexts]]
    if value is not ...:
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
        for i, text in enumerate(value):
            if text is not None and not isinstance(text, str):
                raise _fail(request_id, f"frame {i}: 'rle' entry is a {type(text).__name__}, expected a string or null")
        count, items = len(value), value

        def texts() -> Iterator[FrameTexts]:
            return (_union_texts(t) for t in items)
    else:
        count = scan.rle_count

        def texts() -> Iterator[FrameTexts]:
            for key, arr in jsonstream.members(source(), STREAMED):
                if key == "rle" and isinstance(arr, Iterator):
                    return (_union_texts(t) for t in arr)
            raise AssertionError("unreachable: the first pass saw 'rle'")
    if count != frame_count:
        raise _fail(request_id, f"'rle' has {count} entries but the video sent has {frame_count} frames")
    return DecodedResult("union", request_id, frame_count, height, width, layout, files, texts,
                         _union_scores(scan.metadata, frame_count), set())


def _union_texts(text: str | None) -> FrameTexts:
    return [(None, text)] if text and not text.isspace() else []


def _score(value: Any) -> float:
    """A frame's ``metadata[i].score`` when it is a number in [0, 1], else NaN (unknown)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return math.nan


def _union_scores(scores: array | None, frame_count: int) -> array | None:
    """metadata[i].score per frame, when metadata is one entry per frame; else unknown.
    Kept as one array of doubles: a list of floats per request grew with the video."""
    return scores if scores is not None and len(scores) == frame_count else None
