"""Astrometric calibrations (WCS): source positions -> pixel coordinates.

- :class:`NullWCS`: positions are pixel coordinates (:class:`PixPos`);
  ``pixscale`` (arcsec/pixel) converts galaxy sizes.
- :class:`Tan`: a FITS TAN (gnomonic) WCS description, constructed as in
  astrometry.net: ``Tan(crval1, crval2, crpix1, crpix2, cd11, cd12, cd21, cd22, W, H)``,
  or from an astropy ``WCS``, a FITS header or a FITS file name.
- :class:`FitsWcs`: the TAN WCS as fittable parameters (CRVAL thawed; CRPIX and
  CD frozen by default, since CRVAL and CRPIX are degenerate).
- :class:`ConstantFitsWcs`: the same with no parameters.

Pixel (0, 0) is the centre of the first pixel (FITS pixel 1, 1).  The TAN maths
is JAX (``tractor_prob.render.tan``), so positions and astrometry are
differentiable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .params import ParamList
from .positions import PixPos, RaDecPos
from .render import tan

__all__ = ["NullWCS", "Tan", "FitsWcs", "ConstantFitsWcs"]


def _needs_pixpos(wcs_name, pos_spec):
    if not issubclass(pos_spec.cls, PixPos):
        raise TypeError(
            f"{wcs_name} works with PixPos positions, not {pos_spec.cls.__name__}: "
            "use a celestial WCS (FitsWcs) for RaDecPos"
        )


class NullWCS(ParamList):
    """Identity WCS: positions are pixel coordinates.  ``pixscale`` in arcsec/pixel."""

    def __init__(self, pixscale: float = 1.0, dx: float = 0.0, dy: float = 0.0):
        super().__init__()
        if not pixscale > 0:
            raise ValueError(f"NullWCS: pixscale must be > 0 arcsec/pixel, got {pixscale}")
        self.pixscale = float(pixscale)
        self.dx = float(dx)
        self.dy = float(dy)

    def __str__(self):
        return f"NullWCS(pixscale={self.pixscale:g})"

    def _static(self):
        return (self.pixscale, self.dx, self.dy)

    def positionToPixel(self, pos, src=None):
        _needs_pixpos("NullWCS", pos._collect([], [], True))
        return pos.x + self.dx, pos.y + self.dy

    def pixelToPosition(self, x, y, src=None):
        return PixPos(x - self.dx, y - self.dy)

    def pixel_scale(self) -> float:
        """Pixel scale in arcsec/pixel."""
        return self.pixscale

    @staticmethod
    def _jax_pixel(spec, vals, pos_spec, pos_vals):
        _needs_pixpos("NullWCS", pos_spec)
        _, dx, dy = spec.static
        return pos_vals[0] + dx, pos_vals[1] + dy

    def pixelsPerArcsec(self) -> np.ndarray:
        """2x2 matrix: (East, North) offsets in arcsec -> (dx, dy) pixels (East = +x)."""
        return np.eye(2) / self.pixscale

    @staticmethod
    def _jax_local_cd(spec, vals, pos_spec, pos_vals):
        return jnp.eye(2, dtype=pos_vals.dtype) / spec.static[0]


class Tan:
    """A TAN WCS description (no parameters; wrap it in FitsWcs to fit it).

    ``Tan(crval1, crval2, crpix1, crpix2, cd11, cd12, cd21, cd22, W, H)`` with CRVAL
    in degrees, CRPIX 1-indexed (FITS), CD in degrees/pixel; or ``Tan(hdr_or_wcs_or_filename)``;
    or ``Tan()`` followed by ``set_crval``, ``set_crpix``, ``set_cd``, ``set_imagesize``.
    """

    def __init__(self, *args):
        self.crval = [0.0, 0.0]
        self.crpix = [0.0, 0.0]
        self.cd = [1.0, 0.0, 0.0, 1.0]
        self.imagew = 0.0
        self.imageh = 0.0
        if len(args) == 10:
            self.set_crval(*args[0:2])
            self.set_crpix(*args[2:4])
            self.set_cd(*args[4:8])
            self.set_imagesize(*args[8:10])
        elif len(args) == 1:
            self._from_astropy(args[0])
        elif args:
            raise TypeError("Tan() takes 0, 1 (header/WCS/filename) or 10 arguments")

    def _from_astropy(self, obj):
        from astropy.io import fits
        from astropy.wcs import WCS

        if isinstance(obj, str):
            with fits.open(obj) as hdul:
                obj = hdul[0].header
        if isinstance(obj, fits.Header):
            raw = [str(obj.get("CTYPE1", "")).upper(), str(obj.get("CTYPE2", "")).upper()]
            if any(c[4:8] in ("-TPV", "-SIP", "-TNX", "-ZPN") or c.endswith("-SIP") for c in raw):
                raise ValueError(f"Tan: distortion terms (CTYPE {raw}) are not supported; "
                                 "only pure TAN")
        w = obj if isinstance(obj, WCS) else WCS(obj)
        ctype = [c.upper() for c in w.wcs.ctype]
        if not (ctype[0].startswith("RA---TAN") and ctype[1].startswith("DEC--TAN")):
            raise ValueError(f"Tan: expected a RA---TAN/DEC--TAN WCS, got CTYPE {ctype}")
        distorted = (ctype[0] != "RA---TAN" or w.sip is not None or w.cpdis1 is not None
                     or w.cpdis2 is not None or w.det2im1 is not None or w.det2im2 is not None
                     or len(w.wcs.get_pv()) > 0)
        if distorted:
            raise ValueError(
                f"Tan: distortion terms ({ctype[0]}, SIP/TPV/lookup tables) are not supported; "
                "only pure TAN"
            )
        self.set_crval(*w.wcs.crval)
        self.set_crpix(*w.wcs.crpix)
        cd = w.wcs.cd if w.wcs.has_cd() else w.wcs.get_pc() * np.asarray(w.wcs.cdelt)[:, None]
        self.set_cd(*np.asarray(cd, float).ravel())
        if w.pixel_shape is not None:
            self.set_imagesize(*w.pixel_shape)

    def set_crval(self, ra, dec):
        self.crval = [float(ra), float(dec)]

    def set_crpix(self, x, y):
        self.crpix = [float(x), float(y)]

    def set_cd(self, cd11, cd12, cd21, cd22):
        cd = [float(cd11), float(cd12), float(cd21), float(cd22)]
        if cd[0] * cd[3] - cd[1] * cd[2] == 0:
            raise ValueError(f"Tan: CD matrix {cd} is singular")
        self.cd = cd

    def set_imagesize(self, w, h):
        self.imagew = float(w)
        self.imageh = float(h)

    def get_crval(self):
        return tuple(self.crval)

    def get_crpix(self):
        return tuple(self.crpix)

    def get_cd(self):
        return tuple(self.cd)

    def get_width(self):
        return self.imagew

    def get_height(self):
        return self.imageh

    def pixel_scale(self) -> float:
        """Pixel scale in arcsec/pixel (sqrt |det CD|)."""
        a, b, c, d = self.cd
        return 3600.0 * math.sqrt(abs(a * d - b * c))

    def radec2pixelxy(self, ra, dec):
        """(ok, x, y) with FITS 1-indexed pixel coordinates, as astrometry.net's Tan."""
        x, y = tan.radec_to_pixel(ra, dec, np.array(self.crval), np.array(self.crpix),
                                  np.array(self.cd).reshape(2, 2))
        return True, float(x) + 1.0, float(y) + 1.0

    def pixelxy2radec(self, x, y):
        """(ra, dec) in degrees of FITS 1-indexed pixel (x, y)."""
        r, d = tan.pixel_to_radec(x - 1.0, y - 1.0, np.array(self.crval), np.array(self.crpix),
                                  np.array(self.cd).reshape(2, 2))
        return float(r), float(d)

    def __str__(self):
        return "TAN: crpix (%.1f, %.1f), crval (%g, %g), cd (%g, %g, %g, %g), image %g x %g" % (
            *self.crpix, *self.crval, *self.cd, self.imagew, self.imageh)


