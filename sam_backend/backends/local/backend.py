"""The local backend: decodes the video itself, feeds it to an engine chunk by chunk, stitches
track ids across chunks, and streams one FrameResult per processed frame in order.

Output semantics are the fal backend's (switching backend changes nothing else): label =
the concept for text prompts, ``object_<id>`` for point/box prompts whose object id is the
track id; full-frame bool masks; box = tight box of the mask; empty masks dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ... import masks as mask_ops
from ... import video as video_ops
from ...errors import InvalidRequest, SamError
from ...types import FrameRange, FrameResult, Progress, SegmentRequest, TrackedObject, VideoInfo
from ..base import CancelToken, CostEstimate, ProgressCallback, RunRecord, SegmentRun, VideoSource, report
from .chunking import Chunk, IdAllocator, StoredObject, match_tracks, plan_chunks
from .config import LocalConfig
from .engine import ChunkJob, Engine, RawObject, Seed, VisualPrompt
from .errors import LocalOutOfMemory, is_out_of_memory, out_of_memory_message

# Rough frames/s for the time estimate, at about 16 objects: SAM 3.1 and SAM 3 from Meta's
# published H100 numbers (30.2 and 9.8 frames/s); the transformers engine on a GPU is
# assumed SAM 3-like, and on CPU about a frame every 3 s for the full-size model.
_ESTIMATED_FPS: dict[str, float] = {"sam3.1": 30.0, "sam3": 9.8, "transformers:cuda": 8.0, "transformers:cpu": 0.3}
_PROGRESS_EVERY_S = 0.5  # progress callbacks at most twice a second (plus one per chunk)

PredictorFactory = Callable[..., Any]


class LocalBackend:
    """SAM 3.1 / SAM 3 on this machine. Build with :func:`BACKEND` (or give an engine)."""

    name = "local"
    # Videos in flight at once, whatever segment_videos' concurrency: chunks run one at a
    # time (the engine's lock), and each video in flight holds a decoded chunk; two let one
    # decode while the other computes (8 held 8 chunks: 4 x 640x480 took 525 MB, not 140).
    max_concurrency = 2

    def __init__(self, config: LocalConfig, *, engine: Engine | None = None,
                 predictor_factory: PredictorFactory | None = None) -> None:
        self.config = config
        self._engine = engine
        self._predictor_factory = predictor_factory
        self._engine_lock = threading.Lock()  # samples run on several threads: build one engine
        if engine is None:
            self._preflight()

    def _preflight(self) -> None:
        """Fail at construction, before any sample is touched, when the engine cannot run."""
        if self.config.engine == "transformers":
            from .hf import check_transformers

            check_transformers(self.config)
        elif self._predictor_factory is None:
            from .meta import check_meta

            check_meta(self.config)

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                if self.config.engine == "transformers":
                    from .hf import TransformersEngine

                    self._engine = TransformersEngine(self.config)
                else:
                    from .meta import MetaEngine

                    self._engine = MetaEngine(self.config, predictor_factory=self._predictor_factory)
            return self._engine

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def estimate_cost(self, video: VideoInfo, request: SegmentRequest) -> CostEstimate:
        engine = self.config.engine
        device = self._device_hint()
        key = f"transformers:{'cpu' if device == 'cpu' else 'cuda'}" if engine == "transformers" else engine
        fps = _ESTIMATED_FPS[key]
        seconds = video.frame_count / fps
        detail = (f"{video.frame_count} frames with {self.config.model_name} on {device}; "
                  f"estimated time about {seconds:.0f} s at ~{fps:g} frames/s (rough; no money spent)")
        return CostEstimate(backend=self.name, frames=video.frame_count, usd=None, billed=False, detail=detail)

    def _device_hint(self) -> str:
        if self._engine is not None:
            return self._engine.device
        if self.config.device != "auto":
            return self.config.device
        if self.config.engine != "transformers":
            return "cuda"  # Meta's engines run only there
        from .hf import resolve_device

        return resolve_device("auto")  # what the engine will pick

    def segment(
        self,
        video: VideoSource,
        request: SegmentRequest,
        *,
        frames: FrameRange | None = None,
        work_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentRun:
        request.check_against(video.info, frames)
        if video.path is None:
            raise InvalidRequest(f"the local backend segments local files; download {video.url} first")
        indices = list((frames or FrameRange()).indices(video.info.frame_count))
        plan = plan_chunks(len(indices), self.config.chunk_size, self.config.overlap)
        prompts = visual_prompts(request, {f: p for p, f in enumerate(indices)})
        record = RunRecord(backend=self.name, model=self.config.model_name)
        first_prompt: dict[int, int] = {}
        for p in prompts:
            first_prompt[p.obj_id] = min(p.frame, first_prompt.get(p.obj_id, p.frame))
        late = {obj: pos for obj, pos in sorted(first_prompt.items()) if pos >= plan[0].stop}
        if late:
            # Labels of a chunk are written from its emit_from on (the frames before came from
            # the previous chunk, which never saw the prompt).
            starts = {obj: next(c for c in plan if c.start <= pos < c.stop).emit_from for obj, pos in late.items()}
            warning = (f"the local backend runs this video in chunks of {self.config.chunk_size} frames and tracks "
                       "an object back only within the chunk of its first prompt: "
                       + ", ".join(f"object {obj} (first prompted on frame index {indices[pos]}) is labelled from "
                                   f"frame index {indices[starts[obj]]} on" for obj, pos in late.items())
                       + f"; raise chunk_size above {max(late.values()) + 1} to label them from the start")
            record.warnings.append(warning)
        run = self._run(video, request, indices, plan, prompts, on_progress, cancel or CancelToken())
        return SegmentRun(run, record)

    # ---- the run ------------------------------------------------------------------------

    def _run(self, video: VideoSource, request: SegmentRequest, indices: list[int], plan: list[Chunk],
             prompts: list[VisualPrompt], on_progress: ProgressCallback | None,
             cancel: CancelToken) -> Iterator[FrameResult]:
        cancel.raise_if_cancelled()
        engine = self.engine
        total = len(indices)
        total_work = sum(len(c) for c in plan)
        visual_ids = sorted({p.obj_id for p in prompts})
        allocator = IdAllocator(visual_ids, request.max_num_objects)
        frames = _decode(video, indices)
        buffer: dict[int, np.ndarray] = {}
        tail: dict[int, dict[int, StoredObject]] = {}  # previous chunk's results on the overlap, by global id
        clock = _Clock(time.monotonic(), total, total_work)
        report(on_progress, Progress("running", f"segmenting {total} frames in {len(plan)} chunk(s) with "
                                     f"{self.config.model_name} on {engine.device}", frames_done=0, frames_total=total))
        for chunk in plan:
            cancel.raise_if_cancelled()
            for pos in range(chunk.start, chunk.stop):
                if pos not in buffer:
                    buffer[pos] = next(frames)
            job = ChunkJob(
                frames=[buffer[p] for p in range(chunk.start, chunk.stop)],
                concepts=tuple(request.concepts),
                visual=tuple(dataclasses.replace(p, frame=p.frame - chunk.start) for p in prompts
                             if chunk.start <= p.frame < chunk.stop),
                seeds=_seeds(tail, chunk),
                detection_threshold=request.detection_threshold,
                max_num_objects=request.max_num_objects,
            )
            results = self._segment_chunk(engine, job, chunk, clock, on_progress, cancel)
            mapping = self._stitch(chunk, tail, results)
            next_start = plan[chunk.index + 1].start if chunk.index + 1 < len(plan) else chunk.stop
            new_tail: dict[int, dict[int, StoredObject]] = collections.defaultdict(dict)
            for pos in range(chunk.emit_from, chunk.stop):
                objects = []
                for (kind, local), stored in sorted(results.get(pos, {}).items()):
                    gid = local if kind == "v" else mapping.get(local)
                    if gid is None and kind == "t" and local not in mapping:
                        gid = mapping[local] = allocator.new()
                    if gid is None:
                        continue  # over max_num_objects
                    mask = stored.mask()
                    box = mask_ops.tight_box(mask)
                    if box is None:
                        continue
                    label = stored.concept if stored.concept is not None else f"object_{gid}"
                    objects.append(TrackedObject(gid, label, stored.score, mask, box))
                    if pos >= next_start:
                        new_tail[pos][gid] = stored
                cancel.raise_if_cancelled()
                yield FrameResult(indices[pos], sorted(objects, key=lambda o: o.track_id))
            tail = dict(new_tail)
            for pos in [p for p in buffer if p < next_start]:
                del buffer[pos]
        frames.close()
        report(on_progress, Progress("done", clock.message(total), frames_done=total, frames_total=total))

    def _segment_chunk(self, engine: Engine, job: ChunkJob, chunk: Chunk, clock: _Clock,
                       on_progress: ProgressCallback | None,
                       cancel: CancelToken) -> dict[int, dict[tuple[str, int], StoredObject]]:
        """Run the engine on one chunk; results kept as RLE so a chunk costs little memory."""
        results: dict[int, dict[tuple[str, int], StoredObject]] = {}
        try:
            for local, objects in engine.run_chunk(job, cancel):  # the engine checks cancel (and stops propagation)
                if not 0 <= local < len(chunk):
                    raise SamError(f"engine {engine.name} answered for frame {local} of a {len(chunk)}-frame chunk")
                results.setdefault(chunk.start + local, {}).update(_store(objects))
                if clock.tick(chunk, len(results)):
                    report(on_progress, Progress("running", clock.message(clock.done), frames_done=clock.done,
                                                 frames_total=clock.total))
        except SamError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise LocalOutOfMemory(out_of_memory_message(engine.device, chunk.start, chunk.stop - 1,
                                                             self.config.chunk_size, self.config.offload, exc)) from exc
            raise
        clock.finish(chunk)
        report(on_progress, Progress("running", clock.message(clock.done), frames_done=clock.done, frames_total=clock.total))
        return results

    def _stitch(self, chunk: Chunk, tail: dict[int, dict[int, StoredObject]],
                results: dict[int, dict[tuple[str, int], StoredObject]]) -> dict[int, int]:
        """Current text ids -> global ids of the previous chunk's tracks, by IoU on the overlap."""
        overlap = range(chunk.start, chunk.emit_from)
        previous = {p: {g: o for g, o in tail.get(p, {}).items() if o.concept is not None} for p in overlap}
        current = {p: {local: o for (kind, local), o in results.get(p, {}).items() if kind == "t"} for p in overlap}
        return match_tracks(previous, current, self.config.stitch_iou)


