"""SAM 3 through ``transformers`` (CPU or GPU): ``Sam3VideoModel`` for text concepts,
``Sam3TrackerVideoModel`` for points and boxes with object ids.

The models, their inference sessions and propagation are transformers' own code, and so is
the text path's post-processing (``Sam3VideoProcessor.postprocess_outputs``: hidden
objects, non-overlapping masks) and its NMS, both made to run without torchvision or a hub
download (:mod:`.hf_post`). The pre-processing and the tracker's mask resizing are a few
lines of plain torch, because the processors need torchvision (whose PyPI builds do not
load beside a CPU-only torch); each helper names the processor method it mirrors.
One chunk runs at a time per engine (its lock): the samples of a run share its models and
the per-run thresholds set on them. torch and transformers are imported only when this
engine is built.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import Cancelled
from ..base import CancelToken
from .config import ENV_MODEL, LocalConfig
from .engine import ChunkJob, RawObject, Seed
from .errors import INSTALL_TRANSFORMERS, EngineUnavailable
from .hf_post import install_nms, postprocess_outputs

log = logging.getLogger(__name__)

_TEXT_MAX_LENGTH = 32  # Sam3VideoProcessor.add_text_prompt pads every prompt to 32 tokens
_DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)  # SAM 3's normalisation (Meta's loader and Sam3ImageProcessor)


def check_transformers(config: LocalConfig) -> None:
    """Packages importable, and a local model folder (when one is named) present."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineUnavailable(f"engine 'transformers' needs {' and '.join(missing)}, not installed: {INSTALL_TRANSFORMERS}")
    try:
        import transformers
    except ImportError as exc:
        raise EngineUnavailable(f"engine 'transformers' cannot import transformers ({exc}): {INSTALL_TRANSFORMERS}") from None
    if not hasattr(transformers, "Sam3VideoModel"):
        raise EngineUnavailable(f"transformers {transformers.__version__} has no Sam3VideoModel (needs 5.x): {INSTALL_TRANSFORMERS}")
    looks_local = config.model.startswith((".", "/", "~")) or Path(config.model).expanduser().exists()
    if looks_local and not Path(config.model).expanduser().is_dir():
        raise EngineUnavailable(f"model folder not found: {config.model} (pass model= a folder saved with save_pretrained, "
                                f"or a model id such as facebook/sam3; or set {ENV_MODEL})")
    if looks_local:
        check_model_folder(Path(config.model).expanduser())
    resolve_device(config.device)


