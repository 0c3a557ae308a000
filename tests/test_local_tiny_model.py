"""The transformers engine running transformers' real SAM 3 model code (Sam3VideoModel for
text, Sam3TrackerVideoModel for boxes and points) end to end on CPU, with a tiny randomly
initialised model saved to disk and loaded back the way real weights are.

Random weights mean no accuracy claim: these tests prove the real code path runs and that
what it produces reaches our writer. Traps that would make them test nothing (see
shared/reference/transformers-sam3-tiny.md) are closed on purpose: detection thresholds 0
with the request's detection_threshold=0 (random scores are ~0.25), hot-start delay 0
(else short clips emit nothing), and a positive object-score bias in the tracker's mask
decoder (else random trackers predict "no object"); every test asserts non-empty masks on
every frame, so a silent no-op fails.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sam_backend import masks as mask_ops  # noqa: E402
from sam_backend import synthetic  # noqa: E402
from sam_backend.backends.base import VideoSource, get_backend  # noqa: E402
from sam_backend.backends.local import BACKEND, EngineUnavailable  # noqa: E402
from sam_backend.types import SegmentRequest  # noqa: E402
from sam_backend.video import probe  # noqa: E402

H = 128  # the smallest hidden size the memory attention accepts (its key/value dim is fixed at 64)
IMAGE = 112  # 8x8 patches of 14 px


def _vision():
    vit = transformers.Sam3ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=IMAGE, patch_size=14, window_size=4, global_attn_indexes=[1],
                                     pretrain_image_size=IMAGE)
    return transformers.Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=H)


def _tiny_config():
    small = dict(hidden_size=H, num_layers=1, num_attention_heads=2, intermediate_size=2 * H)
    detector = transformers.Sam3Config(
        vision_config=_vision(),
        text_config=dict(vocab_size=64, hidden_size=H, intermediate_size=2 * H, projection_dim=H, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        geometry_encoder_config=small, detr_encoder_config=small, detr_decoder_config={**small, "num_queries": 8},
        mask_decoder_config=dict(hidden_size=H, num_attention_heads=2),
    )
    tracker = transformers.Sam3TrackerVideoConfig(
        vision_config=_vision(), prompt_encoder_config=dict(hidden_size=H, image_size=IMAGE, patch_size=14),
        mask_decoder_config=dict(hidden_size=H, mlp_dim=2 * H, num_attention_heads=2, iou_head_hidden_dim=H),
        image_size=IMAGE, num_maskmem=3, max_object_pointers_in_encoder=4, memory_attention_hidden_size=H,
        memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=2 * H, memory_encoder_hidden_size=H,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=H, memory_fuser_embed_dim=H,
        memory_fuser_intermediate_dim=2 * H, memory_fuser_num_layers=1,
    )
    return transformers.Sam3VideoConfig(
        detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * IMAGE // 14,
        score_threshold_detection=0.0, new_det_thresh=0.0, max_num_objects=2,
        hotstart_delay=0, hotstart_unmatch_thresh=0, hotstart_dup_thresh=0,
    )


def _tiny_tokenizer():
    """A word-level tokenizer for the test's concepts (the CLIP vocabulary is a download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<|startoftext|>", "<|endoftext|>", "<unk>", "red", "ball", "blue", "box", "green"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                      special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = transformers.Sam3VideoModel(_tiny_config()).eval()
    with torch.no_grad():
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    folder = tmp_path_factory.mktemp("tiny_sam3")
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GroundTruth]:
    path = tmp_path_factory.mktemp("tiny_video") / "tiny.mp4"
    return path, synthetic.write_video(synthetic.default_scene(frame_count=10, width=96, height=72), path)


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir: Path):
    with get_backend("local", engine="transformers", model=str(tiny_model_dir), device="cpu",
                     chunk_size=6, overlap=2, environ={}) as backend:
        yield backend


def _check_frames(results, shape: tuple[int, int], frames: int) -> None:
    assert [fr.frame_index for fr in results] == list(range(frames))
    for fr in results:
        assert fr.objects, f"no objects on frame {fr.frame_index}: the real model produced nothing"
        for o in fr.objects:
            assert o.mask.dtype == bool and o.mask.shape == shape and o.mask.any()
            assert o.box == mask_ops.tight_box(o.mask)
            assert isinstance(o.track_id, int) and o.track_id >= 1 and 0.0 <= o.score <= 1.0


