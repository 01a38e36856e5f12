"""compile(): the seam between the object layer and the pure render core.

``compile_tractor`` walks a Tractor's images and catalog once and returns

- a :class:`Plan`: hashable static structure (each image's calibration specs,
  shape and stamp radii; sources grouped by kind with the indices of their
  parameters in theta);
- ``theta``: every parameter value (frozen included) as one float64 vector;
- ``thawed``: a boolean mask over theta;
- ``priors``: Gaussian priors as (theta index, mu, sigma) rows.

:class:`Compiled` holds the jitted functions of one plan.  Changing parameter
*values* only changes theta, so nothing retraces; changing structure (a new
source kind, an image shape, a stamp radius) makes a new plan.

Theta layout: image parameters first (image 0 psf, wcs, photocal, sky; image
1 ...), then sources in catalog order; within each object the order of
``getAllParams()``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .params import Spec
from .render import mog

__all__ = ["Plan", "Compiled", "compile_tractor", "get_compiled", "ImageContext"]


class ImageContext:
    """An image's calibrations bound to (possibly traced) parameter values.

    Handed to source rendering functions: ``pixel(pos_spec, pos_vals)`` ->
    (x, y) pixels; ``counts(br_spec, br_vals)`` -> counts; ``psf_mog()``.
    """

    def __init__(self, spec: Spec, vals):
        self.psf_spec, self.wcs_spec, self.pc_spec, self.sky_spec = spec.children
        self.psf_vals, self.wcs_vals, self.pc_vals, self.sky_vals = spec.split(vals)

    def pixel(self, pos_spec, pos_vals):
        return self.wcs_spec.cls._jax_pixel(self.wcs_spec, self.wcs_vals, pos_spec, pos_vals)

    def counts(self, br_spec, br_vals):
        return self.pc_spec.cls._jax_counts(self.pc_spec, self.pc_vals, br_spec, br_vals)

    def local_cd(self, pos_spec, pos_vals):
        """2x2 (East, North) arcsec -> pixel Jacobian at a position."""
        return self.wcs_spec.cls._jax_local_cd(self.wcs_spec, self.wcs_vals, pos_spec, pos_vals)

    def psf_mog(self):
        return self.psf_spec.cls._jax_mog(self.psf_spec, self.psf_vals)

    def sky(self):
        return self.sky_spec.cls._jax_sky(self.sky_spec, self.sky_vals)


def spec_legal(spec: Spec, vals):
    """True where every object in the tree is in its legal domain (``_jax_legal`` hooks)."""
    hook = getattr(spec.cls, "_jax_legal", None)
    ok = jnp.asarray(True) if hook is None else jnp.asarray(hook(spec, vals))
    for child, v in zip(spec.children, spec.split(vals)):
        ok = ok & spec_legal(child, v)
    return ok


class ImagePlan(NamedTuple):
    spec: Spec
    offset: int  # index of the image's first parameter in theta
    shape: tuple  # (H, W)
    radii: tuple  # stamp radius (pixels) of each source group in this image
    pad: int  # max radius: margin of the padded canvas


class GroupPlan(NamedTuple):
    spec: Spec  # common spec of the sources in the group
    members: tuple  # catalog indices
    idx: tuple  # (n, k) theta indices of each member's parameters


class Plan(NamedTuple):
    n_theta: int
    n_src: int
    images: tuple
    groups: tuple


def _quantize_radius(r: float) -> int:
    # round up to a multiple of 4 pixels so that small changes in PSF width or
    # galaxy size while fitting do not change the plan (and retrace)
    return max(4, 4 * math.ceil(r / 4.0))


def compile_tractor(tractor):
    """Walk ``tractor`` once: (plan, theta, thawed mask, prior rows)."""
    values: list = []
    thawed: list = []
    priors: list = []
    images = tractor.images
    catalog = tractor.catalog
    img_thawed = tractor._thawed[0]
    cat_thawed = tractor._thawed[1]

    img_specs = []
    for i, img in enumerate(images.subs):
        off = len(values)
        spec = img._collect(values, thawed, img_thawed and images._thawed[i], priors)
        img_specs.append((spec, off, img))

    groups: dict = {}
    for j, src in enumerate(catalog.subs):
        off = len(values)
        spec = src._collect(values, thawed, cat_thawed and catalog._thawed[j], priors)
        g = groups.setdefault(spec, ([], []))
        g[0].append(j)
        g[1].append(tuple(range(off, off + spec.size)))

    group_plans = tuple(GroupPlan(spec, tuple(m), tuple(idx)) for spec, (m, idx) in groups.items())
    image_plans = []
    for spec, off, img in img_specs:
        radii = []
        for gp in group_plans:
            srcs = [catalog.subs[j] for j in gp.members]
            counts = max(abs(s._stamp_counts(img)) for s in srcs)
            r = max(s._stamp_radius(img, counts) for s in srcs)
            radii.append(_quantize_radius(r))
        image_plans.append(
            ImagePlan(spec, off, img.shape, tuple(radii), max(radii) if radii else 0)
        )
    plan = Plan(len(values), len(catalog.subs), tuple(image_plans), group_plans)

    theta = np.array(values, dtype=np.float64)
    return plan, theta, np.array(thawed, dtype=bool), priors


_CACHE: dict = {}


def get_compiled(plan: Plan) -> "Compiled":
    c = _CACHE.get(plan)
    if c is None:
        if len(_CACHE) > 64:
            _CACHE.clear()
        c = _CACHE[plan] = Compiled(plan)
    return c


class Compiled:
    """The jitted render functions of one :class:`Plan`.

    All take ``theta`` (n_theta,) float64; images are returned as a tuple in
    the Tractor's image order.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.render = jax.jit(self._render)
        self.loglik = jax.jit(self._loglik)
        self.chis = jax.jit(self._chis)
        self.origins = jax.jit(self._origins)

    # --- building blocks (traced) ---
    def image_context(self, i, theta) -> ImageContext:
        ip = self.plan.images[i]
        return ImageContext(ip.spec, theta[ip.offset : ip.offset + ip.spec.size])

    def group_values(self, g, theta):
        return theta[np.asarray(self.plan.groups[g].idx, dtype=np.int32)]

    def source_mog(self, i, g, theta):
        """Batched pixel-space MoGs (before PSF) and centres of group g in image i."""
        gs = self.plan.groups[g].spec
        ctx = self.image_context(i, theta)

        def one(v):
            amps, means, covs = gs.cls._jax_mog(gs, v, ctx)
            cx, cy = gs.cls._jax_center(gs, v, ctx)
            return amps, means, covs, cx, cy

        return jax.vmap(one)(self.group_values(g, theta))

    def stamp_fn(self, i, g):
        """f(v (k,), image_vals, ox, oy) -> stamp (S, S) for one source of group g in image i."""
        ip = self.plan.images[i]
        gs = self.plan.groups[g].spec
        S = 2 * ip.radii[g] + 1

        def f(v, img_vals, ox, oy):
            ctx = ImageContext(ip.spec, img_vals)
            amps, means, covs = gs.cls._jax_mog(gs, v, ctx)
            A, M, C = mog.convolve(amps, means, covs, *ctx.psf_mog())
            return mog.eval_stamp(A, M, C, ox, oy, S)

        return f

    def group_origins(self, i, g, theta):
        ip = self.plan.images[i]
        _, _, _, cx, cy = self.source_mog(i, g, theta)
        ox, oy = mog.stamp_origin(cx, cy, ip.radii[g], *ip.shape)
        return ox, oy, cx, cy

    def group_stamps(self, i, g, theta):
        """(stamps (n, S, S), ox (n,), oy (n,)) of group g in image i."""
        ip = self.plan.images[i]
        amps, means, covs, cx, cy = self.source_mog(i, g, theta)
        ox, oy = mog.stamp_origin(cx, cy, ip.radii[g], *ip.shape)
        A, M, C = mog.convolve(amps, means, covs, *self.image_context(i, theta).psf_mog())
        S = 2 * ip.radii[g] + 1
        stamps = jax.vmap(mog.eval_stamp, (0, 0, 0, 0, 0, None))(A, M, C, ox, oy, S)
        return stamps, ox, oy

    def model_image(self, i, theta, src_on=None, sky_on=1.0):
        """Model image i (H, W); ``src_on`` (n_src,) and ``sky_on`` scale sources and sky."""
        ip = self.plan.images[i]
        model = jnp.zeros(ip.shape, theta.dtype)
        for g, gp in enumerate(self.plan.groups):
            stamps, ox, oy = self.group_stamps(i, g, theta)
            if src_on is not None:
                stamps = stamps * src_on[np.asarray(gp.members)][:, None, None]
            model = mog.add_stamps(model, stamps, ox, oy, ip.pad)
        return model + sky_on * self.image_context(i, theta).sky()

    # --- jitted entry points ---
    def _render(self, theta, src_on, sky_on):
        return tuple(self.model_image(i, theta, src_on, sky_on) for i in range(len(self.plan.images)))

    def _chis(self, theta, data, weights):
        return tuple(
            (d - self.model_image(i, theta)) * w
            for i, (d, w) in enumerate(zip(data, weights))
        )

    def _loglik(self, theta, data, weights):
        return -0.5 * sum(jnp.sum(c * c) for c in self._chis(theta, data, weights))

    def legal(self, theta):
        """True if every image calibration and source is in its legal domain."""
        ok = jnp.asarray(True)
        for ip in self.plan.images:
            ok = ok & spec_legal(ip.spec, theta[ip.offset : ip.offset + ip.spec.size])
        for g, gp in enumerate(self.plan.groups):
            ok = ok & jnp.all(jax.vmap(lambda v, s=gp.spec: spec_legal(s, v))(
                self.group_values(g, theta)))
        return ok

    def _origins(self, theta):
        """Per image, per group: (ox, oy, cx, cy) stamp origins and source centres (pixels)."""
        return tuple(
            tuple(self.group_origins(i, g, theta) for g in range(len(self.plan.groups)))
            for i in range(len(self.plan.images))
        )
