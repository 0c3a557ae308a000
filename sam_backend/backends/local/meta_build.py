"""Building Meta's predictor with exactly the arguments the installed ``sam3`` takes, and
sharing one predictor per device between the threads of a run.

Why each rule (upstream facebookresearch/sam3, ``sam3/model_builder.py``):
- ``build_sam3_predictor(..., **kwargs)`` names a few arguments and passes the rest down to
  ``build_sam3_multiplex_video_predictor`` (SAM 3.1) or ``build_sam3_video_predictor`` ->
  ``Sam3VideoPredictorMultiGPU(**model_kwargs)`` -> ``Sam3VideoPredictor.__init__`` (SAM 3),
  which have no ``**kwargs``: an argument neither the outer builder names nor the inner one
  takes is a TypeError on the GPU. So an argument is passed only when the outer builder
  names it or, through its ``**kwargs``, the next builder down the chain does.
- ``use_fa3`` defaults to True in some versions and imports flash-attn 3 (Hopper only): it
  is passed True only when its module imports here.
- ``start_session`` forwards ``offload_state_to_cpu`` to ``model.init_state``, which the
  SAM 3.1 multiplex model does not take (upstream issue #544): see :func:`init_state_accepts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import LocalConfig
from .errors import INSTALL_META, EngineUnavailable

# Where each builder's **kwargs go, as names looked up on the builder module (a class is
# followed through its MRO to the first __init__ without **kwargs).
_CHAINS: dict[tuple[str, str], tuple[str, ...]] = {
    ("build_sam3_predictor", "sam3.1"): ("build_sam3_multiplex_video_predictor",),
    ("build_sam3_predictor", "sam3"): ("build_sam3_video_predictor", "Sam3VideoPredictorMultiGPU"),
    ("build_sam3_video_predictor", "sam3"): ("Sam3VideoPredictorMultiGPU",),
}
# The tokenizer vocabulary the builders read by default; the PyPI wheel of sam3 0.1.x does not
# ship it (the GitHub checkout does), so it may also sit beside the checkpoint.
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def named_parameters(fn: Any) -> tuple[set[str], bool]:
    """(names ``fn`` takes by keyword, whether it also takes **kwargs). A class means its
    __init__, followed through the MRO while an __init__ takes **kwargs."""
    if inspect.isclass(fn):
        names: set[str] = set()
        for klass in fn.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            own, more = named_parameters(init)
            names |= own - {"self"}
            if not more:
                return names, False
        return names, True
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def builder_accepts(module: Any, builder_name: str, version: str) -> set[str]:
    """Every keyword ``module.<builder_name>`` can take for ``version`` without a TypeError."""
    names, more = named_parameters(getattr(module, builder_name))
    for inner_name in _CHAINS.get((builder_name, version), ()):
        if not more:
            break
        inner = getattr(module, inner_name, None)
        if inner is None:  # cannot see where **kwargs go: pass only what is named
            return names
        inner_names, more = named_parameters(inner)
        names |= inner_names
    return names


def fa3_available() -> bool:
    """True when flash-attn 3's interface imports (the Hopper build; optional)."""
    for name in ("flash_attn_interface", "flash_attn_3.flash_attn_interface"):
        try:
            importlib.import_module(name)
            return True
        except Exception:  # ImportError, or a CUDA library that fails to load
            continue
    return False


def patch_init_state(predictor: Any) -> Any:
    """Upstream #544 worked around: when the model's ``init_state`` lacks an argument that
    ``start_session`` always forwards, wrap it (on this instance) to drop what it does not
    take. Checked on the model, not the predictor, whose ``start_session`` accepts it."""
    model = getattr(predictor, "model", None)
    init_state = getattr(model, "init_state", None)
    if init_state is None or getattr(init_state, "_sam31_filtered", False):
        return predictor
    names, more = named_parameters(init_state)
    if more or {"offload_video_to_cpu", "offload_state_to_cpu"} <= names:
        return predictor

    def filtered(*args: Any, **kwargs: Any) -> Any:
        return init_state(*args, **{k: v for k, v in kwargs.items() if k in names})

    filtered._sam31_filtered = True  # type: ignore[attr-defined]
    model.init_state = filtered  # an instance attribute shadows the method (nn.Module allows it)
    return predictor


