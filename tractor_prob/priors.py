"""Priors: every parameter's default, user priors, and the unit-disk transform.

Every parameter has a prior.  Unless the user sets one, it is the *default of its
type*: flat (log-density 0) on the parameter's support.  Flat defaults keep
``Tractor.getLogProb()`` equal to the original Tractor's value (log-likelihood plus
the priors the user added) and equal to the numpyro model's log density.

======================================  =========================  ==========================
parameter (class.name)                  support                    default prior
======================================  =========================  ==========================
PixPos x, y (pixels)                    real                       flat
RaDecPos ra, dec (degrees)              real                       flat
Flux, Fluxes, NanoMaggies (counts, nmgy) real (negative allowed)   flat; ``'positive'`` on request
Mag, Mags (mag)                         real                       flat
EllipseE re (arcsec)                    re > 0                     flat
EllipseE (e1, e2)                       unit disk e1^2 + e2^2 < 1  uniform on the disk
EllipseESoft logre, ee1, ee2            real                       flat
LogRadius logre (REX)                   real                       flat
GalaxyShape re (arcsec), ab             re > 0, ab > 0             flat
GalaxyShape phi (degrees)               real                       flat
SersicIndex n                           [0.5, 6.2]                 uniform
FracDev                                 [0, 1]                     uniform
ConstantSky sky (counts)                real                       flat
NCircularGaussianPSF sigmas (pixels)    sigma > 0                  flat
NCircularGaussianPSF weights            real                       flat
GaussianMixturePSF amps, means, vars    real                       flat
FitsWcs crval, crpix, cd                real                       flat
LinearPhotoCal, MagsPhotoCal, ...       real                       flat
======================================  =========================  ==========================

Bounded supports are sampled in an unconstrained space through numpyro's
transforms (log for ``> 0``, logit for intervals, the radial ``tanh`` map below
for the unit disk), so MAP (in the parameters' own space) and NUTS see the
same density.  Flat priors on unbounded supports are improper: the posterior
is proper when the data constrain the parameter (any detected source's
position and flux).  Before sampling a parameter the data barely constrain
(the size of an unresolved galaxy with an ``EllipseESoft``/``LogRadius`` shape,
a frozen-out band's flux), give it a proper prior::

    tractor.set_prior('source0.shape.logre', dist.Normal(0., 1.))
    src.brightness.set_prior('r', dist.HalfNormal(100.))     # on the object
    tractor.set_prior('source0.brightness.Flux', 'positive')  # flux >= 0
    tractor.addGaussianPrior('source0.pos.x', 10., 0.5)      # = set_prior(Normal(10, 0.5))

A user prior is any scalar numpyro distribution; its support sets the
transform (``HalfNormal`` samples the flux through a log).
"""

from __future__ import annotations

import math
import sys

import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, ImproperUniform, Normal, constraints
from numpyro.distributions.transforms import Transform, biject_to


def repair_numpyro_modules() -> None:
    """Re-attach numpyro's loaded submodules to their packages where missing.

    ArviZ 1.x registers numpyro with ``importlib.util.LazyLoader`` when ArviZ is
    imported first; numpyro's submodules then load without being set as attributes
    of their packages, and numpyro itself fails (``numpyro.factor`` reads
    ``numpyro.distributions.distribution.Unit``).  Cheap; called on import and by
    the model builder.
    """
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("numpyro."):
            continue
        parent, _, child = name.rpartition(".")
        pkg = sys.modules.get(parent)
        if pkg is not None and not hasattr(pkg, child):
            setattr(pkg, child, mod)


repair_numpyro_modules()

__all__ = ["unit_disk", "UnitDiskTransform", "as_prior", "log_prob", "constraint_of",
           "support_label"]


class _UnitDisk(constraints.Constraint):
    """Pairs (e1, e2) with e1^2 + e2^2 < 1 (last axis of length 2)."""

    event_dim = 1

    def __call__(self, x):
        return jnp.sum(x * x, axis=-1) < 1.0

    def feasible_like(self, prototype):
        return jnp.zeros_like(prototype)

    def tree_flatten(self):
        return (), ((), dict())


unit_disk = _UnitDisk()


def _norm(x):
    s = jnp.sum(x * x, axis=-1, keepdims=True)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


