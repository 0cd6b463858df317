"""The `serve` section: `cxr serve`'s settings; no stage tracks it."""

from __future__ import annotations

import dataclasses

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class ServeParams:
    """`cxr serve`: where it listens, its dynamic batching and its limits (CLI flags override)."""

    host: str = "127.0.0.1"  # loopback only; anything else should set an API token
    port: int = at_least(1, 8000, at_most=65535)
    max_batch: int = at_least(1, 8)  # studies decoded together; 1 turns batching off
    backbone_batch: int = at_least(1, 2)  # images per backbone call within a batch
    max_wait_ms: float = at_least(0.0, 20.0, at_most=10_000.0)  # wait this long to fill a batch
    queue_size: int = at_least(1, 32)  # studies waiting or running; beyond: 503
    timeout_s: float = at_least(0.1, 60.0)  # per request, upload and queueing included: 504
    max_upload_mb: float = at_least(0.01, 20.0)  # the whole request body; beyond: 413
    max_image_side: int = at_least(32, 4096)  # pixels along either side; beyond: 413
    heap_trim_s: float = at_least(0.0, 10.0)  # free heap back to the OS this often; 0: never
    token_env: str = "CXR_API_TOKEN"  # the environment variable holding the optional API token
