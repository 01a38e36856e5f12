"""Photometric calibrations: brightness -> counts in an image.

Each class has a Python method (``brightnessToCounts``) and a pure JAX twin
(``_jax_counts``) that the render core calls with flat parameter vectors.
"""

from __future__ import annotations

from .params import ParamList, ScalarParam, Spec

__all__ = ["NullPhotoCal", "LinearPhotoCal", "MagsPhotoCal", "FluxesPhotoCal"]


def _band_value(br_spec: Spec, br_vals, band, owner: str):
    """The brightness value for ``band`` (scalars ignore the band)."""
    if issubclass(br_spec.cls, ScalarParam):
        return br_vals[0]
    names = br_spec.static
    if band is None:
        if len(names) == 1:
            return br_vals[0]
        raise ValueError(
            f"{owner} has no band but the source brightness has bands {list(names)}: "
            "give the photocal a band"
        )
    if band not in names:
        raise ValueError(
            f"{owner} needs band {band!r} but the source brightness has bands {list(names)}"
        )
    return br_vals[names.index(band)]


def _python_band_value(brightness, band, owner):
    if isinstance(brightness, ScalarParam):
        return brightness.val
    return _band_value(Spec(type(brightness), tuple(brightness.getAllParamNames()), 0),
                       brightness.vals, band, owner)


class NullPhotoCal(ParamList):
    """Counts = the brightness value itself (a Flux, or a one-band Fluxes)."""

    def __init__(self):
        super().__init__()

    def __str__(self):
        return "NullPhotoCal"

    def brightnessToCounts(self, brightness) -> float:
        return _python_band_value(brightness, None, "NullPhotoCal")

    @staticmethod
    def _jax_counts(spec, vals, br_spec, br_vals):
        return _band_value(br_spec, br_vals, None, "NullPhotoCal")


class LinearPhotoCal(ScalarParam):
    """Counts = scale * flux in ``band`` (scale is the one parameter, counts per flux unit)."""

    def __init__(self, scale: float, band: str | None = None):
        super().__init__(scale)
        self.band = band

    def __str__(self):
        return f"LinearPhotoCal(band={self.band}, scale={self.val:g})"

    def getScale(self) -> float:
        return self.val

    def _static(self):
        return self.band

    def brightnessToCounts(self, brightness) -> float:
        return self.val * _python_band_value(brightness, self.band, str(self))

    @staticmethod
    def _jax_counts(spec, vals, br_spec, br_vals):
        return vals[0] * _band_value(br_spec, br_vals, spec.static, f"LinearPhotoCal({spec.static})")


class MagsPhotoCal(ParamList):
    """Counts = 10**(0.4 * (zp - mag[band])): magnitudes with a zero point (the parameter)."""

    @staticmethod
    def getNamedParams():
        return dict(zp=0)

    def __init__(self, band: str, zp: float):
        super().__init__(zp)
        self.band = band
        self.stepsizes = [0.01]

    def __str__(self):
        return "MagsPhotoCal(band=%s, zp=%.3f)" % (self.band, self.zp)

    def _static(self):
        return (self.band,)

    def brightnessToCounts(self, brightness) -> float:
        mag = _python_band_value(brightness, self.band, str(self))
        return 10.0 ** (0.4 * (self.zp - mag))

    @staticmethod
    def _jax_counts(spec, vals, br_spec, br_vals):
        mag = _band_value(br_spec, br_vals, spec.static[0], f"MagsPhotoCal(band={spec.static[0]})")
        return 10.0 ** (0.4 * (vals[0] - mag))


class FluxesPhotoCal(ParamList):
    """Counts = the flux in this image's ``band`` (no parameters)."""

    def __init__(self, band: str):
        super().__init__()
        self.band = band

    def __str__(self):
        return f"FluxesPhotoCal(band={self.band})"

    def _static(self):
        return (self.band,)

    def brightnessToCounts(self, brightness) -> float:
        return _python_band_value(brightness, self.band, str(self))

    @staticmethod
    def _jax_counts(spec, vals, br_spec, br_vals):
        return _band_value(br_spec, br_vals, spec.static[0], f"FluxesPhotoCal(band={spec.static[0]})")

