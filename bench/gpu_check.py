"""GPU check for the local backend: SAM 3.1 vs SAM 3 on the same clip at 1, 16 and 64
objects, frames/s including the FiftyOne write. For whoever has a CUDA GPU and checkpoints.

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
        for n in args.objects:
            path = Path(tmp) / f"balls_{n}.mp4"
            synthetic.write_video(balls_scene(n, args.frames), path)
            for engine in args.engines:
                dataset = fo.Dataset()
                dataset.add_sample(fo.Sample(filepath=str(path)))
                try:
                    with get_backend("local", engine=engine, checkpoint=args.checkpoint, chunk_size=args.chunk_size) as backend:
                        start = time.monotonic()
                        report = segment_videos(dataset, prompt="ball", max_num_objects=min(n, 128),
                                                label_field="gpu_check", backend=backend, skip_failures=False)
                        seconds = time.monotonic() - start
                    fps = report.frames / seconds
                    rows.append((engine, n, f"{fps:.1f}", str(report.tracks)))
                except SamError as exc:
                    rows.append((engine, n, "failed", str(exc)[:120]))
                finally:
                    dataset.delete()
                print(f"{rows[-1][0]:>7} {rows[-1][1]:>3} objects: {rows[-1][2]} frames/s  {rows[-1][3]}", flush=True)
    drop_own_database()
    print("\nengine  objects  frames/s")
    for engine, n, fps, _ in rows:
        print(f"{engine:>7} {n:>8} {fps:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
