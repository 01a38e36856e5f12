"""Galaxies: exponential, de Vaucouleurs, composites, and the round exponential (REX).

A galaxy's profile is a mixture of circular Gaussians in units of its
half-light radius (``tractor_prob.profiles``, fitted in ``models/``), sheared
by its shape's covariance (arcsec^2, ``tractor_prob.ellipses``) and mapped to
pixels by the image's WCS at the galaxy's position.  MoG x MoG PSF convolution
is analytic, so galaxies render through the same stamps as point sources.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from . import profiles
from .ellipses import EllipseE, EllipseESoft, GalaxyShape, LogRadius
from .params import ScalarParam
from .psf import INTERP_CHI2, mog_radius, mog_step
from .source import Source

__all__ = [
    "Galaxy", "ExpGalaxy", "DevGalaxy", "RexGalaxy", "CompositeGalaxy", "FixedCompositeGalaxy",
    "FracDev", "EllipseE", "EllipseESoft", "GalaxyShape", "LogRadius",
]


def _component(ctx, pos_spec, pv, shape_spec, sv, counts, amps, vars):
    """Pixel-space MoG (before the PSF) of one profile: (amps, means, covs)."""
    x, y = ctx.pixel(pos_spec, pv)
    M = ctx.local_cd(pos_spec, pv)  # arcsec -> pixels
    C = shape_spec.cls._jax_cov(shape_spec, sv)
    Cp = M @ C @ M.T
    K = amps.shape[0]
    means = jnp.broadcast_to(jnp.stack([x, y]), (K, 2))
    return counts * amps, means, vars[:, None, None] * Cp


#: profile components wider than WING_SIGMA half-light radii render in a separate,
#: larger stamp ("wing" part) so that the many narrow components are evaluated
#: on a small stamp only
WING_SIGMA = 3.0


@functools.lru_cache(maxsize=4096)
def _numpy_sersic(n: float):
    return profiles.sersic_mog_numpy(n)


def _split_parts(sigmas_re):
    """(core indices, wing indices) of components by width in re; one part if no split."""
    sig = np.asarray(sigmas_re)
    core = tuple(int(i) for i in np.flatnonzero(sig <= WING_SIGMA))
    wing = tuple(int(i) for i in np.flatnonzero(sig > WING_SIGMA))
    return (core, wing) if core and wing else (tuple(range(len(sig))),)


def _pixel_mog(image, components, part=None, psf_mix=None, M=None):
    """Flux fractions (K*P,) and covariances (K*P, 2, 2) (pixels) of a galaxy's profile
    components convolved with the PSF.

    ``components``: list of (flux fraction, (amps, vars), shape) per profile;
    ``part``: indices of the concatenated components to include (default all);
    ``psf_mix``, ``M``: the PSF's getMixtureOfGaussians() and the WCS's pixelsPerArcsec()
    if already at hand.
    """
    if M is None:
        M = image.wcs.pixelsPerArcsec()
    amps, covs = [], []
    for frac, (a, v), shape in components:
        Cp = M @ shape.getCovariance() @ M.T
        amps.append(frac * np.asarray(a))
        covs.append(np.asarray(v)[:, None, None] * Cp)
    amps = np.concatenate(amps)
    covs = np.concatenate(covs)
    if part is not None:
        amps, covs = amps[list(part)], covs[list(part)]
    pa, pm, pc = image.psf.getMixtureOfGaussians() if psf_mix is None else psf_mix
    A = (amps[:, None] * pa[None, :]).ravel()
    C = (covs[:, None] + pc[None, :]).reshape(-1, 2, 2)
    return A, C


def _radius(image, counts, components, part=None):
    """Stamp radius (pixels) of a galaxy: its profile components x the PSF (see _pixel_mog)."""
    A, C = _pixel_mog(image, components, part)
    r = mog_radius(A, np.zeros((len(A), 2)), C, counts, image.noise_sigma)
    return min(r, float(max(image.shape)))


def _step(image, counts, components, part=None, chi2_frac=1.0):
    """Coarse-grid step of a galaxy's render unit (psf.mog_step; see _pixel_mog)."""
    A, C = _pixel_mog(image, components, part)
    return mog_step(A, C, counts, image.noise_sigma, chi2_frac * INTERP_CHI2)


