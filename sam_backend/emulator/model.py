"""The emulated fal apps: one validated request in, the output JSON of its endpoint out.

This is what runs on a worker thread for each job: fetch the video (only from the
emulator's own CDN or a data URI: it never touches the network), check the prompts
against it, run the toy segmenter in two passes, and answer in the app's output shape
(:class:`~.config.AppSpec`): RLE strings in fal's ``start length`` format, and rendered
files on the emulator's CDN only when the request asks for them. Failures raise
:class:`~.failures.JobFailure` in fal's shapes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import numpy as np

from ..errors import VideoError
from ..masks import tight_box
from ..types import VideoInfo
from ..video import iter_frames, probe
from . import failures
from .config import AppSpec, RleLayout
from .render import VIDEO_FORMATS, blend_masks, draw_boxes, jpeg_sequence_sink, video_sink, zip_directory
from .schema import Parsed, SegmenterInput, error_item, segmenter_input
from .segmenter import Cancelled, Track, analyse, classify, frame_objects, plan_tracks
from .storage import Storage

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Keep first-pass label maps up to this size instead of decoding luma twice: on small
# test videos ffmpeg start-up, not decoding, is what a job's time is made of.
LABEL_CACHE_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a run may touch: the CDN store (and its public base URL), the score to give
    objects, the job's cancel flag and its log."""

    storage: Storage
    cdn_url: str
    score: float
    cancel: threading.Event
    log: Callable[[str], None]
    rle_layout: RleLayout = "row1"


@dataclasses.dataclass(frozen=True)
class RunOutput:
    output: dict[str, Any]
    frames: int  # frames processed: the billable units


def resolve_video(url: str, storage: Storage, cdn_url: str) -> bytes:
    """The bytes behind ``video_url``; a download error for anything not local."""
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if not sep:
            raise failures.download_error(url, "malformed data URI (no ',')")
        if header.endswith(";base64"):
            try:
                return base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise failures.download_error(url, f"invalid base64 in data URI ({exc})") from None
        return unquote_to_bytes(data)
    parts, own = urlsplit(url), urlsplit(cdn_url)
    files_prefix = own.path.rstrip("/") + "/files/"
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme in ("http", "https") and parts.hostname in LOCAL_HOSTS and port == own.port and parts.path.startswith(files_prefix):
        stored = storage.get(unquote(parts.path[len(files_prefix):]))
        if stored is None:
            raise failures.download_error(url, "404 Not Found")
        return stored.read()
    raise failures.download_error(
        url, "the emulator never downloads from the network; upload to its CDN or pass a data URI"
    )


def check_prompts(request: SegmenterInput, info: VideoInfo) -> None:
    """Raise a 422 naming every prompt that does not fit the video."""
    items: list[dict[str, Any]] = []
    w, h, n = info.width, info.height, info.frame_count

    def bad(loc: list[str | int], msg: str) -> None:
        items.append(error_item(["body", *loc], msg, failures.VALIDATION_ERROR))

    for i, p in enumerate(request.point_prompts):
        if not (0 <= p.x < w and 0 <= p.y < h):
            bad(["point_prompts", i], f"point ({p.x}, {p.y}) is outside the {w}x{h} frame")
        if not 0 <= p.frame_index < n:
            bad(["point_prompts", i, "frame_index"], f"frame_index {p.frame_index} is outside 0..{n - 1}")
    for i, b in enumerate(request.box_prompts):
        if not (0 <= b.x_min < b.x_max <= w and 0 <= b.y_min < b.y_max <= h):
            bad(["box_prompts", i], f"box ({b.x_min}, {b.y_min})-({b.x_max}, {b.y_max}) is empty or outside the {w}x{h} frame")
        if not 0 <= b.frame_index < n:
            bad(["box_prompts", i, "frame_index"], f"frame_index {b.frame_index} is outside 0..{n - 1}")
    if items:
        raise failures.invalid_input(items)