def test_text_prompt_runs_the_real_video_model(tiny_backend, tiny_video) -> None:
    path, _ = tiny_video
    # The request's budget covers a re-detection per chunk: with random weights the same object
    # need not overlap itself across chunks enough to be stitched (the model keeps 2 per chunk).
    request = SegmentRequest.build(prompt="red ball", detection_threshold=0.0, max_num_objects=4)
    run = tiny_backend.segment(VideoSource(info=probe(path), path=path), request)
    results = list(run)
    _check_frames(results, (72, 96), 10)
    assert run.record.model == "sam3 (transformers)" and run.record.backend == "local"
    assert {o.label for fr in results for o in fr.objects} == {"red ball"}
    assert 1 <= len({o.track_id for fr in results for o in fr.objects}) <= 4  # 2 chunks, at most 2 objects each


def _prompt_encoder_inputs(backend) -> list[dict]:
    """Records what the real tracker's prompt encoder receives (points, labels, boxes)."""
    calls: list[dict] = []
    encoder = backend.engine.tracker_model.prompt_encoder

    def hook(module, args, kwargs) -> None:
        names = ("input_points", "input_labels", "input_boxes", "input_masks")
        given = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        calls.append({k: (v.detach().clone() if v is not None else None) for k, v in given.items()})

    handle = encoder.register_forward_pre_hook(hook, with_kwargs=True)
    calls.append({"handle": handle})
    return calls


def test_box_and_points_with_two_object_ids_run_the_real_tracker(tiny_backend, tiny_video) -> None:
    path, _ = tiny_video
    request = SegmentRequest.build(
        box_prompts=[{"x_min": 10, "y_min": 20, "x_max": 40, "y_max": 50, "object_id": 1, "frame_index": 0}],
        point_prompts=[{"x": 60, "y": 30, "label": 1, "object_id": 2, "frame_index": 3},
                       {"x": 70, "y": 60, "label": 0, "object_id": 2, "frame_index": 3}],
    )
    calls = _prompt_encoder_inputs(tiny_backend)
    try:
        results = list(tiny_backend.segment(VideoSource(info=probe(path), path=path), request))
    finally:
        calls.pop(0)["handle"].remove()
    _check_frames(results, (72, 96), 10)
    for fr in results:  # two chunks (0-5, 4-9): ids carried across by the previous chunk's masks
        assert [o.track_id for o in fr.objects] == [1, 2], fr.frame_index
        assert [o.label for o in fr.objects] == ["object_1", "object_2"]
    # What the model received, normalised by its input size (112): each pixel given must
    # arrive where it is in the 96x72 frame (points at pixel centres, box corners as given,
    # box as corner points labelled 2 and 3 before the clicks), for each object.
    prompted = []
    for call in calls:
        points, labels = call.get("input_points"), call.get("input_labels")
        if points is None or labels is None:
            continue
        for obj_points, obj_labels in zip(points.reshape(-1, points.shape[-2], 2), labels.reshape(-1, labels.shape[-1])):
            keep = obj_labels != -10  # padding (none here)
            prompted.append(((obj_points[keep] / IMAGE).tolist(), obj_labels[keep].tolist()))
    box = ([[10 / 96, 20 / 72], [40 / 96, 50 / 72]], [2, 3])
    clicks = ([[60.5 / 96, 30.5 / 72], [70.5 / 96, 60.5 / 72]], [1, 0])
    for want in (box, clicks):
        assert any(got_labels == want[1] and np.allclose(got, want[0], atol=1e-4) for got, got_labels in prompted), (
            want, prompted)


def test_detection_threshold_changes_what_is_kept(tiny_backend, tiny_video) -> None:
    """Random weights score about 0.25: kept at threshold 0, none at 0.5 (the model's
    detector threshold is the request's, per run)."""
    path, _ = tiny_video
    counts = {}
    for threshold in (0.0, 0.5):
        request = SegmentRequest.build(prompt="red ball", detection_threshold=threshold, max_num_objects=4)
        results = list(tiny_backend.segment(VideoSource(info=probe(path), path=path), request))
        counts[threshold] = sum(len(fr.objects) for fr in results)
    assert counts[0.0] >= 10 and counts[0.5] == 0, counts
    model = tiny_backend.engine.video_model
    assert (model.score_threshold_detection, model.new_det_thresh) == (0.0, 0.0)  # restored after each run


