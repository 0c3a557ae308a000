"""transformers' own SAM 3 video post-processing, made to run without torchvision or a hub
download.

- ``Sam3VideoProcessor.postprocess_outputs`` (upsampling, hiding suppressed and hot-start
  removed objects, per-prompt non-overlap constraints) is upstream's code, but its module is
  replaced by a placeholder when torchvision is missing (its only use of torchvision is
  ``masks_to_boxes``), and torchvision's PyPI builds do not load beside a CPU-only torch. So
  the module is loaded from its own file with a pure-torch ``masks_to_boxes``, and its
  functions are called as they are.
- ``nms_masks`` in ``modeling_sam3_video`` skips NMS (duplicate objects) unless the hub
  ``kernels`` package fetched ``kernels-community/cv-utils``. When no such kernel is loaded,
  a pure-torch ``generic_nms`` (same arguments and result) is put in its place; hole filling
  then still falls back as upstream does (it catches the missing ``cc_2d``).
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_MODULE_NAME = "transformers.models.sam3_video._sam31_processing"


def masks_to_boxes(masks: Any) -> Any:
    """torchvision.ops.masks_to_boxes in plain torch: (N, H, W) bool -> (N, 4) XYXY float."""
    import torch

    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device, dtype=torch.float)
    n, h, w = masks.shape
    ys = torch.arange(h, device=masks.device, dtype=torch.float)
    xs = torch.arange(w, device=masks.device, dtype=torch.float)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    big = float(max(h, w))
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1.0).amax(dim=1)
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1.0).amax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1)


class TorchCvUtils:
    """What ``modeling_sam3_video`` asks of the hub kernel for NMS, in plain torch."""

    @staticmethod
    def generic_nms(ious: Any, probs: Any, iou_threshold: float, use_iou_matrix: bool = True) -> Any:
        """Greedy NMS on a precomputed IoU matrix: indices (into ``probs``) kept, best first."""
        import torch

        order = torch.argsort(probs, descending=True)
        suppressed = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
        kept = []
        for i in order.tolist():
            if suppressed[i]:
                continue
            kept.append(i)
            suppressed |= ious[i] > iou_threshold
        return torch.tensor(kept, dtype=torch.long, device=probs.device)


def install_nms() -> None:
    """Pure-torch NMS where transformers found no hub kernel (never replaces a loaded one)."""
    from transformers.models.sam3_video import modeling_sam3_video as modeling

    with _LOCK:
        if not modeling.cv_utils_kernel:  # None (not tried) or False (failed)
            modeling.cv_utils_kernel = TorchCvUtils()


def processor_module() -> Any:
    """``processing_sam3_video`` loaded from its file, with ``masks_to_boxes`` in plain torch."""
    with _LOCK:
        module = sys.modules.get(_MODULE_NAME)
        if module is None:
            import transformers.models.sam3_video as package

            path = Path(package.__file__).with_name("processing_sam3_video.py")
            spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            module.__package__ = package.__name__
            sys.modules[_MODULE_NAME] = module  # inspect (auto_docstring) looks the file up here
            spec.loader.exec_module(module)
            if not hasattr(module, "masks_to_boxes"):
                module.masks_to_boxes = masks_to_boxes
        return module


class _Post:
    """The ``self`` that ``postprocess_outputs`` uses: the processor's own methods (its
    non-overlap helpers) bound to an object without the tokenizer and image processors."""

    def __init__(self, cls: Any) -> None:
        self._cls = cls

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._cls, name), self)


def postprocess_outputs(session: Any, outputs: Any) -> dict[str, Any]:
    """Upstream's ``Sam3VideoProcessor.postprocess_outputs(session, outputs)``."""
    cls = processor_module().Sam3VideoProcessor
    return cls.postprocess_outputs(_Post(cls), session, outputs)
