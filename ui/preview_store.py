"""Step previews kept on the server for the scrubber, within a fixed memory budget (and the byte-bounded LRU
map it and the baseline store share).

Sessions never hold the images themselves: a session's state holds a key into this store. Previews
are kept PNG-compressed (lossless; a step is decoded when it is shown), and stored comparisons are
evicted oldest-first once their bytes exceed the budget, so memory stays bounded however many
sessions or API clients call the app (API sessions are never closed).

Example:
    >>> import numpy as np
    >>> store = PreviewStore(max_bytes=10_000)
    >>> key = store.put([np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 8, 3), np.uint8)])
    >>> store.steps(key), int(store.step(key, 0)[1].max())
    (1, 1)
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict

from typing import Any

import numpy as np
from PIL import Image

# A preview is shown at most this many pixels on a side; larger ones (FLUX.1 at 1024x1024) are
# stored reduced, so one 50-step FLUX.1 comparison costs ~20 MB, not ~300 MB.
MAX_PREVIEW_SIDE = 256
# ~12 comparisons of 20 steps at 128x128 (previews and PFS thumbnails: 1.27 MB each); one 50-step FLUX.1
# comparison would take ~20 MB (estimated from its sizes), so a GPU Space should raise it (space.yaml: preview_store_mb).
DEFAULT_MAX_BYTES = 16 * 2**20

Encoded = tuple[list[bytes], list[bytes]]  # (baseline, cached) PNGs, one per step
Entry = tuple[Encoded, list[Any] | None, int]  # previews, what else the scrubber shows per step, bytes


def reduce_preview(image: np.ndarray, max_side: int = MAX_PREVIEW_SIDE) -> np.ndarray:
    """`image` shrunk by a whole factor (box average) until no side exceeds `max_side`."""
    factor = -(-max(image.shape[:2]) // max_side)
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # fast; previews are small
    return buffer.getvalue()


def _array(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


class ByteLRU:
    """Thread-safe least-recently-used map bounded by the bytes its values are said to take (and, if given, by
    a number of entries); the newest entry is kept even when it alone is over the budget."""

    def __init__(self, max_bytes: int, max_items: int | None = None) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, int(size))
            self._bytes += int(size)
            while len(self._items) > 1 and (self._bytes > self.max_bytes
                                            or (self.max_items is not None and len(self._items) > self.max_items)):
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get(self, key: Any) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


class PreviewStore:
    """Thread-safe, byte-bounded, least-recently-used store of each comparison's step previews."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._lru = ByteLRU(max_bytes)

    @property
    def max_bytes(self) -> int:
        return self._lru.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._lru.max_bytes = value

    def put(self, baseline: list[np.ndarray], cached: list[np.ndarray], extras: list[Any] | None = None,
            extras_bytes: int = 0) -> str:
        """Store one comparison's previews, and optionally one more object per step (`extras`, counted as
        `extras_bytes`); returns the key a session keeps."""
        encoded = ([_png(reduce_preview(x)) for x in baseline], [_png(reduce_preview(x)) for x in cached])
        size = sum(len(x) for run in encoded for x in run) + int(extras_bytes)
        key = secrets.token_urlsafe(12)
        self._lru.put(key, (encoded, extras, size), size)
        return key

    def _entry(self, key: object) -> Entry | None:
        return self._lru.get(key) if isinstance(key, str) else None

    def _encoded(self, key: object) -> Encoded | None:
        entry = self._entry(key)
        return None if entry is None else entry[0]

    def extra(self, key: object, index: int) -> Any | None:
        """The object stored for 0-based step `index` with the previews; None if evicted, absent or out of range."""
        entry = self._entry(key)
        if entry is None or entry[1] is None or not 0 <= index < len(entry[1]):
            return None
        return entry[1][index]

    def steps(self, key: object) -> int | None:
        """How many steps are stored under `key`; None if evicted (or the key is not one of ours)."""
        encoded = self._encoded(key)
        return None if encoded is None else len(encoded[0])

    def step(self, key: object, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(baseline, cached) previews of 0-based step `index`; None if evicted or out of range."""
        encoded = self._encoded(key)
        if encoded is None or not 0 <= index < len(encoded[0]):
            return None
        return _array(encoded[0][index]), _array(encoded[1][index])

    @property
    def nbytes(self) -> int:
        return self._lru.nbytes

    def __len__(self) -> int:
        return len(self._lru)


PREVIEWS = PreviewStore()
