"""Image quality of the cached output against the baseline: PSNR, SSIM (scikit-image), LPIPS (AlexNet).

LPIPS needs torchvision's ImageNet AlexNet weights. Where they are not in
TORCH_HOME and cannot be downloaded, LPIPS is reported as unavailable with a short
reason (the full one, with paths and the download error, goes to the
``h2cache.metrics`` log); no number is made up.

Example:
    >>> import numpy as np
    >>> a = np.zeros((16, 16, 3), np.uint8)
    >>> compare_images(a, a, lpips=False)["psnr"]
    inf
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import warnings
from typing import Any

import numpy as np

log = logging.getLogger("h2cache.metrics")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"images must be two HxWx3 arrays of one shape, got {a.shape} and {b.shape}")


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR in dB of uint8 RGB images; ``inf`` for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_pair(reference, image)
    if np.array_equal(reference, image):
        return math.inf
    return float(peak_signal_noise_ratio(reference, image, data_range=255))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _check_pair(reference, image)
    win = min(7, *reference.shape[:2])
    win -= 1 - win % 2  # odd window, within small images
    return float(structural_similarity(reference, image, channel_axis=-1, data_range=255, win_size=win))


class _Lpips:
    """Loads LPIPS(AlexNet) once per process; remembers why it could not."""

    def __init__(self) -> None:
        self._model = None
        self._reason: str | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        if self._model is not None or self._reason is not None:
            return
        try:
            import lpips

            # lpips still calls torchvision's deprecated `pretrained=` API; those warnings are not the user's.
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
                self._model = lpips.LPIPS(net="alex", verbose=False).eval()
        except ImportError as exc:
            self._reason = "the lpips package is not installed"
            log.warning("LPIPS unavailable: %s (%s)", self._reason, exc)
        except Exception as exc:  # a failed download raises URLError, OSError, RuntimeError...
            import torch.hub

            # The reason is shown to app users, so it names no server path or network detail; the log does.
            self._reason = "AlexNet weights not available offline"
            log.warning("LPIPS unavailable: torchvision's AlexNet weights (alexnet-owt-7be5be79.pth) are not in "
                        "%s/checkpoints and could not be downloaded (%s: %s)", torch.hub.get_dir(),
                        type(exc).__name__, exc)

    def availability(self) -> tuple[bool, str | None]:
        with self._lock:
            self._load()
        return self._model is not None, self._reason

    def __call__(self, reference: np.ndarray, image: np.ndarray) -> float | None:
        import torch

        available, _ = self.availability()
        if not available:
            return None
        _check_pair(reference, image)

        def to_tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

        with torch.no_grad():
            return float(self._model(to_tensor(reference), to_tensor(image)).item())


LPIPS = _Lpips()


def lpips_availability() -> tuple[bool, str | None]:
    """(available, reason it is not)."""
    return LPIPS.availability()


def compare_images(reference: np.ndarray, image: np.ndarray, lpips: bool = True) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of `image` against `reference` (uint8 HxWx3 arrays).

    ``lpips`` is ``None`` when it cannot be computed, and ``lpips_reason`` says why.
    """
    reference, image = np.asarray(reference), np.asarray(image)
    out: dict[str, Any] = {"psnr": psnr(reference, image), "ssim": ssim(reference, image),
                           "lpips": None, "lpips_reason": "not requested"}
    if lpips:
        out["lpips"] = LPIPS(reference, image)
        out["lpips_reason"] = None if out["lpips"] is not None else LPIPS.availability()[1]
    return out