def _unit_mogs(image, srcs, part, cache=None):
    """Stacked _pixel_mog of several galaxies: (amps (n, K), means (n, K, 2), covs (n, K, 2, 2)).

    ``cache``: a dict kept by the caller for one sizing pass; the profiles of all components
    are built once and the parts sliced from them."""
    psf_mix = image.psf.getMixtureOfGaussians()
    key = (id(image), tuple(id(s) for s in srcs))
    full = None if cache is None else cache.get(key)
    if full is None:
        M = image.wcs.pixelsPerArcsec()
        A, C = zip(*(_pixel_mog(image, s._image_components(image), None, psf_mix, M)
                     for s in srcs))
        full = (np.stack(A), np.stack(C))
        if cache is not None:
            cache[key] = full
    A, C = full
    if part is not None:
        P = len(psf_mix[0])  # convolved component k * P + j: profile component k, PSF j
        idx = (np.asarray(part)[:, None] * P + np.arange(P)[None, :]).ravel()
        A, C = A[:, idx], C[:, idx]
    return A, np.zeros(A.shape + (2,)), C


class Galaxy(Source):
    """A one-component galaxy: ``Cls(pos, brightness, shape)``; subclasses choose the profile."""

    deriv_label = "gal"

    @staticmethod
    def getNamedParams():
        return dict(pos=0, brightness=1, shape=2)

    def __init__(self, pos, brightness, shape):
        super().__init__(pos, brightness, shape)

    def __str__(self):
        return f"{type(self).__name__} at {self.pos} with {self.brightness} and {self.shape}"

    def __repr__(self):
        return f"{type(self).__name__}({self.pos!r}, {self.brightness!r}, {self.shape!r})"

    def getPosition(self):
        return self.pos

    def getBrightness(self):
        return self.brightness

    def getShape(self):
        return self.shape

    # profile: (amps (K,), vars (K,)) in units of re^2, unit flux
    @classmethod
    def _profile(cls, spec, vals):
        raise NotImplementedError

    def _numpy_profile(self):
        """(amps, vars) of the profile at the current values (numpy)."""
        spec = self._collect([], [], True)
        return tuple(np.asarray(a) for a in self._profile(spec, jnp.asarray(self.getAllParams())))

    def _components(self):
        return [(1.0, self._numpy_profile(), self.shape)]

    def _image_components(self, image):
        return self._components()

    @classmethod
    def _unit_mogs(cls, image, srcs, part=None, cache=None):
        return _unit_mogs(image, srcs, part, cache)

    def _render_parts(self):
        return _split_parts(np.sqrt(self._numpy_profile()[1]))

    @staticmethod
    def _jax_center(spec, vals, ctx):
        pv = spec.split(vals)[0]
        return ctx.pixel(spec.children[0], pv)

    @classmethod
    def _jax_mog(cls, spec, vals, ctx):
        pos_spec, br_spec, shape_spec = spec.children[:3]
        pv, bv, sv = spec.split(vals)[:3]
        amps, vars = cls._profile(spec, vals)
        return _component(ctx, pos_spec, pv, shape_spec, sv, ctx.counts(br_spec, bv), amps, vars)

    def _stamp_radius(self, image, counts, part=None):
        return _radius(image, counts, self._components(), part)

    def _stamp_step(self, image, counts, part=None, chi2_frac=1.0):
        return _step(image, counts, self._components(), part, chi2_frac)


class ExpGalaxy(Galaxy):
    """Exponential-profile galaxy (Sersic n = 1)."""

    @classmethod
    def _profile(cls, spec, vals):
        return profiles.exp_mog()

    def _numpy_profile(self):
        return _EXP


_EXP = tuple(np.asarray(a) for a in profiles.exp_mog())
_DEV = tuple(np.asarray(a) for a in profiles.dev_mog())


class DevGalaxy(Galaxy):
    """de Vaucouleurs-profile galaxy (Sersic n = 4)."""

    @classmethod
    def _profile(cls, spec, vals):
        return profiles.dev_mog()

    def _numpy_profile(self):
        return _DEV


class RexGalaxy(ExpGalaxy):
    """Round exponential galaxy: ``RexGalaxy(pos, brightness, LogRadius(logre))`` (or any round shape)."""

    def __init__(self, pos, brightness, shape):
        if isinstance(shape, (int, float)):
            shape = LogRadius(shape)
        super().__init__(pos, brightness, shape)


class FracDev(ScalarParam):
    """Fraction of a FixedCompositeGalaxy's flux in its deV component, in [0, 1]."""

    stepsize = 0.01
    support = ("interval", 0.0, 1.0)

    def isLegal(self):
        return 0.0 <= self.val <= 1.0

    def getLogPrior(self):
        return super().getLogPrior() if self.isLegal() else -np.inf

    @staticmethod
    def _jax_legal(spec, vals):
        return (vals[0] >= 0.0) & (vals[0] <= 1.0)

    def clipped(self) -> float:
        return min(max(self.val, 0.0), 1.0)