def test_two_runs_at_once_keep_their_own_thresholds(tiny_backend, tiny_video, monkeypatch) -> None:
    """Two threads on the shared model, thresholds 0 and 0.5, each having set its thresholds
    on the model when they meet: each keeps what its own threshold keeps (the engine runs one
    chunk at a time, so the second waits; without that it would overwrite the first's)."""
    import threading

    path, _ = tiny_video
    model = tiny_backend.engine.video_model
    original = model.propagate_in_video_iterator
    meet = threading.Barrier(2, timeout=3)  # with the engine's lock the other never comes: go on alone
    waited: set[int] = set()

    def propagate(*args, **kwargs):
        if threading.get_ident() not in waited:  # each thread's first chunk, thresholds set
            waited.add(threading.get_ident())
            try:
                meet.wait()
            except threading.BrokenBarrierError:
                pass
        yield from original(*args, **kwargs)

    monkeypatch.setattr(model, "propagate_in_video_iterator", propagate)
    counts: dict[float, object] = {}

    def run(threshold: float) -> None:
        request = SegmentRequest.build(prompt="red ball", detection_threshold=threshold, max_num_objects=4)
        try:
            results = list(tiny_backend.segment(VideoSource(info=probe(path), path=path), request))
            counts[threshold] = sum(len(fr.objects) for fr in results)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            counts[threshold] = exc

    threads = [threading.Thread(target=run, args=(t,)) for t in (0.0, 0.5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert isinstance(counts[0.0], int) and counts[0.0] >= 10 and counts[0.5] == 0, counts
    assert (model.score_threshold_detection, model.new_det_thresh) == (0.0, 0.0)  # restored after both runs


def test_text_masks_do_not_overlap_and_duplicates_are_suppressed(tiny_backend, tiny_video) -> None:
    """The processor's own post-processing runs (non-overlapping masks per prompt), and NMS
    runs without the hub kernel."""
    from transformers.models.sam3_video import modeling_sam3_video

    path, _ = tiny_video
    request = SegmentRequest.build(prompt="red ball", detection_threshold=0.0, max_num_objects=4)
    results = list(tiny_backend.segment(VideoSource(info=probe(path), path=path), request))
    for fr in results:
        if len(fr.objects) > 1:
            stacked = np.stack([o.mask for o in fr.objects]).sum(axis=0)
            assert stacked.max() <= 1, f"overlapping masks on frame {fr.frame_index}"
    nms = modeling_sam3_video.cv_utils_kernel
    assert nms, "NMS would be skipped (no kernel)"
    ious = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    kept = nms.generic_nms(ious, torch.tensor([0.5, 0.8, 0.3]), 0.5, use_iou_matrix=True)
    assert kept.tolist() == [1, 2]


def test_writer_stores_what_the_real_model_produced(tiny_backend, tiny_video, make_dataset) -> None:
    from sam_backend.fiftyone_io import segment_videos

    path, _ = tiny_video
    ds = make_dataset(path)
    report = segment_videos(ds, prompt="blue box", detection_threshold=0.0, max_num_objects=4,
                            label_field="tiny", backend=tiny_backend)
    assert report.failed == {} and report.frames == 10 and report.detections >= 10
    sample = ds.first()
    for n in range(1, 11):
        dets = sample.frames[n]["tiny"].detections
        assert dets and all(d.label == "blue box" and d.index >= 1 and d.mask is not None and d.mask.any() for d in dets)
    assert ds.get_field("frames.tiny").info["sam31_video"]["model"] == "sam3 (transformers)"


def test_segment_operator_runs_the_local_backend(tiny_model_dir: Path, tiny_video, make_dataset) -> None:
    """The same operator and SDK call as for fal, with backend="local" and its own options:
    the operator builds the local backend itself (no backend object handed in)."""
    import fiftyone.operators as foo

    path, _ = tiny_video
    ds = make_dataset(path)
    result = foo.get_operator("@sam31/video/segment_video")(
        ds.view(), "blue box", backend="local", engine="transformers", model=str(tiny_model_dir), device="cpu",
        detection_threshold=0.0, max_num_objects=4, label_field="local_op")
    assert result.error is None, result.error
    ds.reload()
    sample = ds.first()
    for n in range(1, 11):
        dets = sample.frames[n]["local_op"].detections
        assert dets and all(d.label == "blue box" and d.mask is not None and d.mask.any() for d in dets), n
    info = ds.get_field("frames.local_op").info["sam31_video"]
    assert (info["backend"], info["model"]) == ("local", "sam3 (transformers)")


def test_meta_engine_without_cuda_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    import importlib.machinery

    fake_sam3 = types.ModuleType("sam3")
    fake_sam3.__spec__ = importlib.machinery.ModuleSpec("sam3", None)
    monkeypatch.setitem(sys.modules, "sam3", fake_sam3)  # the package "is installed"
    (tmp_path / "sam3.1_multiplex.pt").write_bytes(b"weights")
    with pytest.raises(EngineUnavailable, match=r"runs only on a CUDA GPU.*engine='transformers'"):
        BACKEND(engine="sam3.1", checkpoint=str(tmp_path))


def test_missing_model_folder_is_reported() -> None:
    with pytest.raises(EngineUnavailable, match="model folder not found: /no/such/sam3"):
        BACKEND(engine="transformers", model="/no/such/sam3", environ={})


def _copy_model(source: Path, folder: Path, keep) -> Path:
    import shutil

    folder.mkdir()
    for name in source.iterdir():
        if keep(name.name):
            shutil.copy(name, folder / name.name)
    return folder


def test_a_model_that_fails_to_load_is_not_loaded_again_for_each_video(tiny_model_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose weights file is damaged: the first video says why; the next ones say
    the same at once instead of trying again (a hub lookup without network takes minutes)."""
    broken = _copy_model(tiny_model_dir, tmp_path / "damaged", lambda n: not n.endswith(".safetensors"))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    tries: list[str] = []
    real = transformers.Sam3VideoModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        tries.append(str(args[0]))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.Sam3VideoModel, "from_pretrained", classmethod(counting))
    with get_backend("local", engine="transformers", model=str(broken), device="cpu", environ={}) as backend:
        with pytest.raises(EngineUnavailable, match="cannot load Sam3VideoModel from .*damaged") as first:
            backend.engine.video_model
        assert "failed earlier" not in str(first.value) and "complete SAM 3 checkpoint" in str(first.value)
        for _ in range(2):
            with pytest.raises(EngineUnavailable, match="cannot load Sam3VideoModel .*failed earlier in this run"):
                backend.engine.video_model
    assert tries == [str(broken)]


@pytest.mark.parametrize("folder", ["bert", "no_weights", "no_config"])
def test_a_folder_that_is_not_a_sam3_checkpoint_is_refused_at_once(folder: str, tiny_model_dir: Path,
                                                                   tmp_path: Path) -> None:
    """from_pretrained loads a folder of another model (or without weights) into a SAM 3 with
    random weights and only warns: the run then writes wrong labels. Refused when the backend
    is built, before any video."""
    path = tmp_path / folder
    if folder == "bert":
        transformers.BertModel(transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                                       num_attention_heads=1, intermediate_size=8)).save_pretrained(path)
        expected = "holds a 'bert' model, not SAM 3"
    elif folder == "no_weights":
        _copy_model(tiny_model_dir, path, lambda n: not n.endswith(".safetensors"))
        expected = "holds no weights"
    else:
        _copy_model(tiny_model_dir, path, lambda n: n != "config.json")
        expected = "holds no config.json"
    with pytest.raises(EngineUnavailable, match=expected):
        BACKEND(engine="transformers", model=str(path), device="cpu", environ={})


def test_sam3_weights_of_another_model_are_refused_not_run_random(tiny_model_dir: Path, tiny_video, make_dataset,
                                                                   tmp_path: Path) -> None:
    """The SAM 3 image model's folder (model_type 'sam3') passes the folder check, but none
    of its weights fit the video model: the video fails naming the gap, nothing is written."""
    from sam_backend.fiftyone_io import segment_videos

    image_model = tmp_path / "sam3_image"
    transformers.Sam3Model(_tiny_config().detector_config).save_pretrained(image_model)
    _tiny_tokenizer().save_pretrained(image_model)
    with get_backend("local", engine="transformers", model=str(image_model), device="cpu", environ={}) as backend:
        with pytest.raises(EngineUnavailable, match=r"lacks \d+ of the \d+ weights of Sam3VideoModel"):
            backend.engine.video_model  # loaded (full size, random) but refused: never run
    ds = make_dataset(tiny_video[0])
    report = segment_videos(ds, prompt="red ball", label_field="sam", backend="local",
                            backend_options={"engine": "transformers", "model": str(image_model), "device": "cpu"})
    [message] = report.failed.values()
    assert "lacks" in message and "weights of Sam3VideoModel" in message and "random" in message
    assert not ds.has_frame_field("sam")


def test_a_model_folder_without_its_tokenizer_refuses_text_prompts(tiny_model_dir: Path, tiny_video,
                                                                    tmp_path: Path) -> None:
    """save_pretrained of the model alone leaves the tokenizer out; AutoTokenizer then builds
    an empty CLIP tokenizer and every concept becomes the same tokens. Refused instead;
    boxes (no tokenizer) still run."""
    bare = _copy_model(tiny_model_dir, tmp_path / "bare", lambda n: n in ("config.json", "model.safetensors"))
    path = tiny_video[0]
    with get_backend("local", engine="transformers", model=str(bare), device="cpu", chunk_size=6, overlap=2,
                     environ={}) as backend:
        with pytest.raises(EngineUnavailable, match="holds no tokenizer"):
            list(backend.segment(VideoSource(info=probe(path), path=path), SegmentRequest.build(prompt="red ball")))
        boxed = SegmentRequest.build(box_prompts=[{"x_min": 10, "y_min": 10, "x_max": 40, "y_max": 40, "object_id": 3}])
        assert any(fr.objects for fr in backend.segment(VideoSource(info=probe(path), path=path), boxed))


def test_an_unknown_or_missing_device_is_refused_when_the_backend_is_built(tiny_model_dir: Path) -> None:
    from sam_backend.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="device='gpu': use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        BACKEND(engine="transformers", model=str(tiny_model_dir), device="gpu", environ={})
    if not torch.cuda.is_available():
        with pytest.raises(EngineUnavailable, match="device='cuda:1' asked but no CUDA GPU is visible"):
            BACKEND(engine="transformers", model=str(tiny_model_dir), device="cuda:1", environ={})


def test_the_cpu_allocator_failing_is_reported_as_out_of_memory() -> None:
    """torch's CPU allocator raises a plain RuntimeError ("can't allocate memory"), not
    "out of memory": it was reported as an unexpected error, without what to lower."""
    from sam_backend.backends.local.errors import is_out_of_memory

    with pytest.raises(RuntimeError) as info:
        torch.empty(2**50, dtype=torch.uint8)  # the real allocator, asked for a petabyte
    assert is_out_of_memory(info.value)


def test_the_time_estimate_on_auto_uses_the_device_the_engine_will_pick(tiny_model_dir: Path, tiny_video) -> None:
    info = probe(tiny_video[0])
    with BACKEND(engine="transformers", model=str(tiny_model_dir), device="auto", environ={}) as backend:
        detail = backend.estimate_cost(info, SegmentRequest.build(prompt="red ball")).detail
    with BACKEND(engine="transformers", model=str(tiny_model_dir), device="cpu", environ={}) as backend:
        on_cpu = backend.estimate_cost(info, SegmentRequest.build(prompt="red ball")).detail
    assert (detail == on_cpu) is (not torch.cuda.is_available())  # it used the GPU's speed on a CPU machine


@pytest.mark.gpu
def test_transformers_engine_on_cuda(tiny_model_dir: Path, tiny_video) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    path, _ = tiny_video
    with get_backend("local", engine="transformers", model=str(tiny_model_dir), device="cuda") as backend:
        results = list(backend.segment(VideoSource(info=probe(path), path=path),
                                       SegmentRequest.build(prompt="red ball", detection_threshold=0.0)))
    _check_frames(results, (72, 96), 10)