class FitsWcs(ParamList):
    """A TAN WCS as parameters: crval1, crval2 (deg), crpix1, crpix2 (FITS pixels), cd1_1..cd2_2 (deg/pixel).

    ``FitsWcs(Tan(...))``, ``FitsWcs(astropy_wcs)``, ``FitsWcs(header)``.  ``x0, y0``
    offset a cutout: pixel (0, 0) of the image is pixel (x0, y0) of the WCS.
    Only CRVAL is thawed by default.
    """

    @staticmethod
    def getNamedParams():
        return dict(crval1=0, crval2=1, crpix1=2, crpix2=3, cd1_1=4, cd1_2=5, cd2_1=6, cd2_2=7)

    def __init__(self, wcs, x0: float = 0.0, y0: float = 0.0):
        if not isinstance(wcs, Tan):
            wcs = Tan(wcs)
        super().__init__(*wcs.crval, *wcs.crpix, *wcs.cd)
        self.x0 = float(x0)
        self.y0 = float(y0)
        self.imagew = wcs.imagew
        self.imageh = wcs.imageh
        self.stepsizes = [1e-6, 1e-6, 0.1, 0.1, 1e-8, 1e-8, 1e-8, 1e-8]
        self.freezeParams("crpix1", "crpix2", "cd1_1", "cd1_2", "cd2_1", "cd2_2")

    @property
    def wcs(self) -> Tan:
        return Tan(*self.vals, self.imagew, self.imageh)

    def __str__(self):
        return "%s: x0,y0 %.3f,%.3f, WCS %s" % (type(self).__name__, self.x0, self.y0, self.wcs)

    def setX0Y0(self, x0, y0):
        self.x0 = float(x0)
        self.y0 = float(y0)

    def _static(self):
        return (self.x0, self.y0)

    def cdInverse(self):
        return np.linalg.inv(np.array(self.vals[4:8]).reshape(2, 2))

    def pixel_scale(self) -> float:
        """Pixel scale in arcsec/pixel."""
        return self.wcs.pixel_scale()

    def positionToPixel(self, pos, src=None):
        """Pixel (x, y), 0-indexed, of a RaDecPos (or a PixPos, passed through)."""
        spec = pos._collect([], [], True)
        x, y = self._jax_pixel(self._collect([], [], True), np.array(self.vals), spec,
                               np.array(pos.getAllParams()))
        return float(x), float(y)

    def pixelToPosition(self, x, y, src=None):
        v = np.array(self.vals)
        r, d = tan.pixel_to_radec(x + self.x0, y + self.y0, v[0:2], v[2:4], v[4:8].reshape(2, 2))
        return RaDecPos(float(r), float(d))

    def pixelsPerArcsec(self) -> np.ndarray:
        """2x2 matrix at the reference point: (East, North) arcsec -> (dx, dy) pixels."""
        return self.cdInverse() / 3600.0

    @staticmethod
    def _jax_local_cd(spec, vals, pos_spec, pos_vals):
        """Local (East, North) arcsec -> pixel Jacobian at the position (exact TAN derivative)."""
        cd = vals[4:8].reshape(2, 2)
        if not issubclass(pos_spec.cls, RaDecPos):
            return tan.cd_inverse(cd) / 3600.0
        J = jnp.stack(jax.jacfwd(
            lambda rd: jnp.stack(tan.radec_to_pixel(rd[0], rd[1], vals[0:2], vals[2:4], cd))
        )(pos_vals[:2]))
        cosd = jnp.cos(jnp.deg2rad(pos_vals[1]))
        return J * jnp.stack([1.0 / (3600.0 * cosd), 1.0 / 3600.0])[None, :]

    @staticmethod
    def _jax_pixel(spec, vals, pos_spec, pos_vals):
        x0, y0 = spec.static
        if issubclass(pos_spec.cls, PixPos):
            return pos_vals[0], pos_vals[1]
        if not issubclass(pos_spec.cls, RaDecPos):
            raise TypeError(f"FitsWcs cannot place a {pos_spec.cls.__name__} position")
        x, y = tan.radec_to_pixel(pos_vals[0], pos_vals[1], vals[0:2], vals[2:4],
                                  vals[4:8].reshape(2, 2))
        return x - x0, y - y0


class ConstantFitsWcs(FitsWcs):
    """A FitsWcs whose parameters are all frozen."""

    def __init__(self, wcs, x0: float = 0.0, y0: float = 0.0):
        super().__init__(wcs, x0, y0)
        self.freezeAllParams()
