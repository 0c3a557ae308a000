"""Peak memory of the local backend's chunked path: 300 vs 3,000 frames.

Two synthetic videos (same scene, 10x longer) go through the local backend in chunks, with
the contract fake of Meta's predictor as the engine (so this runs on a CPU and measures our
decoding, chunk buffers, RLE result store and id stitching, not a model's weights). Each
run is its own subprocess, so each peak RSS (VmHWM) is that run's alone. The 300-frame
run is the baseline, measured in the same invocation; target: the 3,000-frame peak within
1.3x of it (memory must not grow with video length).

    python bench/bench_local_memory.py [--chunk-size 100] [--overlap 24] [--width 320 --height 240]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.3


def _child(path: str, chunk_size: int, overlap: int) -> None:
    """Segment one video and print peak RSS (MB), frames and wall time as JSON."""
    # (this script's folder is on sys.path when it runs as a script)
    from _e2e import status_mb

    from sam_backend.backends.base import VideoSource, get_backend
    from sam_backend.backends.local.fake_predictor import ContractFakePredictor
    from sam_backend.types import FrameRange, SegmentRequest
    from sam_backend.video import probe

    video = VideoSource(info=probe(path), path=Path(path))
    fake = ContractFakePredictor()
    backend = get_backend("local", engine="sam3.1", chunk_size=chunk_size, overlap=overlap,
                          predictor_factory=lambda config, max_num_objects: fake)
    request = SegmentRequest.build(prompt="red green ball, blue box")
    for _ in backend.segment(video, request, frames=FrameRange(stop=2)):  # warm-up: lazy imports, the build
        pass
    base_mb = status_mb("VmRSS")  # what segmenting the whole video adds to this is the figure
    start = time.monotonic()
    frames = objects = 0
    ids: set[int] = set()
    for fr in backend.segment(video, request):
        frames += 1  # consumed and dropped, as the writer's batches are
        objects += len(fr.objects)
        ids.update(o.track_id for o in fr.objects)
    seconds = time.monotonic() - start
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss
    # across fork + exec, so a child of a big process (bench/run.py late in its run)
    # reported the parent's peak (398 MB "growth" there, 59 MB run alone).
    peak_mb = status_mb("VmHWM")
    print(json.dumps({"frames": frames, "objects": objects, "tracks": sorted(ids), "seconds": seconds, "peak_mb": peak_mb,
                      "base_mb": base_mb, "growth_mb": peak_mb - base_mb}))


def _measure(path: Path, chunk_size: int, overlap: int) -> dict:
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--chunk-size", str(chunk_size),
                          "--overlap", str(overlap)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_sizes(sizes: tuple[int, ...], repeats: int, chunk_size: int, overlap: int, width: int,
                  height: int) -> dict[int, list[dict]]:
    """Each size's runs (one subprocess each) on the same synthetic scene made that long."""
    from sam_backend import synthetic
    from sam_backend.video import encode_rgb_frames

    out: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"scene_{n}.mp4"
            scene = synthetic.default_scene(frame_count=n, width=width, height=height)
            encode_rgb_frames(synthetic.frames(scene), path, width=scene.width, height=scene.height, fps=scene.fps)
            out[n] = [_measure(path, chunk_size, overlap) for _ in range(repeats)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--overlap", type=int, default=24)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args, _ = parser.parse_known_args()  # scripts/bench.sh passes its arguments to every bench
    if args.child:
        _child(args.child, args.chunk_size, args.overlap)
        return 0
    results = {n: runs[0] for n, runs in measure_sizes((300, 3000), 1, args.chunk_size, args.overlap, args.width,
                                                       args.height).items()}
    for n, r in results.items():
        print(f"{n:>5} frames: peak RSS {r['peak_mb']:.0f} MB ({r['growth_mb']:.0f} MB over the RSS before segmenting), "
              f"{r['frames']} frames, {len(r['tracks'])} tracks {r['tracks']}, {r['frames'] / r['seconds']:.0f} frames/s")
    ratio = results[3000]["peak_mb"] / results[300]["peak_mb"]
    verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"peak RSS 3000 / 300 frames: {ratio:.2f}x (target <= {TARGET_RATIO}x, chunk_size={args.chunk_size}, "
          f"overlap={args.overlap}): {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
