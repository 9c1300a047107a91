"""Settings of the RabbitMQ service: one validated dataclass loaded from YAML, then environment variables.

Precedence (lowest first): dataclass defaults < (recon only) the weights' ``recon.yaml`` < the ``service:`` /
``recon:`` sections of the YAML file given with ``--config`` < environment variables < (recon only) command-line
flags; the ``recon`` section is resolved by :func:`slam3r.runtime.resolve_settings`. The deployed service's variable
names are honoured (see :data:`ENV_NAMES`); every other service field can be set as ``SLAM3R_<FIELD IN CAPITALS>`` (e.g. ``SLAM3R_ENCODING=msgpack``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slam3r.config import ConfigError, from_dict, read_sections, to_dict
from slam3r.recon.config import ReconConfig
from slam3r.runtime import SECTIONS, resolve_settings


@dataclass(frozen=True)
class ServiceConfig:
    """How the service talks to RabbitMQ and what it publishes."""

    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """Broker URL (the docker-compose file sets amqp://rabbitmq)."""
    name_prefix: str = ""
    """Prepended to every exchange and queue name below (isolates test runs / staging on a shared broker)."""
    frames_exchange: str = "video_frames_exchange"
    frames_queue: str = "slam3r_video_frames_queue"
    restart_exchange: str = "restart_exchange"
    restart_queue: str = "slam3r_restart_queue"
    pose_exchange: str = "slam3r_pose_exchange"
    pointcloud_exchange: str = "slam3r_pointcloud_exchange"
    vis_exchange: str = "slam3r_reconstruction_vis_exchange"
    dead_letter_exchange: str = "slam3r_dead_letter_exchange"
    dead_letter_queue: str = "slam3r_dead_letter_queue"
    encoding: str = "deployed"
    """Output encoding, a name of :data:`slam3r.service.encodings.ENCODINGS`: ``deployed`` (the WorldSystem
    deployment's messages), ``json`` / ``msgpack`` (the richer profile: colours, incremental map updates)."""
    prefetch: int = 16
    """Frames the broker may hand over beyond those the engine holds back (the AMQP prefetch grows with them)."""
    max_in_flight: int = 512
    """Upper bound on unacknowledged frames per worker (memory bound: the encoded frames). Keep
    ``max_in_flight - prefetch`` above ``max_streams`` times the frames one engine holds before it initialises
    (``(initial_winsize - 1) * stride + 1``, 13 by default), or streams that start together are
    finished early to make room (see :mod:`slam3r.service.worker`)."""
    batch_size: int = 4
    """Frames of one stream decoded and pushed to the engine together (micro-batch)."""
    batch_streams: bool = True
    """Run the network calls of the streams that have frames in the same batch together, one forward for all
    (encoder, I2P windows, L2W registrations of equal shapes; :mod:`slam3r.recon.batching`): more frames/s when
    several streams share a worker, the same results."""
    stream_header: str = "stream_id"
    """Header naming the stream (one drone / camera); frames without it belong to ``default_stream``."""
    default_stream: str = "default"
    worker_index: int = 0
    num_workers: int = 1
    """Workers sharing the streams (processes or hosts, each started with its own ``worker_index``). With more
    than one, frames go through ``shards`` single-active-consumer queues (see :mod:`slam3r.service.broker`): each
    stream is owned by one worker at a time, and a dead worker's shards move to a live one."""
    shards: int = 16
    """Shard queues of a multi-worker deployment (a stream's shard is ``crc32(stream_id) % shards``)."""
    standby_delay_s: float = 3.0
    """Multi-worker: a worker first subscribes to its own shards (``shard % num_workers == worker_index``) and
    only after this delay to the others, as a standby, so the shards spread over workers started together."""
    max_streams: int = 32
    """Live streams per worker; a new stream beyond it finishes (and saves) the least recently used one."""
    stream_idle_s: float = 30.0
    """A stream without frames for this long is finished (segment published / saved) and forgotten."""
    max_pixels: int = 40_000_000
    """Images with more pixels (read from the JPEG / PNG header) are dead-lettered without being decoded."""
    voxel_size: float = 0.01
    """Point buffer voxel (scene units)."""
    max_pointcloud_size: int = 2_000_000
    """Point buffer cap (points)."""
    points_per_message: int = 50_000
    """Cap on the points of one point-cloud message (random subsample of the frame's confident points)."""
    map_update_frames: int = 4
    """Registered frames of a stream between two map updates on the visualisation exchange (the end of a segment
    publishes the last state). An update carries the whole map (deployed: up to ``points_per_message`` points, ~20
    ms to format and ~35 ms to gzip at 50,000 on one core), so one per batch would multiply them when several
    streams share a worker's batches (4 streams: an update per frame)."""
    enable_mesh: bool = False
    """Run the background Poisson mesher (needs open3d)."""
    use_mesh_vis: bool = True
    """Publish mesh updates on the visualisation exchange (when the mesher runs)."""
    mesh_update_frequency: int = 30
    """Registered frames between two mesh requests (at least)."""
    mesh_min_new_voxels: int = 2000
    """New voxels needed since the last mesh request to trigger another."""
    mesh_depth: int = 8
    mesh_max_points: int = 50_000
    save_segments: bool = False
    """Write each finished segment (points PLY, TUM trajectory, mesh PLY when meshing) to ``segment_output_dir``."""
    segment_output_dir: str = "segments"
    camera_intrinsics_file: str = ""
    """YAML with fx, fy, cx, cy (pixels of the incoming frames); empty = let the networks estimate the focal."""
    reconnect_max_s: float = 30.0
    """Longest wait between two reconnection attempts (exponential backoff from 0.5 s)."""
    shutdown_timeout_s: float = 30.0
    """On SIGTERM, time allowed to finish the frames already received before the rest is left for redelivery."""
    republish_cache: int = 32
    """Frames whose encoded outputs are kept to republish them when RabbitMQ redelivers the frame."""
    decode_min_side: int = 224
    """JPEGs are decoded at a reduced scale (1/2, 1/4, 1/8, much faster) while the short side stays >= this
    (0 = always full size); keep it >= the network input size (224 for the released model)."""

    def name(self, base: str) -> str:
        """Broker-side name of exchange / queue ``base`` (with the prefix)."""
        return self.name_prefix + base

    def validate(self) -> None:
        from slam3r.service.encodings import ENCODINGS

        url = urlsplit(self.rabbitmq_url)
        shown = mask_url(self.rabbitmq_url)
        if url.scheme not in ("amqp", "amqps") or not url.hostname:
            raise ConfigError(f"rabbitmq_url {shown!r} must look like amqp://user:pass@host:5672/vhost")
        try:
            url.port
        except ValueError:
            raise ConfigError(f"rabbitmq_url {shown!r} has an invalid port") from None
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        positive = ("prefetch", "max_in_flight", "batch_size", "num_workers", "max_pointcloud_size",
                    "points_per_message", "map_update_frames", "mesh_update_frequency", "mesh_max_points",
                    "republish_cache", "shards", "max_streams", "max_pixels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        checks = [
            (self.prefetch <= self.max_in_flight, "prefetch must be <= max_in_flight"),
            (self.batch_size <= self.prefetch, "batch_size must be <= prefetch"),
            (0 <= self.worker_index < self.num_workers, "worker_index must be in [0, num_workers)"),
            (self.voxel_size > 0, "voxel_size must be > 0"),
            (self.mesh_min_new_voxels >= 0, "mesh_min_new_voxels must be >= 0"),
            (5 <= self.mesh_depth <= 11, "mesh_depth must be in [5, 11]"),
            (self.reconnect_max_s >= 0.5, "reconnect_max_s must be >= 0.5"),
            (self.shutdown_timeout_s >= 0, "shutdown_timeout_s must be >= 0"),
            (self.decode_min_side >= 0, "decode_min_side must be >= 0"),
            (self.stream_idle_s > 0, "stream_idle_s must be > 0"),
            (self.standby_delay_s >= 0, "standby_delay_s must be >= 0"),
            (bool(self.stream_header) and bool(self.default_stream), "stream_header / default_stream are empty"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``slam3r serve`` needs: the service settings and the reconstruction parameters."""

    service: ServiceConfig = field(default_factory=ServiceConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        return url.replace(f":{password}@", ":***@", 1)
    head, sep, tail = url.rpartition("@")         # unparsable: hide everything before the host
    return f"***@{tail}" if sep else url


ENV_NAMES: dict[str, tuple[str, str]] = {
    "RABBITMQ_URL": ("service", "rabbitmq_url"),
    "VIDEO_FRAMES_EXCHANGE": ("service", "frames_exchange"),
    "RESTART_EXCHANGE": ("service", "restart_exchange"),
    "SLAM3R_POSE_EXCHANGE": ("service", "pose_exchange"),
    "SLAM3R_POINTCLOUD_EXCHANGE": ("service", "pointcloud_exchange"),
    "SLAM3R_RECONSTRUCTION_VIS_EXCHANGE": ("service", "vis_exchange"),
    "ENABLE_MESH_GENERATION": ("service", "enable_mesh"),
    "SAVE_SEGMENTS": ("service", "save_segments"),
    "SLAM3R_SAVE_SEGMENT_POINTCLOUDS": ("service", "save_segments"),
    "SEGMENT_OUTPUT_DIR": ("service", "segment_output_dir"),
    "SLAM3R_SEGMENT_OUTPUT_DIR": ("service", "segment_output_dir"),
    "SLAM3R_CONF_THRES_I2P": ("recon", "conf_thres_i2p"),
    "SLAM3R_CONF_THRES_L2W": ("recon", "conf_thres_l2w"),
    "SLAM3R_MAX_POINTCLOUD_SIZE": ("service", "max_pointcloud_size"),
    "SLAM3R_MESH_UPDATE_FREQUENCY": ("service", "mesh_update_frequency"),
    "SLAM3R_USE_MESH_VIS": ("service", "use_mesh_vis"),
    "CAMERA_INTRINSICS_FILE": ("service", "camera_intrinsics_file"),
}
"""Deployed environment variable -> (section, field). The deployment used two names for segment saving and for
the output directory; both are accepted, and setting them to different values is an error."""


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Environment -> {section: {field: raw string}} (deployed names and ``SLAM3R_<FIELD>``)."""
    out: dict[str, dict[str, Any]] = {"service": {}, "recon": {}}
    origin: dict[tuple[str, str], str] = {}
    names = dict(ENV_NAMES)
    for f in dataclasses.fields(ServiceConfig):
        names.setdefault(f"SLAM3R_{f.name.upper()}", ("service", f.name))
    for var, (section, key) in names.items():
        if var not in env:
            continue
        value = env[var]
        prev = origin.get((section, key))
        if prev is not None and env[prev] != value:
            raise ConfigError(f"environment variables {prev}={env[prev]!r} and {var}={value!r} set the same "
                              f"setting ({section}.{key}) to different values")
        origin[(section, key)] = var
        out[section][key] = value
    return out


def load_intrinsics(path: str | Path) -> tuple[float, float, float, float]:
    """Read (fx, fy, cx, cy) in pixels from a YAML file with those four keys (others, e.g. width, ignored)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"camera intrinsics file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"{p}: cannot read camera intrinsics ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with fx, fy, cx, cy")
    values = []
    for key in ("fx", "fy", "cx", "cy"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{p}: {key} must be a number, got {v!r}")
        values.append(float(v))
    if values[0] <= 0 or values[1] <= 0:
        raise ConfigError(f"{p}: fx and fy must be > 0")
    return values[0], values[1], values[2], values[3]


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None, *, weights: str | None = None,
                overrides: Sequence[str] = (), flags: Mapping[str, Any] | None = None) -> ServeConfig:
    """Build the validated :class:`ServeConfig` from an optional YAML file and the environment. The ``recon``
    section goes through the settings resolver (:func:`slam3r.runtime.resolve_settings`): defaults < the
    ``weights``' recon.yaml (when given) < the file < the environment < command-line ``flags`` < ``overrides``
    (``--set KEY=VALUE``).

    Raises:
        ConfigError: unreadable YAML, unknown keys, wrong types, invalid values (the message names the setting).
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {"service": {}}
    base_dir = Path.cwd()                      # a relative intrinsics path from the YAML is relative to the YAML
    if path is not None:
        data["service"].update(read_sections(path, SECTIONS)["service"])
        base_dir = Path(path).parent
    env_values = _env_overrides(env)
    if "camera_intrinsics_file" in env_values["service"]:
        base_dir = Path.cwd()                  # a path from the environment is relative to the working directory
    data["service"].update(env_values["service"])
    recon = resolve_settings(ReconConfig, "recon", weights=weights, config=str(path) if path else None,
                             env=env_values["recon"], flags=flags, overrides=overrides)
    data["recon"] = to_dict(recon.value)
    if data["recon"]["stream_pipeline"] is None:  # the service publishes each frame as soon as it is registered:
        data["recon"]["stream_pipeline"] = False  # a pipelined push would hold the last ones until the next frame
    cfg = from_dict(ServeConfig, data)
    intr_file = cfg.service.camera_intrinsics_file
    if intr_file:
        intr_path = base_dir / intr_file       # an absolute intr_file replaces base_dir
        recon = dataclasses.replace(cfg.recon, intrinsics=load_intrinsics(intr_path))
        cfg = dataclasses.replace(cfg, recon=recon)
    return cfg


def describe(cfg: ServeConfig) -> dict[str, Any]:
    """Plain-dict view for logging (the broker password masked)."""
    d = to_dict(cfg)
    d["service"]["rabbitmq_url"] = mask_url(cfg.service.rabbitmq_url)
    return d


__all__ = ["ServiceConfig", "ServeConfig", "ENV_NAMES", "load_config", "load_intrinsics", "describe", "mask_url",
           "ConfigError"]
