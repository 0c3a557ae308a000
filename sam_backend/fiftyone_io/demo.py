"""The demo: a generated video with moving shapes -> FiftyOne dataset -> SAM 3.1 tracks.

Uses the real fal API when FAL_KEY is set, otherwise the bundled loopback emulator, and
says which. Prints frames, tracks, frames per track, wall time, cost, and how well the
masks match the video's known ground truth.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import fiftyone as fo
from fiftyone.core.frame import get_default_frame_fields
import numpy as np

from .. import masks as mask_ops
from .. import synthetic
from .. import video as video_ops
from ..coords import frame_index_from_number, pixel_box
from ..cost import dollars, fal_estimate
from ..errors import InvalidRequest
from ..types import FrameResult, SegmentRequest, TrackedObject
from .options import SampleProgress, SegmentReport
from .segment import segment_videos
from .writer import WRITTEN_MARK, FrameLabelWriter

DEFAULT_PROMPT = "red ball, blue box, green ball"
# In dataset.info of the datasets the demo makes: it replaces those, and no other.
DEMO_MARK = "sam31_video_demo"


def _frame_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam31-video demo", description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"comma-separated concepts (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--frames", type=_frame_count, default=96, help="length of the generated video (default 96)")
    p.add_argument("--dataset", default="sam31-demo",
                   help="FiftyOne dataset name (default sam31-demo); a dataset of an earlier demo run is reused, "
                        "its labels cleared (a rerun on fal takes the results it paid for), any other dataset of that "
                        "name is left alone and the demo stops")
    p.add_argument("--field", default="sam", help="frame field for the tracks (default 'sam')")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the video is written")
    p.add_argument("--app", action="store_true", help="open the FiftyOne App on the result and wait")
    p.add_argument("--port", type=int, default=5151, help="App port with --app")
    return p


def run(args: argparse.Namespace) -> int:
    _check_dataset_name(args.dataset)
    use_fal = bool(os.environ.get("FAL_KEY") or (os.environ.get("FAL_KEY_ID") and os.environ.get("FAL_KEY_SECRET")))
    if use_fal:
        usd, detail = fal_estimate(SegmentRequest.build(prompt=args.prompt), args.frames)
        about = f"about {dollars(usd)}: {detail}" if usd is not None else f"cost unknown: {detail}"
        print(f"FAL_KEY is set: calling the real fal API; this costs money ({about}).")
    else:
        print("FAL_KEY is not set: using the bundled offline fal emulator on 127.0.0.1 "
              "(no network, no cost; its toy model only knows these synthetic colours).")
    backend = "fal" if use_fal else "emulator"

    args.out.mkdir(parents=True, exist_ok=True)
    video_path = (args.out / "shapes.mp4").resolve()
    scene = synthetic.default_scene(frame_count=args.frames)
    truth = synthetic.write_video(scene, video_path)
    print(f"video: {video_path} ({scene.width}x{scene.height}, {scene.frame_count} frames at 29.97 fps, "
          f"objects: {', '.join(s.name for s in scene.shapes)})")

    dataset, sample = _demo_dataset(args.dataset, video_path)
    _write_ground_truth(dataset, sample.id, truth)

    def show(p: SampleProgress) -> None:
        print(f"  [{p.backend.stage}] {p.backend.message}")

    started = time.monotonic()
    report = segment_videos(dataset, prompt=args.prompt, label_field=args.field, backend=backend, progress=show)
    _print_summary(report, time.monotonic() - started, backend)
    _print_accuracy(dataset, args.field, truth)
    # In the App: show the tracks (ground truth one click away), one colour per track id.
    dataset.app_config.active_fields = fo.ActiveFields(paths=[f"frames.{args.field}"])
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="instance")
    dataset.save()

    if args.app:
        session = fo.launch_app(dataset, port=args.port, address="127.0.0.1")
        print(f"App: {session.url} (Ctrl-C to quit)")
        session.wait()
    else:
        print(f"Browse it: fiftyone app launch {args.dataset}   (or rerun with --app)")
    return 0 if not report.failed else 1


def _demo_dataset(name: str, video_path: Path) -> tuple[fo.Dataset, fo.Sample]:
    """The demo's dataset with one sample for ``video_path``, labels cleared. An earlier
    demo's sample for the same file is kept, not made anew: fal requests are journaled
    per sample id, so a rerun after a kill or a finished run takes the paid results
    (same video bytes, same prompt) instead of paying again."""
    if fo.dataset_exists(name):  # an earlier demo's (checked in _check_dataset_name)
        dataset = fo.load_dataset(name)
        if len(dataset) == 1 and dataset.first().filepath == str(video_path):
            sample = dataset.first()
            sample.frames.clear()
            sample.save()
            sample.compute_metadata(overwrite=True)  # the video may be another length now
            dataset.info[DEMO_MARK] = True
            dataset.save()
            for field in dataset.get_frame_field_schema() or {}:
                if field not in get_default_frame_fields(include_private=False):
                    dataset.delete_frame_field(field)
            return dataset, sample
        fo.delete_dataset(name)
    dataset = fo.Dataset(name, persistent=True)
    dataset.info[DEMO_MARK] = True
    dataset.save()
    sample = fo.Sample(filepath=str(video_path))
    dataset.add_sample(sample)
    return dataset, sample


def _made_by_demo(dataset: fo.Dataset) -> bool:
    """The demo's mark, or (demos before the mark) exactly what they made: one sample, the
    generated shapes.mp4, with the generator's frames.ground_truth."""
    if dataset.info.get(DEMO_MARK):
        return True
    return (len(dataset) == 1 and dataset.has_frame_field("ground_truth")
            and Path(dataset.first().filepath).name == "shapes.mp4")


