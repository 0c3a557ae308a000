"""The emulated fal app: one validated request in, fal's output JSON out.

This is what runs on a worker thread for each job: fetch the video (only from the
emulator's own CDN or a data URI: it never touches the network), check the prompts
against it, run the toy segmenter in two passes, and store the rendered files on the
emulator's CDN. Failures raise :class:`~.failures.JobFailure` in fal's shapes.
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
from ..masks import encode_rle, tight_box
from ..types import VideoInfo
from ..video import iter_frames, probe
from . import failures
from .config import AppSpec, RleShape
from .render import VIDEO_FORMATS, blend_masks, draw_boxes, jpeg_sequence_sink, video_sink, zip_directory
from .schema import SamVideoInput, error_item
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
    rle_shape: RleShape = "per_frame"


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


def check_prompts(request: SamVideoInput, info: VideoInfo) -> None:
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


def run_sam_video(app: AppSpec, request: SamVideoInput, ctx: RunContext) -> RunOutput:
    """Run one request end to end. Raises JobFailure, or segmenter.Cancelled."""
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
            output, frames = _render(app, request, ctx, src, info, tracks, analysis.labels, tmp)
        except VideoError as exc:
            raise failures.unsupported_video(str(exc)) from None
    ctx.log(f"Done: {frames} frames")
    return RunOutput(output, frames)


def _render(
    app: AppSpec,
    request: SamVideoInput,
    ctx: RunContext,
    src: Path,
    info: VideoInfo,
    tracks: list[Track],
    cached_labels: list[np.ndarray] | None,
    tmp: Path,
) -> tuple[dict[str, Any], int]:
    """Second pass: masks, RLE, overlay video and box images, frame by frame. Label maps
    come from the first pass when it kept them, else from decoding luma again."""
    ext, content_type = VIDEO_FORMATS[request.video_output_type]
    video_path, boxes_dir = tmp / f"output.{ext}", tmp / "boundingbox_frames"
    size = {"width": info.width, "height": info.height, "fps": info.fps}
    frames_out: list[dict[str, Any]] = []
    count = 0
    with contextlib.ExitStack() as stack:
        if cached_labels is not None:
            label_maps: Iterator[np.ndarray] = iter(cached_labels)
        else:
            label_maps = map(classify, stack.enter_context(contextlib.closing(iter_frames(src, info, gray=True))))
        rgbs = stack.enter_context(contextlib.closing(iter_frames(src, info)))
        video = stack.enter_context(video_sink(video_path, request.video_output_type, **size))
        boxes = stack.enter_context(jpeg_sequence_sink(boxes_dir, **size))
        for f, (labels, rgb) in enumerate(zip(label_maps, rgbs)):
            if ctx.cancel.is_set():
                raise Cancelled()
            placed = [(t, m, box) for t, m in frame_objects(labels, tracks) if (box := tight_box(m))]
            if request.apply_mask:
                video.write(blend_masks(rgb, [(t.track_id, m, box) for t, m, box in placed]))
            else:
                video.write(rgb)
            boxes.write(draw_boxes(rgb, [(t.track_id, box) for t, _, box in placed]))
            if app.rle:
                frames_out.append({"frame_index": f, "masks": [_rle_mask(t, m, box, info) for t, m, box in placed]})
            count = f + 1
            if count % 32 == 0:
                ctx.log(f"Processed {count}/{info.frame_count} frames")
    if count == 0:
        raise failures.unsupported_video("no decodable frames")
    output: dict[str, Any] = {
        "video": _file(ctx.storage, ctx.cdn_url, video_path.read_bytes(), content_type, video_path.name),
        "boundingbox_frames_zip": _file(
            ctx.storage, ctx.cdn_url, zip_directory(boxes_dir), "application/zip", "boundingbox_frames.zip"
        ),
    }
    if app.rle:
        output.update(_rle_layout(frames_out, count, ctx))
    return output, count


def _rle_layout(frames_out: list[dict[str, Any]], frame_count: int, ctx: RunContext) -> dict[str, Any]:
    """The masks in the layout ``ctx.rle_shape`` asks for (see config.RleShape)."""
    if ctx.rle_shape == "per_frame":
        return {"frames": frames_out}
    if ctx.rle_shape == "mask_file":
        data = json.dumps({"frames": frames_out}).encode()
        return {"mask_url": f"{ctx.cdn_url}/files/{ctx.storage.put(data, 'application/json', 'masks.json')}"}
    objects: dict[int, dict[str, Any]] = {}
    for frame in frames_out:
        for item in frame["masks"]:
            meta = item["metadata"]
            obj = objects.setdefault(meta["index"], {"object_id": meta["index"], "label": meta["label"],
                                                     "score": meta["score"], "rles": [None] * frame_count})
            obj["rles"][frame["frame_index"]] = item["rle"]
    return {"objects": [objects[k] for k in sorted(objects)]}


def _rle_mask(track: Track, mask: np.ndarray, box: tuple[int, int, int, int], info: VideoInfo) -> dict[str, Any]:
    x0, y0, x1, y1 = box
    w, h = info.width, info.height
    return {
        "rle": encode_rle(mask),
        "metadata": {
            "index": track.track_id,
            "score": track.score,
            "box": [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h],
            "label": track.label,
        },
    }