def _seeds(tail: dict[int, dict[int, StoredObject]], chunk: Chunk) -> tuple[Seed, ...]:
    """Each point/box object the previous chunk saw on the overlap, on the overlap frame where
    its mask was largest (most visible; an object hidden on the chunk's first frame is still
    carried over, and a frame with only stray pixels of it is not chosen)."""
    best: dict[int, tuple[int, int, np.ndarray]] = {}
    for pos in sorted(tail):
        if chunk.start <= pos < chunk.emit_from:
            for gid, obj in tail[pos].items():
                if obj.concept is None:
                    mask = obj.mask()
                    area = int(mask.sum())
                    if area > best.get(gid, (-1, 0, mask))[0]:
                        best[gid] = (area, pos, mask)
    return tuple(Seed(gid, pos - chunk.start, mask) for gid, (_, pos, mask) in sorted(best.items()))


def _store(objects: list[RawObject]) -> dict[tuple[str, int], StoredObject]:
    out: dict[tuple[str, int], StoredObject] = {}
    for obj in objects:
        mask = np.asarray(obj.mask, dtype=bool)
        if not mask.any():
            continue
        key = ("v", int(obj.obj_id)) if obj.concept is None else ("t", int(obj.obj_id))
        out[key] = StoredObject(mask_ops.encode_rle(mask), float(obj.score), obj.concept)
    return out


