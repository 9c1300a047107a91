"""``slam3r serve``: run the real-time reconstruction service on RabbitMQ (see :mod:`slam3r.service.worker`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments

    add_runtime_arguments(parser)  # --config: 'service:' and 'recon:' sections; RABBITMQ_URL, SLAM3R_... override it
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes on this host; each stream (stream_id header) is owned by one of "
                             "them at a time through single-active-consumer shard queues, and a dead worker's "
                             "streams move to another (docs/service.md). Several hosts: SLAM3R_NUM_WORKERS=N and "
                             "SLAM3R_WORKER_INDEX=i on each (default: 1)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def serve(cfg: Any, weights: str, device: str, threads: int | None = None) -> int:
    """Load the networks and serve with ``cfg`` (:class:`~slam3r.service.config.ServeConfig`) until stopped."""
    from slam3r.recon.config import resolve_geometry
    from slam3r.recon.streaming import StreamingReconstructor
    from slam3r.runtime import load_runtime
    from slam3r.service.worker import Service

    rt = load_runtime(weights, device, threads)
    i2p, l2w, dev = rt.i2p, rt.l2w, rt.device
    log = logging.getLogger("slam3r.serve")
    log.info("models loaded (%s) on %s; input %dx%d", weights, dev, *i2p.cfg.img_size)

    def make_engine() -> StreamingReconstructor:
        return StreamingReconstructor(i2p, l2w, cfg.recon, device=dev)

    svc = cfg.service
    hold = resolve_geometry(cfg.recon, i2p.cfg.img_size[0], causal=True).init_frames
    if svc.max_in_flight - svc.prefetch < svc.max_streams * hold:
        log.warning("max_in_flight - prefetch = %d < max_streams (%d) x %d frames an engine holds before it "
                    "initialises: streams starting together will be finished early; raise max_in_flight or "
                    "lower max_streams", svc.max_in_flight - svc.prefetch, svc.max_streams, hold)

    return Service(cfg.service, make_engine, i2p.cfg.img_size[0], cfg.recon.conf_thres_l2w).run()


def _worker_main(cfg: Any, weights: str, device: str, level: str, threads: int | None) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s w{cfg.service.worker_index} %(name)s %(levelname)s "
                                            "%(message)s")
    sys.exit(serve(cfg, weights, device, threads))


def _run_workers(cfg: Any, args: argparse.Namespace) -> int:
    """Spawn ``args.workers`` worker processes (sharing the shard queues), each on its share of the cores unless
    ``--threads`` says otherwise; forward SIGTERM / SIGINT."""
    import dataclasses
    import multiprocessing as mp
    import signal

    from slam3r.system import usable_cores

    threads = args.threads or max(1, usable_cores() // args.workers)
    ctx = mp.get_context("spawn")
    procs = []
    for i in range(args.workers):
        svc = dataclasses.replace(cfg.service, worker_index=i, num_workers=args.workers)
        p = ctx.Process(target=_worker_main, name=f"slam3r-worker-{i}",
                        args=(dataclasses.replace(cfg, service=svc), args.weights, args.device, args.log_level,
                              threads))
        p.start()
        procs.append(p)

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                p.terminate()          # SIGTERM: each worker shuts down gracefully

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max(int(p.exitcode or 0) for p in procs)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from slam3r.config import ConfigError
    from slam3r.service.config import describe, load_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config, weights=args.weights, overrides=args.set,
                          flags={"precision": args.precision})
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        if cfg.service.enable_mesh and importlib.util.find_spec("open3d") is None:
            raise ConfigError("ENABLE_MESH_GENERATION needs Open3D: pip install open3d-cpu (or open3d)")
    except ConfigError as exc:
        print(f"slam3r serve: error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("slam3r.serve").info("configuration: %s", describe(cfg))
    if args.workers > 1:
        return _run_workers(cfg, args)
    return serve(cfg, args.weights, args.device, args.threads)
