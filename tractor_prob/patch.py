"""Patch: a small image (a model or a derivative) placed at integer pixel offset (x0, y0)."""

from __future__ import annotations

import numpy as np

__all__ = ["Patch"]


class Patch:
    """``patch`` (h, w) array whose first pixel is image pixel (x0, y0); ``name`` labels it."""

    def __init__(self, x0: int, y0: int, patch, name: str | None = None):
        self.x0 = int(x0)
        self.y0 = int(y0)
        self.patch = np.asarray(patch)
        self.name = name

    @property
    def shape(self):
        return self.patch.shape

    def getWidth(self) -> int:
        return self.patch.shape[1]

    def getHeight(self) -> int:
        return self.patch.shape[0]

    def getImage(self):
        return self.patch

    def getExtent(self):
        """[x0, x1, y0, y1) in image pixels."""
        h, w = self.patch.shape
        return [self.x0, self.x0 + w, self.y0, self.y0 + h]

    def addTo(self, img, scale: float = 1.0) -> None:
        """Add this patch (times ``scale``) into ``img`` (H, W) in place, clipping at the edges."""
        H, W = img.shape
        h, w = self.patch.shape
        x0, y0 = max(self.x0, 0), max(self.y0, 0)
        x1, y1 = min(self.x0 + w, W), min(self.y0 + h, H)
        if x1 <= x0 or y1 <= y0:
            return
        img[y0:y1, x0:x1] += scale * self.patch[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0]

    def __repr__(self):
        return f"Patch(x0={self.x0}, y0={self.y0}, shape={self.patch.shape}, name={self.name!r})"

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.patch, dtype=dtype)