class CompositeGalaxy(Source):
    """deV + exp galaxy with separate brightnesses and shapes:
    ``CompositeGalaxy(pos, brightnessExp, shapeExp, brightnessDev, shapeDev)``."""

    deriv_label = "comp"

    @staticmethod
    def getNamedParams():
        return dict(pos=0, brightnessExp=1, shapeExp=2, brightnessDev=3, shapeDev=4)

    def __init__(self, pos, brightnessExp, shapeExp, brightnessDev, shapeDev):
        super().__init__(pos, brightnessExp, shapeExp, brightnessDev, shapeDev)

    def __str__(self):
        return (f"CompositeGalaxy at {self.pos} with Exp {self.brightnessExp} {self.shapeExp} "
                f"and deV {self.brightnessDev} {self.shapeDev}")

    def getPosition(self):
        return self.pos

    def getBrightnesses(self):
        return [self.brightnessExp, self.brightnessDev]

    def _stamp_counts(self, image):
        pc = image.photocal
        return pc.brightnessToCounts(self.brightnessExp) + pc.brightnessToCounts(self.brightnessDev)

    @classmethod
    def _unit_mogs(cls, image, srcs, part=None, cache=None):
        return _unit_mogs(image, srcs, part, cache)

    def _image_components(self, image):
        pc = image.photocal
        ce, cd = pc.brightnessToCounts(self.brightnessExp), pc.brightnessToCounts(self.brightnessDev)
        tot = abs(ce) + abs(cd) or 1.0
        return [(abs(ce) / tot, _EXP, self.shapeExp), (abs(cd) / tot, _DEV, self.shapeDev)]

    def _stamp_radius(self, image, counts, part=None):
        return _radius(image, counts, self._image_components(image), part)

    def _stamp_step(self, image, counts, part=None, chi2_frac=1.0):
        return _step(image, counts, self._image_components(image), part, chi2_frac)

    def _render_parts(self):
        return _split_parts(np.sqrt(np.concatenate([_EXP[1], _DEV[1]])))

    @staticmethod
    def _jax_center(spec, vals, ctx):
        return ctx.pixel(spec.children[0], spec.split(vals)[0])

    @staticmethod
    def _jax_mog(spec, vals, ctx):
        ps, bes, ses, bds, sds = spec.children
        pv, bev, sev, bdv, sdv = spec.split(vals)
        e = _component(ctx, ps, pv, ses, sev, ctx.counts(bes, bev), *profiles.exp_mog())
        d = _component(ctx, ps, pv, sds, sdv, ctx.counts(bds, bdv), *profiles.dev_mog())
        return tuple(jnp.concatenate([a, b]) for a, b in zip(e, d))


class FixedCompositeGalaxy(Source):
    """deV + exp galaxy with one brightness split by ``fracDev``:
    ``FixedCompositeGalaxy(pos, brightness, fracDev, shapeExp, shapeDev)``."""

    deriv_label = "fcomp"

    @staticmethod
    def getNamedParams():
        return dict(pos=0, brightness=1, fracDev=2, shapeExp=3, shapeDev=4)

    def __init__(self, pos, brightness, fracDev, shapeExp, shapeDev):
        if not isinstance(fracDev, FracDev):
            fracDev = FracDev(fracDev)
        super().__init__(pos, brightness, fracDev, shapeExp, shapeDev)

    def __str__(self):
        return (f"FixedCompositeGalaxy at {self.pos} with {self.brightness}, fracDev "
                f"{self.fracDev.val:g}, Exp {self.shapeExp}, deV {self.shapeDev}")

    def getPosition(self):
        return self.pos

    def getBrightness(self):
        return self.brightness

    @classmethod
    def _unit_mogs(cls, image, srcs, part=None, cache=None):
        return _unit_mogs(image, srcs, part, cache)

    def _image_components(self, image):
        f = self.fracDev.clipped()
        return [(1 - f, _EXP, self.shapeExp), (f, _DEV, self.shapeDev)]

    def _stamp_radius(self, image, counts, part=None):
        return _radius(image, counts, self._image_components(image), part)

    def _stamp_step(self, image, counts, part=None, chi2_frac=1.0):
        return _step(image, counts, self._image_components(image), part, chi2_frac)

    def _render_parts(self):
        return _split_parts(np.sqrt(np.concatenate([_EXP[1], _DEV[1]])))

    @staticmethod
    def _jax_center(spec, vals, ctx):
        return ctx.pixel(spec.children[0], spec.split(vals)[0])

    @staticmethod
    def _jax_mog(spec, vals, ctx):
        ps, bs, fs, ses, sds = spec.children
        pv, bv, fv, sev, sdv = spec.split(vals)
        counts = ctx.counts(bs, bv)
        f = jnp.clip(fv[0], 0.0, 1.0)
        e = _component(ctx, ps, pv, ses, sev, counts * (1 - f), *profiles.exp_mog())
        d = _component(ctx, ps, pv, sds, sdv, counts * f, *profiles.dev_mog())
        return tuple(jnp.concatenate([a, b]) for a, b in zip(e, d))
