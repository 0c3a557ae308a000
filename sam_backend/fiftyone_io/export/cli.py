"""``sam31-video export`` and ``sam31-video import``.

``main(["export", DATASET, "--field", "sam", "--format", "coco", "--out", DIR, ...])``
and ``main(["import", DATASET, PATH, "--field", "imported"])``; returns the exit code
(0 ok, 2 on an error the user can act on).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ...errors import SamError
from .options import FORMATS, ExportOptions
from .report import ExportProgress

_DEFAULTS = ExportOptions()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam31-video")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="export tracks of a FiftyOne video dataset",
                         description="formats: " + "; ".join(f"{k} = {v}" for k, v in FORMATS.items()))
    exp.add_argument("dataset")
    exp.add_argument("--field", default=_DEFAULTS.label_field, help="frame field holding the tracks (Detections)")
    exp.add_argument("--format", required=True, choices=list(FORMATS))
    exp.add_argument("--out", required=True, help="output folder (created; must be new or empty)")
    exp.add_argument("--stride", type=int, default=_DEFAULTS.frame_stride, help="export every n-th frame")
    exp.add_argument("--frames", choices=["images", "video"], default=None,
                     help="write frame images, or refer to frames by video + index (default: per format)")
    exp.add_argument("--masks", choices=["rle", "polygons"], default=_DEFAULTS.coco_masks, help="COCO mask encoding")
    exp.add_argument("--tolerance", type=float, default=_DEFAULTS.polygon_tolerance, help="polygon simplification, px")
    exp.add_argument("--mots-class-id", type=int, default=None, help="one MOTS class id for every object")
    exp.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    exp.add_argument("--strict", action="store_true", help="fail when polygons read back below the IoU threshold")
    imp = sub.add_parser("import", help="import COCO or YouTube-VIS tracks into a FiftyOne video dataset")
    imp.add_argument("dataset")
    imp.add_argument("path", help="labels JSON, or an export folder holding labels.json / instances.json")
    imp.add_argument("--field", default="imported", help="frame field to write (new, or holding Detections)")
    imp.add_argument("--format", choices=["coco", "ytvis"], default=None, help="default: detected from the file")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace labels in --field that sam31-video did not write (e.g. ground truth)")
    return parser


def _show(p: ExportProgress) -> None:
    if p.frames_done % 50 == 0 or p.frames_done == p.frames_total:
        print(f"[{p.video_index + 1}/{p.video_count}] {p.video_name}: {p.frames_done}/{p.frames_total} frames",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from ..cli import load_dataset
        from .importer import import_tracks
        from .run import export_tracks

        dataset = load_dataset(args.dataset)
        if args.command == "export":
            report = export_tracks(dataset, args.field, args.format, args.out, frame_stride=args.stride,
                                   frames=args.frames, coco_masks=args.masks, polygon_tolerance=args.tolerance,
                                   mots_class_id=args.mots_class_id, overwrite=args.overwrite, strict=args.strict,
                                   progress=_show)
        else:
            report = import_tracks(dataset, args.path, args.field, args.format, overwrite=args.overwrite,
                                   progress=_show)
        print(report.summary())
        for line in report.notes:
            print(f"note: {line}")
        for line in getattr(report, "warnings", []):
            print(f"warning: {line}", file=sys.stderr)
        return 1 if getattr(report, "unmatched", None) else 0  # videos of the file left out
    except SamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # misuse FiftyOne reports as ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