def bpe_path(checkpoint: Path, module: Any) -> str | None:
    """The tokenizer vocabulary beside the checkpoint, or None when the package has its own."""
    beside = checkpoint.parent / BPE_FILE
    if beside.is_file():
        return str(beside)
    package_dir = Path(getattr(module, "__file__", "") or ".").resolve().parent
    if (package_dir.parent / "assets" / BPE_FILE).is_file() or (package_dir / "assets" / BPE_FILE).is_file():
        return None
    raise EngineUnavailable(f"the installed sam3 package has no tokenizer vocabulary ({BPE_FILE}; the PyPI wheel "
                            f"leaves it out): put {BPE_FILE} from the sam3 GitHub repository (assets/) beside "
                            f"the checkpoint {checkpoint}, or {INSTALL_META}")


def build_predictor(config: LocalConfig, checkpoint: Path, max_num_objects: int, module: Any) -> Any:
    """Call the installed builder with exactly the keyword arguments it (and the builder its
    **kwargs reach) takes."""
    builder_name = "build_sam3_predictor" if hasattr(module, "build_sam3_predictor") else "build_sam3_video_predictor"
    if builder_name == "build_sam3_video_predictor" and config.engine == "sam3.1":
        raise EngineUnavailable(f"the installed sam3 package has no SAM 3.1 (no build_sam3_predictor): {INSTALL_META}")
    wanted: dict[str, Any] = {
        "checkpoint_path": str(checkpoint),
        "bpe_path": bpe_path(checkpoint, module),
        "version": config.engine,
        "compile": config.compile,
        "max_num_objects": max_num_objects,
        "async_loading_frames": False,  # we hand over decoded frames; nothing to load lazily
        "load_from_HF": False,  # never download: the user supplies the checkpoint
        "use_fa3": fa3_available(),
        "device": None if config.device in ("auto", "cuda") else config.device,
    }
    accepted = builder_accepts(module, builder_name, config.engine)
    kwargs = {k: v for k, v in wanted.items() if k in accepted and not (v is None and k in ("bpe_path", "device"))}
    with _on_device(config.device):
        return patch_init_state(getattr(module, builder_name)(**kwargs))


@contextlib.contextmanager
def _on_device(device: str) -> Iterator[None]:
    """``cuda:N`` as the current device while building (SAM 3's predictor calls ``.cuda()``)."""
    if not device.startswith("cuda:"):
        yield
        return
    import torch

    with torch.cuda.device(int(device.split(":", 1)[1])):
        yield


# ---- one predictor per device, shared ----------------------------------------------------


@dataclasses.dataclass
class SharedPredictor:
    """A built predictor, the lock a chunk holds while it uses it, and who holds a reference."""

    predictor: Any
    built_for: int
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)
    users: int = 0


_REGISTRY: dict[tuple[Any, ...], SharedPredictor] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_predictor(key: tuple[Any, ...], max_num_objects: int,
                     build: Callable[[int], Any]) -> SharedPredictor:
    """The predictor for ``key`` (engine, checkpoint, device...), built once; rebuilt only when
    more objects are asked than it was built for (SAM 3.1 sizes its buckets at build time)."""
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(key)
        if shared is None:
            shared = _REGISTRY[key] = SharedPredictor(build(max_num_objects), max_num_objects)
        elif max_num_objects > shared.built_for:
            with shared.lock:  # wait for the chunk running on the old one
                _shutdown(shared.predictor)
                shared.predictor, shared.built_for = build(max_num_objects), max_num_objects
        return shared


def acquire(key: tuple[Any, ...]) -> None:
    with _REGISTRY_LOCK:
        if key in _REGISTRY:
            _REGISTRY[key].users += 1


def release(key: tuple[Any, ...]) -> None:
    """Drop a user; the last one shuts the predictor down and frees its memory."""
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _REGISTRY[key]
    with shared.lock:
        _shutdown(shared.predictor)


def _shutdown(predictor: Any) -> None:
    shutdown = getattr(predictor, "shutdown", None)
    if callable(shutdown):
        shutdown()


def filter_kwargs(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that ``fn`` accepts (all of them if it takes **kwargs)."""
    names, more = named_parameters(fn)
    return dict(values) if more else {k: v for k, v in values.items() if k in names}
