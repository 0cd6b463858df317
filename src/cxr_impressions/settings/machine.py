"""The `machine` section: how and where the stages run on this machine, not what they produce.

No stage tracks it, so that teammates with other paths or cores share one DVC cache (config's
module doc, "Content vs machine")."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class MachineParams:
    """How and where the stages run here; no stage tracks this section (see the module doc)."""

    threads: int = at_least(0, 0)  # TensorFlow intra-op threads; 0: all cores
    weights_dir: str = "../shared/weights"  # where `features.weights: imagenet` looks first
    allow_download: bool = False  # true: fall back to Keras' own download
    # Where the features stage runs the backbone: here, or in an actor pool on a Ray cluster.
    # Both give the same values up to float rounding, so this is not a features param.
    features_engine: Literal["local", "ray"] = "local"
    ray_address: str = ""  # "": a Ray instance on this machine; host:port of a head; "auto"
    ray_actors: int = at_least(1, 1)  # actors in the pool, one backbone each
    ray_cpus_per_actor: float = at_least(0.0, 1.0)
    ray_gpus_per_actor: float = at_least(0.0, 0.0)
    ray_connect_timeout: float = at_least(0.1, 10.0)  # seconds before an address fails
    ray_actor_start_timeout: float = at_least(1.0, 600.0)  # seconds for the pool to start
    # train.strategy: multi_worker: seconds a worker waits on a lost peer before failing
    collective_timeout: float = at_least(0.0, 600.0)
