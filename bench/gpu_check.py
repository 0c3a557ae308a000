"""GPU check for the local backend, one command, two tables. For whoever has a CUDA GPU and
the checkpoints.

1. Workflows, per engine: text, points, boxes, a clip in two chunks, two samples at once
   (one shared model), each ok or the error, with tracks found and peak GPU memory.
2. Speed: SAM 3.1 vs SAM 3 on the same clip at 1, 16 and 64 objects, frames/s including the
   FiftyOne write, and peak GPU memory.

    python bench/gpu_check.py --checkpoint /path/to/folder-with-sam3.1_multiplex.pt-and-sam3.pt \\
        [--frames 300] [--objects 1 16 64] [--engines sam3.1 sam3] [--chunk-size 200]

The clip is synthetic: N slowly moving balls (text prompt "ball", max_num_objects=N), so
every object count runs on the same kind of content. Published anchors (one H100, frames/s
at 1 / 16 / 128 objects): SAM 3.1 33.8 / 30.2 / 11.5, SAM 3 26.5 / 9.8 / 1.6.
Not run by ./scripts/bench.sh (it needs a GPU); it exits with a message where there is none.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _bench_db import drop_own_database  # noqa: E402  (before fiftyone: names this run's database)


def balls_scene(objects: int, frames: int, width: int = 1280, height: int = 720):
    """``objects`` balls of palette colours drifting on a grid (no two overlap)."""
    from sam_backend import synthetic

    cols = max(1, int(objects ** 0.5 + 0.999))
    rows = (objects + cols - 1) // cols
    cell_w, cell_h = width / cols, height / rows
    radius = max(6, int(min(cell_w, cell_h) * 0.3))
    colours = list(synthetic.PALETTE)
    shapes = []
    for k in range(objects):
        cx, cy = (k % cols + 0.5) * cell_w, (k // cols + 0.5) * cell_h
        drift = 0.15 * cell_w
        shapes.append(synthetic.ShapeSpec(f"ball {k}", colours[k % len(colours)], "circle", radius, radius,
                                          ((0, cx - drift, cy), (frames - 1, cx + drift, cy))))
    return synthetic.Scene(width=width, height=height, frame_count=frames, fps="30", shapes=tuple(shapes))


def workflows(engines: list[str], checkpoint: str, tmp: Path) -> list[tuple[str, str, str, str, str]]:
    """(engine, workflow, ok/failed, tracks or error, peak GPU GiB) for each engine."""
    import fiftyone as fo
    import torch

    from sam_backend import synthetic
    from sam_backend.backends.base import get_backend
    from sam_backend.fiftyone_io import segment_videos

    frames = 120
    path = tmp / "workflows.mp4"
    gt = synthetic.write_video(synthetic.default_scene(frame_count=frames, width=640, height=480), path)
    ball = gt.mask("red ball", 10)
    ys, xs = ball.nonzero()
    x0, y0, x1, y1 = (int(v) for v in _box(gt.mask("blue box", 30)))
    cases = {
        "text": ({"prompt": "red ball, blue box"}, {}, 1),
        "points": ({"point_prompts": [{"x": int(xs.mean()), "y": int(ys.mean()), "label": 1, "object_id": 1,
                                       "frame_index": 10}]}, {}, 1),
        "boxes": ({"box_prompts": [{"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1, "object_id": 2,
                                    "frame_index": 30}]}, {}, 1),
        "two chunks": ({"prompt": "red ball"}, {"chunk_size": 70, "overlap": 24}, 1),
        "two samples at once": ({"prompt": "green ball"}, {}, 2),
    }
    rows = []
    for engine in engines:
        for name, (request, options, samples) in cases.items():
            dataset = fo.Dataset()
            dataset.add_samples([fo.Sample(filepath=str(path)) for _ in range(samples)])
            torch.cuda.reset_peak_memory_stats()
            try:
                with get_backend("local", engine=engine, checkpoint=checkpoint, **options) as backend:
                    report = segment_videos(dataset, label_field="gpu_check", backend=backend, concurrency=samples,
                                            skip_failures=False, **request)
                rows.append((engine, name, "ok", str(sum(report.tracks.values())), _peak_gib()))
            except Exception as exc:  # noqa: BLE001 - the table reports it
                rows.append((engine, name, "failed", f"{type(exc).__name__}: {str(exc)[:100]}", _peak_gib()))
            finally:
                dataset.delete()
            print("  ".join(rows[-1]), flush=True)
    return rows


def _box(mask):  # noqa: ANN001
    ys, xs = mask.nonzero()
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _peak_gib() -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.environ.get("SAM31_LOCAL_CHECKPOINT"),
                        help="folder holding sam3.1_multiplex.pt and sam3.pt (or set SAM31_LOCAL_CHECKPOINT)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--engines", nargs="+", default=["sam3.1", "sam3"])
    parser.add_argument("--chunk-size", type=int, default=200)
    args, _ = parser.parse_known_args()

    try:
        import torch
    except ImportError:
        print("gpu_check: PyTorch is not installed; install a CUDA build of torch and Meta's sam3 package "
              "(pip install 'sam3 @ git+https://github.com/facebookresearch/sam3.git')", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is False); this check needs one. "
              "On a CPU the local backend runs SAM 3 with engine='transformers' instead.", file=sys.stderr)
        return 2
    if not args.checkpoint:
        print("gpu_check: give --checkpoint (a folder with sam3.1_multiplex.pt and sam3.pt) or set SAM31_LOCAL_CHECKPOINT",
              file=sys.stderr)
        return 2

    import fiftyone as fo

    from sam_backend import synthetic
    from sam_backend.backends.base import get_backend
    from sam_backend.errors import SamError
    from sam_backend.fiftyone_io import segment_videos

    print(f"GPU: {torch.cuda.get_device_name(0)}; {args.frames} frames at 1280x720; frames/s include the FiftyOne write")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flows = workflows(args.engines, args.checkpoint, Path(tmp))
        for n in args.objects:
            path = Path(tmp) / f"balls_{n}.mp4"
            synthetic.write_video(balls_scene(n, args.frames), path)
            for engine in args.engines:
                dataset = fo.Dataset()
                dataset.add_sample(fo.Sample(filepath=str(path)))
                torch.cuda.reset_peak_memory_stats()
                try:
                    with get_backend("local", engine=engine, checkpoint=args.checkpoint, chunk_size=args.chunk_size) as backend:
                        start = time.monotonic()
                        report = segment_videos(dataset, prompt="ball", max_num_objects=min(n, 128),
                                                label_field="gpu_check", backend=backend, skip_failures=False)
                        seconds = time.monotonic() - start
                    fps = report.frames / seconds
                    rows.append((engine, n, f"{fps:.1f}", str(sum(report.tracks.values())), _peak_gib()))
                except SamError as exc:
                    rows.append((engine, n, "failed", str(exc)[:120], _peak_gib()))
                finally:
                    dataset.delete()
                print(f"{rows[-1][0]:>7} {rows[-1][1]:>3} objects: {rows[-1][2]} frames/s  {rows[-1][3]}", flush=True)
    drop_own_database()
    print("\nengine  workflow              result  tracks/error                     peak GiB")
    for engine, name, result, detail, peak in flows:
        print(f"{engine:>7} {name:<21} {result:<7} {detail[:32]:<32} {peak:>8}")
    print("\nengine  objects  frames/s  peak GiB")
    for engine, n, fps, _, peak in rows:
        print(f"{engine:>7} {n:>8} {fps:>9} {peak:>9}")
    return 0 if all(r[2] == "ok" for r in flows) else 1


if __name__ == "__main__":
    sys.exit(main())
