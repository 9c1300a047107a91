"""``slam3r models``: inspect checkpoints, convert the reference's ``.pth`` files, smoke-test a pair of networks."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from slam3r.runtime import add_runtime_arguments

    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="print the config and parameter count of a model directory or hub id")
    info.add_argument("source", help="model directory (config.json + model.safetensors) or hub repo id")
    info.add_argument("--kind", choices=["i2p", "l2w"], default="i2p")
    conv = sub.add_parser("convert", help="convert a reference .pth checkpoint to config.json + model.safetensors")
    conv.add_argument("checkpoint", help=".pth file holding {'model': state_dict} (read with weights_only=True)")
    conv.add_argument("out", help="output directory")
    conv.add_argument("--kind", choices=["i2p", "l2w"], required=True)
    conv.add_argument("--preset", default="released", help="model size preset of the checkpoint (default: released)")
    smoke = sub.add_parser("smoke", help="run both networks once on random input and report output shapes")
    add_runtime_arguments(smoke, options=("weights", "device", "threads"))


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from slam3r.models import CheckpointError, Image2PointsModel, Local2WorldModel, preset
    from slam3r.models.hub import load_weights, read_torch_checkpoint
    from slam3r.runtime import runtime_from_args

    cls = {"i2p": Image2PointsModel, "l2w": Local2WorldModel}
    try:
        if args.action == "info":
            model = cls[args.kind].from_pretrained(args.source)
            print(model.cfg)
            print(f"{sum(p.numel() for p in model.parameters()):,} parameters in "
                  f"{len(model.state_dict())} tensors")
        elif args.action == "convert":
            with torch.device("meta"):
                model = cls[args.kind](preset(args.preset, l2w=args.kind == "l2w"))
            state = read_torch_checkpoint(args.checkpoint)
            model = load_weights(model.to_empty(device="cpu"), state)
            print(f"wrote {model.save_pretrained(args.out)}")
        else:
            rt = runtime_from_args(args)
            i2p, l2w, device = rt.i2p, rt.l2w, rt.device
            h, w = i2p.cfg.img_size
            with torch.no_grad():
                tokens = i2p.encode(torch.rand(3, 3, h, w, device=device) * 2 - 1)[:, None]
                local = i2p(tokens, 0)
                world = l2w(tokens, local.pts3d, [0])
            print(f"I2P pts3d {tuple(local.pts3d.shape)}, L2W pts3d {tuple(world.pts3d.shape)}, "
                  f"mean confidence {float(world.conf.mean()):.2f}")
    except (CheckpointError, RuntimeError, ValueError) as exc:
        print(f"slam3r models: error: {exc}", file=sys.stderr)
        return 2
    return 0
