"""Source brightnesses.  A brightness is converted to counts by the image's PhotoCal.

- :class:`Flux`: a single flux in the image's units (counts with NullPhotoCal).
- :class:`Fluxes`: one flux per band (``Fluxes(r=100., g=40.)``).
- :class:`NanoMaggies`: per-band fluxes in nanomaggies (22.5 - 2.5 log10 f = AB mag).
- :class:`Mag`, :class:`Mags`: magnitudes (one, or per band).
"""

from __future__ import annotations

import math

from .params import ParamList, ScalarParam

__all__ = ["Flux", "Fluxes", "Mag", "Mags", "NanoMaggies"]


class Flux(ScalarParam):
    """A single flux (counts when used with NullPhotoCal)."""

    stepsize = 0.1

    def getBand(self, band=None) -> float:
        return self.val


class Mag(ScalarParam):
    """A single magnitude."""

    stepsize = 0.01

    def getMag(self, band=None) -> float:
        return self.val


class _Bands(ParamList):
    """Per-band values: ``Cls(r=1., i=2., order=['i', 'r'])``; default order is sorted bands."""

    default_step = 1.0

    def __init__(self, order=None, **kwargs):
        bands = list(order) if order is not None else sorted(kwargs)
        missing = [b for b in bands if b not in kwargs]
        extra = [b for b in kwargs if b not in bands]
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}: order {bands} does not match the bands given {sorted(kwargs)}"
            )
        super().__init__(*[kwargs[b] for b in bands])
        self.addParamAliases(*bands)
        self.order = bands
        self.stepsizes = [self.default_step] * len(bands)

    def __repr__(self):
        inner = ", ".join(f"{b}={v!r}" for b, v in zip(self.order, self.vals))
        return f"{type(self).__name__}({inner}, order={self.order!r})"

    def getBand(self, band: str) -> float:
        return self._getThing(self._index(band))

    def setBand(self, band: str, value: float) -> None:
        self._setThing(self._index(band), value)

    def bandIndex(self, band: str) -> int:
        """Index of ``band`` in the value vector; clear error if the band is absent."""
        if band not in self.order:
            raise ValueError(f"{type(self).__name__} has bands {self.order}, not {band!r}")
        return self.order.index(band)


class Fluxes(_Bands):
    """Fluxes per band (image units with FluxesPhotoCal / LinearPhotoCal)."""

    default_step = 0.1


class NanoMaggies(Fluxes):
    """Fluxes per band in nanomaggies: AB mag = 22.5 - 2.5 log10(flux)."""

    @staticmethod
    def magToNanomaggies(mag: float) -> float:
        return 10.0 ** ((mag - 22.5) / -2.5)

    @staticmethod
    def nanomaggiesToMag(nmgy: float) -> float:
        return -2.5 * (math.log10(nmgy) - 9.0)

    @classmethod
    def fromMag(cls, mags: "Mags") -> "NanoMaggies":
        return cls(order=mags.order, **{b: cls.magToNanomaggies(mags.getBand(b)) for b in mags.order})

    def getMag(self, band: str) -> float:
        return self.nanomaggiesToMag(self.getBand(band))


class Mags(_Bands):
    """Magnitudes per band: ``Mags(r=12., i=11.3)``."""

    default_step = 0.01

    def getMag(self, band: str) -> float:
        return self.getBand(band)
