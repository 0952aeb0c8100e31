"""What PFS compared at each step: a record of the probe residuals, their thumbnails and references.

Off by default, since a trace of decisions is all a cached run needs. Turned on with
``handle.pfs.enable()``, it keeps, for every stage decision that measured a distance:

- the probe residual's magnitude per image token (mean ``|r|`` over channels), which a viewer lays out on
  the image's token grid;
- the PFS thumbnail that was compared, box-averaged further, by one factor on both sides, to at most ``max_side`` on a side for display
  (FLUX.1 at 1024x1024 has a 2048 x 1536 stage-1 thumbnail); its real shape is kept beside it;
- which step's thumbnail served as the reference (the stage's last miss), and the distance.

Nothing full-size is kept, so memory stays small at any resolution: at most 64 KB of thumbnail and 4 bytes
per image token (16 KB for FLUX.1 at 1024x1024) per stage and step. The tensors stay on the model's
device during the call (no extra host syncs in the timed run) and are copied to the host when first read.

Example:
    >>> import torch, h2cache
    >>> pipe = h2cache.load_pipeline()  # the embedded model: 256 image tokens at 128x128
    >>> handle = h2cache.apply_h2_cache(pipe, h2cache.H2CacheConfig(tau1=0.15, tau2=0.22, pool_size_stage1=16))
    >>> views = handle.pfs.enable()
    >>> args = {**h2cache.generation_defaults(pipe), "num_inference_steps": 8}
    >>> _ = pipe("a small red circle at the top left on a striped blue background", **args,
    ...          generator=torch.Generator().manual_seed(0))
    >>> v = views.find(step=3, context="cond", stage=1)
    >>> v.kernel, v.thumbnail_shape, v.image_magnitude.shape  # k = 256 // 16 on a 256 x 96 residual
    (16, (16, 6), (256,))
    >>> v.distance == handle.trace.for_context("cond")[3].d1
    True
    >>> handle.remove()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

DISPLAY_MAX_SIDE = 128


@dataclass
class PFSView:
    """One stage's PFS comparison at one transformer call.

    Attributes:
        step, context: the call (as in :class:`~h2cache.trace.StepRecord`).
        stage: 1 (structure) or 2 (detail).
        num_tokens: N, the tokens of the compared residual (stage 2: text and image tokens).
        num_channels: C, the residual's channels.
        image_tokens: the image-stream tokens among them.
        pool_size: the configured PFS pool size; ``kernel`` = ``max(1, N // pool_size)`` capped at C
            (1 with ``full_residual_distance``, which compares unpooled residuals).
        thumbnail_shape: the compared thumbnail's (rows, columns) for the first batch element.
        distance: relative L1 distance to the reference; None at a miss without a reference yet.
        reference_step: the step whose thumbnail was the reference (the stage's last miss), or None.
        hit: whether the stage reused its cache.
    """

    step: int
    context: str
    stage: int
    num_tokens: int
    num_channels: int
    image_tokens: int
    pool_size: int
    kernel: int
    thumbnail_shape: tuple[int, int]
    distance: float | None
    reference_step: int | None
    hit: bool
    _thumbnail: torch.Tensor | np.ndarray = field(repr=False, default=None)
    _magnitude: torch.Tensor | np.ndarray = field(repr=False, default=None)

    @property
    def thumbnail(self) -> np.ndarray:
        """The thumbnail of the first batch element, float32, at most ``max_side`` per side (box-averaged)."""
        if isinstance(self._thumbnail, torch.Tensor):
            self._thumbnail = self._thumbnail.float().cpu().numpy()
        return self._thumbnail

    @property
    def image_magnitude(self) -> np.ndarray:
        """Mean ``|residual|`` over channels for each image token of the first batch element, float32, (image_tokens,)."""
        if isinstance(self._magnitude, torch.Tensor):
            self._magnitude = self._magnitude.float().cpu().numpy()
        return self._magnitude

    def to_host(self) -> PFSView:
        """Copy the arrays to the host now (e.g. before the views leave the thread that ran the model)."""
        _ = self.thumbnail, self.image_magnitude
        return self


class PFSViews(list):
    """The :class:`PFSView` records of the most recent pipeline call, in call order.

    Attributes:
        enabled: whether the hooks record; off until :meth:`enable`.
        max_side: the largest side of a stored thumbnail.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.max_side = DISPLAY_MAX_SIDE

    def enable(self, max_side: int = DISPLAY_MAX_SIDE) -> PFSViews:
        """Record from the next transformer call on; returns self."""
        if int(max_side) < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        self.enabled, self.max_side = True, int(max_side)
        return self

    def disable(self) -> None:
        self.enabled = False

    def find(self, step: int, context: str, stage: int) -> PFSView | None:
        """The view of `stage` (1 or 2) at `step` in `context`; None where that stage measured nothing."""
        for view in self:
            if view.step == step and view.context == context and view.stage == stage:
                return view
        return None

    def reference_of(self, view: PFSView) -> PFSView | None:
        """The view whose thumbnail `view` was compared with."""
        if view.reference_step is None:
            return None
        return self.find(view.reference_step, view.context, view.stage)

    def to_host(self) -> PFSViews:
        for view in self:
            view.to_host()
        return self

    def record(self, *, step: int, context: str, stage: int, signal: torch.Tensor, image_tokens: int,
               thumbnail: torch.Tensor, pool_size: int, kernel: int, distance: float | None,
               reference_step: int | None, hit: bool) -> None:
        """Called by H2-Cache's probe hook with the compared residual `signal` (B, N, C) and its thumbnail."""
        thumb = thumbnail[0, 0] if thumbnail.ndim == 4 else thumbnail[0]
        shape = (int(thumb.shape[0]), int(thumb.shape[1]))
        if max(shape) > self.max_side:
            factor = -(-max(shape) // self.max_side)  # one factor for both sides keeps cells square
            target = (-(-shape[0] // factor), -(-shape[1] // factor))
            thumb = F.adaptive_avg_pool2d(thumb[None, None].float(), target)[0, 0]
        magnitude = signal[0, signal.shape[1] - image_tokens:].detach().abs().float().mean(dim=-1)
        self.append(PFSView(
            step=step, context=context, stage=stage, num_tokens=int(signal.shape[1]),
            num_channels=int(signal.shape[2]), image_tokens=int(image_tokens), pool_size=int(pool_size),
            kernel=int(kernel), thumbnail_shape=shape, distance=distance, reference_step=reference_step,
            hit=bool(hit), _thumbnail=thumb.detach().float().clone(), _magnitude=magnitude.clone(),
        ))