def _file(storage: Storage, cdn_url: str, data: bytes, content_type: str, file_name: str) -> dict[str, Any]:
    key = storage.put(data, content_type, file_name)
    return {"url": f"{cdn_url}/files/{key}", "content_type": content_type, "file_name": file_name, "file_size": len(data)}


def run_sam_video(app: AppSpec, parsed: Parsed, ctx: RunContext) -> RunOutput:
    """Run one request end to end. Raises JobFailure, or segmenter.Cancelled."""
    request = segmenter_input(parsed)
    ctx.log(f"Fetching video ({request.video_url[:60]})")
    data = resolve_video(request.video_url, ctx.storage, ctx.cdn_url)
    with tempfile.TemporaryDirectory(prefix="sam-emu-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "input"
        src.write_bytes(data)
        try:
            info = probe(src)
        except VideoError as exc:
            raise failures.unsupported_video(str(exc)) from None
        if info.frame_count == 0:
            raise failures.unsupported_video("no decodable frames")
        check_prompts(request, info)
        ctx.log(f"Video: {info.width}x{info.height}, {info.frame_count} frames")
        try:
            with contextlib.closing(iter_frames(src, info, gray=True)) as grays:
                keep = info.frame_count * info.width * info.height <= LABEL_CACHE_BYTES
                analysis = analyse(grays, request, ctx.cancel, keep_labels=keep)
            tracks = plan_tracks(analysis, request, ctx.score)
            ctx.log(f"Tracking {len(tracks)} object(s)")
            output, frames = _render(app, parsed, ctx, src, info, tracks, analysis.labels, tmp)
        except VideoError as exc:
            raise failures.unsupported_video(str(exc)) from None
    ctx.log(f"Done: {frames} frames")
    return RunOutput(output, frames)


def _wants(app: AppSpec, parsed: Parsed) -> tuple[bool, bool, bool]:
    """(RLE, overlay video, box-overlay zip) for this app and request. Rendering is most
    of a run's time, so only what the request asks for is rendered, as fal does
    (../shared/reference/fal-sam3-endpoints.md, "The endpoints": the RLE endpoints take
    ``apply_mask`` default **false** and ``boundingbox_zip`` default false [S2, S4];
    ``fal-ai/sam-3/video-rle`` without ``return_rle`` has only the video to return [S3];
    the plain ``video`` endpoint always renders [S1])."""
    if app.output == "video":
        return False, True, True
    if app.output == "objects_rle":
        return True, False, False
    rle = not app.return_rle_flag or bool(getattr(parsed, "return_rle", False))
    # Without RLE the app has nothing to return but its rendered video (S3).
    return rle, bool(getattr(parsed, "apply_mask", False)) or not rle, bool(getattr(parsed, "boundingbox_zip", False))


def _render(
    app: AppSpec,
    parsed: Parsed,
    ctx: RunContext,
    src: Path,
    info: VideoInfo,
    tracks: list[Track],
    cached_labels: list[np.ndarray] | None,
    tmp: Path,
) -> tuple[dict[str, Any], int]:
    """Second pass: masks, RLE, and the overlay files asked for, frame by frame. Label
    maps come from the first pass when it kept them, else from decoding luma again."""
    want_rle, want_video, want_zip = _wants(app, parsed)
    output_type = getattr(parsed, "video_output_type", "X264 (.mp4)")
    ext, content_type = VIDEO_FORMATS[output_type]
    video_path, boxes_dir = tmp / f"output.{ext}", tmp / "boundingbox_frames"
    size = {"width": info.width, "height": info.height, "fps": info.fps}
    union: list[str | None] = []
    metadata: list[dict[str, Any] | None] = []
    objects: list[dict[str, Any]] = []
    count = 0
    with contextlib.ExitStack() as stack:
        if cached_labels is not None:
            label_maps: Iterator[np.ndarray] = iter(cached_labels)
        else:
            label_maps = map(classify, stack.enter_context(contextlib.closing(iter_frames(src, info, gray=True))))
        rgbs = stack.enter_context(contextlib.closing(iter_frames(src, info))) if want_video or want_zip else None
        video = stack.enter_context(video_sink(video_path, output_type, **size)) if want_video else None
        boxes = stack.enter_context(jpeg_sequence_sink(boxes_dir, **size)) if want_zip else None
        for f, labels in enumerate(label_maps):
            if ctx.cancel.is_set():
                raise Cancelled()
            placed = [(t, m, box) for t, m in frame_objects(labels, tracks) if (box := tight_box(m))]
            if rgbs is not None:
                rgb = next(rgbs)
                if video is not None:
                    apply = getattr(parsed, "apply_mask", True)
                    video.write(blend_masks(rgb, [(t.track_id, m, b) for t, m, b in placed]) if apply else rgb)
                if boxes is not None:
                    boxes.write(draw_boxes(rgb, [(t.track_id, b) for t, _, b in placed]))
            if app.output == "objects_rle":
                objects.append({"frame_index": f, "objects": [
                    {"track_id": t.track_id, "rle": encode_runs(m, ctx.rle_layout)} for t, m, _ in placed]})
            elif want_rle:
                _union_frame(placed, info, ctx, union, metadata)
            count = f + 1
            if count % 32 == 0:
                ctx.log(f"Processed {count}/{info.frame_count} frames")
    if count == 0:
        raise failures.unsupported_video("no decodable frames")
    output: dict[str, Any] = {}
    if video is not None:
        output["video"] = _file(ctx.storage, ctx.cdn_url, video_path.read_bytes(), content_type, video_path.name)
    if boxes is not None:
        output["boundingbox_frames_zip"] = _file(ctx.storage, ctx.cdn_url, zip_directory(boxes_dir), "application/zip",
                                                 "boundingbox_frames.zip")
    if app.output == "objects_rle":
        output.update({"frames": objects, "width": info.width, "height": info.height, "num_frames": count})
    elif want_rle:
        rle: Any = union
        if getattr(parsed, "rle_return_mode", "list") == "url":
            rle = _file(ctx.storage, ctx.cdn_url, json.dumps(union).encode(), "application/json", "rle.json")
        output.update({"rle": rle, "metadata": metadata, "boxes": [m["box"] if m else None for m in metadata],
                       "scores": None})
    return output, count


def _union_frame(placed: list[tuple[Track, np.ndarray, tuple[int, int, int, int]]], info: VideoInfo, ctx: RunContext,
                 union: list[str | None], metadata: list[dict[str, Any] | None]) -> None:
    """One frame of a union answer: every tracked object in one mask, no ids."""
    if not placed:
        union.append(None)
        metadata.append(None)
        return
    mask = np.logical_or.reduce([m for _, m, _ in placed])
    x0, y0, x1, y1 = tight_box(mask) or (0, 0, 0, 0)
    w, h = info.width, info.height
    union.append(encode_runs(mask, ctx.rle_layout))
    # MaskMetadata as documented (S1, S4): index in the model output, score, normalised cx, cy, w, h.
    metadata.append({"index": 0, "score": max(t.score for t, _, _ in placed),
                     "box": [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]})


def encode_runs(mask: np.ndarray, layout: RleLayout) -> str:
    """fal's RLE string: ``start length`` pairs over the mask flattened row- or
    column-major, starts counted from 1 or 0 (written here independently of the
    client's decoder, so a shared mistake cannot hide)."""
    order = "C" if layout.startswith("row") else "F"
    base = int(layout[-1])
    flat = np.asarray(mask, dtype=bool).flatten(order=order)
    padded = np.concatenate(([False], flat, [False])).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    starts, ends = change[0::2], change[1::2]
    return " ".join(f"{start + base} {end - start}" for start, end in zip(starts.tolist(), ends.tolist()))
