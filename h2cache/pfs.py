"""Pooled feature summarization (PFS): an average-pooled thumbnail and a relative L1 distance.

A residual ``(B, N, C)`` is viewed as a one-channel image ``(B, 1, N, C)`` and
average-pooled with a square kernel ``k = stride = max(1, N // pool_size)``.
The distance between a reference and a current thumbnail is
``mean|ref - cur| / mean|ref|``: one scalar for the whole batch.

Example:
    >>> import torch
    >>> ref = pfs_thumbnail(torch.ones(1, 8, 4), pool_size=4)   # k = 2
    >>> ref.shape
    torch.Size([1, 1, 4, 2])
    >>> float(pfs_distance(ref, pfs_thumbnail(torch.full((1, 8, 4), 1.5), pool_size=4)))
    0.5
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pfs_kernel(num_tokens: int, num_channels: int, pool_size: int) -> int:
    """Kernel size ``max(1, N // pool_size)``, kept within the channel axis.

    The published rule alone fails when ``k`` exceeds ``C`` (a wide thumbnail of
    a narrow residual); capping at ``C`` only changes inputs that would fail.
    """
    return max(1, min(num_tokens // pool_size, num_channels))


def pfs_thumbnail(residual: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Average-pooled thumbnail of a ``(B, N, C)`` residual, returned in float32."""
    if residual.ndim != 3:
        raise ValueError(f"residual must have shape (B, N, C), got {tuple(residual.shape)}")
    b, n, c = residual.shape
    k = pfs_kernel(n, c, pool_size)
    if k == 1:
        return residual.unsqueeze(1).float()
    # Pool in the native dtype (fp16/bf16 pooling accumulates in fp32 internally), cast the small result.
    return F.avg_pool2d(residual.unsqueeze(1), kernel_size=k, stride=k).float()


def pfs_distance(ref_thumbnail: torch.Tensor, thumbnail: torch.Tensor) -> torch.Tensor:
    """Relative L1 distance ``mean|ref - cur| / mean|ref|`` as a 0-d float32 tensor (no host sync).

    A zero reference gives 0 when the current thumbnail is zero too, else ``inf``.
    """
    num = (ref_thumbnail - thumbnail).abs().mean()
    den = ref_thumbnail.abs().mean()
    return torch.where(den > 0, num / den, torch.where(num > 0, torch.full_like(num, float("inf")), torch.zeros_like(num)))
