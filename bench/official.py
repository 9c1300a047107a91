"""The official SLAM3R code as the benches' yardstick (``--official DIR``).

DIR is a checkout of github.com/PKU-VCL-3DV/SLAM3R (measured at commit e27e2df) that the user provides; nothing of
it is copied into this repository. Its package is also called ``slam3r``, so it runs in a subprocess of its own
(``python bench/official.py --serve ...``, without this project on ``sys.path``) that loads the same weights once
and answers JSON commands on stdin / stdout; the benches time it interleaved with slam3r on the same inputs.

On a CPU the official code needs shims applied from outside (its files are not modified): a no-op for
``slam3r.utils.device.MyNvtxRange`` (its profiling wrapper calls ``torch.cuda.synchronize``); a stand-in for
``torchvision.transforms`` (Compose, ToTensor, Normalize, and an inert ColorJitter that ``slam3r.datasets``
instantiates at import) when torchvision is missing; an inert ``einops`` when it is missing (only the DPT head,
unused by the linear-head checkpoints, needs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MEASURED_COMMIT = "e27e2df"

# scripts/demo_wild.sh of the official repository (automatic keyframe stride)
WILD_DEMO = dict(keyframe_stride=-1, win_r=5, max_num_register=10, num_scene_frame=10, initial_winsize=5,
                 conf_thres_l2w=12.0, conf_thres_i2p=1.5, update_buffer_intv=1, buffer_size=100,
                 buffer_strategy="reservoir", keyframe_adapt_min=1, keyframe_adapt_max=20, keyframe_adapt_stride=1)


def check_checkout(directory: str | Path) -> Path:
    """The checkout's root, or SystemExit with what is missing."""
    root = Path(directory).expanduser().resolve()
    missing = [p for p in ("recon.py", "slam3r/models.py", "slam3r/utils/recon_utils.py") if not (root / p).is_file()]
    if missing:
        raise SystemExit(f"--official {directory}: not a checkout of PKU-VCL-3DV/SLAM3R (missing {', '.join(missing)})")
    return root


class Official:
    """A running official-code subprocess holding the I2P / L2W networks of ``weights_dir`` (``i2p/`` and ``l2w/``
    written by ``save_pretrained``). ``call(op, **args)`` returns the command's JSON result."""

    def __init__(self, directory: str | Path, weights_dir: str | Path, threads: int | None = None) -> None:
        root = check_checkout(directory)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["MPLBACKEND"] = "Agg"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(root), str(weights_dir),
               str(threads or 0)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                     cwd=str(root))
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the official-code subprocess exited (status {self.proc.wait()}); see its stderr")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"official code: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __enter__(self) -> "Official":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def save_weights(i2p, l2w, directory: str | Path) -> Path:
    """Write both networks where :class:`Official` reads them."""
    out = Path(directory)
    i2p.save_pretrained(out / "i2p")
    l2w.save_pretrained(out / "l2w")
    return out


# ------------------------------------------------------------------------------------------ subprocess side
def _torchvision_shim() -> None:
    """``torchvision.transforms`` stand-in: Compose, ToTensor, Normalize and an inert ColorJitter."""
    import torch

    tv = types.ModuleType("torchvision")
    tvf = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, fns):
            self.fns = list(fns)

        def __call__(self, x):
            for fn in self.fns:
                x = fn(x)
            return x

    class ToTensor:
        def __call__(self, pic):
            a = np.asarray(pic)
            a = a[:, :, None] if a.ndim == 2 else a
            t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
            return t.float().div(255) if t.dtype == torch.uint8 else t.float()

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, t):
            return (t - self.mean) / self.std

    class ColorJitter:  # instantiated at import by slam3r.datasets; never applied by inference
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, x):
            return x

    tvf.Compose, tvf.ToTensor, tvf.Normalize, tvf.ColorJitter = Compose, ToTensor, Normalize, ColorJitter
    tv.transforms = tvf
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tvf


def _einops_shim() -> None:
    """An ``einops`` whose functions raise (only the DPT head, unused by the linear-head checkpoints, calls it)."""
    ein = types.ModuleType("einops")

    def unavailable(*args, **kwargs):
        raise RuntimeError("einops is not installed (shim): the DPT head cannot run")

    ein.rearrange = ein.repeat = unavailable
    sys.modules["einops"] = ein


def _install_shims(root: Path) -> None:
    """Put the official checkout ``root`` first on ``sys.path`` with the CPU shims of the module docstring."""
    import importlib.util

    sys.path.insert(0, str(root))
    if importlib.util.find_spec("torchvision") is None:
        _torchvision_shim()
    if importlib.util.find_spec("einops") is None:
        _einops_shim()
    import slam3r.utils.device as dev  # the official package (root is first on sys.path)

    class NoNvtx:
        def __init__(self, name):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    dev.MyNvtxRange = NoNvtx
    import slam3r

    if not str(Path(slam3r.__file__).resolve()).startswith(str(root)):
        raise RuntimeError(f"imported {slam3r.__file__}, not the official package under {root}")


