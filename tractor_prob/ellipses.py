"""Galaxy shapes: ellipses of the half-light isophote, sizes in arcsec.

Conventions (the Tractor's):

- ``re`` is the half-light radius along the *major* axis (arcsec);
- the axis ratio is ``q = b/a``; ``e = (1 - q) / (1 + q)`` (GalSim's reduced shear |g|);
- ``theta = atan2(e2, e1) / 2`` is the major axis' angle from the +East (RA) axis
  towards +North on the sky (from +x towards +y in pixel work with NullWCS);
- GalaxyShape's ``phi`` (degrees) is ``-theta``, as in the Tractor
  (``EllipseE.fromRAbPhi``).

Every shape gives a covariance matrix ``C = re^2 R(theta) diag(1, q^2) R(theta)^T``
(arcsec^2, axes East, North); a profile component of variance ``v`` (in re^2)
becomes the Gaussian ``v * C``.  Shapes are legal when ``re >= 0`` and ``e < 1``
(``q > 0``); an illegal shape gives ``getLogPrior() == -inf``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .params import ParamList

__all__ = ["EllipseE", "EllipseESoft", "GalaxyShape", "LogRadius"]


def _safe_norm(xp, a, b):
    """sqrt(a^2 + b^2) with a zero (not NaN) gradient at the origin."""
    s = a * a + b * b
    pos = s > 0
    return xp.where(pos, xp.sqrt(xp.where(pos, s, 1.0)), 0.0)


def _cov_e(xp, re, e1, e2):
    """Covariance (arcsec^2) from re and (e1, e2); smooth except at e = 0 (a kink of the convention)."""
    e = _safe_norm(xp, e1, e2)
    f = re * re / (1.0 + e) ** 2
    ee = e1 * e1 + e2 * e2
    return xp.stack([xp.stack([f * (1 + ee + 2 * e1), f * 2 * e2]),
                     xp.stack([f * 2 * e2, f * (1 + ee - 2 * e1)])])


def _soft_to_e(xp, ee1, ee2):
    """EllipseESoft's (ee1, ee2) -> (e1, e2): e = 1 - exp(-|ee|), same direction."""
    n = _safe_norm(xp, ee1, ee2)
    # e/|ee| -> 1 as |ee| -> 0
    scale = xp.where(n > 1e-12, -xp.expm1(-n) / xp.where(n > 1e-12, n, 1.0), 1.0 - 0.5 * n)
    return ee1 * scale, ee2 * scale


class _Shape(ParamList):
    """Shared interface: getCovariance(), re/ab/theta accessors, conversions, legality."""

    def getCovariance(self) -> np.ndarray:
        """2x2 covariance of the half-light ellipse (arcsec^2, axes East, North)."""
        return np.asarray(self._cov(np, *self.vals), float)

    @classmethod
    def _jax_cov(cls, spec, vals):
        return cls._cov(jnp, *[vals[i] for i in range(spec.size)])

    @classmethod
    def _jax_legal(cls, spec, vals):
        return cls._legal(jnp, *[vals[i] for i in range(spec.size)])

    def isLegal(self) -> bool:
        return bool(self._legal(np, *self.vals))

    def getLogPrior(self):
        return super().getLogPrior() if self.isLegal() else -np.inf

    def _e1e2(self):
        raise NotImplementedError

    @property
    def e(self) -> float:
        return math.hypot(*self._e1e2())

    @property
    def theta(self) -> float:
        """Major-axis angle from +East towards +North (degrees)."""
        e1, e2 = self._e1e2()
        return math.degrees(0.5 * math.atan2(e2, e1))

    def getRe(self) -> float:
        raise NotImplementedError

    def toEllipseE(self) -> "EllipseE":
        return EllipseE(self.getRe(), *self._e1e2())

    def toEllipseESoft(self) -> "EllipseESoft":
        return EllipseESoft.fromEllipseE(self.toEllipseE())

    def toGalaxyShape(self) -> "GalaxyShape":
        e = self.e
        return GalaxyShape(self.getRe(), (1 - e) / (1 + e), -self.theta)


