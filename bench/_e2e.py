"""End to end through the loopback emulator: the client's own stage, in processes of their own.

Two roles, each its own process so the client's CPU time and peak RSS are its alone:

- ``serve``: an emulator whose model is replaced by a canned answer of
  ``fal-ai/sam-3/video-rle-objects`` (``--frames`` x ``--objects`` moving blobs, fal's
  ``start length`` RLE): the model's time is not what is measured. Prints its URLs as one
  JSON line, serves until stdin closes.
- ``client``: the real client path for one video: ``FalBackend.segment`` (submit, poll,
  fetch, journal, decode) -> ``clean_frames`` -> ``FrameLabelWriter.write_sample`` ->
  MongoDB. Prints one JSON line: wall seconds, CPU seconds, peak RSS over the RSS after
  imports, detections written.

The client role only uses APIs that exist in the baseline commit too, so the same file
runs against either source tree (``PYTHONPATH`` picks it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np

WIDTH, HEIGHT = 640, 360


def blob_templates(objects: int, seed: int = 0) -> list[np.ndarray]:
    """One irregular blob per object (a few overlapping ellipses, a hole), as a crop."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(objects):
        lobes = rng.uniform(-18, 18, size=(3, 2))
        radii = rng.uniform(14, 40, size=(3, 2))
        yy, xx = np.mgrid[-64:64, -64:64]
        m = np.zeros((128, 128), bool)
        for (dx, dy), (rx, ry) in zip(lobes, radii):
            m |= ((xx - dx) / rx) ** 2 + ((yy - dy) / ry) ** 2 <= 1
        m[61:67, 61:67] = False  # a hole
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append(m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return out


def _runs(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column start and length of every horizontal run of a crop."""
    padded = np.pad(crop, ((0, 0), (1, 1))).astype(np.int8)
    d = np.diff(padded, axis=1)
    r, c = np.nonzero(d == 1)
    _, e = np.nonzero(d == -1)
    return r, c, e - c


def _tracks(frames: int, objects: int, seed: int = 0):
    """Per frame, per blob: its fal RLE string (row-major, 1-based starts: the emulator's
    default) and its pixel box. Each blob moves along its own straight line (wrapping)."""
    rng = np.random.default_rng(seed + 1)
    templates = [_runs(t) + (t.shape,) for t in blob_templates(objects, seed)]
    starts = rng.uniform([0, 0], [WIDTH - 130, HEIGHT - 130], size=(objects, 2))
    velocity = rng.uniform(-2, 2, size=(objects, 2))
    for f in range(frames):
        row = []
        for k, (r, c, n, (h, w)) in enumerate(templates):
            x0, y0 = ((starts[k] + velocity[k] * f) % [WIDTH - w, HEIGHT - h]).astype(int)
            s = (y0 + r) * WIDTH + x0 + c + 1
            pairs = np.empty(2 * len(s), dtype=np.int64)
            pairs[0::2], pairs[1::2] = s, n
            row.append((" ".join(map(str, pairs.tolist())), (int(x0), int(y0), int(x0 + w), int(y0 + h))))
        yield row


def canned_output(frames: int, objects: int, seed: int = 0) -> dict:
    """``fal-ai/sam-3/video-rle-objects``' answer for the prompt "blob": every blob, per frame."""
    out = [{"frame_index": f, "objects": [{"track_id": k, "rle": text} for k, (text, _) in enumerate(row)]}
           for f, row in enumerate(_tracks(frames, objects, seed))]
    return {"frames": out, "width": WIDTH, "height": HEIGHT, "num_frames": frames}


def first_boxes(objects: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """Each blob's box on frame 0: the box prompts of the union shape."""
    return [box for _, box in next(_tracks(1, objects, seed))]


def canned_union(frames: int, objects: int, seed: int = 0) -> list[dict]:
    """``fal-ai/sam-3-1/video-rle``'s answer for each blob prompted alone by its box (the
    seed endpoint's shape: one request per box-prompted object, one RLE string per frame,
    ``metadata`` with the score and a normalised centre box, as the emulator writes them)."""
    rows = list(_tracks(frames, objects, seed))
    out = []
    for k in range(objects):
        metadata = []
        for row in rows:
            x0, y0, x1, y1 = row[k][1]
            metadata.append({"index": 0, "score": 0.9, "box": [(x0 + x1) / 2 / WIDTH, (y0 + y1) / 2 / HEIGHT,
                                                               (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT]})
        out.append({"rle": [row[k][0] for row in rows], "metadata": metadata,
                    "boxes": [m["box"] for m in metadata], "scores": None})
    return out


def serve(args: argparse.Namespace) -> None:
    import tempfile

    from sam_backend.emulator import EmulatorConfig, EmulatorServer

    if args.shape == "objects":
        output = canned_output(args.frames, args.objects)
        compute = lambda job, parsed: (output, args.frames)  # noqa: E731
    else:  # one answer per box-prompted blob, found by its frame-0 box
        answers = dict(zip(first_boxes(args.objects), canned_union(args.frames, args.objects)))

        def compute(job: Any, parsed: Any) -> tuple[dict, int]:
            b = parsed.box_prompts[0]
            return answers[(b.x_min, b.y_min, b.x_max, b.y_max)], args.frames
    server = EmulatorServer(EmulatorConfig(result_ttl_s=None, large_result_ttl_s=None))
    server._compute = compute  # type: ignore[method-assign]
    # When each result answer starts to flow (after the emulator's own json.dumps of it):
    # the client stage the issue names, "from result fetch to done", starts there.
    marks = tempfile.NamedTemporaryFile("a", prefix="sam31-e2e-marks-", suffix=".txt", delete=False)
    answer = server._result_response

    def result_response(job: Any) -> Any:
        response = answer(job)
        if response.status == 200:
            marks.write(f"{time.time()}\n")
            marks.flush()
        return response

    server._result_response = result_response  # type: ignore[method-assign]
    try:
        with server as emu:
            print(json.dumps({"key": emu.key, "queue_url": emu.queue_url, "rest_url": emu.rest_url,
                              "cdn_url": emu.cdn_url, "marks": marks.name}), flush=True)
            sys.stdin.read()  # until the parent closes our stdin
    finally:
        marks.close()
        os.unlink(marks.name)


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status ("VmRSS", "VmHWM"; kB there)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    return status_mb("VmRSS")


class PeakRss:
    """Peak RSS sampled every 5 ms (``ru_maxrss`` cannot be reset after the imports)."""

    def __init__(self) -> None:
        self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def client(args: argparse.Namespace) -> None:
    import tempfile
    import uuid

    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    from sam_backend.backends.base import VideoSource
    from sam_backend.backends.fal import FalBackend, FalConfig
    from sam_backend.fiftyone_io.writer import FrameLabelWriter
    from sam_backend.postprocess import clean_frames
    from sam_backend.types import SegmentRequest, VideoInfo

    urls = json.loads(args.urls)
    info = VideoInfo(width=WIDTH, height=HEIGHT, frame_count=args.frames, fps=30.0, duration=args.frames / 30)
    dataset = fo.Dataset()
    # Only the id is kept: an in-memory Sample would be reloaded with all its frames on publish.
    sample_id = dataset.add_sample(fo.Sample(filepath=f"/bench/e2e_{uuid.uuid4().hex}.mp4"))
    writer = FrameLabelWriter(dataset, "sam")
    if args.shape == "objects":
        request = SegmentRequest(prompt="blob")
    else:
        from sam_backend.types import BoxPrompt

        request = SegmentRequest(box_prompts=[BoxPrompt(x_min=x0, y_min=y0, x_max=x1, y_max=y1, object_id=k + 1)
                                              for k, (x0, y0, x1, y1) in enumerate(first_boxes(args.objects))])
    video = VideoSource(info=info, url="https://example.com/bench.mp4")
    with tempfile.TemporaryDirectory() as tmp:
        config = FalConfig(key=urls["key"], queue_url=urls["queue_url"], rest_url=urls["rest_url"],
                           cdn_url=urls["cdn_url"], journal_path=os.path.join(tmp, "journal.sqlite"),
                           poll_initial_s=0.01)
        import gc

        gc.collect()
        base = _rss_mb()
        start_epoch = time.time()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with FalBackend(config) as backend, PeakRss() as rss:
            run = backend.segment(video, request, work_key=uuid.uuid4().hex)
            stats = writer.write_sample(sample_id, clean_frames(run), info)
            run.commit()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        end_epoch = time.time()
    stage = None
    if urls.get("marks"):
        with open(urls["marks"]) as f:
            fetched = [float(line) for line in f if line.strip() and float(line) >= start_epoch]
        stage = end_epoch - fetched[0] if fetched else None
    result = {"frames": args.frames, "objects": args.objects, "wall_s": wall, "cpu_s": cpu,
              "stage_s": stage, "rss_base_mb": base, "rss_peak_mb": rss.peak, "rss_growth_mb": rss.peak - base,
              "detections": stats.detections}
    print(json.dumps(result), flush=True)  # the dataset goes with the bench's database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["serve", "client"])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--urls", default="{}")
    parser.add_argument("--shape", choices=["objects", "union"], default="objects",
                        help="objects: one text prompt on video-rle-objects; union: one box per blob on video-rle")
    args = parser.parse_args()
    (serve if args.role == "serve" else client)(args)


if __name__ == "__main__":
    main()
