"""``sam31-video``: the command line. ``demo`` runs the demo; ``segment`` labels a dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import SamError


def _segment(args: argparse.Namespace) -> int:
    import fiftyone as fo

    from .segment import SampleProgress, segment_videos

    dataset = fo.load_dataset(args.dataset)

    def show(p: SampleProgress) -> None:
        print(f"[{p.sample_index + 1}/{p.sample_count}] {p.backend.stage} {p.backend.message}", file=sys.stderr)

    report = segment_videos(dataset, prompt=args.prompt, label_field=args.field, backend=args.backend,
                            detection_threshold=args.threshold, max_num_objects=args.max_objects, progress=show)
    print(f"{len(report.done)}/{report.samples} videos, {report.frames} frames, "
          f"{sum(report.tracks.values())} tracks -> frames.{args.field} ({report.seconds:.1f} s)")
    for sample_id, message in report.failed.items():
        print(f"FAILED {sample_id}: {message}", file=sys.stderr)
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sam31-video")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="segment a generated video into a FiftyOne dataset", add_help=False)
    seg = sub.add_parser("segment", help="segment every video of a FiftyOne dataset")
    seg.add_argument("dataset")
    seg.add_argument("--prompt", required=True, help="comma-separated concepts, e.g. 'person, dog'")
    seg.add_argument("--field", default="sam")
    seg.add_argument("--backend", default="fal")
    seg.add_argument("--threshold", type=float, default=0.5)
    seg.add_argument("--max-objects", type=int, default=16)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "demo":
            from .demo import main as demo_main

            return demo_main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return _segment(args)
    except SamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