def _decode(video: VideoSource, indices: list[int]) -> Iterator[np.ndarray]:
    """The processed frames, in order, decoded by ffmpeg (never by the model's own loader)."""
    assert video.path is not None
    wanted = iter(indices)
    target = next(wanted, None)
    for i, frame in enumerate(video_ops.iter_frames(video.path, video.info)):
        if target is None:
            return
        if i == target:
            yield frame
            target = next(wanted, None)
    if target is not None:
        raise InvalidRequest(f"{video.path.name} decoded fewer frames than probed (frame {target} is missing)")


class _Clock:
    """Frames done, frames/s and ETA for progress messages (overlap frames count as work)."""

    def __init__(self, start: float, total: int, total_work: int) -> None:
        self.start, self.total, self.total_work = start, total, total_work
        self.done = 0
        self.work_before = 0  # work of finished chunks
        self.work = 0
        self.last_report = start

    def tick(self, chunk: Chunk, processed_in_chunk: int) -> bool:
        self.work = self.work_before + processed_in_chunk
        self.done = max(self.done, min(chunk.stop, chunk.start + processed_in_chunk))
        now = time.monotonic()
        if now - self.last_report >= _PROGRESS_EVERY_S:
            self.last_report = now
            return True
        return False

    def finish(self, chunk: Chunk) -> None:
        self.work_before += len(chunk)
        self.work = self.work_before
        self.done = max(self.done, chunk.stop)
        self.last_report = time.monotonic()

    def message(self, done: int) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        fps = done / elapsed
        rate = self.work / elapsed
        eta = (self.total_work - self.work) / rate if rate > 0 else float("nan")
        return f"{done}/{self.total} frames, {fps:.1f} frames/s, ETA {eta:.0f} s"


