"""One decoder per response shape, chosen by inspecting the payload; and each RLE layout
the emulator can produce, decoded end to end against the synthetic ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam_backend import synthetic
from sam_backend.backends.base import VideoSource
from sam_backend.backends.fal import FalBackend, FalConfig
from sam_backend.backends.fal.decoders import NoLabelsInResponse, decode_output
from sam_backend.emulator import EmulatorConfig, EmulatorServer
from sam_backend.errors import UnexpectedResponse
from sam_backend.masks import encode_rle, iou
from sam_backend.types import SegmentRequest, VideoInfo
from sam_backend.video import probe

INFO = VideoInfo(width=6, height=4, frame_count=3, fps=10, duration=0.3)
REQUEST = SegmentRequest.build(prompt="red ball")


def mask(x0: int, y0: int, x1: int, y1: int, shape: tuple[int, int] = (4, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def plain_rle(m: np.ndarray) -> dict:
    """COCO RLE with uncompressed list counts (column-major runs, starting with zeros)."""
    flat = m.T.reshape(-1).astype(int)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def objects_by_frame(decoded) -> list[list[tuple[int, str, tuple]]]:
    return [[(o.track_id, o.label, o.box) for o in f.objects] for f in decoded.frames()]


EXPECTED = [[(1, "red ball", (0, 0, 2, 2))], [], [(1, "red ball", (1, 1, 3, 3)), (2, "blue", (3, 0, 6, 4))]]


def test_per_frame_rle() -> None:
    payload = {"frames": [
        {"frame_index": 0, "masks": [{"rle": encode_rle(mask(0, 0, 2, 2)), "metadata": {"index": 1, "score": 0.8, "box": [0, 0, 0, 0]}}]},
        {"frame_index": 2, "masks": [
            {"rle": encode_rle(mask(1, 1, 3, 3)), "metadata": {"index": 1, "score": 0.8}},
            {"rle": plain_rle(mask(3, 0, 6, 4)), "metadata": {"index": 2, "score": 0.7, "label": "blue"}},
        ]},
    ], "video": {"url": "https://cdn/v.mp4"}}
    decoded = decode_output(payload, INFO, REQUEST)
    assert decoded.shape == "per_frame_rle" and decoded.files == {"video": "https://cdn/v.mp4"}
    assert objects_by_frame(decoded) == EXPECTED
    assert [f.frame_index for f in decoded.frames()] == [0, 1, 2]


def test_per_object_rle_in_both_layouts() -> None:
    by_list = {"objects": [
        {"object_id": 1, "score": 0.8, "rles": [encode_rle(mask(0, 0, 2, 2)), None, plain_rle(mask(1, 1, 3, 3))]},
        {"object_id": 2, "label": "blue", "rles": [None, None, encode_rle(mask(3, 0, 6, 4))]},
    ]}
    by_frames = {"masks": [
        {"id": 2, "label": "blue", "frames": [{"frame_index": 2, "rle": encode_rle(mask(3, 0, 6, 4))}]},
        {"id": 1, "frames": [{"frame_index": 0, "rle": encode_rle(mask(0, 0, 2, 2))}, {"frame_index": 2, "rle": encode_rle(mask(1, 1, 3, 3))}]},
    ]}
    for payload in (by_list, by_frames):
        decoded = decode_output(payload, INFO, REQUEST)
        assert decoded.shape == "per_object_rle"
        assert objects_by_frame(decoded) == EXPECTED


def test_mask_file_decoded_from_its_attachment() -> None:
    inner = {"frames": [{"frame_index": 0, "masks": [{"rle": encode_rle(mask(0, 0, 2, 2)), "metadata": {"index": 1}}]}]}
    payload = {"mask_url": {"url": "https://cdn/masks.json"}, "video": {"url": "https://cdn/v.mp4"}}
    decoded = decode_output(payload, INFO, REQUEST, {"mask_url": inner})
    assert decoded.shape == "mask_file/per_frame_rle" and decoded.files["mask_url"] == "https://cdn/masks.json"
    assert objects_by_frame(decoded)[0] == [(1, "red ball", (0, 0, 2, 2))]
    with pytest.raises(UnexpectedResponse, match="not a JSON object"):
        decode_output(payload, INFO, REQUEST, {"mask_url": "not JSON (12 bytes)"})


def test_video_only_and_unknown_shapes() -> None:
    decoded = decode_output({"video": {"url": "https://cdn/v.mp4"}, "boundingbox_frames_zip": {"url": "https://cdn/b.zip"}}, INFO, REQUEST)
    assert decoded.shape == "video_only" and decoded.frames is None and set(decoded.files) == {"video", "boundingbox_frames_zip"}
    with pytest.raises(UnexpectedResponse, match=r"keys: \['masks_v2', 'seed'\]\); known shapes: per_frame_rle, per_object_rle"):
        decode_output({"masks_v2": [], "seed": 1}, INFO, REQUEST)
    with pytest.raises(UnexpectedResponse, match="frame_index 5 but the video has 3 frames"):
        decode_output({"frames": [{"frame_index": 5, "masks": []}]}, INFO, REQUEST)
    with pytest.raises(UnexpectedResponse, match="unreadable object entry"):
        decode_output({"objects": [{"object_id": 1}]}, INFO, REQUEST)


def test_masks_at_another_resolution_are_resampled() -> None:
    big = np.zeros((8, 12), bool)
    big[0:4, 0:4] = True  # top-left 2x2 at the video's size
    decoded = decode_output({"frames": [{"frame_index": 0, "masks": [{"rle": encode_rle(big), "metadata": {"index": 4}}]}]}, INFO, REQUEST)
    [obj] = next(decoded.frames()).objects
    assert obj.mask.shape == (4, 6) and obj.box == (0, 0, 2, 2)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GroundTruth]:
    path = tmp_path_factory.mktemp("decoders") / "clip.mp4"
    return path, synthetic.write_video(synthetic.default_scene(frame_count=48, width=160, height=120), path)


@pytest.mark.parametrize("shape", ["per_frame", "per_object", "mask_file"])
def test_each_emulated_layout_decodes_to_the_ground_truth(shape: str, clip) -> None:
    path, truth = clip
    with EmulatorServer(EmulatorConfig(rle_shape=shape, queue_steps=0)) as emu, FalBackend(FalConfig(
            key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url, poll_initial_s=0.02)) as backend:
        video = VideoSource(info=probe(path), path=path)
        request = SegmentRequest.build(prompt="red ball, green ball")
        frames = list(backend.segment(video, request, work_key="ds/s/sam"))
        downloads = emu.stats.downloads
        assert downloads == (1 if shape == "mask_file" else 0)  # the mask file, fetched with the result
        again = list(backend.segment(video, request, work_key="ds/s/sam"))  # from the journal
        assert emu.stats.downloads == downloads and len(emu.stats.submits) == 1
    assert len(frames) == truth.scene.frame_count
    for name in ("red ball", "green ball"):
        seen = {f.frame_index: o for f in frames for o in f.objects if o.label == name}
        assert sorted(seen) == truth.frames_visible(name)
        assert len({o.track_id for o in seen.values()}) == 1
        assert all(iou(o.mask, truth.mask(name, i)) >= 0.98 for i, o in seen.items())
    assert [[(o.track_id, o.box) for o in f.objects] for f in again] == [[(o.track_id, o.box) for o in f.objects] for f in frames]


def test_video_only_endpoint_explains_and_keeps_the_urls(clip) -> None:
    path, _ = clip
    with EmulatorServer(EmulatorConfig(queue_steps=0)) as emu, FalBackend(FalConfig(
            key=emu.key, queue_url=emu.queue_url, rest_url=emu.rest_url, cdn_url=emu.cdn_url,
            endpoint="fal-ai/sam-3-1/video", poll_initial_s=0.02)) as backend:
        run = backend.segment(VideoSource(info=probe(path), path=path), SegmentRequest.build(prompt="red ball"))
        with pytest.raises(NoLabelsInResponse, match="labels need an RLE endpoint") as info:
            list(run)
    assert set(info.value.files) == {"video", "boundingbox_frames_zip"} and run.record.outputs == info.value.files