def resolve_device(device: str) -> str:
    """The device the engine runs on: ``auto`` is the GPU when one is visible; a GPU asked
    for that is not there is refused."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineUnavailable(f"device={device!r} asked but no CUDA GPU is visible; use device='cpu'")
    return device


# model_type of the SAM 3 family in transformers: which one the published checkpoint's
# config.json carries is unconfirmed here (no download), so any of them passes this check;
# weights that do not fit the model are caught when it loads (_load: missing keys).
SAM3_MODEL_TYPES = frozenset({"sam3_video", "sam3", "sam3_tracker_video", "sam3_tracker"})
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Weights absent from the checkpoint are left random by from_pretrained (it only warns): the
# model then runs and writes wrong labels. More than this share missing refuses the model.
MAX_MISSING_SHARE = 0.01


def check_model_folder(folder: Path) -> None:
    """A folder named as the model: a transformers SAM 3 checkpoint with weights (a folder of
    another model loads with random weights and a warning, and labels nothing right)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise EngineUnavailable(f"{folder} holds no config.json: not a model saved with save_pretrained "
                                "(download facebook/sam3 with its files, or pass its model id)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise EngineUnavailable(f"{config_file} is not a model config ({exc})") from None
    if model_type not in SAM3_MODEL_TYPES:
        raise EngineUnavailable(f"{folder} holds a {model_type!r} model, not SAM 3 (model_type one of "
                                f"{', '.join(sorted(SAM3_MODEL_TYPES))}): pass the folder of facebook/sam3")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise EngineUnavailable(f"{folder} holds no weights ({' or '.join(WEIGHT_FILES)}): the model would run "
                                "with random weights")


class TransformersEngine:
    """Loads each model on first use and keeps it for the backend's lifetime."""

    seeds_as_masks = True

    def __init__(self, config: LocalConfig) -> None:
        import torch

        self.config = config
        self.name = "transformers"
        self.device = resolve_device(config.device)
        self._torch = torch
        self._video_model: Any = None
        self._tracker_model: Any = None
        self._tokenizer: Any = None
        self._load_errors: dict[str, str] = {}  # what failed to load -> why
        self._mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._lock = threading.RLock()  # the samples of a run share this engine and its models
        install_nms()  # NMS without the hub-fetched kernel (else duplicate objects)

    def close(self) -> None:
        self._video_model = self._tracker_model = self._tokenizer = None

    # ---- loading ------------------------------------------------------------------------

    def _load(self, cls_name: str) -> Any:
        import transformers

        self._raise_if_failed(cls_name)
        source = str(Path(self.config.model).expanduser()) if Path(self.config.model).expanduser().is_dir() else self.config.model
        local = Path(source).is_dir()
        try:
            model, info = getattr(transformers, cls_name).from_pretrained(source, output_loading_info=True)
        except OSError as exc:
            hint = ("" if local else ". The weights are gated (accept the licence of facebook/sam3 on the Hugging Face "
                    f"hub); download them and pass model= the local folder, or set {ENV_MODEL}")
            raise self._failed(cls_name, EngineUnavailable(
                f"cannot load {cls_name} from {self.config.model!r}: {str(exc).splitlines()[0][:300]}{hint}")) from exc
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign checkpoint fails in many ways
            raise self._failed(cls_name, EngineUnavailable(
                f"cannot load {cls_name} from {self.config.model!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}): is it a complete SAM 3 checkpoint?")) from exc
        missing = sorted(info.get("missing_keys") or [])
        total = len(model.state_dict())
        if missing and len(missing) > MAX_MISSING_SHARE * total:
            raise self._failed(cls_name, EngineUnavailable(
                f"{self.config.model!r} lacks {len(missing)} of the {total} weights of {cls_name} (e.g. {missing[0]}): "
                "they would run random and the labels would be wrong; pass the folder of facebook/sam3"))
        if missing:
            log.warning("%s from %s: %d weights missing, left as initialised: %s", cls_name, self.config.model,
                        len(missing), ", ".join(missing[:5]))
        return model.to(self.device).eval()

    def _failed(self, what: str, error: EngineUnavailable) -> EngineUnavailable:
        """Remember a load that failed: each video of a run would try again, and a hub
        lookup without network takes tens of seconds or more to give up."""
        self._load_errors[what] = str(error)
        return error

    def _raise_if_failed(self, what: str) -> None:
        if what in self._load_errors:
            raise EngineUnavailable(f"{self._load_errors[what]} (failed earlier in this run; not tried again)")

    @property
    def video_model(self) -> Any:
        if self._video_model is None:
            self._video_model = self._load("Sam3VideoModel")
        return self._video_model

    @property
    def tracker_model(self) -> Any:
        if self._tracker_model is None:
            self._tracker_model = self._load("Sam3TrackerVideoModel")
        return self._tracker_model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            source = Path(self.config.model).expanduser()
            self._raise_if_failed("tokenizer")
            if source.is_dir() and not any((source / n).is_file() for n in ("tokenizer.json", "vocab.json")):
                # AutoTokenizer then builds an empty CLIP tokenizer: every concept the same tokens.
                raise self._failed("tokenizer", EngineUnavailable(
                    f"{source} holds no tokenizer (tokenizer.json or vocab.json + merges.txt): text prompts need it "
                    "(save it beside the model: AutoTokenizer.from_pretrained('facebook/sam3').save_pretrained(folder))"))
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(source) if source.is_dir() else self.config.model)
            except OSError as exc:
                raise self._failed("tokenizer", EngineUnavailable(
                    f"cannot load the tokenizer of {self.config.model!r}: {str(exc).splitlines()[0][:300]}")) from exc
        return self._tokenizer

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean/std from the model folder's (video) preprocessor config, else SAM 3's 0.5s."""
        if self._mean_std is None:
            mean, std = _DEFAULT_MEAN_STD, _DEFAULT_MEAN_STD
            folder = Path(self.config.model).expanduser()
            for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
                path = folder / name
                if folder.is_dir() and path.is_file():
                    data = json.loads(path.read_text())
                    mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
                    break
            self._mean_std = (mean, std)
        return self._mean_std

    # ---- pre/post-processing (what the processors do, without torchvision) --------------

    def _pixel_values(self, frames: list[np.ndarray], size: int) -> Any:
        """Mirrors Sam2VideoVideoProcessor: resize to size x size (bilinear, antialiased),
        rescale to [0, 1], normalise; one (N, 3, size, size) float32 tensor."""
        torch = self._torch
        mean, std = self._normalisation()
        storage = "cpu" if self.config.offload else self.device
        out = torch.empty((len(frames), 3, size, size), dtype=torch.float32, device=storage)
        m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        for i, frame in enumerate(frames):
            x = torch.from_numpy(np.array(frame, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out[i] = ((x[0] - m) / s).to(storage)
        return out

    def _to_video_size(self, low_res: Any, height: int, width: int) -> np.ndarray:
        """Mirrors post_process_masks / postprocess_outputs: bilinear upsampling of mask
        logits to the video size, then > 0."""
        up = self._torch.nn.functional.interpolate(low_res.float(), size=(height, width), mode="bilinear", align_corners=False)
        return (up[:, 0] > 0).cpu().numpy()

    def _session_devices(self) -> dict[str, Any]:
        state = "cpu" if self.config.offload else self.device
        return {"inference_device": self.device, "inference_state_device": state, "video_storage_device": state}

    # ---- runs ---------------------------------------------------------------------------

    def run_chunk(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]:
        torch = self._torch
        # One chunk at a time on this engine's models: the per-run thresholds are set on the
        # shared model (see _thresholds), which must not change under another thread's run.
        with self._lock, torch.inference_mode():
            if job.concepts:
                yield from self._text(job, cancel)
            if job.visual or job.seeds:
                yield from self._visual(job, cancel)

    def _text(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]:
        from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

        torch = self._torch
        model = self.video_model
        size = int(model.config.image_size)
        session = Sam3VideoInferenceSession(
            video=self._pixel_values(list(job.frames), size), video_height=job.height, video_width=job.width,
            dtype=torch.float32, **self._session_devices(),
        )
        for concept in job.concepts:  # mirrors Sam3VideoProcessor.add_text_prompt
            prompt_id = session.add_prompt(concept)
            if prompt_id not in session.prompt_input_ids:
                enc = self.tokenizer(concept, return_tensors="pt", padding="max_length", max_length=_TEXT_MAX_LENGTH,
                                     truncation=True).to(self.device)
                session.prompt_input_ids[prompt_id] = enc.input_ids
                session.prompt_attention_masks[prompt_id] = enc.attention_mask
        with _thresholds(model, job.detection_threshold, job.max_num_objects):
            for out in model.propagate_in_video_iterator(inference_session=session, start_frame_idx=0,
                                                         max_frame_num_to_track=len(job.frames)):
                if cancel.cancelled:
                    raise Cancelled("run cancelled; propagation stopped")
                # The processor's own post-processing: upsampling, suppressed and hot-start
                # removed objects hidden, non-overlapping masks within each prompt.
                post = postprocess_outputs(session, out)
                objects = []
                for k, obj_id in enumerate(post["object_ids"].tolist()):
                    concept = session.prompts[session.obj_id_to_prompt_id[obj_id]]
                    objects.append(RawObject(int(obj_id), float(post["scores"][k]), post["masks"][k].cpu().numpy(), concept))
                yield int(out.frame_idx), objects

    def _visual(self, job: ChunkJob, cancel: CancelToken) -> Iterator[tuple[int, list[RawObject]]]:
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoInferenceSession

        torch = self._torch
        model = self.tracker_model
        size = int(model.config.image_size)
        session = Sam3TrackerVideoInferenceSession(
            video=self._pixel_values(list(job.frames), size), video_height=job.height, video_width=job.width,
            dtype=torch.float32, **self._session_devices(),
        )
        sx, sy = size / job.width, size / job.height
        by_frame: dict[int, list[Any]] = {}
        for item in (*job.seeds, *job.visual):
            by_frame.setdefault(item.frame, []).append(item)
        # An object joins the session on its first prompted frame, and that frame is run at
        # once: a forward pass runs every object the session knows, and one without any
        # conditioning frame yet cannot be run (transformers raises). Frames go in order.
        for frame in sorted(by_frame):
            for item in by_frame[frame]:
                idx = session.obj_id_to_idx(item.obj_id)
                if isinstance(item, Seed):  # mirrors process_new_mask_for_video_frame
                    mask = torch.from_numpy(item.mask.astype(np.float32))[None, None].to(self.device)
                    mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False,
                                                           antialias=True)
                    session.add_mask_inputs(idx, frame, (mask >= 0.5).float())
                    session.remove_point_inputs(idx, frame)
                    continue
                coords: list[list[float]] = []  # mirrors process_new_points_or_boxes_for_video_frame
                labels: list[int] = []
                if item.box is not None:
                    x0, y0, x1, y1 = item.box
                    coords += [[x0 * sx, y0 * sy], [x1 * sx, y1 * sy]]
                    labels += [2, 3]  # box corners, before any click (the processor's order)
                for x, y, label in item.points:
                    coords.append([(x + 0.5) * sx, (y + 0.5) * sy])
                    labels.append(int(label))
                session.add_point_inputs(idx, frame, {
                    "point_coords": torch.tensor(coords, dtype=torch.float32)[None, None],
                    "point_labels": torch.tensor(labels, dtype=torch.int32)[None, None],
                })
                session.remove_mask_inputs(idx, frame)
            session.obj_with_new_inputs = list(dict.fromkeys(item.obj_id for item in by_frame[frame]))
            yield frame, self._tracker_objects(model(inference_session=session, frame_idx=frame), job)
        # Then propagation forward and backward from the earliest prompted frame, like the
        # Meta predictor's "both".
        start = min(by_frame)
        for reverse in (False, True):
            if reverse and start == 0:
                break
            for out in model.propagate_in_video_iterator(inference_session=session, start_frame_idx=start, reverse=reverse):
                if cancel.cancelled:
                    raise Cancelled("run cancelled; propagation stopped")
                yield int(out.frame_idx), self._tracker_objects(out, job)

    def _tracker_objects(self, out: Any, job: ChunkJob) -> list[RawObject]:
        masks = self._to_video_size(out.pred_masks, job.height, job.width)
        scores = self._torch.sigmoid(out.object_score_logits.float().reshape(-1)).tolist()
        return [RawObject(int(obj_id), float(scores[k]), masks[k], None) for k, obj_id in enumerate(out.object_ids)]


class _thresholds:
    """Per-run detection settings on a shared model, restored afterwards; entered only under
    the engine's lock, so no other thread's run sees them.

    ``detection_threshold`` becomes the detector's score threshold; the threshold for
    starting a new track keeps its distance above it from the model's config (0.7 vs 0.5
    for facebook/sam3), so the request moves both the way the checkpoint was tuned."""

    _FIELDS = ("score_threshold_detection", "new_det_thresh", "max_num_objects")

    def __init__(self, model: Any, detection_threshold: float, max_num_objects: int) -> None:
        self.model = model
        cfg = model.config
        margin = max(0.0, float(cfg.new_det_thresh) - float(cfg.score_threshold_detection))
        self.values = {
            "score_threshold_detection": detection_threshold,
            "new_det_thresh": min(1.0, detection_threshold + margin),
            "max_num_objects": min(int(cfg.max_num_objects), max_num_objects),
        }
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        for name in self._FIELDS:
            self.saved[name] = getattr(self.model, name)
            setattr(self.model, name, self.values[name])

    def __exit__(self, *exc: object) -> None:
        for name, value in self.saved.items():
            setattr(self.model, name, value)
