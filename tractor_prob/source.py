"""Sources: what the sky holds.  Each source renders through the one render core.

A source class supplies two pure functions of its flat parameter vector (class
methods, dispatched from its :class:`~tractor_prob.params.Spec`):

- ``_jax_mog(spec, vals, ctx)`` -> (amps (K,), means (K, 2), covs (K, 2, 2)):
  the source in pixel space *before* the PSF, as a mixture of Gaussians
  (zero covariance = a point);
- ``_jax_center(spec, vals, ctx)`` -> (x, y) pixel where its stamp is centred;

and Python methods ``_stamp_counts(image)``, ``_stamp_radius(image, counts, part)``
(pixels, from current values; the brightest source of a kind sets its stamp size),
``_stamp_step(image, counts, part)`` (coarse-grid step, ``psf.mog_step``) and
``_render_parts()`` (which components share a stamp: wide galaxy wings get their own).
``ctx`` (:class:`tractor_prob.scene.ImageContext`) converts positions and
brightnesses with the image's calibrations.  A user-defined source (e.g. a
lensed quasar made of sub-sources) implements the same three and gets model
images, derivatives, fitting and sampling without derivative code.
"""

from __future__ import annotations


import jax.numpy as jnp

from .params import MultiParams
from .psf import INTERP_CHI2, mog_step

__all__ = ["Source", "PointSource", "Catalog"]


class Source(MultiParams):
    """Base class of sources (a MultiParams with a rendering protocol)."""

    #: short label used in derivative patch names: d(<label>)/d(<param>)
    deriv_label = "src"

    def getSourceType(self) -> str:
        return type(self).__name__

    def _stamp_counts(self, image) -> float:
        """Total counts of this source in ``image`` (Python; sizes its stamp)."""
        return image.photocal.brightnessToCounts(self.getBrightness())

    def _stamp_radius(self, image, counts, part=None) -> float:
        """Stamp radius (pixels) in ``image`` when the source has ``counts`` counts;
        ``part``: the components (indices into ``_jax_mog``'s output) to cover."""
        return image.psf.getRadius(counts, image.noise_sigma)

    def _stamp_step(self, image, counts, part=None, chi2_frac=1.0) -> int:
        """Coarse-grid step (``psf.mog_step``) of this source's ``part`` in ``image`` with
        ``counts`` counts, for an interpolation chi^2 budget of ``chi2_frac`` INTERP_CHI2."""
        a, _, c = image.psf.getMixtureOfGaussians()
        return mog_step(a, c, counts, image.noise_sigma, chi2_frac * INTERP_CHI2)

    @classmethod
    def _unit_mogs(cls, image, srcs, part=None, cache=None):
        """PSF-convolved profiles of ``part`` of the sources ``srcs`` (this class) in
        ``image``, for sizing their render unit at once: (flux fractions (n, K), means
        (n, K, 2), covariances (n, K, 2, 2)) in pixels, n <= len(srcs) distinct profiles;
        or None (then ``_stamp_radius`` / ``_stamp_step`` are asked source by source).
        The radius and step must be those of ``psf.mog_radius`` / ``psf.mog_step``.
        ``cache``: a dict the caller keeps for one sizing pass (optional use)."""
        return None

    def _render_parts(self):
        """Components rendered into separate stamps: a tuple of index tuples into
        ``_jax_mog``'s components, or None for one stamp holding all of them."""
        return None

    @staticmethod
    def _jax_center(spec, vals, ctx):
        raise NotImplementedError

    @staticmethod
    def _jax_mog(spec, vals, ctx):
        raise NotImplementedError


class PointSource(Source):
    """A point source: ``PointSource(pos, brightness)``; its image is the PSF."""

    deriv_label = "ptsrc"

    @staticmethod
    def getNamedParams():
        return dict(pos=0, brightness=1)

    def __init__(self, pos, brightness):
        super().__init__(pos, brightness)

    def __str__(self):
        return f"{type(self).__name__} at {self.pos} with {self.brightness}"

    def __repr__(self):
        return f"{type(self).__name__}({self.pos!r}, {self.brightness!r})"

    def getPosition(self):
        return self.pos

    def setPosition(self, pos):
        self.pos = pos

    def getBrightness(self):
        return self.brightness

    def setBrightness(self, brightness):
        self.brightness = brightness

    def getBrightnesses(self):
        return [self.brightness]

    @classmethod
    def _unit_mogs(cls, image, srcs, part=None, cache=None):
        a, m, c = image.psf.getMixtureOfGaussians()  # the same for every point source
        return a[None], m[None], c[None]

    @staticmethod
    def _jax_center(spec, vals, ctx):
        pos_spec, _ = spec.children
        pv, _ = spec.split(vals)
        return ctx.pixel(pos_spec, pv)

    @staticmethod
    def _jax_mog(spec, vals, ctx):
        pos_spec, br_spec = spec.children
        pv, bv = spec.split(vals)
        x, y = ctx.pixel(pos_spec, pv)
        counts = ctx.counts(br_spec, bv)
        return (jnp.reshape(counts, (1,)), jnp.stack([x, y]).reshape(1, 2),
                jnp.zeros((1, 2, 2), pv.dtype))


class Catalog(MultiParams):
    """The list of sources of a Tractor; parameters are named ``source<i>``."""

    def __init__(self, *sources):
        super().__init__(*sources)

    def getNamedParamName(self, i):
        return f"source{i}"

    def __str__(self):
        return f"Catalog: {len(self.subs)} sources, {self.numberOfParams()} parameters"

    def getSources(self):
        return list(self.subs)


