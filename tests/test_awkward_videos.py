"""Awkward real-world encodes, generated with ffmpeg from one synthetic scene: variable
frame rate, rotation, odd size, 10-bit, yuv444p, an audio track, MKV, VP9, an edit list,
a corrupt and a truncated file, spaces and non-ASCII in the path. Each is segmented end
to end (real HTTP to the emulator, real MongoDB), its labels must sit on the decoded
frames exactly (the same frames any decoder and FiftyOne's own reader produce, rotation
applied), and every export format must write it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from pycocotools.coco import COCO

from sam_backend import synthetic
from sam_backend.coords import pixel_box
from sam_backend.emulator.segmenter import classify, concept_colours
from sam_backend.fiftyone_io.export import export_tracks
from sam_backend.fiftyone_io.export.options import FORMATS
from sam_backend.fiftyone_io.segment import segment_videos
from sam_backend.video import iter_frames, probe

PROMPT = "red ball, blue box, green ball"
FRAMES = 48


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _corrupt(src: Path, dst: Path) -> None:
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 600] = b"\x55" * 600
    dst.write_bytes(bytes(data))


def _truncate(src: Path, dst: Path) -> None:
    fast = dst.with_name("faststart.mp4")
    _ffmpeg("-i", str(src), "-c", "copy", "-movflags", "+faststart", str(fast))
    data = fast.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.7)])
    fast.unlink()


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "8"]
# name -> how to make it from the base clip (src, dst)
ENCODES: dict[str, Callable[[Path, Path], None]] = {
    "vfr.mp4": lambda s, d: _ffmpeg("-i", str(s), "-vf", "setpts='if(lt(N,20),N/30,0.66+(N-20)/10)/TB'",
                                    "-fps_mode", "vfr", *X264, "-pix_fmt", "yuv420p", str(d)),
    "rotated.mp4": lambda s, d: _ffmpeg("-i", str(s), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d)),
    "odd size.mp4": lambda s, d: _ffmpeg("-i", str(s), "-vf", "scale=161:119:flags=neighbor", *X264,
                                         "-pix_fmt", "yuv444p", str(d)),
    "ten-bit.mp4": lambda s, d: _ffmpeg("-i", str(s), *X264, "-pix_fmt", "yuv420p10le", str(d)),
    "yuv444.mp4": lambda s, d: _ffmpeg("-i", str(s), *X264, "-pix_fmt", "yuv444p", str(d)),
    "audio.mp4": lambda s, d: _ffmpeg("-i", str(s), "-f", "lavfi", "-i", "sine=frequency=440:duration=2",
                                      "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(d)),
    "clip.mkv": lambda s, d: _ffmpeg("-i", str(s), "-c", "copy", str(d)),
    "clip.webm": lambda s, d: _ffmpeg("-i", str(s), "-c:v", "libvpx-vp9", "-crf", "8", "-b:v", "0",
                                      "-deadline", "realtime", "-cpu-used", "8", str(d)),
    "edit list.mp4": lambda s, d: _ffmpeg("-ss", "0.4", "-i", str(s), "-c", "copy", str(d)),
    "corrupt.mp4": _corrupt,
    "truncated.mp4": _truncate,
    "vidéo ü 日本.mp4": lambda s, d: _ffmpeg("-i", str(s), "-c", "copy", str(d)),
}


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("awkward")
    base = folder / "base.mp4"
    # keyframes every 12 frames and B-frames, so cuts and edit lists fall mid-GOP
    scene = synthetic.default_scene(frame_count=FRAMES, width=160, height=120)
    synthetic.write_video(scene, folder / "raw.mp4")
    _ffmpeg("-i", str(folder / "raw.mp4"), *X264, "-g", "12", "-bf", "2", "-pix_fmt", "yuv420p", str(base))
    paths = {}
    for name, make in ENCODES.items():
        make(base, folder / name)
        paths[name] = folder / name
    return paths


@pytest.fixture(scope="module")
def segmented(awkward: dict[str, Path]) -> fo.Dataset:
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=str(p)) for p in awkward.values()])
    report = segment_videos(ds, prompt=PROMPT, label_field="sam", backend="emulator")
    assert report.failed == {}
    assert len(report.done) == len(awkward)
    for name in ("edit list.mp4", "corrupt.mp4", "truncated.mp4"):  # the user is told which count was used
        info = probe(awkward[name])
        assert any(w.startswith(f"{name}: the file says {info.claimed_frame_count} frames but {info.frame_count} decode")
                   for w in report.warnings), report.warnings
    yield ds
    ds.delete()


def test_the_encodes_are_awkward(awkward: dict[str, Path]) -> None:
    """The premise: containers that miscount frames, and a rotated frame size."""
    info = {name: probe(path) for name, path in awkward.items()}
    assert (info["rotated.mp4"].width, info["rotated.mp4"].height) == (120, 160)
    assert (info["odd size.mp4"].width, info["odd size.mp4"].height) == (161, 119)
    assert info["vfr.mp4"].variable_frame_rate
    for name in ("edit list.mp4", "corrupt.mp4", "truncated.mp4"):
        assert info[name].frame_count < FRAMES and info[name].container_disagrees, (name, info[name])
    # A cut file's header still claims every frame (what FiftyOne's metadata shows); the
    # warning quotes that, not the packets that happen to be readable.
    truncated = info["truncated.mp4"]
    assert truncated.claimed_frame_count == truncated.header_frame_count == FRAMES
    assert truncated.container_frame_count is not None and truncated.container_frame_count < FRAMES
    for name, path in awkward.items():  # decoded count = what decoding yields
        assert sum(1 for _ in iter_frames(path, info[name])) == info[name].frame_count, name


def test_labels_sit_on_the_decoded_frames(segmented: fo.Dataset) -> None:
    for sample in segmented:
        path = Path(sample.filepath)
        info = probe(path)
        numbers = sorted(sample.frames.keys())
        seen = decoded = 0
        for index, gray in enumerate(iter_frames(path, info, gray=True)):
            decoded += 1
            labels = classify(gray)
            frame = sample.frames[index + 1] if index + 1 in sample.frames else None
            found = {d.label: d for d in (frame.sam.detections if frame is not None and frame.sam else [])}
            for concept in PROMPT.split(", "):
                [colour] = concept_colours(concept)
                expected = labels == colour
                if not expected.any():
                    assert concept not in found, (path.name, index, concept)
                    continue
                det = found[concept]
                x0, y0, x1, y1 = pixel_box(det.bounding_box, info.width, info.height)
                full = np.zeros((info.height, info.width), bool)
                full[y0:y1, x0:x1] = det.mask
                assert np.array_equal(full, expected), (path.name, index, concept)
                seen += 1
        assert seen > 0, path.name
        # no frame document (not even empty Detections) past the last decoded frame
        assert numbers and numbers[-1] <= decoded, (path.name, numbers[-1], decoded)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_exports_every_encode(segmented: fo.Dataset, fmt: str, tmp_path: Path) -> None:
    labelled = sum(len(s.frames) for s in segmented)
    report = export_tracks(segmented, "sam", fmt, tmp_path / fmt)
    assert (report.videos, report.frames) == (len(segmented), labelled)
    manifest = json.loads((tmp_path / fmt / "sam31_export.json").read_text())
    assert manifest["counts"]["frames"] == labelled
    if fmt == "coco":
        [ann] = [p for p in (tmp_path / fmt).rglob("*.json") if p.name != "sam31_export.json"]
        coco = COCO(str(ann))
        sizes = {(img["width"], img["height"]) for img in coco.dataset["images"]}
        assert (120, 160) in sizes and (161, 119) in sizes  # rotated and odd sizes as decoded
        for ann_id in coco.getAnnIds()[:50]:
            mask = coco.annToMask(coco.anns[ann_id])
            img = coco.imgs[coco.anns[ann_id]["image_id"]]
            assert mask.shape == (img["height"], img["width"]) and mask.any()
