"""Writer benchmark: our bulk writer vs FiftyOne's naive per-frame path, same run, same data.

300 frames x 16 tracked objects with blob-shaped masks (irregular, with holes and
specks) on 640x360 frames. Both paths get the same FrameResults; each writes into its own
fresh sample. Prints frames/s of both and the speed-up (target >= 10x).

    python bench/bench_writer.py [--frames 300] [--objects 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from _bench_db import drop_own_database  # noqa: E402  (before fiftyone: names this run's database)

import numpy as np  # noqa: E402

from sam_backend import masks as mask_ops  # noqa: E402
from sam_backend.types import FrameResult, TrackedObject, VideoInfo  # noqa: E402


def blob_frames(frames: int, objects: int, width: int = 640, height: int = 360, seed: int = 0) -> list[FrameResult]:
    """Moving irregular blobs: a few overlapping ellipses each, a hole, a stray speck."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    starts = rng.uniform([40, 40], [width - 40, height - 40], size=(objects, 2))
    velocity = rng.uniform(-2, 2, size=(objects, 2))
    lobes = rng.uniform(-18, 18, size=(objects, 3, 2))
    radii = rng.uniform(14, 40, size=(objects, 3, 2))
    out = []
    for f in range(frames):
        objs = []
        for k in range(objects):
            cx, cy = (starts[k] + velocity[k] * f) % [width - 80, height - 80] + 40
            m = np.zeros((height, width), bool)
            for (dx, dy), (rx, ry) in zip(lobes[k], radii[k]):
                m |= ((xx - cx - dx) / rx) ** 2 + ((yy - cy - dy) / ry) ** 2 <= 1
            m[int(cy) - 3:int(cy) + 3, int(cx) - 3:int(cx) + 3] = False  # a hole
            m[int(cy + 45) % height, int(cx + 45) % width] = True  # a speck
            box = mask_ops.tight_box(m)
            objs.append(TrackedObject(k + 1, f"blob {k % 4}", 0.9, m, box))
        out.append(FrameResult(f, objs))
    return out


def naive_write(sample, results: list[FrameResult], info: VideoInfo, field: str) -> None:
    from sam_backend.fiftyone_io.labels import to_detections

    for r in results:
        sample.frames[r.frame_index + 1][field] = to_detections(r, info.width, info.height)
    sample.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--objects", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import fiftyone as fo

    from sam_backend.fiftyone_io.writer import FrameLabelWriter

    results = blob_frames(args.frames, args.objects)
    info = VideoInfo(width=640, height=360, frame_count=args.frames, fps=30.0, duration=args.frames / 30)
    dataset = fo.Dataset()
    try:
        naive_s, fast_s = [], []
        for i in range(args.repeat):
            a = fo.Sample(filepath=f"/bench/naive_{i}.mp4")
            b = fo.Sample(filepath=f"/bench/fast_{i}.mp4")
            dataset.add_samples([a, b])
            t = time.perf_counter()
            naive_write(a, results, info, "naive")
            naive_s.append(time.perf_counter() - t)
            writer = FrameLabelWriter(dataset, "fast")
            t = time.perf_counter()
            writer.write_sample(b.id, iter(results), info)
            fast_s.append(time.perf_counter() - t)
        n, f = statistics.median(naive_s), statistics.median(fast_s)
        dets = args.frames * args.objects
        print(f"frames={args.frames} objects/frame={args.objects} detections={dets} repeats={args.repeat} (median)")
        print(f"naive FiftyOne path (sample.frames[n][f]=...; save): {n:.3f} s, {args.frames / n:.0f} frames/s")
        print(f"bulk writer (staged + $merge):                        {f:.3f} s, {args.frames / f:.0f} frames/s")
        print(f"speed-up: {n / f:.1f}x (target >= 10x)")
    finally:
        dataset.delete()
        drop_own_database()


if __name__ == "__main__":
    main()
