"""Settings of the fal backend: one immutable object, built explicitly (no env reads at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from ...errors import AuthError, InvalidRequest
from ...types import describe_validation_error
from . import endpoints
from .planner import TextMode
from .rle import RleLayout, layouts_path, load_layouts

MiB = 1024 * 1024


def default_journal_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/sam31-video/fal-journal.sqlite3`` (``~/.local/state`` by default):
    state that must outlive a crash, not a cache that may be wiped."""
    base = environ.get("XDG_STATE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sam31-video" / "fal-journal.sqlite3"

def check_key(key: str) -> None:
    """A key goes into an HTTP header: whitespace or control characters inside it would
    make every request fail, and the header error would carry the key. Says where, never what."""
    for i, c in enumerate(key):
        if c.isspace() or not 32 <= ord(c) < 127:
            raise AuthError(f"FAL_KEY has a {'line break' if c in chr(10) + chr(13) else 'space or control character'} "
                            f"at position {i}: copy the key again (it looks like <key_id>:<key_secret>)")


DEFAULT_ENDPOINT = endpoints.SAM31_VIDEO_RLE
DEFAULT_OBJECTS_ENDPOINT = endpoints.SAM3_VIDEO_RLE_OBJECTS
# If fal answers that an endpoint does not exist, try this one instead (with a warning).
DEFAULT_FALLBACKS = {
    endpoints.SAM31_VIDEO_RLE: endpoints.SAM3_VIDEO_RLE,
    endpoints.SAM31_VIDEO_RLE_OBJECTS: endpoints.SAM3_VIDEO_RLE_OBJECTS,
}


class FalConfig(BaseModel):
    """Where fal lives, which endpoint to call, and how patiently.

    The key never appears in repr, logs or errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr = Field(repr=False)
    queue_url: str = "https://queue.fal.run"
    rest_url: str = "https://rest.fal.ai"
    cdn_url: str = "https://v3.fal.media"
    # Points, boxes (one request per object) and text in union mode go here.
    endpoint: str = DEFAULT_ENDPOINT
    # Text concepts in instance mode: one request per concept, a track per instance.
    objects_endpoint: str = DEFAULT_OBJECTS_ENDPOINT
    # Tried before objects_endpoint when set (e.g. a SAM 3.1 objects endpoint, if fal has
    # one: unconfirmed); fal's "not found" falls back visibly.
    preferred_objects_endpoint: str | None = None
    # "instances": each instance of a concept is its own track (SAM 3's objects endpoint);
    # "union": one track per concept holding all its instances (SAM 3.1's RLE endpoint).
    text_mode: TextMode = "instances"
    fallback_endpoints: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FALLBACKS))
    # Requests in flight at once across all videos of a run (each video may need several).
    max_concurrent_requests: int = Field(default=16, ge=1, le=256)
    # A result bigger than this fails its request (named, nothing stored or written, never
    # resubmitted). Results stream to the journal, so this bounds disk and time, not RAM:
    # 16 objects x 10,000 frames of 640x360 RLE is ~100 MB; 512 MiB leaves room for 1080p.
    max_result_bytes: int | None = Field(default=512 * MiB, gt=0)
    # Ask the RLE endpoints to also render an overlay video (apply_mask); whether they
    # then return one is unconfirmed.
    render_overlay: bool = False
    # RLE layout per endpoint (default row-major, 1-based; see rle.py), as measured by
    # sam31-video fal-check; from_env() loads what it stored.
    rle_layouts: dict[str, RleLayout] = Field(default_factory=dict)
    connect_timeout_s: float = 10.0
    # Status/result calls answer fast; a long read means a broken connection, not a busy model.
    read_timeout_s: float = 60.0
    upload_timeout_s: float = 600.0
    # Poll fast at first (short clips finish in seconds), then every 1.5 s at most.
    poll_initial_s: float = 0.2
    poll_max_s: float = 1.5
    # Idempotent calls (status, result, cancel, uploads) are retried this many times.
    max_retries: int = 6
    retry_cap_s: float = 10.0
    # Files up to this size travel inline as data URIs instead of being uploaded (0 = never):
    # saves a round trip for tiny clips, but every byte rides in the request body.
    data_uri_max_bytes: int = 0
    # fal's storage takes one request up to 100 MiB; above, multipart in 10 MiB parts
    # (what fal-client does), a few at once: enough to fill a typical uplink without
    # holding more than concurrency x part size in memory.
    multipart_threshold_bytes: int = Field(default=100 * MiB, gt=0)
    multipart_part_bytes: int = Field(default=10 * MiB, ge=5 * MiB)
    multipart_concurrency: int = Field(default=4, ge=1, le=10)
    # Uploaded videos are public on fal's CDN: ask fal to delete them after this many
    # seconds (X-Fal-Object-Lifecycle-Preference). One hour outlives the queue wait of any
    # normal run; None keeps fal's default retention.
    upload_lifetime_s: int | None = Field(default=3600, gt=0)
    # A status call failing for this long in a row (each call already retried) gives up;
    # the request stays in the journal and a rerun picks it up.
    status_outage_s: float = 60.0
    # Where submitted requests are recorded (None: in memory, nothing survives the
    # process). from_env() defaults it to the user's state directory.
    journal_path: Path | None = None
    # Submit entries whose first submit may or may not have reached fal (lost answer,
    # crash mid-submit) again anyway: the user accepts a possible double charge.
    resubmit_uncertain: bool = False
    # A request not finished this long after its submit is cancelled at fal and its video
    # fails (a rerun submits it again): a stuck job must not be polled forever. None: no limit.
    job_timeout_s: float | None = Field(default=3600.0, gt=0)
    # Passed to fal as fal_webhook on every submit and recorded in the journal.
    webhook_url: str | None = None
    # Quality of the local re-encode when only a frame range is sent (x264 CRF: lower is
    # closer to the original and bigger). 10 is visually lossless for segmentation.
    trim_crf: int = Field(default=10, ge=0, le=51)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> FalConfig:
        """Read ``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) from ``environ``; a
        ``key`` option given explicitly wins over the environment."""
        given = overrides.pop("key", None)
        given = given.get_secret_value() if isinstance(given, SecretStr) else given
        if given is not None and not isinstance(given, str):
            raise InvalidRequest("the fal backend option 'key' must be a string (<key_id>:<key_secret>)")
        key = (given or environ.get("FAL_KEY", "")).strip()
        if not key and environ.get("FAL_KEY_ID") and environ.get("FAL_KEY_SECRET"):
            key = f"{environ['FAL_KEY_ID']}:{environ['FAL_KEY_SECRET']}"
        if key:
            check_key(key)
        if not key:
            raise AuthError(
                "FAL_KEY is not set: create a key in your fal.ai dashboard and export FAL_KEY=<key_id>:<key_secret>, "
                "or use backend='emulator' (CLI: --backend emulator) to try the plugin offline"
            )
        overrides.setdefault("journal_path", default_journal_path(environ))
        overrides.setdefault("rle_layouts", load_layouts(layouts_path(environ)))
        return cls.build(key=SecretStr(key), **overrides)

    @classmethod
    def build(cls, **options: object) -> FalConfig:
        """Like the constructor, but an unknown option (a typo such as ``enpoint``) is an
        :class:`InvalidRequest` listing the valid ones, and a bad value one naming it."""
        unknown = sorted(set(options) - set(cls.model_fields))
        if unknown:
            raise InvalidRequest(f"unknown fal backend option(s) {', '.join(map(repr, unknown))}; valid options: "
                                 + ", ".join(sorted(k for k in cls.model_fields if k != "key")))
        try:
            return cls(**options)  # type: ignore[arg-type]
        except ValidationError as exc:
            # The key's value never goes into a message.
            lines = ["key: not a valid fal key" if line.startswith("key") else line
                     for line in describe_validation_error(exc)]
            raise InvalidRequest([f"fal backend option {line}" for line in lines]) from None

    @property
    def objects_endpoints(self) -> tuple[str, ...]:
        """Where text concepts go in instance mode, in the order they are tried."""
        return tuple(e for e in (self.preferred_objects_endpoint, self.objects_endpoint) if e)

    @model_validator(mode="after")
    def _known_endpoints(self) -> FalConfig:
        check_key(self.key.get_secret_value())
        for name in ("endpoint", "objects_endpoint", "preferred_objects_endpoint"):
            value = getattr(self, name)
            if value is not None and value not in endpoints.ENDPOINTS:
                raise ValueError(f"{name}={value!r} is not an endpoint this client can read: "
                                 f"{', '.join(sorted(endpoints.ENDPOINTS))}")
        if endpoints.ENDPOINTS[self.objects_endpoint].output != "objects_rle":
            raise ValueError(f"objects_endpoint={self.objects_endpoint!r} does not return per-object tracks")
        return self