class EllipseE(_Shape):
    """``EllipseE(re, e1, e2)``: re in arcsec, (e1, e2) reduced-shear ellipticity, |e| < 1."""

    supports = ("positive", "disk", "disk")

    @staticmethod
    def getNamedParams():
        return dict(re=0, e1=1, e2=2)

    def __init__(self, re, e1, e2):
        super().__init__(re, e1, e2)
        self.stepsizes = [0.01, 0.01, 0.01]

    @staticmethod
    def _cov(xp, re, e1, e2):
        return _cov_e(xp, re, e1, e2)

    @staticmethod
    def _legal(xp, re, e1, e2):
        return (re >= 0) & (e1 * e1 + e2 * e2 < 1.0)

    def _e1e2(self):
        return self.e1, self.e2

    def getRe(self):
        return self.re

    @property
    def ab(self) -> float:
        e = self.e
        return (1 - e) / (1 + e)

    @staticmethod
    def fromRAbPhi(re, ab, phi) -> "EllipseE":
        """From radius (arcsec), axis ratio and the Tractor's phi (degrees)."""
        e = (1 - ab) / (1 + ab)
        a = math.radians(-2.0 * phi)
        return EllipseE(re, e * math.cos(a), e * math.sin(a))


class EllipseESoft(_Shape):
    """``EllipseESoft(logre, ee1, ee2)``: re = exp(logre) arcsec, e = 1 - exp(-|ee|) (unbounded)."""

    @staticmethod
    def getNamedParams():
        return dict(logre=0, ee1=1, ee2=2)

    def __init__(self, logre, ee1, ee2):
        super().__init__(logre, ee1, ee2)
        self.stepsizes = [0.01, 0.01, 0.01]

    @staticmethod
    def _cov(xp, logre, ee1, ee2):
        e1, e2 = _soft_to_e(xp, ee1, ee2)
        return _cov_e(xp, xp.exp(logre), e1, e2)

    @staticmethod
    def _legal(xp, logre, ee1, ee2):
        return xp.isfinite(logre) & xp.isfinite(ee1) & xp.isfinite(ee2)

    def _e1e2(self):
        return tuple(float(v) for v in _soft_to_e(np, np.float64(self.ee1), np.float64(self.ee2)))

    def getRe(self):
        return math.exp(self.logre)

    @property
    def re(self) -> float:
        return self.getRe()

    @staticmethod
    def fromEllipseE(ell: EllipseE) -> "EllipseESoft":
        e = math.hypot(ell.e1, ell.e2)
        if ell.re <= 0 or e >= 1:
            raise ValueError(f"EllipseESoft cannot represent {ell} (needs re > 0, e < 1)")
        if e == 0:
            return EllipseESoft(math.log(ell.re), 0.0, 0.0)
        ee = -math.log1p(-e)
        return EllipseESoft(math.log(ell.re), ee * ell.e1 / e, ee * ell.e2 / e)


class GalaxyShape(_Shape):
    """``GalaxyShape(re, ab, phi)``: re in arcsec, axis ratio ab in (0, 1], phi in degrees (= -theta)."""

    supports = ("positive", "positive", "real")

    @staticmethod
    def getNamedParams():
        return dict(re=0, ab=1, phi=2)

    def __init__(self, re, ab, phi):
        super().__init__(re, ab, phi)
        self.stepsizes = [0.01, 0.01, 1.0]

    @staticmethod
    def _cov(xp, re, ab, phi):
        t = -phi * (math.pi / 180.0)
        c, s = xp.cos(t), xp.sin(t)
        a2, b2 = re * re, (re * ab) ** 2
        return xp.stack([xp.stack([a2 * c * c + b2 * s * s, (a2 - b2) * c * s]),
                         xp.stack([(a2 - b2) * c * s, a2 * s * s + b2 * c * c])])

    @staticmethod
    def _legal(xp, re, ab, phi):
        return (re >= 0) & (ab > 0)

    def _e1e2(self):
        e = (1 - self.ab) / (1 + self.ab)
        a = math.radians(-2.0 * self.phi)
        return e * math.cos(a), e * math.sin(a)

    def getRe(self):
        return self.re


class LogRadius(_Shape):
    """A round shape with one parameter, ``logre`` (re = exp(logre) arcsec): the 'REX' model."""

    @staticmethod
    def getNamedParams():
        return dict(logre=0)

    def __init__(self, logre):
        super().__init__(logre)
        self.stepsizes = [0.01]

    @staticmethod
    def _cov(xp, logre):
        r2 = xp.exp(2.0 * logre)
        z = 0.0 * r2
        return xp.stack([xp.stack([r2, z]), xp.stack([z, r2])])

    @staticmethod
    def _legal(xp, logre):
        return xp.isfinite(logre)

    def _e1e2(self):
        return 0.0, 0.0

    def getRe(self):
        return math.exp(self.logre)