def _check_dataset_name(name: str) -> None:
    """The demo replaces the datasets it made, never a user's dataset that has the same name."""
    if fo.dataset_exists(name) and not _made_by_demo(fo.load_dataset(name)):
        raise InvalidRequest(f"a dataset named {name!r} already exists and was not made by the demo; it was left "
                             "as it is. Pick another name with --dataset")


def _write_ground_truth(dataset: fo.Dataset, sample_id: str, truth: synthetic.GroundTruth) -> None:
    """The generator's exact masks as ``frames.ground_truth``, to compare with in the App."""
    scene = truth.scene
    info = video_ops.probe(dataset[sample_id].filepath)
    frames = []
    for index in range(scene.frame_count):
        objects = []
        for track_id, shape in enumerate(scene.shapes, start=1):
            mask = truth.mask(shape.name, index)
            if mask is not None:
                objects.append(TrackedObject(track_id, shape.name, 1.0, mask, mask_ops.tight_box(mask)))
        frames.append(FrameResult(index, objects))
    FrameLabelWriter(dataset, "ground_truth").write_sample(sample_id, frames, info)
    # Ground truth, not sam31-video's output: a run into this field must ask to replace it.
    field = dataset.get_field("frames.ground_truth")
    field.info = {k: v for k, v in (field.info or {}).items() if k != WRITTEN_MARK} or None
    field.save()


def _print_summary(report: SegmentReport, seconds: float, backend: str) -> None:
    record = next(iter(report.records.values()), None)
    print(f"\nbackend: {backend}" + (f" ({record.endpoint}, model {record.model}, request {record.request_id})" if record else ""))
    for warning in sorted({w for r in report.records.values() for w in r.warnings}):
        print(f"warning: {warning}")
    for sample_id, message in report.failed.items():
        print(f"FAILED {sample_id}: {message}")
    print(f"frames written: {report.frames}")
    print(f"tracks: {sum(report.tracks.values())}, detections: {report.detections}")
    print(f"wall time: {seconds:.2f} s")
    cost = "n/a" if report.estimated_usd is None else f"${report.estimated_usd:.4f}"
    units = "" if report.billed_units is None else f", billed units {report.billed_units:g}"
    print(f"estimated fal cost: {cost}{units}" + (" (emulator: nothing billed)" if backend == "emulator" else ""))


def _print_accuracy(dataset: fo.Dataset, field: str, truth: synthetic.GroundTruth) -> None:
    """Frames per track, and mean IoU of each track against the object it covers best."""
    sample = dataset.first()
    width, height = sample.metadata.frame_width, sample.metadata.frame_height
    per_track: dict[int, list[tuple[int, np.ndarray, str]]] = {}
    for number, frame in sample.frames.items():
        for det in (frame[field].detections if frame[field] else []):
            full = np.zeros((height, width), bool)
            x0, y0, x1, y1 = pixel_box(det.bounding_box, width, height)
            full[y0:y0 + det.mask.shape[0], x0:x0 + det.mask.shape[1]] = det.mask[: y1 - y0, : x1 - x0]
            per_track.setdefault(det.index, []).append((frame_index_from_number(number), full, det.label))
    for track_id, items in sorted(per_track.items()):
        best_name, best_iou = "", 0.0
        for name in truth.masks:
            ious = [mask_ops.iou(m, truth.mask(name, f)) if truth.mask(name, f) is not None else 0.0 for f, m, _ in items]
            if np.mean(ious) > best_iou:
                best_name, best_iou = name, float(np.mean(ious))
        visible = len(truth.frames_visible(best_name)) if best_name else 0
        print(f"  track {track_id} '{items[0][2]}': {len(items)} frames (object visible on {visible}); "
              f"mean IoU vs '{best_name}' {best_iou:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
