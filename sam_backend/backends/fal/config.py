"""Settings of the fal backend: one immutable object, built explicitly (no env reads at import)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ...errors import AuthError

DEFAULT_ENDPOINT = "fal-ai/sam-3-1/video-rle"
# If fal answers that an endpoint does not exist, try this one instead (with a warning).
DEFAULT_FALLBACKS = {"fal-ai/sam-3-1/video-rle": "fal-ai/sam-3/video-rle"}
# Model that each endpoint runs, recorded with the labels.
ENDPOINT_MODELS = {
    "fal-ai/sam-3-1/video": "sam3.1",
    "fal-ai/sam-3-1/video-rle": "sam3.1",
    "fal-ai/sam-3/video": "sam3",
    "fal-ai/sam-3/video-rle": "sam3",
}


class FalConfig(BaseModel):
    """Where fal lives, which endpoint to call, and how patiently.

    The key never appears in repr, logs or errors.
    """

    model_config = ConfigDict(frozen=True)

    key: SecretStr = Field(repr=False)
    queue_url: str = "https://queue.fal.run"
    rest_url: str = "https://rest.fal.ai"
    cdn_url: str = "https://v3.fal.media"
    endpoint: str = DEFAULT_ENDPOINT
    fallback_endpoints: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FALLBACKS))
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> FalConfig:
        """Read ``FAL_KEY`` (or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``) from ``environ``."""
        key = environ.get("FAL_KEY", "").strip()
        if not key and environ.get("FAL_KEY_ID") and environ.get("FAL_KEY_SECRET"):
            key = f"{environ['FAL_KEY_ID']}:{environ['FAL_KEY_SECRET']}"
        if not key:
            raise AuthError(
                "FAL_KEY is not set: create a key in your fal.ai dashboard and export FAL_KEY=<key_id>:<key_secret>, "
                "or use backend='emulator' to try the plugin offline"
            )
        return cls(key=SecretStr(key), **overrides)  # type: ignore[arg-type]

    def model_for(self, endpoint: str) -> str:
        return ENDPOINT_MODELS.get(endpoint, endpoint)