def _load_model(cls, directory: Path):
    import inspect

    from safetensors.torch import load_file

    cfg = json.loads((directory / "config.json").read_text())
    base = cls.__mro__[1] if cls.__name__ != "Multiview3D" else cls
    accepted = set(inspect.signature(base.__init__).parameters) | set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in accepted}
    model = cls(**kwargs)
    state = load_file(str(directory / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.eval()


class _Server:
    def __init__(self, root: Path, weights: Path, threads: int) -> None:
        import torch

        _install_shims(root)
        if threads:
            torch.set_num_threads(threads)
        from slam3r.models import Image2PointsModel, Local2WorldModel

        self.torch = torch
        self.i2p = _load_model(Image2PointsModel, weights / "i2p")
        self.l2w = _load_model(Local2WorldModel, weights / "l2w")
        self.inputs: dict[str, Any] = {}
        self._pos = None

    # helpers
    def _load(self, path: str) -> dict[str, np.ndarray]:
        if path not in self.inputs:
            with np.load(path) as z:
                self.inputs[path] = {k: z[k] for k in z.files}
        return self.inputs[path]

    def _pos_of(self, img) -> Any:
        """Patch positions (1, S, 2) the official encoder assigns (same for every view of a size)."""
        if self._pos is None:
            h, w = img.shape[-2:]
            shape = self.torch.tensor([[h, w]], dtype=self.torch.int32)
            self._pos = self.i2p.patch_embed(img[None], true_shape=shape)[1]
        return self._pos

    def _views(self, tokens):
        t = self.torch
        h, w = self.i2p.patch_embed.img_size
        shape = t.tensor([[h, w]], dtype=t.int32)
        pos = self._pos_of(t.zeros(3, h, w))
        return [dict(img_tokens=t.from_numpy(tok)[None], true_shape=shape, img_pos=pos) for tok in tokens]

    def _timed(self, fn, flops: bool):
        t = self.torch
        with t.no_grad():
            t0 = time.perf_counter()
            out = fn()
            sec = time.perf_counter() - t0
            gflop = None
            if flops:
                sys.path.insert(1, str(HERE))
                from flops import count_gflop

                gflop = count_gflop(fn)
        return out, sec, gflop

    # commands
    def op_encode(self, inputs: str, flops: bool = False) -> tuple[dict, dict]:
        t = self.torch
        imgs = t.from_numpy(self._load(inputs)["imgs"])
        h, w = imgs.shape[-2:]
        views = [dict(img=im[None], true_shape=t.tensor([[h, w]], dtype=t.int32)) for im in imgs]
        (_, feats, _), sec, gf = self._timed(lambda: self.i2p._encode_multiview(views, view_batchsize=10,
                                                                               normalize=False), flops)
        return {"seconds": sec, "gflop": gf}, {"tokens": t.cat(feats).numpy()}

    def op_i2p(self, inputs: str, flops: bool = False) -> tuple[dict, dict]:
        views = self._views(self._load(inputs)["tokens"])
        out, sec, gf = self._timed(lambda: self.i2p(views, ref_id=0), flops)
        return {"seconds": sec, "gflop": gf}, {"pts3d": out[0]["pts3d"].numpy(), "conf": out[0]["conf"].numpy()}

    def op_retrieval(self, inputs: str, flops: bool = False) -> tuple[dict, dict]:
        from slam3r.utils.device import collate_with_cat

        data = self._load(inputs)
        query, cand = self._views(data["query"]), self._views(data["cand"])
        batch = collate_with_cat([tuple([q] + cand) for q in query])
        out, sec, gf = self._timed(lambda: self.i2p.get_corr_score(batch, ref_id=0, depth=2), flops)
        return {"seconds": sec, "gflop": gf}, {"scores": out.numpy()}

    def op_l2w(self, inputs: str, flops: bool = False) -> tuple[dict, dict]:
        t = self.torch
        data = self._load(inputs)
        nref = int(data["nref"])
        views = self._views(data["tokens"])
        for i, v in enumerate(views):
            v["pts3d_world" if i < nref else "pts3d_cam"] = t.from_numpy(data["pts"][i])[None]
        out, sec, gf = self._timed(lambda: self.l2w(views, ref_ids=list(range(nref))), flops)
        pts = np.concatenate([o["pts3d_in_other_view"].numpy() for o in out[nref:]])
        return {"seconds": sec, "gflop": gf}, {"pts3d": pts}

    def op_pipeline(self, inputs: str, params: dict, seed: int = 42) -> tuple[dict, dict]:
        import argparse
        import tempfile

        import recon  # the official recon.py (its directory is first on sys.path)

        sys.path.insert(1, str(HERE))
        import rss

        frames = self._load(inputs)["frames"]
        t = self.torch
        h, w = frames.shape[1:3]
        views = [dict(img=((t.from_numpy(f).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)[None],
                      true_shape=t.tensor([[h, w]], dtype=t.int32), idx=i, instance=str(i), label=str(i))
                 for i, f in enumerate(frames)]
        dataset = _Dataset(views)
        calls: list[dict] = []
        originals = {}
        for name in ("get_img_tokens", "adapt_keyframe_stride", "initialize_scene", "i2p_inference_batch",
                     "scene_frame_retrieve", "l2w_inference"):
            originals[name] = getattr(recon, name)
            setattr(recon, name, _recorder(name, originals[name], calls))
        originals["save_recon"] = recon.save_recon  # point-cloud export: not timed on the slam3r side either
        recon.save_recon = lambda *a, **k: None
        with tempfile.TemporaryDirectory() as tmp:
            args = argparse.Namespace(**{**WILD_DEMO, **params}, device="cpu", num_points_save=200_000,
                                      norm_input=params.get("norm_input", False), save_all_views=False,
                                      save_preds=True, save_for_eval=False, seed=seed)
            np.random.seed(seed)
            rss.reset_peak()
            t0 = time.perf_counter()
            with t.no_grad():
                recon.scene_recon_pipeline(self.i2p, self.l2w, dataset, args, save_dir=tmp)
            total = time.perf_counter() - t0
            peak = rss.peak_gib()
            world = np.load(Path(tmp) / "preds" / "registered_pcds.npy")
            meta = json.loads((Path(tmp) / "preds" / "metadata.json").read_text())
        for name, fn in originals.items():
            setattr(recon, name, fn)
        n = len(frames)
        stride = int(meta["kf_stride"])
        summary = {"seconds": total, "s_per_frame": total / n, "peak_rss_gib": peak, "stride": stride,
                   "stages": _stages(calls), **_steady(calls, n, stride, {**WILD_DEMO, **params})}
        return summary, {"world": world}


class _Dataset:
    def __init__(self, views: list[dict]) -> None:
        self.views = views
        self.scene_names = ["bench"]

    def __getitem__(self, idx: int) -> list[dict]:
        return [dict(v) for v in self.views]


def _recorder(name: str, fn, calls: list[dict]):
    def wrapped(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        rec = {"name": name, "s": time.perf_counter() - t0}
        if name == "i2p_inference_batch":
            rec.update(batch=len(args[0]), views=len(args[0][0]), labels=[int(v["label"]) for v in args[0][0]])
        elif name == "l2w_inference":
            ref_ids = kwargs.get("ref_ids", args[2] if len(args) > 2 else None)
            views = args[0]
            rec.update(scene=len(ref_ids), labels=[int(v["label"]) for i, v in enumerate(views) if i not in ref_ids])
        elif name == "scene_frame_retrieve":
            rec.update(labels=[int(v["label"]) for v in args[1]])
        calls.append(rec)
        return out

    return wrapped


def _stages(calls: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in calls:
        out[c["name"]] = out.get(c["name"], 0.0) + c["s"]
    return out


def _steady(calls: list[dict], n: int, stride: int, params: dict) -> dict[str, Any]:
    """Seconds per frame once the pipeline does its full per-frame work, defined as in bench_pipeline.steady_state:
    frames with a full I2P window (``win_r`` strides on both sides) registered in an L2W call with
    ``num_scene_frame`` scene frames; their I2P, retrieval and L2W time plus the per-frame encoder time."""
    lo, hi = params["win_r"] * stride, n - params["win_r"] * stride
    full_views = 2 * params["win_r"] + 1
    i2p = {c["labels"][0]: c["s"] for c in calls
           if c["name"] == "i2p_inference_batch" and c["batch"] == 1 and c["views"] == full_views}
    retrieval = {min(c["labels"]): c["s"] for c in calls if c["name"] == "scene_frame_retrieve"}
    steps = [c for c in calls if c["name"] == "l2w_inference" and c["scene"] == params["num_scene_frame"]
             and min(c["labels"]) >= lo and max(c["labels"]) < hi and all(v in i2p for v in c["labels"])]
    frames = sum(len(c["labels"]) for c in steps)
    if not frames:
        return {"steady_s_per_frame": None, "steady_frames": 0}
    encode = sum(c["s"] for c in calls if c["name"] == "get_img_tokens") / n
    work = sum(c["s"] + retrieval.get(min(c["labels"]), 0.0) + sum(i2p[v] for v in c["labels"]) for c in steps)
    return {"steady_s_per_frame": encode + work / frames, "steady_frames": frames}


def serve(root: str, weights: str, threads: str) -> None:
    """Subprocess main loop: one JSON command per stdin line, one JSON reply per stdout line."""
    proto = sys.stdout
    sys.stdout = sys.stderr  # the official code prints; keep stdout for the protocol

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        server = _Server(Path(root), Path(weights), int(threads))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return
    import torch
    reply({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        cmd = json.loads(line)
        op, out = cmd.pop("op"), cmd.pop("out", None)
        try:
            result, arrays = getattr(server, f"op_{op}")(**cmd)
            if out:
                np.savez(out, **arrays)
            reply(result)
        except Exception as exc:  # noqa: BLE001
            reply({"error": f"{op}: {type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
