"""Loading networks for a run: resolve a ``--weights`` choice to a pair of networks, put them on a device, apply
the CPU thread policy and optional ``torch.compile``. A ``--weights`` choice is ``default`` (bundled with the
package), ``released`` (the official checkpoints from the HuggingFace hub), a local directory holding ``i2p/`` and
``l2w/`` sub-directories, or ``I2P_REPO,L2W_REPO`` hub ids / directories."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from slam3r.models.config import OFFICIAL_REPOS
from slam3r.system import usable_cores

if TYPE_CHECKING:  # torch is imported only when networks are loaded, so argument parsers stay light
    import torch

    from slam3r.models.base import MultiViewTransformer
    from slam3r.models.i2p import Image2PointsModel
    from slam3r.models.l2w import Local2WorldModel

WEIGHTS_HELP = ("default (bundled small model), released (official SLAM3R weights from the HuggingFace hub: "
                f"{OFFICIAL_REPOS['i2p']}, {OFFICIAL_REPOS['l2w']}), a directory with i2p/ and l2w/ model "
                "directories, or I2P,L2W (two hub ids or directories)")


def bundled_dir() -> Path:
    """Directory of the default model shipped inside the package."""
    return Path(str(resources.files("slam3r"))) / "assets" / "default_model"


def resolve_weights(weights: str) -> tuple[str, str]:
    """``--weights`` value -> (I2P source, L2W source)."""
    from slam3r.models.hub import CheckpointError

    if weights == "default":
        root = bundled_dir()
        if not (root / "i2p").is_dir():
            raise CheckpointError(f"the bundled default model is missing from {root}; reinstall slam3r or pass "
                                  "--weights released|DIR")
        return str(root / "i2p"), str(root / "l2w")
    if weights == "released":
        return OFFICIAL_REPOS["i2p"], OFFICIAL_REPOS["l2w"]
    if "," in weights:
        a, b = weights.split(",", 1)
        return a.strip(), b.strip()
    root = Path(weights)
    if (root / "i2p").is_dir() and (root / "l2w").is_dir():
        return str(root / "i2p"), str(root / "l2w")
    raise CheckpointError(f"--weights {weights!r} not understood; expected {WEIGHTS_HELP}")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; explicit ``cuda`` without CUDA is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but this torch build / machine has no CUDA; use --device cpu")
    return dev


def load_models(weights: str = "default", device: str | torch.device = "cpu") -> tuple[Image2PointsModel, Local2WorldModel]:
    """Load the I2P and L2W networks for ``weights`` (see module docstring) onto ``device``, in eval mode."""
    from slam3r.models.hub import CheckpointError
    from slam3r.models.i2p import Image2PointsModel
    from slam3r.models.l2w import Local2WorldModel

    i2p_src, l2w_src = resolve_weights(weights)
    i2p = Image2PointsModel.from_pretrained(i2p_src, device=device)
    l2w = Local2WorldModel.from_pretrained(l2w_src, device=device)
    if i2p.cfg.img_size != l2w.cfg.img_size:
        raise CheckpointError(f"I2P ({i2p.cfg.img_size}) and L2W ({l2w.cfg.img_size}) image sizes differ")
    return i2p, l2w


def configure_threads(device: torch.device, threads: int | None = None) -> int:
    """Set torch's CPU thread count for inference on ``device`` and return it: ``threads`` when given, else every
    core the process may run on (:func:`slam3r.system.usable_cores`). GPU runs keep torch's default.

    Small networks used to get one thread: on three 2-core machines (Zen 3 AVX2, two Zen 4) the bundled model
    streamed faster on two (Zen 4, 2026-12-03, five alternating 300-frame pairs: 0.025-0.035 s per frame against
    0.032-0.036 on one thread; Zen 3 34.6-37.5 FPS against 29.6-31.3), and offline they tied. Processes that share
    the cores (the service's workers) divide them among themselves.
    """
    import torch

    if threads is None:
        if device.type != "cpu":
            return torch.get_num_threads()
        threads = usable_cores()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def compile_blocks(model: MultiViewTransformer) -> bool:
    """``torch.compile`` (inductor) every encoder and decoder block of ``model`` in place: fused element-wise work,
    about 5-10% faster per network call on a 2-core CPU once compiled, but each new input shape costs minutes of
    compilation there. Blocks already compiled (by an earlier engine on the same networks) are left as they are.
    Returns ``False`` and leaves the model eager where inductor has no toolchain (a C++ compiler for CPU, Triton for
    CUDA); a block that fails to compile at run time falls back to eager."""
    import importlib.util
    import shutil
    import warnings

    import torch
    import torch._dynamo

    device = next(model.parameters()).device
    if device.type == "cuda":
        missing = None if importlib.util.find_spec("triton") else "Triton"
    else:
        missing = None if any(shutil.which(c) for c in ("g++", "c++", "clang++")) else "a C++ compiler"
    if missing:
        warnings.warn(f"torch.compile needs {missing} on {device.type}; running eagerly", stacklevel=2)
        return False
    torch._dynamo.config.suppress_errors = True  # compilation errors -> eager, not a crash mid-reconstruction
    for blk in [*getattr(model, "enc_blocks", []), *model.mv_dec_blocks1, *model.mv_dec_blocks2]:
        if blk._compiled_call_impl is None:
            blk.compile()
    return True