def visual_prompts(request: SegmentRequest, position_of: dict[int, int]) -> list[VisualPrompt]:
    """The request's points and boxes grouped per (object, frame), at processed positions.

    Object ids as the emulator documents for fal: a prompt's ``object_id`` when given; else
    the smallest free id >= 1, positive points first, then boxes, each in list order, each
    its own object. Negative points always name their object (the request validates that).
    """
    taken = set(request.visual_object_ids())
    next_free = 1

    def auto_id() -> int:
        nonlocal next_free
        while next_free in taken:
            next_free += 1
        taken.add(next_free)
        return next_free

    points: dict[tuple[int, int], list[tuple[int, int, int]]] = collections.defaultdict(list)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    order: list[tuple[int, int]] = []
    point_ids = [p.object_id if p.object_id is not None else (auto_id() if p.label == 1 else None)
                 for p in request.point_prompts]
    box_ids = [b.object_id if b.object_id is not None else auto_id() for b in request.box_prompts]
    for p, oid in zip(request.point_prompts, point_ids):
        assert oid is not None  # negative points without an id are rejected by check_against
        key = (oid, position_of[p.frame_index])
        points[key].append((p.x, p.y, p.label))
        order.append(key)
    for b, oid in zip(request.box_prompts, box_ids):
        key = (oid, position_of[b.frame_index])
        boxes[key] = (b.x_min, b.y_min, b.x_max, b.y_max)
        order.append(key)
    out, seen = [], set()
    for key in order:
        if key in seen:
            continue
        seen.add(key)
        out.append(VisualPrompt(key[0], key[1], tuple(points.get(key, ())), boxes.get(key)))
    return sorted(out, key=lambda v: (v.frame, v.obj_id))