class UnitDiskTransform(Transform):
    """R^2 -> unit disk, radially: y = x tanh(|x|) / |x| (smooth, odd, bijective)."""

    domain = constraints.real_vector
    codomain = unit_disk

    def __call__(self, x):
        r = _norm(x)
        small = r < 1e-4
        rs = jnp.where(small, 1.0, r)
        return x * jnp.where(small, 1.0 - r * r / 3.0, jnp.tanh(rs) / rs)

    def _inverse(self, y):
        s = _norm(y)
        small = s < 1e-4
        ss = jnp.where(small, 0.5, s)
        return y * jnp.where(small, 1.0 + s * s / 3.0, jnp.arctanh(ss) / ss)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        # radial map in 2-D: det = f'(r) (f(r) / r) with f = tanh
        r = _norm(x)[..., 0]
        small = r < 1e-4
        rs = jnp.where(small, 1.0, r)
        log_f_over_r = jnp.where(small, -r * r / 3.0, jnp.log(jnp.tanh(rs) / rs))
        log_fprime = -2.0 * (r + jnp.log1p(jnp.exp(-2.0 * r)) - math.log(2.0))  # log sech^2
        return log_fprime + log_f_over_r

    def tree_flatten(self):
        return (), ((), dict())

    def __eq__(self, other):
        return isinstance(other, UnitDiskTransform)


@biject_to.register(_UnitDisk)
def _unit_disk_transform(constraint):
    return UnitDiskTransform()


def constraint_of(support):
    """A support key ('real', 'positive', 'disk', ('interval', lo, hi)) -> numpyro constraint."""
    if support == "real":
        return constraints.real
    if support == "positive":
        return constraints.positive
    if support == "disk":
        return unit_disk
    if isinstance(support, tuple) and support[0] == "interval":
        return constraints.interval(float(support[1]), float(support[2]))
    raise ValueError(f"unknown support {support!r}")


def support_label(support) -> str:
    """Short text for a support key, used in site names ('interval(0.5,6.2)')."""
    if isinstance(support, tuple):
        return f"interval({support[1]:g},{support[2]:g})"
    return support


def as_prior(prior, where: str):
    """A user's prior argument -> a scalar numpyro distribution, or None (the default).

    ``prior``: a numpyro Distribution with scalar batch and event shapes,
    ``'positive'`` (flat on values > 0), or None / ``'default'``.
    """
    if prior is None or (isinstance(prior, str) and prior == "default"):
        return None
    if isinstance(prior, str):
        if prior == "positive":
            return ImproperUniform(constraints.positive, (), ())
        raise ValueError(f"prior for {where}: unknown name {prior!r} "
                         "(use a numpyro distribution, 'positive' or 'default')")
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior for {where} must be a numpyro distribution, 'positive' or "
                        f"'default', got {type(prior).__name__}")
    if prior.batch_shape != () or prior.event_shape != ():
        raise ValueError(f"prior for {where} must be a scalar distribution, got batch shape "
                         f"{prior.batch_shape} and event shape {prior.event_shape}")
    return prior


def log_prob(prior, value: float) -> float:
    """log p(value) under a scalar prior, as a float; -inf outside its support."""
    if type(prior) is Normal:
        mu, sig = float(prior.loc), float(prior.scale)
        return -0.5 * ((value - mu) / sig) ** 2 - math.log(sig) - 0.5 * math.log(2 * math.pi)
    if not bool(prior.support(value)):
        return -np.inf
    return float(prior.log_prob(value))


def group_priors(rows):
    """Batch scalar priors by family: ``rows`` (index, distribution) -> list of
    (indices (n,) int array, distribution of batch shape (n,)).

    Priors of one class whose parameters can be stacked share one batched
    distribution (so a model or fitter with thousands of priors stays one
    vectorized term per family); anything else stays on its own.
    """
    by_key: dict = {}
    for i, d in rows:
        key = (type(d), str(d.support)) if isinstance(d, ImproperUniform) else type(d)
        by_key.setdefault(key, []).append((i, d))
    out = []
    for members in by_key.values():
        idx = np.array([i for i, _ in members], dtype=np.int32)
        ds = [d for _, d in members]
        batched = _stack(ds)
        if batched is None:
            out.extend((idx[k : k + 1], d.expand((1,))) for k, d in enumerate(ds))
        else:
            out.append((idx, batched))
    return out


def _stack(ds):
    """One distribution of batch shape (len(ds),) equal to ``ds`` entry by entry, or None."""
    d0 = ds[0]
    n = len(ds)
    if isinstance(d0, ImproperUniform):
        return ImproperUniform(d0.support, (n,), ())
    names = list(type(d0).arg_constraints)
    try:
        kwargs = {k: jnp.asarray(np.array([float(getattr(d, k)) for d in ds])) for k in names}
        out = type(d0)(**kwargs)
    except Exception:  # a family whose constructor does not take its arg_constraints
        return None
    probe = jnp.asarray([float(d.mean) if np.isfinite(float(d.mean)) else 0.0 for d in ds])
    same = np.allclose(np.asarray(out.log_prob(probe)),
                       [float(d.log_prob(float(p))) for d, p in zip(ds, probe)], equal_nan=True)
    return out if out.batch_shape == (n,) and same else None
