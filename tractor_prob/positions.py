"""Source positions: pixel coordinates and celestial coordinates.

A position's values are handed to the image's WCS (``tractor_prob.wcs``),
which knows how to turn each position class into pixel coordinates.
"""

from __future__ import annotations

import math

from .params import ParamList

__all__ = ["PixPos", "RaDecPos"]


class PixPos(ParamList):
    """Position in pixel coordinates (x, y); pixel (0, 0) is the centre of the first pixel."""

    @staticmethod
    def getNamedParams():
        return dict(x=0, y=1)

    def __init__(self, x: float, y: float):
        super().__init__(x, y)
        self.stepsizes = [0.1, 0.1]

    def __str__(self):
        return "pixel (%.2f, %.2f)" % (self.x, self.y)

    def __repr__(self):
        return f"PixPos({self.x!r}, {self.y!r})"

    def getDimension(self) -> int:
        return 2


class RaDecPos(ParamList):
    """Position in celestial coordinates: RA and Dec in degrees."""

    @staticmethod
    def getNamedParams():
        return dict(ra=0, dec=1)

    def __init__(self, ra: float, dec: float):
        super().__init__(ra, dec)
        if not -90.0 <= self.dec <= 90.0:
            raise ValueError(f"RaDecPos: Dec must be within [-90, 90] degrees, got {self.dec}")

    def __str__(self):
        return "RaDecPos: RA, Dec = (%.5f, %.5f)" % (self.ra, self.dec)

    def __repr__(self):
        return f"RaDecPos({self.ra!r}, {self.dec!r})"

    def getStepSizes(self, *args, **kwargs):
        """1e-4 degree in Dec; in RA the same angle on the sky, 1e-4 / cos(Dec)."""
        steps = [1e-4 / math.cos(math.radians(self.dec)), 1e-4]
        return [s for s, t in zip(steps, self._thawed) if t]

    def getDimension(self) -> int:
        return 2
